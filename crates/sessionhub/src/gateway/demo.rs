//! The seed's session demo: `/login`, `/get-session`, `/invalidate`, the read-only
//! `/read-session`, and a page at `/` to try everything in a browser.

use std::net::SocketAddr;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Extension, Form, Router};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Map;

use super::admission::client_ip;
use super::state::Gateway;
use crate::error::ApiError;
use crate::limits::{Limited, Per};
use crate::protocol::{InvalidUserId, UserId};
use crate::session::Session;
use crate::store::{Attributes, now_ms};

pub(crate) fn routes() -> Router<Gateway> {
    Router::new()
        .route("/", get(page))
        .route("/login", get(login).post(login))
        .route("/get-session", get(get_session).post(get_session))
        .route("/read-session", get(read_session))
        .route("/invalidate", get(invalidate).post(invalidate))
}

/// A page to try sessionhub in a browser: log in, watch the session, send and receive.
async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../../assets/demo.html"))
}

#[derive(Deserialize)]
struct LoginQuery {
    username: Option<String>,
}

/// Sets `username`, rotates the id (fixation protection), answers every attribute. Logins
/// per client address and per user are rate limited (`Limits::logins_per_*`).
async fn login(
    State(gateway): State<Gateway>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    session: Session,
    form: Result<Form<LoginQuery>, FormRejection>,
) -> Result<Response, ApiError> {
    let security = gateway.security();
    let limits = &security.limits;
    if let Some(Extension(ConnectInfo(peer))) = peer {
        let ip = client_ip(peer, &headers, &gateway.sessions.trusted_proxies);
        let per = Per::Address(&ip);
        gateway
            .rates
            .check(Limited::Login, per, limits.logins_per_ip)
            .await?;
    }
    // Form reads the query string of a GET and the urlencoded body of a POST.
    let username = form
        .ok()
        .and_then(|Form(query)| query.username)
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("user{}", now_ms()));
    // The username becomes the user id that sockets connect as.
    let user: UserId = username
        .parse()
        .map_err(|e: InvalidUserId| ApiError::bad_request(format!("username: {e}")))?;
    let per = Per::User(user.as_str());
    gateway
        .rates
        .check(Limited::Login, per, limits.logins_per_user)
        .await?;
    session.insert("username", user.as_str()).await?;
    session.login(user.as_str()).await?;
    describe(&session).await
}

/// Bumps `count` atomically, answers every attribute.
async fn get_session(session: Session) -> Result<Response, ApiError> {
    session.incr("count", 1).await?;
    describe(&session).await
}

/// Answers every attribute like `/get-session` and changes none: one load, which slides the
/// expiry like every use (and, for a logged-in session, refreshes its entry in the user's
/// index at most once per half idle timeout). `{}` without a session; none is created.
async fn read_session(session: Session) -> Result<Response, ApiError> {
    if !session.exists().await? {
        return Ok(Json(Map::new()).into_response());
    }
    describe(&session).await
}

/// Ends the session; answers `1` as the seed does.
async fn invalidate(session: Session) -> Result<Json<u8>, ApiError> {
    session.invalidate().await?;
    Ok(Json(1))
}

async fn describe(session: &Session) -> Result<Response, ApiError> {
    let id = session.id().await?;
    let body = session
        .with_attributes(|attributes| {
            serde_json::to_vec(&Described {
                attributes,
                id: id.as_str(),
            })
        })
        .await?
        .expect("JSON values and strings serialize");
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// The demo's answer: every attribute but sessionhub's own bookkeeping (`sessionhub.*`), and
/// `sessionId`, in key order, as a `Map` holding them all would serialize. Written straight
/// from the session, without copying its attributes into a map first.
struct Described<'a> {
    attributes: &'a Attributes,
    id: &'a str,
}

impl Serialize for Described<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const ID: &str = "sessionId";
        let mut map = serializer.serialize_map(None)?;
        let mut id = Some(self.id);
        for (name, value) in self.attributes {
            if name.starts_with("sessionhub.") {
                continue;
            }
            if name.as_str() >= ID
                && let Some(id) = id.take()
            {
                map.serialize_entry(ID, id)?;
            }
            // An attribute of that name is shadowed by the id.
            if name != ID {
                map.serialize_entry(name, value)?;
            }
        }
        if let Some(id) = id {
            map.serialize_entry(ID, id)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The answer as `describe` built it before it wrote it straight from the session.
    fn with_a_map(attributes: &Attributes, id: &str) -> String {
        let mut body = attributes.clone();
        body.retain(|name, _| !name.starts_with("sessionhub."));
        body.insert("sessionId".into(), id.into());
        serde_json::to_string(&body).unwrap()
    }

    #[test]
    fn the_answer_is_what_a_map_of_it_would_be() {
        let cases = [
            json!({}),
            json!({"count": 1, "username": "alice"}),
            json!({"sessionhub.principal": "alice", "sessionhub.indexed": 1, "count": 2}),
            json!({"a": [1, {"b": null}], "sessionId": "shadowed", "sessionI": 1, "sessionIe": 2}),
            json!({"z": "\"quoted\" \u{0} ✓", "SESSIONID": true, "sessionhub.": 0}),
        ];
        for case in cases {
            let attributes = case.as_object().unwrap();
            let described = serde_json::to_string(&Described {
                attributes,
                id: "k3Xo",
            })
            .unwrap();
            assert_eq!(described, with_a_map(attributes, "k3Xo"), "{case}");
        }
    }
}
