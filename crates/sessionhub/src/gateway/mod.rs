//! The routes of `sessionhub serve`: the seed-compatible WebSocket endpoint, the push API,
//! presence, health, and the seed's session demo.
//!
//! | route | what |
//! |---|---|
//! | `GET /websocket/{id}` | WebSocket for user `id`, seed protocol ([`socket`]) |
//! | `GET /ws` | WebSocket, protocol v1: channels, history, recovery ([`v1`]) |
//! | `POST /api/channels/{channel}/publish` | publish to any channel |
//! | `POST /socket/{id}`, `GET /socket/{id}?message=` | push to every connection of `id` |
//! | `GET /api/online` | `{"online": connections, "users": distinct ids}` |
//! | `GET /api/users/{id}/sessions` | how many sessions user `id` has ([`admin`]) |
//! | `POST /api/users/{id}/logout` | ends every session of user `id` ("log out everywhere") |
//!
//! `/socket/*` and `/api/*` require `Authorization: Bearer <api key>` whenever API keys are
//! configured.
//! | `GET /sessionhub.js` | the browser client (an ES module) |
//! | `GET /healthz`, `GET /readyz` | liveness; readiness (store and broker reachable) |
//! | `/login`, `/get-session`, `/invalidate` | the session demo ([`demo`]) |

mod admin;
mod demo;
mod push;
mod socket;
mod v1;

pub use self::socket::SocketConfig;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::{ApiKeys, ChannelRules, OriginPolicy, TokenVerifier, WsAuth};
use crate::error::ApiError;
use crate::hub::{Hub, Online};
use crate::limits::{ConnectionRate, Limits};
use crate::presence::{LocalPresence, Presence};
use crate::session::{SessionConfig, SessionLayer};
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
    /// Authentication, authorization and abuse limits.
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
    /// Abuse limits.
    pub limits: Limits,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            ws_auth: WsAuth::Open,
            api_keys: ApiKeys::default(),
            tokens: None,
            origins: OriginPolicy::SameHost,
            channels: ChannelRules::default(),
            limits: Limits::default(),
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

/// Everything the routes share. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    hub: Hub,
    store: Arc<dyn SessionStore>,
    // Behind an Arc: axum clones the state several times per request, and the config
    // holds strings.
    sessions: Arc<SessionConfig>,
    config: Arc<GatewayConfig>,
    presence: Arc<dyn Presence>,
    connection_rate: Arc<ConnectionRate>,
    metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    shutdown: CancellationToken,
}

impl Gateway {
    /// A gateway over `hub` (sockets and pushes) and `store` (sessions).
    pub fn new(
        hub: Hub,
        store: Arc<dyn SessionStore>,
        sessions: SessionConfig,
        config: GatewayConfig,
    ) -> Self {
        Self {
            presence: Arc::new(LocalPresence(hub.clone())),
            connection_rate: Arc::new(ConnectionRate::new(
                config.security.limits.connections_per_ip_per_sec,
            )),
            hub,
            store,
            sessions: Arc::new(sessions),
            config: Arc::new(config),
            metrics: None,
            shutdown: CancellationToken::new(),
        }
    }

    /// Serves `GET /metrics` (Prometheus text format) with what `render` returns, e.g. a
    /// `metrics-exporter-prometheus` handle's `render`. The connection and broker gauges are
    /// set just before each render.
    pub fn with_metrics(mut self, render: Arc<dyn Fn() -> String + Send + Sync>) -> Self {
        self.metrics = Some(render);
        self
    }

    /// Counts `/api/online` with `presence` instead of this node's own connections (cluster
    /// mode).
    pub fn with_presence(mut self, presence: Arc<dyn Presence>) -> Self {
        self.presence = presence;
        self
    }

    /// Closes every open socket with 1001 (going away) and refuses new ones. Call when the
    /// server stops, so clients reconnect to another node at once.
    pub fn close_sockets(&self) {
        self.shutdown.cancel();
    }

    /// The session store, to persist it on shutdown.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The routes. Serve them with `into_make_service_with_connect_info::<SocketAddr>()` so
    /// that trusted proxies can be recognised.
    pub fn router(&self) -> Router {
        let mut protected = Router::new()
            .route("/socket/{id}", get(push::push_query).post(push::push_body))
            .route("/api/online", get(online))
            .route(
                "/api/channels/{channel}/publish",
                axum::routing::post(push::publish_to_channel),
            )
            .route("/api/users/{id}/sessions", get(admin::sessions))
            .route("/api/users/{id}/logout", axum::routing::post(admin::logout));
        if !self.config.security.api_keys.is_empty() {
            protected = protected.route_layer(middleware::from_fn_with_state(
                self.clone(),
                require_api_key,
            ));
        }
        let mut router = Router::new()
            .route("/websocket/{id}", get(socket::upgrade))
            .route("/ws", get(socket::upgrade_v1))
            .merge(protected)
            .route("/sessionhub.js", get(client_js))
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/readyz", get(ready));
        if self.config.demo {
            let sessions =
                SessionLayer::from_arc(self.store.clone(), SessionConfig::clone(&self.sessions))
                    .with_events(Arc::new(self.hub.clone()));
            router = router.merge(demo::routes().layer(sessions));
        }
        let node = HeaderValue::from_str(self.hub.node_id())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-node-id"));
        router
            .fallback(|| async {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
            })
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "this route does not take that method",
                )
            })
            .layer(DefaultBodyLimit::max(self.config.max_push_bytes))
            .layer(SetResponseHeaderLayer::overriding(
                HeaderName::from_static("x-sessionhub-node"),
                node,
            ))
            .with_state(self.clone())
    }
}

async fn online(State(gateway): State<Gateway>) -> Result<Json<Online>, ApiError> {
    Ok(Json(gateway.presence.online().await?))
}

/// `GET /metrics`: counters and histograms recorded through the `metrics` facade, plus
/// gauges read now.
async fn metrics(State(gateway): State<Gateway>) -> Result<Response, ApiError> {
    let render = gateway.metrics.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are not enabled",
        )
    })?;
    let online = gateway.hub.online();
    metrics::gauge!("sessionhub_connections").set(online.online as f64);
    metrics::gauge!("sessionhub_users").set(online.users as f64);
    let broker_up = gateway.hub.broker().ping().await.is_ok();
    metrics::gauge!("sessionhub_broker_up").set(if broker_up { 1.0 } else { 0.0 });
    let store_up = gateway.store.ping().await.is_ok();
    metrics::gauge!("sessionhub_store_up").set(if store_up { 1.0 } else { 0.0 });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(),
    )
        .into_response())
}

/// The browser client, an ES module: `import { connect } from "/sessionhub.js"`.
async fn client_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // A public script: pages on other origins import it as a module, which needs CORS.
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        include_str!("../../assets/sessionhub.js"),
    )
}

/// Refuses `/socket/*` and `/api/*` without a valid `Authorization: Bearer <api key>`.
async fn require_api_key(
    State(gateway): State<Gateway>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(key) if gateway.config.security.api_keys.verify(key.trim()) => {
            Ok(next.run(request).await)
        }
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "api_key_invalid",
            "the API key is not valid",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "api_key_required",
            "send Authorization: Bearer <api key>",
        )),
    }
}

async fn ready(State(gateway): State<Gateway>) -> impl IntoResponse {
    let store = gateway.store.ping().await.err().map(|e| e.to_string());
    let broker = gateway
        .hub
        .broker()
        .ping()
        .await
        .err()
        .map(|e| e.to_string());
    let ready = store.is_none() && broker.is_none() && !gateway.shutdown.is_cancelled();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "store": store.unwrap_or_else(|| "ok".into()),
        "broker": broker.unwrap_or_else(|| "ok".into()),
    });
    (status, Json(body))
}
