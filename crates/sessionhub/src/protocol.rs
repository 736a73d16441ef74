//! What travels over a socket: user ids, the frames a client may send, the frames and close
//! codes the server sends.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::broker::StreamPosition;

/// Longest user id accepted, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;

/// Prefix of every user's personal channel.
const USER_CHANNEL_PREFIX: &str = "user:";

/// A user id, as in `/websocket/{id}`: 1 to 128 characters of `A-Z a-z 0-9 - _ . @ :`.
///
/// The alphabet is narrow on purpose: ids become channel names and Redis keys, where braces
/// (hash tags), spaces and control characters would change meaning.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

/// Text that is not a valid user id.
#[derive(Debug, thiserror::Error)]
#[error("a user id is 1 to {MAX_USER_ID_LEN} characters of letters, digits and - _ . @ :")]
pub struct InvalidUserId;

impl UserId {
    /// The user's personal channel.
    pub fn channel(&self) -> String {
        [USER_CHANNEL_PREFIX, &self.0].concat()
    }

    /// The user whose personal channel `channel` is, if it is one.
    pub fn from_channel(channel: &str) -> Option<Self> {
        channel.strip_prefix(USER_CHANNEL_PREFIX)?.parse().ok()
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UserId {
    type Err = InvalidUserId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= MAX_USER_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidUserId)
        }
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 160;

/// What a valid channel name is, for error messages.
pub const INVALID_CHANNEL: &str =
    "a channel is 1 to 160 characters of letters, digits and - _ . @ : and not session:*";

/// Whether `name` may be used as a channel by clients and the API: the user-id alphabet,
/// and not one of the internal `session:` channels.
pub fn is_public_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
        && !name.starts_with("session:")
}

/// A frame a client sends on the protocol v1 endpoint (`GET /ws`).
#[derive(Debug)]
pub enum ClientMessage {
    /// Join a channel; with `recover`, get what was published since that position first.
    Subscribe {
        /// The channel.
        channel: String,
        /// The last position the client saw on this channel.
        recover: Option<StreamPosition>,
        /// Echoed in the reply.
        id: Option<u64>,
    },
    /// Leave a channel.
    Unsubscribe {
        /// The channel.
        channel: String,
        /// Echoed in the reply.
        id: Option<u64>,
    },
    /// Publish to a channel (where the channel rules allow it).
    Publish {
        /// The channel.
        channel: String,
        /// Any JSON value, as its text.
        data: Box<RawValue>,
        /// Echoed in the reply.
        id: Option<u64>,
        /// A retried publish with the same key is published once (1 to 128 characters).
        idempotency_key: Option<String>,
    },
    /// Answered with `pong`.
    Ping {
        /// Echoed in the reply.
        id: Option<u64>,
    },
}

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

// The wire shapes. `type` is read first and the rest parsed into the matching shape, because
// serde cannot borrow raw JSON (`data`) through an internally tagged enum.
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeWire {
    #[serde(rename = "type")]
    _kind: String,
    channel: String,
    #[serde(default)]
    recover: Option<StreamPosition>,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelWire {
    #[serde(rename = "type")]
    _kind: String,
    channel: String,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishWire {
    #[serde(rename = "type")]
    _kind: String,
    channel: String,
    data: Box<RawValue>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingWire {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(default)]
    id: Option<u64>,
}

impl ClientMessage {
    /// Parses a text frame. On error, also returns the frame's `id` if it had a readable
    /// one, so the error reply can carry it.
    pub fn parse(text: &str) -> Result<Self, (FrameError, Option<u64>)> {
        let tag: Tag<'_> = serde_json::from_str(text).map_err(|e| {
            let error = if e.is_syntax() || e.is_eof() {
                FrameError::NotJson(e.to_string())
            } else {
                FrameError::Message(e.to_string())
            };
            (error, lenient_id(text))
        })?;
        let invalid = |e: serde_json::Error| (FrameError::Message(e.to_string()), tag.id);
        Ok(match tag.kind.as_ref() {
            "subscribe" => {
                let w: SubscribeWire = serde_json::from_str(text).map_err(invalid)?;
                Self::Subscribe {
                    channel: w.channel,
                    recover: w.recover,
                    id: w.id,
                }
            }
            "unsubscribe" => {
                let w: ChannelWire = serde_json::from_str(text).map_err(invalid)?;
                Self::Unsubscribe {
                    channel: w.channel,
                    id: w.id,
                }
            }
            "publish" => {
                let w: PublishWire = serde_json::from_str(text).map_err(invalid)?;
                if w.idempotency_key
                    .as_ref()
                    .is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN)
                {
                    return Err((
                        FrameError::Message(format!(
                            "idempotency_key: 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
                        )),
                        w.id,
                    ));
                }
                Self::Publish {
                    channel: w.channel,
                    data: w.data,
                    id: w.id,
                    idempotency_key: w.idempotency_key,
                }
            }
            "ping" => {
                let w: PingWire = serde_json::from_str(text).map_err(invalid)?;
                Self::Ping { id: w.id }
            }
            other => {
                return Err((
                    FrameError::Message(format!(
                        "unknown type {other:?}: expected subscribe, unsubscribe, publish or ping"
                    )),
                    tag.id,
                ));
            }
        })
    }
}

/// The `id` of a frame that is JSON but not a valid message, if it has a numeric one.
fn lenient_id(text: &str) -> Option<u64> {
    serde_json::from_str::<Value>(text)
        .ok()?
        .get("id")?
        .as_u64()
}

/// A frame a client sent on `/websocket/{id}`.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// `{"KEY": 456, "VALUE": "aaaa"}`: send VALUE to every connection of user KEY.
    Push {
        /// The recipient.
        to: UserId,
        /// VALUE as JSON text (a string VALUE arrives on seed sockets as the string itself).
        data: String,
    },
}

/// Why a client frame was refused. Sent back as an [`ServerFrame::Error`]; the connection
/// stays open.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// Not JSON at all.
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object with KEY and VALUE.
    #[error("expected {{\"KEY\": <user id>, \"VALUE\": <message>}}")]
    Shape,
    /// KEY is not a valid user id.
    #[error("KEY: {0}")]
    Key(InvalidUserId),
    /// JSON, but not a valid protocol v1 message.
    #[error("invalid message: {0}")]
    Message(String),
    /// The client may not publish to that channel (see channel rules).
    #[error("you may not publish to that channel")]
    PublishForbidden,
    /// A binary frame; only text frames are understood.
    #[error("binary frames are not supported; send JSON text")]
    Binary,
}

impl PartialEq for InvalidUserId {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl FrameError {
    /// The stable code sent in the error frame.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "invalid_json",
            Self::Shape => "invalid_frame",
            Self::Key(_) => "invalid_key",
            Self::Message(_) => "invalid_message",
            Self::PublishForbidden => "forbidden",
            Self::Binary => "binary_not_supported",
        }
    }
}

impl ClientFrame {
    /// Parses a text frame. KEY may be a number or a string; VALUE any JSON value.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
        let Value::Object(mut object) = value else {
            return Err(FrameError::Shape);
        };
        let (Some(key), Some(value)) = (object.remove("KEY"), object.remove("VALUE")) else {
            return Err(FrameError::Shape);
        };
        let to = match key {
            Value::String(s) => s.parse(),
            Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string().parse(),
            _ => Err(InvalidUserId),
        }
        .map_err(FrameError::Key)?;
        Ok(Self::Push {
            to,
            data: value.to_string(),
        })
    }
}

/// A frame the server sends that is not a pushed message.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The greeting, first frame on every connection.
    Connected {
        /// The user the connection belongs to.
        id: &'a str,
        /// The node that holds the connection.
        node: &'a str,
    },
    /// A client frame was refused.
    Error {
        /// Stable machine-readable code.
        code: &'a str,
        /// What was wrong.
        message: String,
    },
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server frames serialize")
    }
}

/// The protocol v1 frame for a publication: built by hand around the data, which is JSON
/// already, so that it is not parsed and printed again for every publication.
pub fn publication_frame(channel: &str, publication: &crate::broker::Publication) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialize");
    format!(
        r#"{{"type":"publication","channel":{},"epoch":{},"offset":{},"data":{}}}"#,
        quote(channel),
        quote(&publication.epoch),
        publication.offset,
        publication.data.as_str()
    )
}

/// The close codes the server uses, with the reason text it sends.
pub mod close {
    /// The server is shutting down; reconnect (to another node).
    pub const GOING_AWAY: (u16, &str) = (1001, "server shutting down");
    /// The client broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: (u16, &str) = (1002, "protocol error");
    /// An inbound message was larger than the limit (64 KiB by default).
    pub const MESSAGE_TOO_BIG: (u16, &str) = (1009, "message too big");
    /// The broker could not be joined; reconnect later.
    pub const BROKER_UNAVAILABLE: (u16, &str) = (1011, "broker unavailable");
    /// The HTTP session the socket was opened with ended (logout, invalidation, expiry).
    pub const SESSION_ENDED: (u16, &str) = (4002, "session ended");
    /// The token the socket was opened with expired; connect again with a fresh one.
    pub const TOKEN_EXPIRED: (u16, &str) = (4003, "token expired");
    /// The server may have missed publications for this connection (a broken link to Redis
    /// or an offset gap): reconnect and recover from the last positions.
    pub const INSUFFICIENT_STATE: (u16, &str) = (4010, "insufficient state");
    /// The client sent more messages per second than allowed.
    pub const RATE_LIMITED: (u16, &str) = (4029, "rate limited");
    /// Nothing arrived from the client for longer than the idle timeout.
    pub const IDLE_TIMEOUT: (u16, &str) = (4000, "idle timeout");
    /// The client did not read fast enough and its outbound queue filled up.
    pub const SLOW_CONSUMER: (u16, &str) = (4008, "slow consumer");

    /// Whether a client should reconnect after this close code (told in the protocol v1
    /// `disconnect` frame): yes unless reconnecting cannot help.
    pub fn reconnect(code: u16) -> bool {
        !matches!(
            code,
            1002 | 1009 | 4002 // protocol error, too big, session ended: log in again first
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_frame_with_a_number_or_a_string_key() {
        let expected = ClientFrame::Push {
            to: "456".parse().unwrap(),
            data: r#""aaaa""#.into(),
        };
        assert_eq!(
            ClientFrame::parse(r#"{"KEY":456,"VALUE":"aaaa"}"#),
            Ok(expected.clone())
        );
        assert_eq!(
            ClientFrame::parse(r#"{"KEY":"456","VALUE":"aaaa"}"#),
            Ok(expected)
        );
    }

    #[test]
    fn non_string_values_travel_as_json() {
        let frame = ClientFrame::parse(r#"{"KEY":1,"VALUE":{"a":[1,2]}}"#).unwrap();
        let ClientFrame::Push { data, .. } = frame;
        assert_eq!(data, r#"{"a":[1,2]}"#);
    }

    #[test]
    fn bad_frames_get_distinct_codes() {
        let code = |s: &str| ClientFrame::parse(s).unwrap_err().code();
        assert_eq!(code("not json"), "invalid_json");
        assert_eq!(code("[1,2]"), "invalid_frame");
        assert_eq!(code(r#"{"KEY":1}"#), "invalid_frame");
        assert_eq!(code(r#"{"KEY":1.5,"VALUE":"x"}"#), "invalid_key");
        assert_eq!(code(r#"{"KEY":"a{b}","VALUE":"x"}"#), "invalid_key");
        assert_eq!(code(r#"{"KEY":null,"VALUE":"x"}"#), "invalid_key");
    }

    #[test]
    fn v1_messages_parse_with_raw_data_and_ids() {
        let m = ClientMessage::parse(
            r#"{"type":"publish","channel":"room:1","data":{"a":[1,"x"]},"id":4,"idempotency_key":"k"}"#,
        )
        .unwrap();
        let ClientMessage::Publish {
            channel,
            data,
            id,
            idempotency_key,
        } = m
        else {
            panic!("not a publish");
        };
        assert_eq!(
            (channel.as_str(), data.get(), id),
            ("room:1", r#"{"a":[1,"x"]}"#, Some(4))
        );
        assert_eq!(idempotency_key.as_deref(), Some("k"));
        let m = ClientMessage::parse(
            r#"{"type":"subscribe","channel":"c","recover":{"epoch":"e","offset":3}}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            ClientMessage::Subscribe {
                recover: Some(_),
                ..
            }
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping { id: None })
        ));
    }

    #[test]
    fn v1_errors_keep_the_id_when_there_is_one() {
        let (e, id) =
            ClientMessage::parse(r#"{"type":"publish","channel":"c","id":9}"#).unwrap_err();
        assert_eq!((e.code(), id), ("invalid_message", Some(9)));
        let (e, id) = ClientMessage::parse(r#"{"type":"nope","id":2}"#).unwrap_err();
        assert_eq!((e.code(), id), ("invalid_message", Some(2)));
        let (e, id) = ClientMessage::parse("{not json").unwrap_err();
        assert_eq!((e.code(), id), ("invalid_json", None));
        let (_, id) =
            ClientMessage::parse(r#"{"type":"subscribe","id":5,"extra":1,"channel":"c"}"#)
                .unwrap_err();
        assert_eq!(id, Some(5));
        let long = "k".repeat(129);
        let frame = format!(
            r#"{{"type":"publish","channel":"c","data":1,"id":1,"idempotency_key":"{long}"}}"#
        );
        assert!(ClientMessage::parse(&frame).is_err());
    }

    #[test]
    fn user_ids_round_trip_through_channels() {
        let id: UserId = "alice@example.com".parse().unwrap();
        assert_eq!(UserId::from_channel(&id.channel()), Some(id));
        assert_eq!(UserId::from_channel("room:1"), None);
        assert!("".parse::<UserId>().is_err());
        assert!("x".repeat(MAX_USER_ID_LEN + 1).parse::<UserId>().is_err());
    }
}
