//! What a webhook POST looks like: sessionhub's own body and `Sessionhub-Signature`, or
//! Pusher's, so that a Pusher server SDK's webhook validator takes it unchanged.
//!
//! Pusher's body is `{"time_ms": <ms>, "events": [{"name": "channel_occupied",
//! "channel": …}, …]}` (`member_added` and `member_removed` carry `user_id`), signed by
//! `X-Pusher-Key` (the app's key) and `X-Pusher-Signature` (hex HMAC-SHA256 of the body
//! with the app's secret). A Pusher client's `client-` event is Pusher's `client_event`
//! (with `event`, `data` as the string the client sent, `socket_id` and, on presence
//! channels, `user_id`); a cache channel subscribed to with nothing to replay is
//! `cache_miss`. Pusher has no event for a user coming online, a protocol v1
//! client's publish or a session, and no channel whose name a Pusher client could not give:
//! those are not sent in its format. An app hears of its own channels only (those in its
//! namespace), by the names its clients give them.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Event, EventKind, signature};
use crate::pusher::PusherApp;

/// The body format and signer of a webhook target.
#[derive(Debug, Clone, Default)]
pub enum Format {
    /// One [`Event`] as JSON, signed by `Sessionhub-Signature` with the config's secrets.
    #[default]
    Sessionhub,
    /// Pusher's body, signed with the app's key and secret.
    Pusher(Arc<PusherApp>),
}

/// A webhook POST: its body and the headers besides `content-type`.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) body: Vec<u8>,
    pub(super) headers: Vec<(&'static str, String)>,
}

impl Format {
    /// Whether events of `kind` about `data` exist in this format.
    pub fn carries(&self, kind: EventKind, data: &Value) -> bool {
        match self {
            Self::Sessionhub => true,
            Self::Pusher(app) => {
                pusher_name(kind).is_some()
                    && (kind != EventKind::Message || is_client_event(data))
                    && data["channel"]
                        .as_str()
                        .is_some_and(|c| app.pusher_channel(c).is_some())
            }
        }
    }

    /// The POST that delivers `event`, signed with `secrets` (sessionhub's) at `now`
    /// (Unix seconds); `None` if the format has no such event.
    pub(super) fn request(&self, event: &Event, secrets: &[String], now: u64) -> Option<Request> {
        match self {
            Self::Sessionhub => {
                let body = serde_json::to_vec(event).expect("events serialize");
                let headers = vec![
                    (signature::HEADER, signature::sign(secrets, now, &body)),
                    ("Sessionhub-Event-Id", event.id.clone()),
                    ("Sessionhub-Event", event.kind.name().to_owned()),
                ];
                Some(Request { body, headers })
            }
            Self::Pusher(app) => {
                let body = pusher_body(app, event)?;
                let headers = vec![
                    ("X-Pusher-Key", app.key.clone()),
                    ("X-Pusher-Signature", app.sign(&body)),
                ];
                Some(Request {
                    body: body.into_bytes(),
                    headers,
                })
            }
        }
    }
}

/// Pusher's name for events of `kind`, if it has them.
fn pusher_name(kind: EventKind) -> Option<&'static str> {
    Some(match kind {
        EventKind::Occupied => "channel_occupied",
        EventKind::Vacated => "channel_vacated",
        EventKind::Join => "member_added",
        EventKind::Leave => "member_removed",
        EventKind::Message => "client_event",
        EventKind::CacheMiss => "cache_miss",
        _ => return None,
    })
}

/// Whether a `client.message` event is a Pusher client's `client-` event (a v1 client's
/// publish has no event name).
fn is_client_event(data: &Value) -> bool {
    data["event"]
        .as_str()
        .is_some_and(|event| event.starts_with("client-"))
}

/// `{"time_ms": …, "events": [one event]}`, for `app`.
fn pusher_body(app: &PusherApp, event: &Event) -> Option<String> {
    let name = pusher_name(event.kind)?;
    let channel = app.pusher_channel(event.data["channel"].as_str()?)?;
    let mut one = json!({"name": name, "channel": channel});
    match event.kind {
        EventKind::Join | EventKind::Leave => one["user_id"] = event.data["user"].clone(),
        EventKind::Message => {
            if !is_client_event(&event.data) {
                return None;
            }
            // The data as the client sent it: Pusher's `data` is a string.
            let data = match &event.data["data"] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            one["event"] = event.data["event"].clone();
            one["data"] = Value::String(data);
            one["socket_id"] = event.data["socket_id"].clone();
            if let Some(user) = event.data["user"].as_str() {
                one["user_id"] = Value::String(user.to_owned());
            }
        }
        _ => {}
    }
    Some(json!({"time_ms": event.time, "events": [one]}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, data: Value) -> Event {
        Event {
            id: "1".into(),
            kind,
            time: 1_700_000_000_123,
            node: "n".into(),
            data,
        }
    }

    #[test]
    fn pusher_bodies_are_pusher_s_and_signed_with_the_app_s_secret() {
        let app = Arc::new(PusherApp::new("1", "key", "secret"));
        let format = Format::Pusher(app.clone());
        let joined = event(
            EventKind::Join,
            json!({"channel": "presence-a", "user": "u1"}),
        );
        let request = format.request(&joined, &[], 0).unwrap();
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            json!({"time_ms": 1_700_000_000_123u64, "events": [
                {"name": "member_added", "channel": "presence-a", "user_id": "u1"}]})
        );
        let text = std::str::from_utf8(&request.body).unwrap();
        assert_eq!(
            request.headers,
            [
                ("X-Pusher-Key", "key".to_owned()),
                ("X-Pusher-Signature", app.sign(text))
            ]
        );
        let vacated = event(EventKind::Vacated, json!({"channel": "c"}));
        let body: Value =
            serde_json::from_slice(&format.request(&vacated, &[], 0).unwrap().body).unwrap();
        assert_eq!(
            body["events"],
            json!([{"name": "channel_vacated", "channel": "c"}])
        );
    }

    #[test]
    fn pusher_carries_only_what_pusher_has() {
        let format = Format::Pusher(Arc::new(PusherApp::new("1", "key", "secret")));
        let on = |c: &str| json!({"channel": c});
        assert!(format.carries(EventKind::Occupied, &on("my-channel")));
        assert!(!format.carries(EventKind::Occupied, &on("user:bob")));
        assert!(!format.carries(EventKind::Online, &json!({"user": "bob"})));
        assert!(!format.carries(EventKind::Message, &on("c")));
        assert!(Format::Sessionhub.carries(EventKind::Online, &json!({"user": "bob"})));
        let online = event(EventKind::Online, json!({"user": "bob"}));
        assert!(format.request(&online, &[], 0).is_none());
    }

    #[test]
    fn a_client_event_is_pusher_s_client_event_with_the_data_as_sent() {
        let format = Format::Pusher(Arc::new(PusherApp::new("1", "key", "secret")));
        let sent = json!({"channel": "presence-a", "event": "client-typing",
            "data": {"who": "ann"}, "socket_id": "1.2", "user": "7"});
        assert!(format.carries(EventKind::Message, &sent));
        let request = format
            .request(&event(EventKind::Message, sent), &[], 0)
            .unwrap();
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body["events"],
            json!([{"name": "client_event", "channel": "presence-a", "event": "client-typing",
                "data": "{\"who\":\"ann\"}", "socket_id": "1.2", "user_id": "7"}])
        );
        // A protocol v1 client's publish is no client event.
        let v1 = json!({"channel": "private-a", "data": {"x": 1}});
        assert!(!format.carries(EventKind::Message, &v1));
    }
}
