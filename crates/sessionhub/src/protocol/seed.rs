//! The seed's protocol (`GET /websocket/{id}`). It is frozen: it is the Spring demo's wire
//! format, kept byte for byte so that the demo's clients keep working, which is why a pushed
//! message goes out as bare text rather than in an envelope like v1's.

use serde::Serialize;
use serde_json::Value;
use tungstenite::Utf8Bytes;

use super::{FrameError, InvalidUserId, UserId};
use crate::broker::Publication;

/// A frame a client sends on `/websocket/{id}`.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `{"KEY": 456, "VALUE": "aaaa"}`: send VALUE to every connection of user KEY.
    Push {
        /// The recipient.
        to: UserId,
        /// VALUE as JSON text (a string VALUE arrives on seed sockets as the string itself).
        data: String,
    },
}

impl Request {
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

/// A frame the server sends on `/websocket/{id}` that is not a pushed message.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply<'a> {
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

impl Reply<'_> {
    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server frames serialize")
    }
}

/// The frame a publication goes out as: a JSON string's contents byte for byte, any other
/// JSON value as its text.
pub(crate) fn message(publication: &Publication) -> Utf8Bytes {
    match serde_json::from_str::<String>(publication.data.as_str()) {
        Ok(text) => text.into(),
        Err(_) => publication.data.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_frame_with_a_number_or_a_string_key() {
        let expected = Request::Push {
            to: "456".parse().unwrap(),
            data: r#""aaaa""#.into(),
        };
        assert_eq!(
            Request::parse(r#"{"KEY":456,"VALUE":"aaaa"}"#),
            Ok(expected.clone())
        );
        assert_eq!(
            Request::parse(r#"{"KEY":"456","VALUE":"aaaa"}"#),
            Ok(expected)
        );
    }

    #[test]
    fn non_string_values_travel_as_json() {
        let frame = Request::parse(r#"{"KEY":1,"VALUE":{"a":[1,2]}}"#).unwrap();
        let Request::Push { data, .. } = frame;
        assert_eq!(data, r#"{"a":[1,2]}"#);
    }

    #[test]
    fn bad_frames_get_distinct_codes() {
        let code = |s: &str| Request::parse(s).unwrap_err().code();
        assert_eq!(code("not json"), "invalid_json");
        assert_eq!(code("[1,2]"), "invalid_frame");
        assert_eq!(code(r#"{"KEY":1}"#), "invalid_frame");
        assert_eq!(code(r#"{"KEY":1.5,"VALUE":"x"}"#), "invalid_key");
        assert_eq!(code(r#"{"KEY":"a{b}","VALUE":"x"}"#), "invalid_key");
        assert_eq!(code(r#"{"KEY":null,"VALUE":"x"}"#), "invalid_key");
    }

    #[test]
    fn replies_and_messages_keep_the_seed_wire_format() {
        let greeting = Reply::Connected {
            id: "456",
            node: "n1",
        };
        assert_eq!(
            greeting.to_text(),
            r#"{"type":"connected","id":"456","node":"n1"}"#
        );
        let error = Reply::Error {
            code: "invalid_json",
            message: "x".into(),
        };
        assert_eq!(
            error.to_text(),
            r#"{"type":"error","code":"invalid_json","message":"x"}"#
        );
        let publication = |data: &'static str| Publication {
            offset: 1,
            epoch: "e".into(),
            data: Utf8Bytes::from_static(data),
        };
        assert_eq!(message(&publication(r#""a \"b\"""#)).as_str(), r#"a "b""#);
        assert_eq!(message(&publication(r#"{"a":1}"#)).as_str(), r#"{"a":1}"#);
        assert_eq!(message(&publication("12")).as_str(), "12");
    }
}
