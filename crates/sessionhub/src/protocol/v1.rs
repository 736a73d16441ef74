//! Protocol v1 (`GET /ws`), both directions: what a client may send ([`Request`]) and what
//! the server answers (`Reply`, and the `publication` frame). `docs/protocol.md` specifies
//! every frame; this file is its source of truth. The connection state that decides which
//! frame to send lives in the gateway, so that these formats stay readable and fuzzable on
//! their own.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{FrameError, MAX_IDEMPOTENCY_KEY_LEN, close};
use crate::broker::{Publication, StreamPosition};
use crate::presence::{Member, Transition};

/// Most channels one connection may join.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 128;

/// A frame a client sends on the protocol v1 endpoint (`GET /ws`).
#[derive(Debug)]
pub enum Request {
    /// Join a channel; with `recover`, get what was published since that position first.
    Subscribe {
        /// The channel.
        channel: String,
        /// The last position the client saw on this channel.
        recover: Option<StreamPosition>,
        /// A subscribe token, which a private channel needs (`--private-channels`).
        token: Option<String>,
        /// Echoed in the reply.
        id: Option<u64>,
    },
    /// Replace the connection's token with a fresh one for the same user, moving the
    /// connection's expiry to the new token's.
    Refresh {
        /// The new connection token.
        token: String,
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
    /// Who is on a presence channel the connection subscribed to; answered with `presence`.
    Presence {
        /// The channel.
        channel: String,
        /// Echoed in the reply.
        id: Option<u64>,
    },
    /// Answered with `pong`.
    Ping {
        /// Echoed in the reply.
        id: Option<u64>,
    },
}

// The wire shapes. `type` is read first and the rest parsed into the matching shape, because
// serde cannot borrow raw JSON (`data`) through an internally tagged enum.
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
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
    token: Option<String>,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshWire {
    #[serde(rename = "type")]
    _kind: String,
    token: String,
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

impl Request {
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
                    token: w.token,
                    id: w.id,
                }
            }
            "refresh" => {
                let w: RefreshWire = serde_json::from_str(text).map_err(invalid)?;
                Self::Refresh {
                    token: w.token,
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
            "presence" => {
                let w: ChannelWire = serde_json::from_str(text).map_err(invalid)?;
                Self::Presence {
                    channel: w.channel,
                    id: w.id,
                }
            }
            "ping" => {
                let w: PingWire = serde_json::from_str(text).map_err(invalid)?;
                Self::Ping { id: w.id }
            }
            other => {
                return Err((
                    FrameError::Message(format!(
                        "unknown type {other:?}: expected subscribe, unsubscribe, publish, presence, refresh or ping"
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

/// A frame the server sends on `/ws`, other than a publication (see [`publication_frame`]).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Reply<'a> {
    Connected {
        client: String,
        node: &'a str,
        user: &'a str,
        /// Seconds until the connection's token expires (token mode): refresh before then.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_in: Option<u64>,
    },
    /// A `refresh` was accepted: the connection now lasts `expires_in` more seconds.
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        expires_in: u64,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        epoch: &'a str,
        offset: u64,
        recovered: bool,
        publications: Vec<Recovered<'a>>,
        /// Who is on the channel, on a presence channel.
        #[serde(skip_serializing_if = "Option::is_none")]
        presence: Option<&'a [Member]>,
    },
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        presence: &'a [Member],
    },
    Join {
        channel: &'a str,
        user: &'a str,
        version: u64,
        /// What the user's first connection told about them (`Connection::join_as`).
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<Box<RawValue>>,
    },
    Leave {
        channel: &'a str,
        user: &'a str,
        version: u64,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
    },
    Published {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        epoch: &'a str,
        offset: u64,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: &'a str,
        message: String,
        /// The application's own code for a refusal its hook made (`denied`).
        #[serde(skip_serializing_if = "Option::is_none")]
        app_code: Option<u16>,
    },
    Disconnect {
        code: u16,
        reason: &'a str,
        reconnect: bool,
    },
}

/// One publication a `subscribed` reply carries back.
#[derive(Serialize)]
pub(crate) struct Recovered<'a> {
    pub(crate) offset: u64,
    pub(crate) data: &'a RawValue,
}

impl Reply<'_> {
    /// The frame as JSON text.
    pub(crate) fn to_text(&self) -> String {
        serde_json::to_string(self).expect("replies serialize")
    }

    /// The `disconnect` frame sent before a close frame.
    pub(crate) fn disconnect((code, reason): (u16, &str)) -> String {
        Reply::Disconnect {
            code,
            reason,
            reconnect: close::reconnect(code),
        }
        .to_text()
    }
}

/// The `join` or `leave` frame that tells a presence channel's subscribers about `user`
/// (a join with the user's `info`, if any); `None` for a change that is neither.
pub(crate) fn presence_event(
    channel: &str,
    user: &str,
    transition: Transition,
    info: Option<&str>,
) -> Option<String> {
    let frame = match transition {
        Transition::Joined(version) => Reply::Join {
            channel,
            user,
            version,
            info: info.map(crate::presence::raw_info),
        },
        Transition::Left(version) => Reply::Leave {
            channel,
            user,
            version,
        },
        Transition::Unchanged | Transition::Refused => return None,
    };
    Some(frame.to_text())
}

/// The `publication` frame: built by hand around the data, which is JSON already, so that it
/// is not parsed and printed again for every publication.
pub(crate) fn publication_frame(channel: &str, publication: &Publication) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialize");
    format!(
        r#"{{"type":"publication","channel":{},"epoch":{},"offset":{},"data":{}}}"#,
        quote(channel),
        quote(&publication.epoch),
        publication.offset,
        publication.data.as_str()
    )
}

#[cfg(test)]
mod tests {
    use tungstenite::Utf8Bytes;

    use super::*;

    #[test]
    fn v1_messages_parse_with_raw_data_and_ids() {
        let m = Request::parse(
            r#"{"type":"publish","channel":"room:1","data":{"a":[1,"x"]},"id":4,"idempotency_key":"k"}"#,
        )
        .unwrap();
        let Request::Publish {
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
        let m = Request::parse(
            r#"{"type":"subscribe","channel":"c","recover":{"epoch":"e","offset":3}}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            Request::Subscribe {
                recover: Some(_),
                ..
            }
        ));
        assert!(matches!(
            Request::parse(r#"{"type":"ping"}"#),
            Ok(Request::Ping { id: None })
        ));
    }

    #[test]
    fn refresh_and_subscribe_tokens_parse() {
        let m = Request::parse(r#"{"type":"refresh","token":"a.b.c","id":2}"#).unwrap();
        assert!(matches!(m, Request::Refresh { ref token, id: Some(2) } if token == "a.b.c"));
        let (e, id) = Request::parse(r#"{"type":"refresh","id":3}"#).unwrap_err();
        assert_eq!(
            (e.code(), id),
            ("invalid_message", Some(3)),
            "a token is required"
        );
        let m = Request::parse(r#"{"type":"subscribe","channel":"private:1","token":"t"}"#);
        assert!(matches!(m, Ok(Request::Subscribe { token: Some(ref t), .. }) if t == "t"));
        let refreshed = Reply::Refreshed {
            id: Some(2),
            expires_in: 59,
        };
        assert_eq!(
            refreshed.to_text(),
            r#"{"type":"refreshed","id":2,"expires_in":59}"#
        );
    }

    #[test]
    fn v1_errors_keep_the_id_when_there_is_one() {
        let (e, id) = Request::parse(r#"{"type":"publish","channel":"c","id":9}"#).unwrap_err();
        assert_eq!((e.code(), id), ("invalid_message", Some(9)));
        let (e, id) = Request::parse(r#"{"type":"nope","id":2}"#).unwrap_err();
        assert_eq!((e.code(), id), ("invalid_message", Some(2)));
        let (e, id) = Request::parse("{not json").unwrap_err();
        assert_eq!((e.code(), id), ("invalid_json", None));
        let (_, id) =
            Request::parse(r#"{"type":"subscribe","id":5,"extra":1,"channel":"c"}"#).unwrap_err();
        assert_eq!(id, Some(5));
        let long = "k".repeat(129);
        let frame = format!(
            r#"{{"type":"publish","channel":"c","data":1,"id":1,"idempotency_key":"{long}"}}"#
        );
        assert!(Request::parse(&frame).is_err());
    }

    #[test]
    fn replies_keep_their_wire_format() {
        let disconnect = Reply::disconnect(close::SESSION_ENDED);
        assert_eq!(
            disconnect,
            r#"{"type":"disconnect","code":4002,"reason":"session ended","reconnect":false}"#
        );
        let error = Reply::Error {
            id: None,
            code: "binary_not_supported",
            message: "m".into(),
            app_code: None,
        };
        assert_eq!(
            error.to_text(),
            r#"{"type":"error","code":"binary_not_supported","message":"m"}"#
        );
        let publication = Publication {
            offset: 3,
            epoch: "ep".into(),
            data: Utf8Bytes::from_static(r#"{"a":"b"}"#),
        };
        assert_eq!(
            publication_frame("room:1", &publication),
            r#"{"type":"publication","channel":"room:1","epoch":"ep","offset":3,"data":{"a":"b"}}"#
        );
        assert_eq!(
            presence_event("room:1", "alice", Transition::Joined(3), None).unwrap(),
            r#"{"type":"join","channel":"room:1","user":"alice","version":3}"#
        );
        assert_eq!(
            presence_event("room:1", "alice", Transition::Joined(3), Some(r#"{"n":1}"#)).unwrap(),
            r#"{"type":"join","channel":"room:1","user":"alice","version":3,"info":{"n":1}}"#
        );
        assert_eq!(
            presence_event("room:1", "alice", Transition::Left(4), Some("{}")).unwrap(),
            r#"{"type":"leave","channel":"room:1","user":"alice","version":4}"#,
            "a leave carries no info"
        );
        assert_eq!(
            presence_event("room:1", "alice", Transition::Unchanged, None),
            None
        );
        let members = [
            Member {
                user: "alice".into(),
                connections: 2,
                info: None,
            },
            Member {
                user: "bob".into(),
                connections: 1,
                info: Some(r#"{"name":"Bob"}"#.into()),
            },
            Member {
                user: "carol".into(),
                connections: 1,
                info: Some("not json".into()),
            },
        ];
        let reply = Reply::Presence {
            id: Some(1),
            channel: "room:1",
            presence: &members,
        };
        assert_eq!(
            reply.to_text(),
            r#"{"type":"presence","id":1,"channel":"room:1","presence":[{"user":"alice","connections":2},{"user":"bob","connections":1,"info":{"name":"Bob"}},{"user":"carol","connections":1,"info":"not json"}]}"#
        );
    }
}
