//! Who may connect as whom, who may push, and from where.
//!
//! - [`WsAuth`]: how a socket proves which user it is (the HTTP session, a JWT, or nothing).
//! - [`ApiKeys`]: the bearer keys of the push and admin APIs, compared in constant time.
//! - [`TokenVerifier`]: JWTs from the app's backend or its identity provider (HS256, RS256,
//!   ES256, EdDSA; keys from secrets, PEM files or a JWKS that rotates without a restart).
//! - [`OriginPolicy`]: which web origins may open a socket (cross-site WebSocket hijacking).
//! - [`ChannelRules`]: which channels a client may publish to itself.

mod jwks;
mod token;

pub use self::token::{Claims, TokenConfig, TokenConfigError, TokenError, TokenVerifier};

use std::collections::HashSet;
use std::str::FromStr;

use axum::http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How a socket authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsAuth {
    /// The user is the principal of the HTTP session the request carries (cookie or
    /// `X-Auth-Token`), set at login on any node.
    Session,
    /// The user is the `sub` of an HS256 JWT issued by the app's backend.
    Token,
    /// No authentication: `/websocket/{id}` is whoever asks. Only for loopback or behind a
    /// trusted gate.
    Open,
}

/// Text that is not `session`, `token` or `open`.
#[derive(Debug, thiserror::Error)]
#[error("expected one of: session, token, open")]
pub struct UnknownWsAuth;

impl FromStr for WsAuth {
    type Err = UnknownWsAuth;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "session" => Ok(Self::Session),
            "token" => Ok(Self::Token),
            "open" => Ok(Self::Open),
            _ => Err(UnknownWsAuth),
        }
    }
}

/// API keys. Stored as SHA-256 digests so that comparing them takes the same time whatever
/// the presented key's length or content.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    /// Keys from their plain text; empty strings are ignored.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(keys: I) -> Self {
        Self {
            digests: keys
                .into_iter()
                .filter(|k| !k.as_ref().is_empty())
                .map(|k| Sha256::digest(k.as_ref().as_bytes()).into())
                .collect(),
        }
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys. Every key is compared, in constant time.
    pub fn verify(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | key.ct_eq(&digest)
            })
            .into()
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

/// Which web origins may open a socket. Requests without an `Origin` header (not from a
/// browser) are not subject to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// Any origin.
    Any,
    /// Only pages served from the same host and port as the socket (the default).
    SameHost,
    /// Only these origins (`scheme://host[:port]`, compared case-insensitively).
    List(HashSet<String>),
}

impl OriginPolicy {
    /// `*` means any; an empty list means same host; otherwise the listed origins.
    pub fn from_list<I: IntoIterator<Item = S>, S: AsRef<str>>(origins: I) -> Self {
        let origins: HashSet<String> = origins
            .into_iter()
            .map(|o| o.as_ref().trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        if origins.contains("*") {
            Self::Any
        } else if origins.is_empty() {
            Self::SameHost
        } else {
            Self::List(origins)
        }
    }

    /// Whether a request with this `Origin` and `Host` may open a socket.
    pub fn allows(&self, origin: Option<&HeaderValue>, host: Option<&HeaderValue>) -> bool {
        let Some(origin) = origin else { return true };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim().to_ascii_lowercase();
        match self {
            Self::Any => true,
            Self::List(allowed) => allowed.contains(&origin),
            Self::SameHost => {
                let origin_host = origin.split_once("://").map(|(_, rest)| rest);
                let host = host
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_ascii_lowercase);
                matches!((origin_host, host), (Some(o), Some(h)) if o == h)
            }
        }
    }
}

/// Private channels: those whose name starts with one of these prefixes, which a client
/// joins only with a subscribe token for it ([`TokenVerifier::verify_subscribe`]), whatever
/// the channel rules say.
#[derive(Debug, Clone, Default)]
pub struct PrivateChannels {
    prefixes: Vec<String>,
}

impl PrivateChannels {
    /// Channels starting with any of `prefixes` are private; empty prefixes are ignored
    /// (one would make every channel private by accident).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(prefixes: I) -> Self {
        Self {
            prefixes: prefixes
                .into_iter()
                .map(|p| p.as_ref().trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    /// Whether `channel` needs a subscribe token.
    pub fn contains(&self, channel: &str) -> bool {
        self.prefixes
            .iter()
            .any(|p| channel.starts_with(p.as_str()))
    }
}

/// What clients may do on channels whose name starts with a prefix.
#[derive(Debug, Clone, Default)]
pub struct ChannelRules {
    rules: Vec<ChannelRule>,
}

/// One rule: `PREFIX=subscribe,publish` (either or both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRule {
    /// Channel-name prefix the rule applies to.
    pub prefix: String,
    /// Clients may join such channels.
    pub subscribe: bool,
    /// Clients may publish to such channels themselves.
    pub publish: bool,
}

/// A channel rule that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("a channel rule is PREFIX=subscribe,publish (either or both), got {0:?}")]
pub struct BadChannelRule(String);

impl FromStr for ChannelRule {
    type Err = BadChannelRule;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadChannelRule(s.to_owned());
        let (prefix, grants) = s.split_once('=').ok_or_else(bad)?;
        let mut rule = Self {
            prefix: prefix.trim().to_owned(),
            subscribe: false,
            publish: false,
        };
        for grant in grants.split(['+', ',']).map(str::trim) {
            match grant {
                "subscribe" => rule.subscribe = true,
                "publish" => rule.publish = true,
                _ => return Err(bad()),
            }
        }
        Ok(rule)
    }
}

impl ChannelRules {
    /// Rules in order; the longest matching prefix decides.
    pub fn new(rules: Vec<ChannelRule>) -> Self {
        Self { rules }
    }

    fn rule(&self, channel: &str) -> Option<&ChannelRule> {
        self.rules
            .iter()
            .filter(|r| channel.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
    }

    /// Whether a client may publish to `channel` itself (off unless a rule grants it).
    pub fn can_publish(&self, channel: &str) -> bool {
        self.rule(channel).is_some_and(|r| r.publish)
    }

    /// Whether any client may join `channel` (a public channel).
    pub fn can_subscribe(&self, channel: &str) -> bool {
        self.rule(channel).is_some_and(|r| r.subscribe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_match_exactly() {
        let keys = ApiKeys::new(["alpha", "beta", ""]);
        assert!(keys.verify("alpha") && keys.verify("beta"));
        assert!(!keys.verify("") && !keys.verify("alph") && !keys.verify("alphaa"));
        assert!(ApiKeys::new([""]).is_empty());
        assert!(!format!("{keys:?}").contains("alpha"));
    }

    #[test]
    fn origins() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        let same = OriginPolicy::from_list(Vec::<String>::new());
        assert!(same.allows(
            Some(&h("http://app.example:8080")),
            Some(&h("app.example:8080"))
        ));
        assert!(!same.allows(
            Some(&h("http://evil.example")),
            Some(&h("app.example:8080"))
        ));
        assert!(same.allows(None, Some(&h("app.example"))));
        let list = OriginPolicy::from_list(["https://App.example/"]);
        assert!(list.allows(Some(&h("https://app.example")), None));
        assert!(!list.allows(Some(&h("https://app.example.evil")), None));
        assert!(!list.allows(Some(&h("null")), None));
        assert_eq!(OriginPolicy::from_list(["*"]), OriginPolicy::Any);
    }

    #[test]
    fn channel_rules_longest_prefix_wins() {
        let rules = ChannelRules::new(vec![
            "chat:=subscribe,publish".parse().unwrap(),
            "chat:readonly:=subscribe".parse().unwrap(),
            "user:=publish".parse().unwrap(),
        ]);
        assert!(rules.can_publish("chat:1") && rules.can_subscribe("chat:1"));
        assert!(!rules.can_publish("chat:readonly:1"));
        assert!(rules.can_publish("user:9") && !rules.can_subscribe("user:9"));
        assert!(!rules.can_publish("news:1") && !rules.can_subscribe("news:1"));
        assert!("x".parse::<ChannelRule>().is_err());
        assert!("x=write".parse::<ChannelRule>().is_err());
    }
}
