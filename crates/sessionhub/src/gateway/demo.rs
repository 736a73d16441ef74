//! The seed's session demo: `/login`, `/get-session`, `/invalidate`, the read-only
//! `/read-session`, and a page at `/` to try everything in a browser.

use axum::Form;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::response::Json;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Gateway;
use crate::error::ApiError;
use crate::protocol::{InvalidUserId, UserId};
use crate::session::Session;
use crate::store::now_ms;

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

/// Sets `username`, rotates the id (fixation protection), answers every attribute.
async fn login(
    session: Session,
    form: Result<Form<LoginQuery>, FormRejection>,
) -> Result<Json<Map<String, Value>>, ApiError> {
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
    session.insert("username", user.as_str()).await?;
    session.login(user.as_str()).await?;
    describe(&session).await
}

/// Bumps `count` atomically, answers every attribute.
async fn get_session(session: Session) -> Result<Json<Map<String, Value>>, ApiError> {
    session.incr("count", 1).await?;
    describe(&session).await
}

/// Answers every attribute like `/get-session` and changes nothing (but the expiry, which
/// every use slides): one load. `{}` without a session; none is created.
async fn read_session(session: Session) -> Result<Json<Map<String, Value>>, ApiError> {
    if !session.exists().await? {
        return Ok(Json(Map::new()));
    }
    describe(&session).await
}

/// Ends the session; answers `1` as the seed does.
async fn invalidate(session: Session) -> Result<Json<u8>, ApiError> {
    session.invalidate().await?;
    Ok(Json(1))
}

async fn describe(session: &Session) -> Result<Json<Map<String, Value>>, ApiError> {
    let mut body = session.attributes().await?;
    // sessionhub's own bookkeeping is not part of the demo's answer.
    body.retain(|name, _| !name.starts_with("sessionhub."));
    body.insert("sessionId".into(), session.id().await?.as_str().into());
    Ok(Json(body))
}
