//! What travels over a socket: user ids, the frames a client may send, the frames and close
//! codes the server sends.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

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
        format!("{USER_CHANNEL_PREFIX}{}", self.0)
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

/// A frame a client sent on `/websocket/{id}`.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// `{"KEY": 456, "VALUE": "aaaa"}`: send VALUE to every connection of user KEY.
    Push {
        /// The recipient.
        to: UserId,
        /// The text every connection of `to` receives.
        message: String,
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
            Self::PublishForbidden => "forbidden",
            Self::Binary => "binary_not_supported",
        }
    }
}

impl ClientFrame {
    /// Parses a text frame. KEY may be a number or a string; VALUE a string (sent as is) or
    /// any other JSON value (sent as its compact JSON text).
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
        let message = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        Ok(Self::Push { to, message })
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
    /// The client sent more messages per second than allowed.
    pub const RATE_LIMITED: (u16, &str) = (4029, "rate limited");
    /// Nothing arrived from the client for longer than the idle timeout.
    pub const IDLE_TIMEOUT: (u16, &str) = (4000, "idle timeout");
    /// The client did not read fast enough and its outbound queue filled up.
    pub const SLOW_CONSUMER: (u16, &str) = (4008, "slow consumer");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_frame_with_a_number_or_a_string_key() {
        let expected = ClientFrame::Push {
            to: "456".parse().unwrap(),
            message: "aaaa".into(),
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
        let ClientFrame::Push { message, .. } = frame;
        assert_eq!(message, r#"{"a":[1,2]}"#);
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
    fn user_ids_round_trip_through_channels() {
        let id: UserId = "alice@example.com".parse().unwrap();
        assert_eq!(UserId::from_channel(&id.channel()), Some(id));
        assert_eq!(UserId::from_channel("room:1"), None);
        assert!("".parse::<UserId>().is_err());
        assert!("x".repeat(MAX_USER_ID_LEN + 1).parse::<UserId>().is_err());
    }
}
