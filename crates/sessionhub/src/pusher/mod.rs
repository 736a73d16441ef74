//! The Pusher Channels apps a server speaks for, and the signatures that prove a request or
//! a subscription came from an app's backend.
//!
//! An app is `ID:KEY:SECRET` plus its options ([`PusherApp`]). Clients name it by key
//! (`/app/{key}`), the HTTP API by id (`/apps/{id}/…`); both sign with the secret
//! (HMAC-SHA256, lowercase hex), which never leaves the server. With no app configured the
//! Pusher routes are not mounted at all.
//!
//! [`request`] checks the HTTP API's request signatures; [`event`] carries an event's data
//! through the hub.

pub mod event;
pub mod request;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::protocol::MAX_CHANNEL_LEN;
use crate::protocol::pusher::{self, ChannelNameError};

/// How long an app's `channel_vacated` and `member_removed` webhooks wait, as on Pusher, so
/// that a client that comes back at once (a page reload) causes none
/// ([`crate::webhook::WebhookConfig::grace`]).
pub const WEBHOOK_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// One Pusher app: its credentials and options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PusherApp {
    /// The app id, as the HTTP API's `/apps/{id}` names it.
    pub id: String,
    /// The public key, as clients' `/app/{key}` names it.
    pub key: String,
    /// The secret that signs the HTTP API's requests and channel authorizations.
    pub secret: String,
    /// Whether clients may send `client-` events (off unless enabled, as on Pusher).
    pub client_events: bool,
    /// Client events one connection may send per second; past it the connection closes
    /// with 4301.
    pub client_event_rate: u32,
    /// Most members on one presence channel.
    pub max_presence_members: usize,
    /// Longest `user_info` of a presence member, in bytes (JSON text).
    pub max_user_info_bytes: usize,
    /// Longest event data, in bytes, from a client or the HTTP API.
    pub max_event_bytes: usize,
    /// Where the app's webhooks go, if anywhere.
    pub webhook_url: Option<String>,
    /// The app's encryption master key (32 bytes), if the server is to authorize
    /// `private-encrypted-` channels itself: the built-in auth endpoint then hands out each
    /// channel's `shared_secret`. The server still never decrypts: publishers encrypt.
    pub encryption_master_key: Option<EncryptionMasterKey>,
    /// The prefix of the sessionhub channels that carry the app's channels: Pusher channel
    /// `news` is hub channel `{namespace}news`. Empty (the app's channels are the hub's
    /// channels of the same names, shared with protocol v1 clients) or ending in `:`, which
    /// no Pusher channel name holds, so two apps' channels never meet. `None` until
    /// [`PusherApps::new`] settles it: empty when the server has one app, `{id}:` for each
    /// of several.
    pub namespace: Option<String>,
}

/// A Pusher app's encryption master key: 32 bytes, configured in base64 as the Pusher
/// server SDKs take it (`encryptionMasterKeyBase64`).
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionMasterKey([u8; 32]);

impl fmt::Debug for EncryptionMasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A key is never logged.
        f.write_str("EncryptionMasterKey(..)")
    }
}

/// An encryption master key that is not 32 bytes in base64.
#[derive(Debug, thiserror::Error)]
#[error("an encryption master key is 32 bytes in base64 (openssl rand -base64 32)")]
pub struct InvalidMasterKey;

impl FromStr for EncryptionMasterKey {
    type Err = InvalidMasterKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| InvalidMasterKey)?;
        Ok(Self(bytes.try_into().map_err(|_| InvalidMasterKey)?))
    }
}

impl PusherApp {
    /// An app with Pusher's default limits: client events off, 10 client events per second,
    /// 100 presence members, 1 KB of user info, 10 KB of event data.
    pub fn new(id: impl Into<String>, key: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            client_events: false,
            client_event_rate: 10,
            max_presence_members: 100,
            max_user_info_bytes: 1_000,
            max_event_bytes: 10_240,
            webhook_url: None,
            encryption_master_key: None,
            namespace: None,
        }
    }

    /// The sessionhub channel that carries Pusher channel `channel` for this app, or why
    /// there is none.
    pub fn hub_channel(&self, channel: &str) -> Result<String, ChannelNameError> {
        let channel = pusher::hub_channel(channel)?;
        let hub = [self.namespace(), channel].concat();
        if hub.len() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::Unsupported);
        }
        Ok(hub)
    }

    /// The Pusher channel of this app that sessionhub channel `hub` carries, if any: not for
    /// another app's channels, nor for protocol v1 channels no Pusher client could name.
    pub fn pusher_channel<'a>(&self, hub: &'a str) -> Option<&'a str> {
        let channel = hub.strip_prefix(self.namespace())?;
        pusher::hub_channel(channel).ok()
    }

    /// The namespace (see the field), empty until settled.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }

    /// The `shared_secret` of encrypted channel `channel`, in base64, as Pusher derives it:
    /// SHA-256 of the channel name followed by the master key. None without a master key.
    pub fn shared_secret(&self, channel: &str) -> Option<String> {
        use base64::Engine;
        use sha2::Digest;
        let key = self.encryption_master_key.as_ref()?;
        let digest = Sha256::new()
            .chain_update(channel.as_bytes())
            .chain_update(key.0)
            .finalize();
        Some(base64::engine::general_purpose::STANDARD.encode(digest))
    }

    /// HMAC-SHA256 of `message` with the app's secret, in lowercase hex: how Pusher signs
    /// HTTP API requests, channel authorizations and webhooks.
    pub fn sign(&self, message: &str) -> String {
        hex::encode(self.mac(message).finalize().into_bytes())
    }

    /// Whether `signature` (lowercase or uppercase hex) is [`PusherApp::sign`] of `message`,
    /// compared in constant time.
    pub fn verify(&self, message: &str, signature: &str) -> bool {
        let Ok(signature) = hex::decode(signature) else {
            return false;
        };
        self.mac(message).verify_slice(&signature).is_ok()
    }

    /// Whether `auth` is this app's `KEY:signature` of `message`, as a client presents a
    /// subscription's or a sign-in's authorization (constant time, as [`PusherApp::verify`]).
    pub fn verify_auth(&self, auth: Option<&str>, message: &str) -> bool {
        let Some((key, signature)) = auth.and_then(|a| a.split_once(':')) else {
            return false;
        };
        key == self.key && self.verify(message, signature)
    }

    fn mac(&self, message: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()).expect("any key length");
        mac.update(message.as_bytes());
        mac
    }
}

/// `ID:KEY:SECRET` is not a valid app.
#[derive(Debug, thiserror::Error)]
#[error(
    "a Pusher app is ID:KEY:SECRET, each non-empty, the id and key of letters, digits and - _ ."
)]
pub struct InvalidPusherApp;

impl FromStr for PusherApp {
    type Err = InvalidPusherApp;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, ':');
        let (Some(id), Some(key), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(InvalidPusherApp);
        };
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !plain(id) || !plain(key) || secret.is_empty() {
            return Err(InvalidPusherApp);
        }
        Ok(Self::new(id, key, secret))
    }
}

/// The apps a server speaks for, found by key or by id.
#[derive(Debug, Clone, Default)]
pub struct PusherApps {
    by_key: HashMap<String, Arc<PusherApp>>,
    by_id: HashMap<String, Arc<PusherApp>>,
    /// How long a cache channel keeps its last event; the history's TTL by default.
    cache_ttl: Option<std::time::Duration>,
}

/// Apps that cannot be served together.
#[derive(Debug, thiserror::Error)]
pub enum PusherAppsError {
    /// Two apps share an id, a key or a namespace.
    #[error("two Pusher apps share the {0} {1:?}")]
    Duplicate(&'static str, String),
    /// A namespace that is not one.
    #[error(
        "Pusher app {0}: a namespace is empty or up to 64 letters, digits and - _ . @ : ending \
         in ':', and not session:"
    )]
    Namespace(String),
}

/// Longest app namespace, in bytes: the rest of a hub channel's 160 is the Pusher name's.
const MAX_NAMESPACE_LEN: usize = 64;

impl PusherApps {
    /// The apps; ids, keys and namespaces must be unique. Apps without a namespace get
    /// the default: none when there is one app, `{id}:` for each of several, so that one
    /// app's clients never see another's channels.
    pub fn new(apps: impl IntoIterator<Item = PusherApp>) -> Result<Self, PusherAppsError> {
        let mut apps: Vec<PusherApp> = apps.into_iter().collect();
        let several = apps.len() > 1;
        let mut namespaces = std::collections::HashSet::new();
        let mut all = Self::default();
        for mut app in apps.drain(..) {
            let namespace = app
                .namespace
                .get_or_insert_with(|| {
                    if several {
                        format!("{}:", app.id)
                    } else {
                        String::new()
                    }
                })
                .clone();
            let valid = namespace.is_empty()
                || (namespace.len() <= MAX_NAMESPACE_LEN
                    && namespace.ends_with(':')
                    && crate::protocol::is_public_channel_name(&namespace));
            if !valid {
                return Err(PusherAppsError::Namespace(app.id));
            }
            if !namespaces.insert(namespace.clone()) {
                return Err(PusherAppsError::Duplicate("namespace", namespace));
            }
            let app = Arc::new(app);
            if all.by_id.insert(app.id.clone(), app.clone()).is_some() {
                return Err(PusherAppsError::Duplicate("id", app.id.clone()));
            }
            if all.by_key.insert(app.key.clone(), app.clone()).is_some() {
                return Err(PusherAppsError::Duplicate("key", app.key.clone()));
            }
        }
        Ok(all)
    }

    /// The app with public key `key`.
    pub fn by_key(&self, key: &str) -> Option<&Arc<PusherApp>> {
        self.by_key.get(key)
    }

    /// The app with id `id`.
    pub fn by_id(&self, id: &str) -> Option<&Arc<PusherApp>> {
        self.by_id.get(id)
    }

    /// How long a cache channel keeps its last event after it was published: the hub's
    /// history TTL (`--history-ttl`), which keeps it. `info=cache` tells what is left of it.
    pub fn with_cache_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.cache_ttl = Some(ttl);
        self
    }

    /// How long a cache channel keeps its last event ([`Self::with_cache_ttl`]).
    pub fn cache_ttl(&self) -> std::time::Duration {
        self.cache_ttl
            .unwrap_or_else(|| crate::broker::HistoryConfig::default().ttl)
    }

    /// Whether there is no app.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every app, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<PusherApp>> {
        self.by_id.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_is_id_key_secret_and_the_secret_may_hold_colons() {
        let app: PusherApp = "1:key:s:e:c".parse().unwrap();
        assert_eq!((&*app.id, &*app.key, &*app.secret), ("1", "key", "s:e:c"));
        for bad in [
            "",
            "1",
            "1:key",
            "1:key:",
            ":key:s",
            "1::s",
            "1 2:key:s",
            "1:k/y:s",
        ] {
            assert!(bad.parse::<PusherApp>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn signatures_match_pusher_s_documented_example() {
        // From Pusher's "Channel authorization" documentation: key 278d425bdf160c739803,
        // secret 7ad3773142a6692b25b8, socket 1234.1234, channel private-foobar.
        let app = PusherApp::new("1", "278d425bdf160c739803", "7ad3773142a6692b25b8");
        let signature = app.sign("1234.1234:private-foobar");
        assert_eq!(
            signature,
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(app.verify("1234.1234:private-foobar", &signature));
        assert!(app.verify("1234.1234:private-foobar", &signature.to_uppercase()));
        assert!(!app.verify("1234.1234:private-foobaz", &signature));
        assert!(!app.verify("1234.1234:private-foobar", "not hex"));
    }

    #[test]
    fn shared_secrets_are_sha256_of_the_channel_and_the_master_key() {
        let mut app = PusherApp::new("1", "key", "secret");
        assert_eq!(app.shared_secret("private-encrypted-a"), None);
        // 32 bytes "01234567890123456789012345678901", as Pusher's SDK examples use.
        let key = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
        app.encryption_master_key = Some(key.parse().unwrap());
        // sha256("private-encrypted-a" + key bytes), base64: computed independently with
        // `printf %s private-encrypted-a01234567890123456789012345678901 | openssl dgst
        // -sha256 -binary | base64`.
        assert_eq!(
            app.shared_secret("private-encrypted-a").as_deref(),
            Some("OaSNicEQhvgdc4eu4sum89NyQCnNOMP2wDIA2tge76Y=")
        );
        for bad in ["", "not base64!", "MDEy", &format!("{key}{key}")] {
            assert!(bad.parse::<EncryptionMasterKey>().is_err(), "{bad:?}");
        }
        assert!(!format!("{app:?}").contains(key));
    }

    #[test]
    fn ids_and_keys_are_unique() {
        let app = |s: &str| s.parse::<PusherApp>().unwrap();
        assert!(PusherApps::new([app("1:a:s"), app("2:b:s")]).is_ok());
        assert!(PusherApps::new([app("1:a:s"), app("1:b:s")]).is_err());
        assert!(PusherApps::new([app("1:a:s"), app("2:a:s")]).is_err());
    }

    #[test]
    fn each_of_several_apps_has_its_own_channels() {
        let app = |s: &str| s.parse::<PusherApp>().unwrap();
        let one = PusherApps::new([app("1:a:s")]).unwrap();
        let only = one.by_id("1").unwrap();
        assert_eq!(only.hub_channel("private-x").unwrap(), "private-x");
        assert_eq!(only.pusher_channel("private-x"), Some("private-x"));
        assert_eq!(only.pusher_channel("user:alice"), None, "v1's own");

        let mut shared = app("3:c:s");
        shared.namespace = Some(String::new());
        let apps = PusherApps::new([app("1:a:s"), app("2:b:s"), shared]).unwrap();
        let (first, second, third) = (
            apps.by_id("1").unwrap(),
            apps.by_id("2").unwrap(),
            apps.by_id("3").unwrap(),
        );
        assert_eq!(first.hub_channel("news").unwrap(), "1:news");
        assert_eq!(second.hub_channel("news").unwrap(), "2:news");
        assert_eq!(third.hub_channel("news").unwrap(), "news");
        assert_eq!(first.pusher_channel("1:news"), Some("news"));
        for (app, other) in [(first, "2:news"), (second, "1:news"), (third, "1:news")] {
            assert_eq!(app.pusher_channel(other), None, "{} sees {other}", app.id);
        }
        assert_eq!(first.pusher_channel("news"), None);
        // Room for the namespace comes out of the channel's 160 bytes.
        assert!(third.hub_channel(&"n".repeat(160)).is_ok());
        assert_eq!(
            first.hub_channel(&"n".repeat(159)),
            Err(ChannelNameError::Unsupported)
        );

        let with = |namespace: &str| {
            let mut app = app("9:z:s");
            app.namespace = Some(namespace.into());
            PusherApps::new([app])
        };
        assert!(with("tenant-9:").is_ok());
        for bad in ["x", "a b:", "session:", &format!("{}:", "n".repeat(64))] {
            assert!(with(bad).is_err(), "{bad:?}");
        }
        let mut twin = app("2:b:s");
        twin.namespace = Some("1:".into());
        assert!(PusherApps::new([app("1:a:s"), twin]).is_err());
    }
}
