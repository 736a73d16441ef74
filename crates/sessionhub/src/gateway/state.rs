//! What every route shares: the [`Gateway`] and its configuration. Kept apart from the
//! routes (`mod.rs` wires them) so that every route module depends on this one and none
//! on another, and `mod.rs` on all of them.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::{ApiKeys, ChannelRules, OriginPolicy, PrivateChannels, TokenVerifier, WsAuth};
use crate::hooks::Hooks;
use crate::hub::Hub;
use crate::limits::{Limits, RateLimiter, Rates};
use crate::presence::{LocalPresence, Presence};
use crate::protocol::UserId;
use crate::pusher::PusherApps;
use crate::session::SessionConfig;
use crate::store::SessionStore;

/// What the gateway serves and how.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Serve the seed's session demo (`/login`, `/get-session`, `/invalidate`).
    pub demo: bool,
    /// WebSocket behaviour.
    pub socket: SocketConfig,
    /// Largest request body accepted, in bytes (a pushed message becomes one frame, so this
    /// matches the socket's inbound limit by default).
    pub max_push_bytes: usize,
    /// Authentication, authorization and abuse limits, at start: [`Gateway::reload`]
    /// replaces them, and the routes read the gateway's current ones.
    pub security: Security,
}

/// Who may do what. The default is the seed's open mode, fit only for loopback.
#[derive(Debug, Clone)]
pub struct Security {
    /// How sockets authenticate.
    pub ws_auth: WsAuth,
    /// Keys for `/socket/*` and `/api/*`; none configured means those are open.
    pub api_keys: ApiKeys,
    /// Verifies tokens when `ws_auth` is [`WsAuth::Token`].
    pub tokens: Option<TokenVerifier>,
    /// Which web origins may open sockets.
    pub origins: OriginPolicy,
    /// What clients may publish themselves (in every mode but open).
    pub channels: ChannelRules,
    /// Channels a client joins only with a subscribe token, in every mode.
    pub private_channels: PrivateChannels,
    /// Abuse limits.
    pub limits: Limits,
}

impl Security {
    /// Whether a socket client may publish to `channel` itself: anywhere in open mode, else
    /// where the channel rules allow it.
    pub(crate) fn client_may_publish(&self, channel: &str) -> bool {
        self.ws_auth == WsAuth::Open || self.channels.can_publish(channel)
    }

    /// Whether `user`'s clients may join `channel` on their own (without a token): their
    /// own personal channel and no one else's, anything in open mode, else where the channel
    /// rules allow it. Asked of v1 subscribes and of the Pusher auth endpoint's signatures.
    pub(crate) fn client_may_subscribe(&self, user: &UserId, channel: &str) -> bool {
        match UserId::from_channel(channel) {
            Some(owner) => owner == *user || self.ws_auth == WsAuth::Open,
            None => self.ws_auth == WsAuth::Open || self.channels.can_subscribe(channel),
        }
    }
}

impl Default for Security {
    fn default() -> Self {
        Self {
            ws_auth: WsAuth::Open,
            api_keys: ApiKeys::default(),
            tokens: None,
            origins: OriginPolicy::SameHost,
            channels: ChannelRules::default(),
            private_channels: PrivateChannels::default(),
            limits: Limits::default(),
        }
    }
}

/// How sockets behave.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// How often the server pings; at most half the idle timeout, so a live client that
    /// only answers pings is never taken for idle.
    pub ping_interval: Duration,
    /// Largest inbound message, in bytes; a larger one closes the connection with 1009.
    pub max_message_size: usize,
    /// How long an SSE stream may go without sending anything before a heartbeat comment:
    /// keeps proxies from timing it out, and finds a dead peer when the write fails.
    pub sse_heartbeat: Duration,
    /// How long a drain ([`Gateway::drain`]) spreads the closing of connections over, so
    /// that their clients do not all reconnect to the other nodes at the same instant.
    pub drain_window: Duration,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(600),
            ping_interval: Duration::from_secs(25),
            max_message_size: 64 * 1024,
            sse_heartbeat: Duration::from_secs(15),
            drain_window: Duration::from_secs(5),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let socket = SocketConfig::default();
        Self {
            demo: true,
            max_push_bytes: socket.max_message_size,
            socket,
            security: Security::default(),
        }
    }
}

/// The part of [`GatewayConfig`] that stays as it was at start. The security settings are
/// not here but behind [`Gateway::security`], so that no route can read a copy a reload
/// has made stale.
#[derive(Debug)]
pub(super) struct Fixed {
    pub(super) demo: bool,
    pub(super) socket: SocketConfig,
    pub(super) max_push_bytes: usize,
}

/// Everything the routes share. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(super) hub: Hub,
    pub(super) store: Arc<dyn SessionStore>,
    // Behind an Arc: axum clones the state several times per request, and the config
    // holds strings.
    pub(super) sessions: Arc<SessionConfig>,
    pub(super) config: Arc<Fixed>,
    /// The config's security settings until a reload replaces them.
    security: Arc<ArcSwap<Security>>,
    pub(super) presence: Arc<dyn Presence>,
    pub(super) rates: Rates,
    pub(super) metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// The application's hooks; `None` keeps the built-in decisions and costs nothing.
    pub(super) hooks: Option<Arc<dyn Hooks>>,
    /// The key `GET /metrics` requires, if any.
    pub(super) metrics_key: Option<Arc<ApiKeys>>,
    /// Whether `/metrics` is served by [`Gateway::metrics_router`] only.
    pub(super) metrics_apart: bool,
    /// The Pusher apps this server speaks for; `None` leaves the Pusher routes out.
    pub(super) pusher: Option<Arc<PusherApps>>,
    pub(super) shutdown: CancellationToken,
    /// When the drain started (set once, before `shutdown` is cancelled).
    pub(super) drain_started: Arc<OnceLock<Instant>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("hub", &self.hub)
            .field("config", &self.config)
            .field("metrics", &self.metrics.is_some())
            .field("hooks", &self.hooks.is_some())
            .field("closing", &self.shutdown.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway over `hub` (sockets and pushes) and `store` (sessions).
    pub fn new(
        hub: Hub,
        store: Arc<dyn SessionStore>,
        sessions: SessionConfig,
        config: GatewayConfig,
    ) -> Self {
        let GatewayConfig {
            demo,
            socket,
            max_push_bytes,
            security,
        } = config;
        Self {
            presence: Arc::new(LocalPresence::new(&hub)),
            rates: Rates::default(),
            hub,
            store,
            sessions: Arc::new(sessions),
            security: Arc::new(ArcSwap::from_pointee(security)),
            config: Arc::new(Fixed {
                demo,
                socket,
                max_push_bytes,
            }),
            metrics: None,
            hooks: None,
            metrics_key: None,
            metrics_apart: false,
            pusher: None,
            shutdown: CancellationToken::new(),
            drain_started: Arc::default(),
        }
    }

    /// Serves `GET /metrics` (Prometheus text format) with what `render` returns, e.g. a
    /// `metrics-exporter-prometheus` handle's `render`. The connection and broker gauges are
    /// set just before each render.
    pub fn with_metrics(mut self, render: Arc<dyn Fn() -> String + Send + Sync>) -> Self {
        self.metrics = Some(render);
        self
    }

    /// Takes the rates of connects, publishes and logins from `limiter` instead of this
    /// node's own buckets: a [`crate::limits::RedisRateLimiter`] (in a
    /// [`crate::limits::FallbackRateLimiter`]) makes them hold across the cluster.
    pub fn with_rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.rates = Rates::new(limiter);
        self
    }

    /// Lets `hooks` decide who connects as whom, who joins which channel, what a client's
    /// publish does and how long a connection lives (protocol v1 and SSE; see
    /// [`crate::hooks`]). The built-in checks still run first.
    pub fn with_hooks(mut self, hooks: Arc<dyn Hooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Requires `Authorization: Bearer <key>` (one of `keys`) on `GET /metrics`; without
    /// it the answer is 401 JSON. No keys: open.
    pub fn with_metrics_key(mut self, keys: ApiKeys) -> Self {
        self.metrics_key = (!keys.is_empty()).then(|| Arc::new(keys));
        self
    }

    /// Leaves `GET /metrics` out of [`Gateway::router`] (404 there): serve
    /// [`Gateway::metrics_router`] on an address of its own, the Prometheus convention.
    pub fn with_metrics_apart(mut self) -> Self {
        self.metrics_apart = true;
        self
    }

    /// Speaks the Pusher Channels protocol for `apps` (`/app/{key}` and the HTTP API under
    /// `/apps/{id}`; see [`crate::pusher`]). No apps: the Pusher routes stay out.
    pub fn with_pusher(mut self, apps: PusherApps) -> Self {
        self.pusher = (!apps.is_empty()).then(|| Arc::new(apps));
        self
    }

    /// The security settings in force: those of the config, or of the last
    /// [`Gateway::reload`].
    pub(super) fn security(&self) -> Guard<Arc<Security>> {
        self.security.load()
    }

    /// [`Gateway::security`] to hold across an `await` (a `Guard` should not be).
    pub(super) fn security_owned(&self) -> Arc<Security> {
        self.security.load_full()
    }

    /// Replaces the security settings without closing anything: requests and new
    /// connections see the new API keys, origins, channel rules and limits at once; an open
    /// connection keeps the credentials it was admitted with and the message rate it
    /// started with. A changed rate limit starts with full buckets. (The server changes only what may change live: see `sessionhub serve`'s
    /// SIGHUP.)
    pub fn reload(&self, security: Security) {
        self.security.store(Arc::new(security));
    }

    /// Counts `/api/online` with `presence` instead of this node's own connections (cluster
    /// mode).
    pub fn with_presence(mut self, presence: Arc<dyn Presence>) -> Self {
        self.presence = presence;
        self
    }

    /// Starts a drain: `/readyz` turns red and every connection closes with 1012 (service
    /// restart; SSE streams with a final `disconnect` event) at its own moment within
    /// [`SocketConfig::drain_window`], spread evenly, so that its client reconnects to
    /// another node and recovers without a stampede. Until its moment a connection keeps
    /// delivering. Call when the server stops; stop accepting connections at the same time.
    pub fn drain(&self) {
        self.drain_started.get_or_init(Instant::now);
        self.shutdown.cancel();
    }

    /// When connection `id` closes in the drain under way (the drain must have started).
    /// Consecutive ids land far apart in the window (Fibonacci hashing), so whichever
    /// connections are open, their closes are spread over all of it.
    pub(super) fn drain_turn(&self, id: u64) -> Instant {
        let started = *self.drain_started.get_or_init(Instant::now);
        let spread = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
        started + self.config.socket.drain_window.mul_f64(spread)
    }

    /// The session store, to persist it on shutdown.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }
}

/// A gateway on one node, memory only, with `ws_auth` and channel `rules`
/// (`PREFIX=subscribe,publish`): for the protocol handlers' tests.
#[cfg(test)]
pub(super) fn test_gateway(ws_auth: WsAuth, rules: &[&str]) -> Gateway {
    let security = Security {
        ws_auth,
        channels: ChannelRules::new(rules.iter().map(|r| r.parse().unwrap()).collect()),
        ..Security::default()
    };
    let config = GatewayConfig {
        security,
        ..GatewayConfig::default()
    };
    let store = Arc::new(crate::store::MemoryStore::new());
    Gateway::new(Hub::local("n1"), store, SessionConfig::default(), config)
}
