//! The Pusher Channels protocol, version 7 (`GET /app/{key}`), both directions: what a
//! pusher-js (or Laravel Echo) client sends ([`Request`]), the frames the server answers,
//! the close codes in Pusher's ranges, and which channels are which kind. Pure: the
//! connection that uses them lives in `gateway/pusher/socket.rs`.
//!
//! Over 700 lines with its unit tests, which are half of it (every frame both ways, the
//! close mapping, names, presence data); the code is about 430 lines, one protocol's
//! frames as `v1.rs` holds v1's. Presence (`PresenceMember`, `presence_data`,
//! `member_event`) is the piece to move out next if it grows.
//!
//! Pusher's wire format puts every frame in `{"event", "channel", "data"}`, where the
//! server's `data` is a *string* (pusher-js `JSON.parse`s it when it can), and a client's
//! `data` is an object (or, from older clients, a string holding one).
//!
//! # Channel names
//!
//! A Pusher channel is the sessionhub channel of the same name, behind its app's namespace
//! (none when the server has one app; see `PusherApp::namespace`): a publication on
//! `private-orders` through protocol v1 or the server API reaches the Pusher clients of
//! `private-orders`, and theirs reach v1 clients. Pusher allows `[-a-zA-Z0-9_=@,.;]`, up to
//! 164 characters; sessionhub channels are `[-a-zA-Z0-9_.@:]`, up to 160
//! ([`super::is_public_channel_name`]). The names both accept (letters, digits and
//! `- _ . @`, up to 160) are used as they are; a Pusher name with `=`, `,` or `;`, or of 161
//! to 164 characters, is refused with `pusher:subscription_error` (status 400) rather than
//! renamed, so that a channel has one name everywhere. Pusher names cannot hold `:`, so no
//! Pusher client can name sessionhub's internal `session:` or `$presence:` channels.
//!
//! The Pusher prefixes are enforced on this endpoint only: a v1 client is governed by the
//! channel rules (`--channel-rule`), which should not grant `private-*` or `presence-*`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// The only protocol version spoken (pusher-js 7 and 8 send `protocol=7`).
pub const PROTOCOL: &str = "7";

/// Seconds of silence after which a client should ping (`activity_timeout` in
/// `pusher:connection_established`), Pusher's own value.
pub const ACTIVITY_TIMEOUT_SECS: u64 = 120;

/// Longest Pusher channel name, in bytes (Pusher's limit; sessionhub's is lower).
pub const MAX_PUSHER_CHANNEL_LEN: usize = 164;

/// The close codes a Pusher connection ends with, in Pusher's ranges: 4000-4099 the client
/// must not reconnect, 4100-4199 it reconnects after a pause, 4200-4299 at once
/// (pusher-js, `Protocol.getCloseAction`).
pub mod close {
    /// No app has that key.
    pub const UNKNOWN_APP: (u16, &str) = (4001, "application does not exist");
    /// `protocol` is not 7.
    pub const UNSUPPORTED_PROTOCOL: (u16, &str) = (4007, "unsupported protocol version");
    /// No `protocol` in the query.
    pub const NO_PROTOCOL: (u16, &str) = (4008, "no protocol version supplied");
    /// The connection may not stay (its session ended, the server API said so for good).
    pub const UNAUTHORIZED: (u16, &str) = (4009, "connection is unauthorized");
    /// The server cannot serve it now (its queue filled, the broker is away): try again
    /// after a pause.
    pub const OVER_CAPACITY: (u16, &str) = (4100, "over capacity");
    /// Reconnect at once (the node restarts, publications may have been missed).
    pub const RECONNECT: (u16, &str) = (4200, "please reconnect immediately");
    /// The client was silent past the activity timeout and its grace.
    pub const PONG_NOT_RECEIVED: (u16, &str) = (4201, "pong reply not received");
    /// The client sent more client events (or messages) per second than allowed.
    pub const CLIENT_EVENT_RATE: (u16, &str) = (4301, "client event rejected due to rate limit");

    /// The Pusher close for a sessionhub close (`protocol::close`): 4000 means
    /// "use TLS" to pusher-js and 4008 "no protocol version", so sessionhub's own codes in
    /// 4000-4999 are mapped by what the client should do next; the WebSocket codes below
    /// 4000 keep their meaning.
    pub fn from_hub((code, reason): (u16, &'static str)) -> (u16, &'static str) {
        use crate::protocol::close as hub;
        match code {
            // Already Pusher's.
            4001 | 4007 | 4009 | 4100 | 4200 | 4201 | 4301 => (code, reason),
            c if c == hub::IDLE_TIMEOUT.0 => PONG_NOT_RECEIVED,
            c if c == hub::SLOW_CONSUMER.0 || c == hub::BROKER_UNAVAILABLE.0 => OVER_CAPACITY,
            c if c == hub::RATE_LIMITED.0 => CLIENT_EVENT_RATE,
            c if c == hub::SESSION_ENDED.0
                || c == hub::TOKEN_EXPIRED.0
                || c == hub::DISCONNECTED_NO_RECONNECT.0
                || c == crate::hooks::DENIED =>
            {
                UNAUTHORIZED
            }
            c if c == hub::SERVICE_RESTART.0 || c >= 4000 => RECONNECT,
            _ => (code, reason),
        }
    }
}

/// What a channel's name makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Anyone may subscribe.
    Public,
    /// `private-`: a subscription needs the app's signature.
    Private,
    /// `private-encrypted-`: private, and its data is encrypted by the clients; the server
    /// passes it through.
    Encrypted,
    /// `presence-`: private, with a member list.
    Presence,
}

impl ChannelKind {
    /// The kind of `channel`.
    pub fn of(channel: &str) -> Self {
        if channel.starts_with("private-encrypted-") {
            Self::Encrypted
        } else if channel.starts_with("private-") {
            Self::Private
        } else if channel.starts_with("presence-") {
            Self::Presence
        } else {
            Self::Public
        }
    }

    /// Whether a subscription needs a signature.
    pub fn is_private(self) -> bool {
        self != Self::Public
    }

    /// Whether clients may send `client-` events on it (Pusher: private and presence
    /// channels; not encrypted ones, whose payloads the server could not check).
    pub fn takes_client_events(self) -> bool {
        matches!(self, Self::Private | Self::Presence)
    }
}

/// Whether `channel` is a cache channel (`cache-`, `private-cache-`, `presence-cache-`,
/// `private-encrypted-cache-`): its publications are kept and the last one is replayed to
/// every new subscriber. `channel` may be the hub channel that carries it, in its app's
/// namespace.
pub fn is_cache_channel(channel: &str) -> bool {
    let channel = pusher_name(channel);
    [
        "cache-",
        "private-cache-",
        "presence-cache-",
        "private-encrypted-cache-",
    ]
    .iter()
    .any(|prefix| channel.starts_with(prefix))
}

/// Why a Pusher channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// Not a Pusher channel name at all.
    #[error("a Pusher channel is 1 to 164 characters of letters, digits and - _ = @ , . ;")]
    Invalid,
    /// A Pusher name sessionhub cannot carry as it is (see the module doc).
    #[error(
        "sessionhub carries Pusher channels of 1 to 160 characters of letters, digits and - _ . @ (no = , ;)"
    )]
    Unsupported,
}

/// Checks a Pusher channel name: the name itself if sessionhub carries it (the app puts its
/// namespace in front; see the module doc).
pub fn hub_channel(channel: &str) -> Result<&str, ChannelNameError> {
    let pusher = !channel.is_empty()
        && channel.len() <= MAX_PUSHER_CHANNEL_LEN
        && channel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=@,.;".contains(&b));
    if !pusher {
        return Err(ChannelNameError::Invalid);
    }
    if !super::is_public_channel_name(channel) {
        return Err(ChannelNameError::Unsupported);
    }
    Ok(channel)
}

/// The Pusher name of sessionhub channel `hub` as its app's clients know it: the part after
/// the app's namespace, which ends in the last `:` (no Pusher name holds one).
pub fn pusher_name(hub: &str) -> &str {
    hub.rsplit(':').next().unwrap_or(hub)
}

/// A frame a Pusher client sends.
#[derive(Debug)]
pub enum Request {
    /// `pusher:ping`: answered with `pusher:pong`.
    Ping,
    /// `pusher:pong`: the answer to the server's `pusher:ping`.
    Pong,
    /// `pusher:subscribe`.
    Subscribe {
        /// The channel.
        channel: String,
        /// `KEY:signature`, for private and presence channels.
        auth: Option<String>,
        /// The presence member's `{"user_id", "user_info"}`, as JSON text (signed too).
        channel_data: Option<String>,
    },
    /// `pusher:unsubscribe`.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// `pusher:signin` ([`super::pusher_user`]).
    SignIn {
        /// `KEY:signature` of `socket_id::user::user_data`.
        auth: Option<String>,
        /// The user's JSON text, as signed.
        user_data: String,
    },
    /// A `client-` event for the channel's other subscribers.
    ClientEvent {
        /// The event name, `client-…`.
        event: String,
        /// The channel.
        channel: String,
        /// The data, as JSON text.
        data: Box<RawValue>,
    },
}

// By value; raw JSON by its text.
impl PartialEq for Request {
    fn eq(&self, other: &Self) -> bool {
        use Request::*;
        match (self, other) {
            (Ping, Ping) | (Pong, Pong) => true,
            (
                Subscribe {
                    channel,
                    auth,
                    channel_data,
                },
                Subscribe {
                    channel: c,
                    auth: a,
                    channel_data: d,
                },
            ) => (channel, auth, channel_data) == (c, a, d),
            (Unsubscribe { channel }, Unsubscribe { channel: c }) => channel == c,
            (
                SignIn { auth, user_data },
                SignIn {
                    auth: a,
                    user_data: u,
                },
            ) => (auth, user_data) == (a, u),
            (
                ClientEvent {
                    event,
                    channel,
                    data,
                },
                ClientEvent {
                    event: e,
                    channel: c,
                    data: d,
                },
            ) => (event, channel, data.get()) == (e, c, d.get()),
            _ => false,
        }
    }
}

/// Why a client frame was refused: answered with `pusher:error`, the connection stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a JSON object with a string `event`.
    #[error("a frame is a JSON object with a string \"event\": {0}")]
    Malformed(String),
    /// A `pusher:` event the server does not know.
    #[error("unsupported event {0:?}")]
    UnknownEvent(String),
    /// `pusher:subscribe` or `pusher:unsubscribe` without a channel.
    #[error("{0} needs data.channel, a string")]
    NoChannel(&'static str),
    /// A client event without a channel, or with a name that is not `client-…`.
    #[error("client events are named client-… and sent on a channel")]
    BadClientEvent,
    /// `pusher:signin` without `data.user_data`, a string.
    #[error("pusher:signin needs data.user_data, a string (and data.auth)")]
    NoUserData,
}

impl RequestError {
    /// The `code` of the `pusher:error` frame: Pusher documents none for malformed
    /// frames, so it is null, as Pusher's own servers send.
    pub fn code(&self) -> Option<u16> {
        None
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    event: Option<Value>,
    channel: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct SubscribeData {
    channel: Option<String>,
    auth: Option<String>,
    channel_data: Option<Value>,
}

impl Request {
    /// Reads one text frame.
    pub fn parse(text: &str) -> Result<Self, RequestError> {
        let wire: Wire<'_> =
            serde_json::from_str(text).map_err(|e| RequestError::Malformed(e.to_string()))?;
        let Some(Value::String(event)) = wire.event else {
            return Err(RequestError::Malformed("no string \"event\"".into()));
        };
        match event.as_str() {
            "pusher:ping" => Ok(Self::Ping),
            "pusher:pong" => Ok(Self::Pong),
            "pusher:subscribe" | "pusher:unsubscribe" => {
                let name = if event == "pusher:subscribe" {
                    "pusher:subscribe"
                } else {
                    "pusher:unsubscribe"
                };
                let data = subscribe_data(wire.data).ok_or(RequestError::NoChannel(name))?;
                let channel = data.channel.ok_or(RequestError::NoChannel(name))?;
                if name == "pusher:unsubscribe" {
                    return Ok(Self::Unsubscribe { channel });
                }
                // Signed as the client sent it: a string is used as is, an object as its text.
                let channel_data = match data.channel_data {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s),
                    Some(other) => Some(other.to_string()),
                };
                Ok(Self::Subscribe {
                    channel,
                    auth: data.auth,
                    channel_data,
                })
            }
            "pusher:signin" => {
                #[derive(Deserialize)]
                struct SignIn {
                    auth: Option<String>,
                    user_data: Option<String>,
                }
                let data = wire.data.ok_or(RequestError::NoUserData)?.get();
                // An object, or (older clients) a string holding one.
                let signin = serde_json::from_str::<SignIn>(data).ok().or_else(|| {
                    let text: String = serde_json::from_str(data).ok()?;
                    serde_json::from_str(&text).ok()
                });
                let signin = signin.ok_or(RequestError::NoUserData)?;
                Ok(Self::SignIn {
                    auth: signin.auth,
                    user_data: signin.user_data.ok_or(RequestError::NoUserData)?,
                })
            }
            e if e.starts_with("client-") => {
                let channel = wire.channel.ok_or(RequestError::BadClientEvent)?;
                let data = wire
                    .data
                    .map_or_else(|| RawValue::from_string("{}".into()), |d| Ok(d.to_owned()))
                    .map_err(|e| RequestError::Malformed(e.to_string()))?;
                Ok(Self::ClientEvent {
                    event,
                    channel,
                    data,
                })
            }
            _ => Err(RequestError::UnknownEvent(event)),
        }
    }
}

/// The `data` of a subscribe: an object, or a string holding one (older clients).
fn subscribe_data(data: Option<&RawValue>) -> Option<SubscribeData> {
    let raw = data?.get();
    if let Ok(data) = serde_json::from_str::<SubscribeData>(raw) {
        return Some(data);
    }
    let text: String = serde_json::from_str(raw).ok()?;
    serde_json::from_str(&text).ok()
}

#[derive(Serialize)]
struct Frame<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

/// A server frame: `data` goes as a string, as pusher-js expects.
pub(super) fn frame(event: &str, channel: Option<&str>, data: &str) -> String {
    let frame = Frame {
        event,
        channel,
        data,
        user_id: None,
    };
    serde_json::to_string(&frame).expect("a frame serializes")
}

/// `pusher:connection_established`, the first frame.
pub fn connection_established(socket_id: &str, activity_timeout: u64) -> String {
    let data = serde_json::json!({"socket_id": socket_id, "activity_timeout": activity_timeout});
    frame("pusher:connection_established", None, &data.to_string())
}

/// `pusher:pong`, the answer to `pusher:ping`.
pub fn pong() -> String {
    frame("pusher:pong", None, "{}")
}

/// `pusher:ping`, sent to a client that has been silent for the activity timeout.
pub fn ping() -> String {
    frame("pusher:ping", None, "{}")
}

/// `pusher:error`: something the client sent was refused; the connection stays.
pub fn error(code: Option<u16>, message: &str) -> String {
    let data = serde_json::json!({"code": code, "message": message});
    frame("pusher:error", None, &data.to_string())
}

/// `pusher_internal:subscription_succeeded` (data `{}` but on presence channels).
pub fn subscription_succeeded(channel: &str, data: &str) -> String {
    frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        data,
    )
}

/// `pusher:subscription_error`, in the shape pusher-js gives to its
/// `pusher:subscription_error` callbacks (`{type, error, status}`).
pub fn subscription_error(channel: &str, kind: &str, status: u16, message: &str) -> String {
    let data = serde_json::json!({"type": kind, "error": message, "status": status});
    frame(
        "pusher:subscription_error",
        Some(channel),
        &data.to_string(),
    )
}

/// `pusher:cache_miss`: a cache channel had nothing to replay.
pub fn cache_miss(channel: &str) -> String {
    frame("pusher:cache_miss", Some(channel), "{}")
}

/// An event on a channel, as subscribers get it: `data` is a publication's JSON text,
/// sent as a string (a JSON string's content, any other JSON as its text), which is what
/// the Pusher server SDKs publish and pusher-js parses back. `user_id` names the sender of
/// a client event on a presence channel.
pub fn event(event: &str, channel: &str, data: &str, user_id: Option<&str>) -> String {
    let content = serde_json::from_str::<String>(data).ok();
    let frame = Frame {
        event,
        channel: Some(channel),
        data: content.as_deref().unwrap_or(data),
        user_id,
    };
    serde_json::to_string(&frame).expect("a frame serializes")
}

/// The message signed for a subscription: `socket_id:channel`, with `:channel_data` on
/// presence channels.
pub fn signed_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The member a presence subscription's `channel_data` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceMember {
    /// `user_id` (a string, or a number as Laravel sends it), as sessionhub's user id.
    pub id: super::UserId,
    /// `user_info`, as JSON text, if any.
    pub info: Option<String>,
}

/// Why `channel_data` names no member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    /// Not a JSON object.
    #[error("channel_data is a JSON object with user_id and user_info")]
    NotAnObject,
    /// No `user_id`, or one that is not a valid user id.
    #[error("channel_data.user_id is a string or number of 1 to 128 letters, digits and - _ . @ :")]
    UserId,
}

impl PresenceMember {
    /// Reads `channel_data` (the text that was signed).
    pub fn parse(channel_data: &str) -> Result<Self, ChannelDataError> {
        #[derive(Deserialize)]
        struct Data<'a> {
            user_id: Option<Value>,
            #[serde(borrow)]
            user_info: Option<&'a RawValue>,
        }
        let data: Data<'_> =
            serde_json::from_str(channel_data).map_err(|_| ChannelDataError::NotAnObject)?;
        let id = match data.user_id {
            Some(Value::String(id)) => id,
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(ChannelDataError::UserId),
        };
        let id = id.parse().map_err(|_| ChannelDataError::UserId)?;
        let info = data
            .user_info
            .map(|i| i.get().to_owned())
            .filter(|i| i != "null");
        Ok(Self { id, info })
    }
}

/// `pusher_internal:subscription_succeeded`'s data on a presence channel:
/// `{"presence":{"ids":[…],"hash":{id:info},"count":n}}`.
pub fn presence_data(members: &[crate::presence::Member]) -> String {
    let info = |m: &crate::presence::Member| match &m.info {
        Some(info) => serde_json::from_str(info).unwrap_or_else(|_| Value::String(info.clone())),
        None => Value::Null,
    };
    let ids: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    let hash: serde_json::Map<String, Value> =
        members.iter().map(|m| (m.user.clone(), info(m))).collect();
    let data = serde_json::json!({"presence": {"ids": ids, "hash": hash, "count": members.len()}});
    data.to_string()
}

/// `pusher_internal:member_added` or `member_removed` for a `join` or `leave` frame of
/// the hub's presence tracker (protocol v1's, on `$presence:<channel>`), unless it is about
/// `me`, the member the receiving connection is.
pub fn member_event(channel: &str, change: &str, me: Option<&str>) -> Option<String> {
    #[derive(Deserialize)]
    struct Change<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        user: String,
        #[serde(borrow)]
        info: Option<&'a RawValue>,
    }
    let change: Change<'_> = serde_json::from_str(change).ok()?;
    if me == Some(change.user.as_str()) {
        return None;
    }
    let (event, data) = match change.kind {
        "join" => (
            "pusher_internal:member_added",
            serde_json::json!({"user_id": change.user, "user_info": change.info}),
        ),
        "leave" => (
            "pusher_internal:member_removed",
            serde_json::json!({"user_id": change.user}),
        ),
        _ => return None,
    };
    Some(frame(event, Some(channel), &data.to_string()))
}

/// Whether `socket_id` has Pusher's shape, `^\d+\.\d+$`.
pub fn is_socket_id(socket_id: &str) -> bool {
    let Some((a, b)) = socket_id.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(a) && digits(b)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(frame: &str) -> Value {
        serde_json::from_str(frame).unwrap()
    }

    #[test]
    fn frames_a_client_sends_are_read_in_both_data_shapes() {
        assert_eq!(
            Request::parse(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(Request::Ping)
        );
        let object = r#"{"event":"pusher:subscribe","data":{"channel":"private-a","auth":"k:s"}}"#;
        let string =
            r#"{"event":"pusher:subscribe","data":"{\"channel\":\"private-a\",\"auth\":\"k:s\"}"}"#;
        for text in [object, string] {
            assert_eq!(
                Request::parse(text),
                Ok(Request::Subscribe {
                    channel: "private-a".into(),
                    auth: Some("k:s".into()),
                    channel_data: None,
                }),
                "{text}"
            );
        }
        let presence = r#"{"event":"pusher:subscribe","data":{"channel":"presence-a","auth":"k:s","channel_data":"{\"user_id\":\"1\"}"}}"#;
        let Ok(Request::Subscribe { channel_data, .. }) = Request::parse(presence) else {
            panic!("a subscribe");
        };
        assert_eq!(channel_data.as_deref(), Some(r#"{"user_id":"1"}"#));
        assert_eq!(
            Request::parse(r#"{"event":"pusher:unsubscribe","data":{"channel":"a"}}"#),
            Ok(Request::Unsubscribe {
                channel: "a".into()
            })
        );
        let Ok(Request::ClientEvent {
            event,
            channel,
            data,
        }) = Request::parse(r#"{"event":"client-x","channel":"private-a","data":{"n":[1, 2]}}"#)
        else {
            panic!("a client event");
        };
        assert_eq!(
            (&*event, &*channel, data.get()),
            ("client-x", "private-a", r#"{"n":[1, 2]}"#)
        );
        assert_eq!(
            Request::parse(
                r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"a\"}"}}"#
            ),
            Ok(Request::SignIn {
                auth: Some("k:s".into()),
                user_data: r#"{"id":"a"}"#.into(),
            })
        );
    }

    #[test]
    fn malformed_frames_are_refused_with_a_reason_never_a_panic() {
        for bad in [
            "",
            "{",
            "[]",
            "null",
            "12",
            r#"{"data":{}}"#,
            r#"{"event":12}"#,
            r#"{"event":"pusher:subscribe"}"#,
            r#"{"event":"pusher:subscribe","data":12}"#,
            r#"{"event":"pusher:subscribe","data":"not json"}"#,
            r#"{"event":"pusher:subscribe","data":{"channel":5}}"#,
            r#"{"event":"pusher:unsubscribe","data":{}}"#,
            r#"{"event":"client-x","data":{}}"#,
            r#"{"event":"pusher:signin","data":{}}"#,
            r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":{"id":"a"}}}"#,
            r#"{"event":"pusher:signout","data":{}}"#,
            r#"{"event":"my-event","channel":"a","data":{}}"#,
        ] {
            let refused = Request::parse(bad).expect_err(bad);
            assert_eq!(refused.code(), None);
            let sent = parsed(&error(refused.code(), &refused.to_string()));
            assert_eq!(sent["event"], "pusher:error", "{bad}");
            let data = parsed(sent["data"].as_str().unwrap());
            assert_eq!(data["code"], Value::Null);
            assert!(!data["message"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn server_frames_carry_data_as_a_string() {
        let established = parsed(&connection_established("123.456", 120));
        assert_eq!(established["event"], "pusher:connection_established");
        assert_eq!(
            parsed(established["data"].as_str().unwrap()),
            json!({"socket_id": "123.456", "activity_timeout": 120})
        );
        assert_eq!(pong(), r#"{"event":"pusher:pong","data":"{}"}"#);
        assert_eq!(
            subscription_succeeded("a", "{}"),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"a","data":"{}"}"#
        );
        assert_eq!(
            cache_miss("cache-a"),
            r#"{"event":"pusher:cache_miss","channel":"cache-a","data":"{}"}"#
        );
        let refused = parsed(&subscription_error("private-a", "AuthError", 401, "no"));
        assert_eq!(
            parsed(refused["data"].as_str().unwrap()),
            json!({"type": "AuthError", "error": "no", "status": 401})
        );
    }

    #[test]
    fn an_event_s_data_is_a_json_string_s_content_or_other_json_s_text() {
        assert_eq!(
            event("e", "c", r#""hello \"you\"""#, None),
            r#"{"event":"e","channel":"c","data":"hello \"you\""}"#
        );
        assert_eq!(
            event("e", "c", r#"{"a":[1,2]}"#, Some("u1")),
            r#"{"event":"e","channel":"c","data":"{\"a\":[1,2]}","user_id":"u1"}"#
        );
        assert_eq!(
            event("e", "c", "12", None),
            r#"{"event":"e","channel":"c","data":"12"}"#
        );
    }

    #[test]
    fn channel_kinds_and_cache_channels_go_by_prefix() {
        let kinds = [
            ("news", ChannelKind::Public),
            ("cache-news", ChannelKind::Public),
            ("private-a", ChannelKind::Private),
            ("private-cache-a", ChannelKind::Private),
            ("private-encrypted-a", ChannelKind::Encrypted),
            ("private-encrypted-cache-a", ChannelKind::Encrypted),
            ("presence-a", ChannelKind::Presence),
            ("presence-cache-a", ChannelKind::Presence),
        ];
        for (channel, kind) in kinds {
            assert_eq!(ChannelKind::of(channel), kind, "{channel}");
            assert_eq!(
                is_cache_channel(channel),
                channel.contains("cache-"),
                "{channel}"
            );
        }
        assert!(!is_cache_channel("news-cache-a"));
        assert!(!ChannelKind::Encrypted.takes_client_events());
        assert!(ChannelKind::Presence.takes_client_events());
        assert!(!ChannelKind::Public.is_private());
    }

    #[test]
    fn pusher_names_map_onto_sessionhub_channels_of_the_same_name_or_are_refused() {
        assert_eq!(hub_channel("private-a_b.c@d-1"), Ok("private-a_b.c@d-1"));
        assert_eq!(hub_channel(&"a".repeat(160)).map(str::len), Ok(160));
        for unsupported in ["a=b", "a,b", "a;b", &"a".repeat(161), &"a".repeat(164)] {
            assert_eq!(hub_channel(unsupported), Err(ChannelNameError::Unsupported));
        }
        for invalid in [
            "",
            "a b",
            "a:b",
            "session:x",
            "$presence:a",
            "#server-to-user-1",
            &"a".repeat(165),
        ] {
            assert_eq!(
                hub_channel(invalid),
                Err(ChannelNameError::Invalid),
                "{invalid}"
            );
        }
    }

    #[test]
    fn socket_ids_and_signed_messages() {
        assert!(is_socket_id("123.456"));
        for bad in ["123", "1.", ".1", "a.1", "1.2.3", "1.-2"] {
            assert!(!is_socket_id(bad), "{bad}");
        }
        assert_eq!(signed_message("1.2", "private-a", None), "1.2:private-a");
        assert_eq!(
            signed_message("1.2", "presence-a", Some(r#"{"user_id":"1"}"#)),
            r#"1.2:presence-a:{"user_id":"1"}"#
        );
    }

    #[test]
    fn channel_data_names_a_member_by_string_or_number() {
        let member = PresenceMember::parse(r#"{"user_id":"u-1","user_info":{"name":"Ann"}}"#);
        assert_eq!(
            member,
            Ok(PresenceMember {
                id: "u-1".parse().unwrap(),
                info: Some(r#"{"name":"Ann"}"#.into())
            })
        );
        let laravel = PresenceMember::parse(r#"{"user_id":42}"#).unwrap();
        assert_eq!((laravel.id.as_str(), laravel.info), ("42", None));
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"user_id":null}"#,
            r#"{"user_id":"a b"}"#,
        ] {
            assert!(PresenceMember::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn presence_data_and_member_events_in_pusher_s_shape() {
        let members = [
            crate::presence::Member {
                user: "1".into(),
                connections: 2,
                info: Some(r#"{"name":"Ann"}"#.into()),
            },
            crate::presence::Member {
                user: "2".into(),
                connections: 1,
                info: None,
            },
        ];
        let data: Value = serde_json::from_str(&presence_data(&members)).unwrap();
        assert_eq!(
            data,
            json!({"presence": {"ids": ["1", "2"], "hash": {"1": {"name": "Ann"}, "2": null}, "count": 2}})
        );
        let join =
            r#"{"type":"join","channel":"presence-a","user":"2","version":3,"info":{"n":1}}"#;
        let added = parsed(&member_event("presence-a", join, Some("1")).unwrap());
        assert_eq!(added["event"], "pusher_internal:member_added");
        assert_eq!(added["channel"], "presence-a");
        assert_eq!(
            parsed(added["data"].as_str().unwrap()),
            json!({"user_id": "2", "user_info": {"n": 1}})
        );
        assert_eq!(
            member_event("presence-a", join, Some("2")),
            None,
            "not to itself"
        );
        let leave = r#"{"type":"leave","channel":"presence-a","user":"2","version":4}"#;
        let removed = parsed(&member_event("presence-a", leave, None).unwrap());
        assert_eq!(removed["event"], "pusher_internal:member_removed");
        assert_eq!(
            parsed(removed["data"].as_str().unwrap()),
            json!({"user_id": "2"})
        );
        assert_eq!(member_event("presence-a", "not json", None), None);
    }

    #[test]
    fn hub_closes_map_into_pusher_s_ranges() {
        use crate::protocol::close as hub;
        assert_eq!(close::from_hub(hub::IDLE_TIMEOUT), close::PONG_NOT_RECEIVED);
        assert_eq!(close::from_hub(hub::SLOW_CONSUMER), close::OVER_CAPACITY);
        assert_eq!(close::from_hub(hub::SESSION_ENDED), close::UNAUTHORIZED);
        assert_eq!(close::from_hub(hub::SERVICE_RESTART), close::RECONNECT);
        assert_eq!(close::from_hub(hub::INSUFFICIENT_STATE), close::RECONNECT);
        assert_eq!(close::from_hub(hub::DISCONNECTED), close::RECONNECT);
        assert_eq!(close::from_hub(hub::RATE_LIMITED), close::CLIENT_EVENT_RATE);
        assert_eq!(close::from_hub(hub::MESSAGE_TOO_BIG), hub::MESSAGE_TOO_BIG);
        assert_eq!(close::from_hub(close::UNKNOWN_APP), close::UNKNOWN_APP);
    }
}
