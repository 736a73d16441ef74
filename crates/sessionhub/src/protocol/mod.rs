//! What travels over a socket, kept apart from the code that serves it so that the wire
//! formats can be read (and fuzzed) without a server: user ids and channel names, why a
//! frame is refused, and the close codes. Each protocol's frames live in their own module,
//! named after it, because the two protocols share an endpoint layer but not a format:
//!
//! - [`seed`]: `GET /websocket/{id}`, byte-compatible with the Spring demo sessionhub
//!   replaces, so its clients work unchanged.
//! - [`v1`]: `GET /ws`, JSON frames with channels, offsets and recovery (`docs/protocol.md`).
//! - [`pusher`]: `GET /app/{key}`, the Pusher Channels protocol 7 (`docs/pusher.md`).

use std::fmt;
use std::str::FromStr;

pub mod pusher;
pub mod pusher_user;
pub mod seed;
pub mod v1;

/// Longest user id accepted, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;

/// Prefix of every user's personal channel.
const USER_CHANNEL_PREFIX: &str = "user:";

/// Prefix of the internal channels that tell a session's sockets it ended; clients may not
/// name them.
pub(crate) const SESSION_CHANNEL_PREFIX: &str = "session:";

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
pub(crate) const INVALID_CHANNEL: &str =
    "a channel is 1 to 160 characters of letters, digits and - _ . @ : and not session:*";

/// Whether `name` may be used as a channel by clients and the API: the user-id alphabet,
/// and not one of the internal `session:` channels.
pub fn is_public_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
        && !name.starts_with(SESSION_CHANNEL_PREFIX)
}

/// Longest idempotency key accepted, in bytes: in a v1 `publish` frame and in the push API's
/// `Idempotency-Key` header alike.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Why a client frame was refused, in either protocol. Sent back as an error frame
/// ([`seed::Reply::Error`], or v1's `error` with the frame's `id`); the connection stays
/// open. Each refusal's code is spelled here only.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
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
    /// The channel named is not a valid public channel name.
    #[error("{INVALID_CHANNEL}")]
    InvalidChannel,
    /// The client may not subscribe to that channel (see channel rules).
    #[error("you may not subscribe to that channel")]
    SubscribeForbidden,
    /// The connection is in that channel already.
    #[error("already subscribed to that channel")]
    AlreadySubscribed,
    /// The connection is in 128 channels already, the most it may join.
    #[error("at most {} channels per connection", v1::MAX_SUBSCRIPTIONS)]
    TooManySubscriptions,
    /// Presence was asked of a channel that has none (see `--presence-channels`).
    #[error("that channel has no presence")]
    NoPresence,
    /// The frame needs the connection to be in that channel, and it is not.
    #[error("not subscribed to that channel")]
    NotSubscribed,
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
            Self::PublishForbidden | Self::SubscribeForbidden => "forbidden",
            Self::Binary => "binary_not_supported",
            Self::InvalidChannel => "invalid_channel",
            Self::AlreadySubscribed => "already_subscribed",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::NoPresence => "no_presence",
            Self::NotSubscribed => "not_subscribed",
        }
    }
}

/// The close codes the server uses, with the reason text it sends.
pub(crate) mod close {
    /// The node is restarting (a drain, on SIGTERM): reconnect, to another node, and
    /// recover from the last positions.
    pub(crate) const SERVICE_RESTART: (u16, &str) = (1012, "service restart");
    /// The client broke the WebSocket protocol.
    pub(crate) const PROTOCOL_ERROR: (u16, &str) = (1002, "protocol error");
    /// A text frame that is not UTF-8.
    pub(crate) const INVALID_PAYLOAD: (u16, &str) = (1007, "invalid payload");
    /// An inbound message was larger than the limit (64 KiB by default).
    pub(crate) const MESSAGE_TOO_BIG: (u16, &str) = (1009, "message too big");
    /// The broker could not be joined; reconnect later.
    pub(crate) const BROKER_UNAVAILABLE: (u16, &str) = (1011, "broker unavailable");
    /// The HTTP session the socket was opened with ended (logout, invalidation, expiry).
    pub(crate) const SESSION_ENDED: (u16, &str) = (4002, "session ended");
    /// The token the socket was opened with expired; connect again with a fresh one.
    pub(crate) const TOKEN_EXPIRED: (u16, &str) = (4003, "token expired");
    /// The server may have missed publications for this connection (a broken link to Redis
    /// or an offset gap): reconnect and recover from the last positions.
    pub(crate) const INSUFFICIENT_STATE: (u16, &str) = (4010, "insufficient state");
    /// The client sent more messages per second than allowed.
    pub(crate) const RATE_LIMITED: (u16, &str) = (4029, "rate limited");
    /// Nothing arrived from the client for longer than the idle timeout.
    pub(crate) const IDLE_TIMEOUT: (u16, &str) = (4000, "idle timeout");
    /// The client did not read fast enough and its outbound queue filled up.
    pub(crate) const SLOW_CONSUMER: (u16, &str) = (4008, "slow consumer");
    /// The server API disconnected the connection and allows it to come back.
    pub(crate) const DISCONNECTED: (u16, &str) = (4020, "disconnected");
    /// The server API disconnected the connection and asks it not to come back.
    pub(crate) const DISCONNECTED_NO_RECONNECT: (u16, &str) = (4021, "disconnected for good");

    /// Whether a client should reconnect after this close code (told in the protocol v1
    /// `disconnect` frame): yes unless reconnecting cannot help.
    pub(crate) fn reconnect(code: u16) -> bool {
        !matches!(
            code,
            // protocol error, not UTF-8, too big, session ended (log in again first), the
            // server API said so, the application's connect hook refused (crate::hooks::DENIED)
            1002 | 1007 | 1009 | 4002 | 4021 | 4403
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_round_trip_through_channels() {
        let id: UserId = "alice@example.com".parse().unwrap();
        assert_eq!(UserId::from_channel(&id.channel()), Some(id));
        assert_eq!(UserId::from_channel("room:1"), None);
        assert!("".parse::<UserId>().is_err());
        assert!("x".repeat(MAX_USER_ID_LEN + 1).parse::<UserId>().is_err());
    }

    #[test]
    fn refusals_keep_their_wire_codes_and_messages() {
        let sent = |e: FrameError| (e.code(), e.to_string());
        assert_eq!(
            sent(FrameError::InvalidChannel),
            ("invalid_channel", INVALID_CHANNEL.to_owned())
        );
        assert_eq!(
            sent(FrameError::SubscribeForbidden),
            (
                "forbidden",
                "you may not subscribe to that channel".to_owned()
            )
        );
        assert_eq!(
            sent(FrameError::AlreadySubscribed),
            (
                "already_subscribed",
                "already subscribed to that channel".to_owned()
            )
        );
        assert_eq!(
            sent(FrameError::TooManySubscriptions),
            (
                "too_many_subscriptions",
                "at most 128 channels per connection".to_owned()
            )
        );
        assert!(!is_public_channel_name("session:abc"));
        assert!(is_public_channel_name("room:1"));
    }
}
