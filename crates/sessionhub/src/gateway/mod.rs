//! The routes of `sessionhub serve`: the seed-compatible WebSocket endpoint, the push API,
//! presence, health, and the seed's session demo.
//!
//! | route | what |
//! |---|---|
//! | `GET /websocket/{id}` | WebSocket for user `id` ([`socket`]) |
//! | `POST /socket/{id}`, `GET /socket/{id}?message=` | push to every connection of `id` |
//! | `GET /api/online` | `{"online": connections, "users": distinct ids}` |
//! | `GET /healthz`, `GET /readyz` | liveness; readiness (store and broker reachable) |
//! | `/login`, `/get-session`, `/invalidate` | the session demo ([`demo`]) |

mod demo;
mod push;
mod socket;

pub use self::socket::SocketConfig;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::ApiError;
use crate::hub::{Hub, Online};
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
    /// Largest push body accepted, in bytes (a pushed message becomes one frame, so this
    /// matches the socket's inbound limit by default).
    pub max_push_bytes: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let socket = SocketConfig::default();
        Self {
            demo: true,
            max_push_bytes: socket.max_message_size,
            socket,
        }
    }
}

/// Everything the routes share. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    hub: Hub,
    store: Arc<dyn SessionStore>,
    sessions: SessionConfig,
    config: Arc<GatewayConfig>,
    presence: Arc<dyn Presence>,
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
            hub,
            store,
            sessions,
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
        }
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
        let mut router = Router::new()
            .route("/websocket/{id}", get(socket::upgrade))
            .route("/socket/{id}", get(push::push_query).post(push::push_body))
            .layer(DefaultBodyLimit::max(self.config.max_push_bytes))
            .route("/api/online", get(online))
            .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/readyz", get(ready));
        if self.config.demo {
            router = router.merge(demo::routes().layer(SessionLayer::from_arc(
                self.store.clone(),
                self.sessions.clone(),
            )));
        }
        let node = HeaderValue::from_str(self.hub.node_id())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-node-id"));
        router
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
