//! The names of everything sessionhub keeps in Redis, in one place.
//!
//! Every name starts with the deployment's prefix ([`DEFAULT_PREFIX`] unless configured),
//! and every name that a script touches together with another carries the same `{...}`
//! hash tag, so that each script stays in one Redis Cluster slot:
//!
//! | what                          | name                                          |
//! |-------------------------------|-----------------------------------------------|
//! | a session (hash)              | `<prefix>session:{<id>}`                      |
//! | a session mid-rotation (hash) | `<prefix>session:{<id>}:moving`               |
//! | a principal's sessions (zset) | `<prefix>principal:{<encoded principal>}`     |
//! | a broker channel (pub/sub)    | `<prefix>ch:{<channel>}`                      |
//! | its history                   | `<prefix>ch:{<channel>}:meta`, `:history`, `:idem:<key>` |
//! | presence (online counts)      | `<prefix>presence:{presence}:nodes`, `:users`, `:node:<node id>`, `:users:<node id>`, `:channels:<node id>` |
//! | the webhook queue             | `<prefix>webhooks:{webhooks}:stream`, `:delayed`, `:held`, `:held_events` |
//! | a channel's presence          | `<prefix>ch:{<channel>}:presence:users`, `:presence:connections`, `:presence:node:<node id>`, `:presence:info` |
//!
//! Session ids are base64url and never contain braces. A channel may contain braces: only
//! the first `{` and the first `}` after it delimit a hash tag, and channel names are read
//! back by stripping the known head and the last `}`. A principal is written with every
//! byte outside `[A-Za-z0-9._@:-]` as `%XX`, which keeps braces out of its tag for any
//! principal and keeps two principals from ever sharing a key. A session key and a
//! principal key are in different slots by design: every index script touches one key.

/// The prefix of every key and channel name unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "sessionhub:";

/// Builds names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    /// `<prefix>ch:{`: everything before a channel's name.
    channel_head: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            channel_head: format!("{prefix}ch:{{"),
        }
    }

    /// The hash that holds session `id`.
    pub(crate) fn session(&self, id: &str) -> String {
        join(&self.prefix, &["session:{", id, "}"])
    }

    /// Where a rotation on Redis Cluster keeps session `id` while it moves to its new id,
    /// in the same slot (see `store/redis/rotation.rs`).
    pub(crate) fn session_moving(&self, id: &str) -> String {
        join(&self.prefix, &["session:{", id, "}:moving"])
    }

    /// The sorted set that indexes `principal`'s sessions.
    pub(crate) fn principal(&self, principal: &str) -> String {
        join(
            &self.prefix,
            &["principal:{", &encode_principal(principal), "}"],
        )
    }

    /// The pub/sub channel that carries the broker channel `channel`.
    pub(crate) fn channel(&self, channel: &str) -> String {
        join(&self.channel_head, &[channel, "}"])
    }

    /// A key of `channel`'s history (`meta`, `history`, `idem:<key>`), in its slot.
    pub(crate) fn channel_key(&self, channel: &str, suffix: &str) -> String {
        join(&self.channel_head, &[channel, "}:", suffix])
    }

    /// The broker channel a pub/sub channel carries; `None` if it is not one of ours.
    pub(crate) fn channel_of<'a>(&self, redis: &'a str) -> Option<&'a str> {
        redis
            .strip_prefix(self.channel_head.as_str())?
            .strip_suffix('}')
    }

    /// The sorted set of the nodes that publish presence snapshots.
    pub(crate) fn presence_nodes(&self) -> String {
        join(&self.prefix, &["presence:{presence}:nodes"])
    }

    /// The counts of node `node_id` (a JSON string with a TTL), in the same slot as the
    /// node set.
    pub(crate) fn presence_node(&self, node_id: &str) -> String {
        join(&self.prefix, &["presence:{presence}:node:", node_id])
    }

    /// A set of node `node_id`'s (`users`, `channels`: `what`), in the node set's slot. The
    /// node id comes last, so that no node id can make one node's key another's.
    pub(crate) fn presence_node_set(&self, what: &str, node_id: &str) -> String {
        join(&self.prefix, &["presence:{presence}:", what, ":", node_id])
    }

    /// The hash of every user online in the cluster (user -> how many nodes hold them).
    pub(crate) fn presence_users(&self) -> String {
        join(&self.prefix, &["presence:{presence}:users"])
    }

    /// A key of the webhook queue (`stream`, `delayed`, `held`, `held_events`), all in one
    /// slot.
    pub(crate) fn webhooks(&self, what: &str) -> String {
        join(&self.prefix, &["webhooks:{webhooks}:", what])
    }

    /// A key of `channel`'s presence (`users`, `connections`, `node:<node id>`, `info`), in the
    /// channel's slot, so that one script updates them all.
    pub(crate) fn channel_presence(&self, channel: &str, suffix: &str) -> String {
        join(&self.channel_head, &[channel, "}:presence:", suffix])
    }

    /// The bucket of rate limit `bucket` (e.g. `connect:ip:10.0.0.1`), its own hash tag: a
    /// bucket is one key, and buckets spread over a cluster's slots.
    pub(crate) fn rate(&self, bucket: &str) -> String {
        join(&self.prefix, &["rate:{", bucket, "}"])
    }
}

/// `head` and `parts` as one string. Built by hand rather than with `format!`, which cost
/// ~900 instructions a name and four names a publish (callgrind).
fn join(head: &str, parts: &[&str]) -> String {
    let len = head.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut name = String::with_capacity(len);
    name.push_str(head);
    for part in parts {
        name.push_str(part);
    }
    name
}

/// The principal as it appears in its key's hash tag: `[A-Za-z0-9._@:-]` as is (the usual
/// user ids and e-mail addresses, readable in `redis-cli`), every other byte, `%` included,
/// as `%XX` (upper-case hex). Injective, and never contains a brace.
fn encode_principal(principal: &str) -> String {
    use std::fmt::Write;
    let mut encoded = String::with_capacity(principal.len());
    for byte in principal.bytes() {
        if byte.is_ascii_alphanumeric() || b"._@:-".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_carry_the_channel_as_hash_tag() {
        let keys = Keys::new(DEFAULT_PREFIX);
        assert_eq!(keys.channel("user:42"), "sessionhub:ch:{user:42}");
        assert_eq!(keys.channel_of("sessionhub:ch:{user:42}"), Some("user:42"));
        // Braces inside a channel survive the round trip.
        assert_eq!(keys.channel_of(&keys.channel("a}b{c")), Some("a}b{c"));
        assert_eq!(keys.channel_of("other:ch:{user:42}"), None);
        assert_eq!(keys.channel_of("sessionhub:ch:{user:42"), None);
        assert_eq!(
            keys.channel_key("user:42", "meta"),
            "sessionhub:ch:{user:42}:meta"
        );
    }

    #[test]
    fn session_principal_and_presence_names() {
        let keys = Keys::new("app:");
        assert_eq!(keys.session("abc-_"), "app:session:{abc-_}");
        assert_eq!(keys.session_moving("abc-_"), "app:session:{abc-_}:moving");
        assert_eq!(
            keys.principal("alice@example.com"),
            "app:principal:{alice@example.com}"
        );
        assert_eq!(keys.principal("{a b}%"), "app:principal:{%7Ba%20b%7D%25}");
        assert_eq!(keys.presence_nodes(), "app:presence:{presence}:nodes");
        assert_eq!(keys.presence_node("n1"), "app:presence:{presence}:node:n1");
        assert_eq!(
            keys.presence_node_set("users", "n1"),
            "app:presence:{presence}:users:n1"
        );
        assert_eq!(keys.presence_users(), "app:presence:{presence}:users");
        assert_eq!(keys.rate("login:ip:::1"), "app:rate:{login:ip:::1}");
        assert_eq!(
            keys.channel_presence("room:1", "node:n1"),
            "app:ch:{room:1}:presence:node:n1"
        );
    }
}
