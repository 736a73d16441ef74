//! What a publication carries besides its data: an event name, the socket it must not be
//! echoed to, the user who sent it. Pusher clients need all three (`event`, `socket_id`
//! exclusion, `user_id` on presence client events); protocol v1 needs none.
//!
//! The envelope travels inside the payload every broker already carries, in front of the
//! data, so that every backend (local, Redis, Cluster, Sentinel, NATS) keeps it through
//! publish, fan-out, history and recovery without a change to its wire format or scripts:
//! `RS {"event":…,"except":…,"user":…} RS data`, RS being U+001E. Data is JSON text, which
//! never starts with RS, so a payload without an envelope reads as before; the header is
//! JSON, which escapes every control character, so its end is the next RS.
//!
//! The hub opens envelopes where publications leave the brokers (delivery, recovery,
//! history): nothing above it sees one.

use serde::{Deserialize, Serialize};
use tungstenite::Utf8Bytes;

use super::Publication;

/// The separator around the header.
const RS: char = '\u{1e}';

/// What a publication carries besides its data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The event name (Pusher's `event`); publications without one reach Pusher clients
    /// as [`DEFAULT_EVENT`].
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "event")]
    pub event: Option<String>,
    /// A socket that must not receive it (Pusher's `socket_id` exclusion).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "except")]
    pub except: Option<String>,
    /// The user who sent it (Pusher's `user_id` on presence client events).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "user")]
    pub user: Option<String>,
    /// When it was published, in milliseconds since the Unix epoch: set on cache channels'
    /// events, so that Pusher's `info=cache` can tell how long the kept event has left.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "at")]
    pub at: Option<u64>,
}

/// The event name Pusher clients see on a publication that has none (published through
/// protocol v1 or the server API without an event).
pub const DEFAULT_EVENT: &str = "message";

impl Envelope {
    /// Whether it carries nothing: no envelope is written for it.
    pub fn is_empty(&self) -> bool {
        self.event.is_none() && self.except.is_none() && self.user.is_none() && self.at.is_none()
    }

    /// `data` with this envelope in front of it, as the brokers carry it.
    pub fn wrap(&self, data: &str) -> Utf8Bytes {
        if self.is_empty() {
            return data.into();
        }
        let header = serde_json::to_string(self).expect("an envelope serializes");
        let mut payload = String::with_capacity(header.len() + data.len() + 2);
        payload.push(RS);
        payload.push_str(&header);
        payload.push(RS);
        payload.push_str(data);
        payload.into()
    }

    /// Splits a payload into its envelope (if it has one) and its data. A payload that
    /// starts like an envelope but is not one is taken as data whole: nothing is lost.
    pub fn open(payload: Utf8Bytes) -> (Option<Envelope>, Utf8Bytes) {
        let Some(rest) = payload.as_str().strip_prefix(RS) else {
            return (None, payload);
        };
        let Some((header, _)) = rest.split_once(RS) else {
            return (None, payload);
        };
        let Ok(envelope) = serde_json::from_str::<Envelope>(header) else {
            return (None, payload);
        };
        let start = 2 * RS.len_utf8() + header.len();
        let bytes = tungstenite::Bytes::from(payload).slice(start..);
        let data = Utf8Bytes::try_from(bytes).expect("split at a char boundary");
        (Some(envelope), data)
    }

    /// Takes the envelope out of `publication`'s data.
    pub fn take(publication: &mut Publication) -> Option<Envelope> {
        let payload = std::mem::take(&mut publication.data);
        let (envelope, data) = Self::open(payload);
        publication.data = data;
        envelope
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_and_leaves_the_data_byte_for_byte() {
        let envelope = Envelope {
            event: Some("my-event".into()),
            except: Some("123.456".into()),
            user: Some("u\u{1e}1".into()),
            at: Some(1_765_000_000_000),
        };
        let data = r#"{"a":"x\u001ey","b":[1,2]}"#;
        let (opened, rest) = Envelope::open(envelope.wrap(data));
        assert_eq!(opened, Some(envelope));
        assert_eq!(rest.as_str(), data);
    }

    #[test]
    fn data_without_an_envelope_is_left_alone() {
        for data in [
            "{}",
            "\"text\"",
            "12",
            "",
            "\u{1e}",
            "\u{1e}{}",
            "\u{1e}no\u{1e}x",
        ] {
            let (opened, rest) = Envelope::open(data.into());
            assert_eq!(opened, None, "{data:?}");
            assert_eq!(rest.as_str(), data);
        }
        assert_eq!(Envelope::default().wrap("{}").as_str(), "{}");
    }
}
