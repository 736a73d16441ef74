//! `POST /pusher/auth` and `POST /pusher/user-auth`: Pusher's channel authorization and
//! user authentication endpoints, built in, so that an app needs none of its own. The user
//! is the shared HTTP session's logged-in user, found as a `--ws-auth session` socket finds
//! it; what the user may join is what the channel rules let their clients join.
//!
//! pusher-js (and Laravel Echo) post `socket_id` and `channel_name` (form-encoded; JSON is
//! taken too) and expect Pusher's answer: `{"auth": "KEY:HMAC(socket_id:channel)"}` for a
//! `private-` channel, and for a `presence-` channel also the signed `channel_data`,
//! `{"user_id", "user_info"}`. A `pusher:signin` posts `socket_id` alone and gets
//! `{"auth": "KEY:HMAC(socket_id::user::user_data)", "user_data": "{\"id\", ...}"}`.
//! A `private-encrypted-` channel also gets its `shared_secret`, derived from the app's
//! encryption master key, when the app is configured with one; without it, it is refused
//! and the app authorizes those itself. Either way the server never decrypts: publishers
//! encrypt with the same key and only the channel's subscribers hold the secret.
//!
//! The user's `user_info` is the session's `user_info` attribute when it holds a JSON
//! object (or a string holding one, for apps that store JSON text), else
//! `{"name": <user id>}`.
//!
//! One app configured: `/pusher/auth` (and `/pusher/user-auth`) sign for it; several:
//! `/pusher/auth/{key}` names the app, which also works with one.

use std::sync::Arc;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::gateway::admission::{self, LoggedIn};
use crate::gateway::input;
use crate::gateway::state::Gateway;
use crate::protocol::{UserId, is_public_channel_name};
use crate::pusher::PusherApp;
use crate::store::Attributes;

/// The session attribute that holds what a presence member or a signed-in user tells about
/// themself.
pub(crate) const USER_INFO: &str = "user_info";

/// What pusher-js posts (`channel_name` only for a channel).
#[derive(Deserialize)]
struct Posted {
    socket_id: Option<String>,
    channel_name: Option<String>,
}

/// A presence member's `channel_data`, in Pusher's field order.
#[derive(Serialize)]
struct ChannelData<'a> {
    user_id: &'a str,
    user_info: &'a Value,
}

/// A signed-in user's `user_data`.
#[derive(Serialize)]
struct UserData<'a> {
    id: &'a str,
    user_info: &'a Value,
}

/// `POST /pusher/auth` (the only app) and `POST /pusher/auth/{key}` (app `key`): signs a
/// subscription.
pub(super) async fn channel(
    State(gateway): State<Gateway>,
    key: Option<Path<String>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let app = app(&gateway, key.as_deref().map(String::as_str))?;
    authorize_channel(&gateway, &app, request).await
}

/// `POST /pusher/user-auth` (the only app) and `POST /pusher/user-auth/{key}` (app `key`):
/// signs a `pusher:signin`.
pub(super) async fn user(
    State(gateway): State<Gateway>,
    key: Option<Path<String>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let app = app(&gateway, key.as_deref().map(String::as_str))?;
    authenticate_user(&gateway, &app, request).await
}

/// The app with key `key`, or with none given the only app.
fn app(gateway: &Gateway, key: Option<&str>) -> Result<Arc<PusherApp>, ApiError> {
    let apps = gateway
        .pusher
        .as_ref()
        .ok_or_else(|| ApiError::not_found("no Pusher app is configured"))?;
    match key {
        Some(key) => apps
            .by_key(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found("no Pusher app has that key")),
        None => {
            let mut all = apps.iter();
            match (all.next(), all.next()) {
                (Some(app), None) => Ok(app.clone()),
                _ => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "pusher_app_ambiguous",
                    "several Pusher apps are configured: post to /pusher/auth/{key} \
                     (or /pusher/user-auth/{key})",
                )),
            }
        }
    }
}

async fn authorize_channel(
    gateway: &Gateway,
    app: &PusherApp,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let (session, posted) = read(gateway, request).await?;
    let socket_id = socket_id(posted.socket_id)?;
    let channel = posted
        .channel_name
        .ok_or_else(|| bad("missing_channel_name", "post channel_name"))?;
    if !is_pusher_channel(&channel) {
        return Err(bad(
            "invalid_channel",
            "a channel is 1 to 160 characters of letters, digits and - _ . @",
        ));
    }
    let shared_secret = if channel.starts_with("private-encrypted-") {
        let secret = app.shared_secret(&channel).ok_or_else(|| {
            bad(
                "encrypted_channel_unsupported",
                "an encrypted channel's authorization needs its shared_secret, made from the \
                 app's encryption master key, which this app is not configured with \
                 (encryption_master_key_base64 in its [[pusher.apps]] table): configure it, or \
                 authorize encrypted channels in the app (the Pusher SDK's authorizeChannel)",
            )
        })?;
        Some(secret)
    } else {
        None
    };
    let presence = channel.starts_with("presence-");
    if !presence && !channel.starts_with("private-") {
        return Err(bad(
            "public_channel",
            "only private- and presence- channels need authorization",
        ));
    }
    if !gateway
        .security()
        .client_may_subscribe(&session.user, &channel)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "subscribe_forbidden",
            "the channel rules do not let this user join that channel",
        ));
    }
    if !presence {
        let auth = signed(app, &[&socket_id, &channel]);
        return Ok(Json(match shared_secret {
            Some(secret) => json!({ "auth": auth, "shared_secret": secret }),
            None => json!({ "auth": auth }),
        }));
    }
    let info = user_info(&session.attributes, &session.user);
    let info_bytes = serde_json::to_string(&info).map_or(0, |text| text.len());
    if info_bytes > app.max_user_info_bytes {
        return Err(bad(
            "user_info_too_large",
            format!(
                "the session's user_info is {info_bytes} bytes, over the app's {}",
                app.max_user_info_bytes
            ),
        ));
    }
    let channel_data = serde_json::to_string(&ChannelData {
        user_id: session.user.as_str(),
        user_info: &info,
    })
    .expect("JSON values serialize");
    let auth = signed(app, &[&socket_id, &channel, &channel_data]);
    Ok(Json(json!({ "auth": auth, "channel_data": channel_data })))
}

async fn authenticate_user(
    gateway: &Gateway,
    app: &PusherApp,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let (session, posted) = read(gateway, request).await?;
    let socket_id = socket_id(posted.socket_id)?;
    let info = user_info(&session.attributes, &session.user);
    let user_data = serde_json::to_string(&UserData {
        id: session.user.as_str(),
        user_info: &info,
    })
    .expect("JSON values serialize");
    let auth = signed(app, &[&socket_id, ":user:", &user_data]);
    Ok(Json(json!({ "auth": auth, "user_data": user_data })))
}

/// The logged-in session of a request from an allowed origin, and what it posted.
async fn read(gateway: &Gateway, request: Request) -> Result<(LoggedIn, Posted), ApiError> {
    admission::check_origin(gateway, request.headers())?;
    let session = admission::logged_in(gateway, request.headers())
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "not_logged_in",
                "log in first: channels are authorized for the HTTP session's user",
            )
        })?;
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let posted = if json {
        input::json(Json::<Posted>::from_request(request, &()).await)?
    } else {
        input::form(axum::Form::<Posted>::from_request(request, &()).await)?
    };
    Ok((session, posted))
}

/// `KEY:signature` of the parts joined by `:`, as Pusher signs.
fn signed(app: &PusherApp, parts: &[&str]) -> String {
    [app.key.as_str(), ":", &app.sign(&parts.join(":"))].concat()
}

/// The posted socket id, if it is one: `^\d+\.\d+$`.
fn socket_id(posted: Option<String>) -> Result<String, ApiError> {
    let posted = posted.ok_or_else(|| bad("missing_socket_id", "post socket_id"))?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match posted.split_once('.') {
        Some((a, b)) if digits(a) && digits(b) => Ok(posted),
        _ => Err(bad(
            "invalid_socket_id",
            "a socket_id is digits.digits, as pusher:connection_established gave it",
        )),
    }
}

/// Whether `channel` is a Pusher channel name that sessionhub carries as it is: the
/// characters both allow (no `:`, `=`, `,` or `;`), at most 160 of them.
fn is_pusher_channel(channel: &str) -> bool {
    is_public_channel_name(channel) && !channel.contains(':')
}

/// The session's `user_info` if it holds a JSON object (or a string holding one), else
/// `{"name": <user id>}`.
fn user_info(attributes: &Attributes, user: &UserId) -> Value {
    match attributes.get(USER_INFO) {
        Some(object @ Value::Object(_)) => object.clone(),
        Some(Value::String(text)) => match serde_json::from_str(text) {
            Ok(object @ Value::Object(_)) => object,
            _ => json!({ "name": user.as_str() }),
        },
        _ => json!({ "name": user.as_str() }),
    }
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_are_digits_dot_digits() {
        for good in ["1.2", "123456.7890"] {
            assert!(socket_id(Some(good.into())).is_ok(), "{good}");
        }
        for bad in ["", "1", "1.", ".2", "1.2.3", "a.1", "1.2 ", "-1.2", "1,2"] {
            assert!(socket_id(Some(bad.into())).is_err(), "{bad:?}");
        }
        assert!(socket_id(None).is_err());
    }

    #[test]
    fn channels_are_the_names_both_protocols_carry() {
        assert!(is_pusher_channel("private-orders.1@x_y-z"));
        for bad in [
            "",
            "private-a:b",
            "private-a=b",
            "presence-a,b",
            "private- a",
        ] {
            assert!(!is_pusher_channel(bad), "{bad:?}");
        }
        assert!(!is_pusher_channel(&format!("private-{}", "a".repeat(160))));
    }

    #[test]
    fn user_info_is_the_sessions_object_or_the_users_name() {
        let alice: UserId = "alice".parse().unwrap();
        let with = |value: Value| {
            let mut attributes = Attributes::new();
            attributes.insert(USER_INFO.into(), value);
            user_info(&attributes, &alice)
        };
        let name = json!({"name": "alice"});
        assert_eq!(user_info(&Attributes::new(), &alice), name);
        assert_eq!(with(json!({"n": 1})), json!({"n": 1}));
        assert_eq!(with(json!(r#"{"n": 2}"#)), json!({"n": 2}));
        for other in [
            json!("Alice"),
            json!("[1]"),
            json!(3),
            json!(null),
            json!([1]),
        ] {
            assert_eq!(with(other.clone()), name, "{other}");
        }
    }

    #[test]
    fn signatures_are_pushers_documented_ones() {
        // Pusher's "Channel authorization" documentation: private-foobar, and the presence
        // example with its channel_data.
        let app = PusherApp::new("1", "278d425bdf160c739803", "7ad3773142a6692b25b8");
        assert_eq!(
            signed(&app, &["1234.1234", "private-foobar"]),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let channel_data = r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#;
        assert_eq!(
            signed(&app, &["1234.1234", "presence-foobar", channel_data]),
            "278d425bdf160c739803:afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c"
        );
    }
}
