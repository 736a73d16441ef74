//! NATS names for broker channels: subjects, stream names, message ids.
//!
//! A NATS subject is tokens separated by `.`; `*` and `>` are wildcards, and whitespace
//! is not allowed. A channel name may hold any of these (`user:a.b`, `room:*`), so each
//! channel becomes one token by an injective encoding ([`encode`]): ASCII letters,
//! digits and `-` stand for themselves, every other byte of the UTF-8 name is `_` and two
//! uppercase hex digits (`user:42` is `user_3A42`), and the empty name is `_` alone (no
//! other name encodes to a lone `_`, since an escape always has two digits after it). Two
//! names that differ differ in their tokens, and a token never holds `.`, `*`, `>` or
//! whitespace, so a node subscribed to one channel's subject receives no other channel.

use crate::error::BrokerError;

/// The default subject prefix, in the spirit of [`crate::redis::DEFAULT_PREFIX`].
pub(super) const DEFAULT_PREFIX: &str = "sessionhub";

/// Encodes a channel name (or an idempotency key) as one subject token (see the module
/// doc).
pub(super) fn encode(name: &str) -> String {
    if name.is_empty() {
        return "_".to_owned();
    }
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            token.push(char::from(byte));
        } else {
            token.push_str(&format!("_{byte:02X}"));
        }
    }
    token
}

/// The subjects and streams of one prefix.
///
/// - `<prefix>.ch.<c>`: live delivery; nodes subscribe here, one subscription per channel
///   a local socket needs;
/// - `<prefix>.h.<c>`: publications kept in history, captured by the stream
///   `<stream>_history`, which republishes each one to `<prefix>.ch.<c>` once it is stored;
/// - `<prefix>.k.<c>`: publications kept out of history that carry an idempotency key,
///   captured by `<stream>_keys` (only to remember the key), republished the same way.
///
/// `<stream>` is the prefix with `.` replaced by `_` (stream names cannot hold `.`).
#[derive(Debug, Clone)]
pub(super) struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Checks `prefix`: one or more tokens of ASCII letters, digits, `-` and `_`,
    /// separated by `.`; it must not start with `$` (reserved by NATS) or hold wildcards.
    pub(super) fn new(prefix: &str) -> Result<Self, BrokerError> {
        let valid = prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !valid {
            return Err(BrokerError::unavailable(
                "nats prefix",
                format!("{prefix:?} is not tokens of [A-Za-z0-9_-] separated by '.'"),
            ));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// Where nodes receive `channel`.
    pub(super) fn live(&self, channel: &str) -> String {
        format!("{}.ch.{}", self.prefix, encode(channel))
    }

    /// Where a publication kept in history is sent.
    pub(super) fn history(&self, channel: &str) -> String {
        format!("{}.h.{}", self.prefix, encode(channel))
    }

    /// Where a publication kept out of history with an idempotency key is sent.
    pub(super) fn keys(&self, channel: &str) -> String {
        format!("{}.k.{}", self.prefix, encode(channel))
    }

    /// `(subjects, republished to)` of the history stream: every history subject, and the
    /// live subject of the same channel.
    pub(super) fn history_filter(&self) -> (String, String) {
        (
            format!("{}.h.>", self.prefix),
            format!("{}.ch.>", self.prefix),
        )
    }

    /// The same for the key stream.
    pub(super) fn keys_filter(&self) -> (String, String) {
        (
            format!("{}.k.>", self.prefix),
            format!("{}.ch.>", self.prefix),
        )
    }

    /// The name of the history stream.
    pub(super) fn history_stream(&self) -> String {
        format!("{}_history", self.prefix.replace('.', "_"))
    }

    /// The name of the key stream.
    pub(super) fn keys_stream(&self) -> String {
        format!("{}_keys", self.prefix.replace('.', "_"))
    }

    /// The `Nats-Msg-Id` of an idempotency key on `channel`: keys belong to their
    /// channel, and the encoding keeps a key's bytes out of the header's syntax.
    pub(super) fn message_id(channel: &str, key: &str) -> String {
        format!("{}.{}", encode(channel), encode(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashSet;

    #[test]
    fn a_token_holds_no_separator_wildcard_or_whitespace() {
        for name in [
            "user:42", "a.b", "*", ">", "a b\tc\n", "日本", "", "_", "%41", "a_3A",
        ] {
            let token = encode(name);
            assert!(!token.is_empty(), "{name:?}");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{name:?} -> {token:?}"
            );
        }
        assert_eq!(encode("user:42"), "user_3A42");
        assert_eq!(encode("room-1"), "room-1");
        assert_eq!(encode("a.b"), "a_2Eb");
        assert_eq!(encode(""), "_");
    }

    #[test]
    fn the_encoding_is_injective() {
        // Names built to collide under a careless escape: the escape character itself,
        // what an escape produces, case, and the empty name.
        let names = [
            "", "_", "__", "_5F", "_3A", ":", "a:", "a_3A", "a.b", "a_2Eb", "a b", "a_20b", "A",
            "a", "é", "_C3_A9", "\u{0}", "_00", "-", "_2D", ".", "*", ">", "user:1", "user:1 ",
        ];
        let tokens: HashSet<String> = names.iter().map(|n| encode(n)).collect();
        assert_eq!(tokens.len(), names.len(), "{tokens:?}");
        // And exhaustively on every name of up to two bytes from an alphabet that mixes
        // kept and escaped bytes.
        let alphabet = ["", "a", "A", "_", "5", "F", ".", ":", "-", " "];
        let mut names = HashSet::new();
        for x in alphabet {
            for y in alphabet {
                for z in alphabet {
                    names.insert(format!("{x}{y}{z}"));
                }
            }
        }
        let tokens: HashSet<String> = names.iter().map(|n| encode(n)).collect();
        assert_eq!(tokens.len(), names.len());
    }

    #[test]
    fn prefixes_are_checked_and_name_everything() {
        for bad in ["", ".", "a..b", "a.", "a b", "a.*", "a.>", "$SYS", "a:b"] {
            assert!(Subjects::new(bad).is_err(), "{bad:?}");
        }
        let subjects = Subjects::new("myapp.push").unwrap();
        assert_eq!(subjects.live("user:7"), "myapp.push.ch.user_3A7");
        assert_eq!(subjects.history("user:7"), "myapp.push.h.user_3A7");
        assert_eq!(subjects.keys("user:7"), "myapp.push.k.user_3A7");
        assert_eq!(subjects.history_stream(), "myapp_push_history");
        assert_eq!(subjects.keys_stream(), "myapp_push_keys");
        assert_eq!(
            subjects.history_filter(),
            ("myapp.push.h.>".to_owned(), "myapp.push.ch.>".to_owned())
        );
        assert_eq!(Subjects::message_id("user:7", "k 1"), "user_3A7.k_201");
    }
}
