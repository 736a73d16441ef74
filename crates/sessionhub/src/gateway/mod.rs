//! The routes of `sessionhub serve`: the seed-compatible WebSocket endpoint, the push API,
//! presence, health, and the seed's session demo.
//!
//! | route | what |
//! |---|---|
//! | `GET /websocket/{id}` | WebSocket for user `id`, seed protocol (`socket.rs`, `seed.rs`) |
//! | `GET /ws` | WebSocket, protocol v1: channels, history, recovery (`socket.rs`, `v1.rs`) |
//! | `GET /sse`, `POST /sse/publish`, `POST /sse/refresh` | protocol v1 over Server-Sent Events, its publish and token refresh (`sse.rs`, `v1.rs`, `tokens.rs`) |
//! | `POST /api/channels/{channel}/publish` | publish to any channel (`push.rs`) |
//! | `POST /api/publish` | a batch of publications, answered item by item (`batch.rs`) |
//! | `GET /api/channels/{channel}/history` | a page of a channel's history (`history.rs`) |
//! | `GET /api/channels`, `GET /api/info` | active channels; the nodes, cluster-wide (`control.rs`) |
//! | `POST /api/users/{id}/disconnect` | close a user's sockets, or one, on every node |
//! | `POST /api/users/{id}/subscribe`, `.../unsubscribe` | server-side (un)subscribe of a user |
//! | `GET /api/openapi.json` | the server API's OpenAPI document, public (`openapi.rs`) |
//! | `POST /socket/{id}`, `GET /socket/{id}?message=` | push to every connection of `id` |
//! | `GET /api/online` | `{"online": connections, "users": distinct ids}` |
//! | `GET /api/channels/{channel}/presence` | who is on a presence channel (`presence.rs`) |
//! | `GET /api/channels/{channel}/presence/stats` | `{"users": n, "connections": m}` there |
//! | `GET /api/users/{id}/sessions` | how many sessions user `id` has (`admin.rs`) |
//! | `POST /api/users/{id}/logout` | ends every session of user `id` ("log out everywhere") |
//! | `GET /sessionhub.js` | the browser client (an ES module) |
//! | `GET /healthz`, `GET /readyz` | liveness; readiness (store and broker reachable) |
//! | `GET /app/{key}`, `/apps/{id}/…` | the Pusher Channels protocol and HTTP API, with `--pusher-app` (`pusher/`) |
//! | `POST /pusher/auth`, `POST /pusher/user-auth` (`/{key}`) | Pusher channel authorization and sign-in for the HTTP session's user (`pusher/auth.rs`) |
//! | `/login`, `/get-session`, `/invalidate` | the session demo (`demo.rs`) |
//!
//! `/socket/*` and `/api/*` (but the OpenAPI document) require `Authorization: Bearer <api
//! key>` whenever API keys are configured. The server API's routes come from `api()`, whose
//! handlers also make the OpenAPI document (`openapi.rs`); bad input there is read by
//! `input.rs` into `ApiError` JSON.
//!
//! The files import one way only, so that none needs another that needs it back: this file
//! wires the routes; `upgrade.rs` does the WebSocket handshake and watches the raw stream;
//! `socket.rs` runs a connection and hands each frame to its protocol's
//! handler, `seed.rs` or `v1.rs`, which answer with a `plan::Plan`; `sse.rs` runs an SSE
//! stream on `v1.rs`'s channel state; `admission.rs` decides
//! who may connect and for how long, and its credentials are read by the loop and by v1's
//! channel rules; `hooked.rs` asks the application's hooks for both transports; every
//! module sees `state.rs` (the shared [`Gateway`]), which sees none.

mod admin;
mod admission;
mod batch;
mod control;
mod demo;
mod history;
mod hooked;
mod input;
mod openapi;
mod plan;
mod presence;
mod push;
mod pusher;
mod seed;
mod socket;
mod sse;
mod state;
mod tokens;
mod upgrade;
mod v1;

pub use self::openapi::UNDOCUMENTED_ROUTES;
pub use self::state::{Gateway, GatewayConfig, Security, SocketConfig};

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::hub::Online;
use crate::session::{SessionConfig, SessionLayer};

impl Gateway {
    /// The routes. Serve them with `into_make_service_with_connect_info::<SocketAddr>()` so
    /// that trusted proxies can be recognised.
    pub fn router(&self) -> Router {
        let (mut protected, document) = api().split_for_parts();
        let document = Arc::new(openapi::finish(document));
        // Installed even with no keys: a reload may add them.
        protected = protected.route_layer(middleware::from_fn_with_state(
            self.clone(),
            require_api_key,
        ));
        let mut router = Router::new()
            .route("/websocket/{id}", get(socket::upgrade))
            .route("/ws", get(socket::upgrade_v1))
            .route("/sse", get(sse::stream))
            .route(
                "/sse/publish",
                axum::routing::post(sse::publish).options(sse::preflight),
            )
            .route(
                "/sse/refresh",
                axum::routing::post(sse::refresh).options(sse::preflight),
            )
            .merge(protected)
            .route(
                "/api/openapi.json",
                get(move || async move { Json(document.as_ref().clone()) }),
            )
            .route("/sessionhub.js", get(client_js))
            .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/readyz", get(ready));
        if !self.metrics_apart {
            router = router.route("/metrics", get(metrics));
        }
        if self.pusher.is_some() {
            router = router.merge(pusher::routes());
        }
        if self.config.demo {
            let sessions =
                SessionLayer::from_arc(self.store.clone(), SessionConfig::clone(&self.sessions))
                    .with_events(self.session_events());
            router = router.merge(demo::routes().layer(sessions));
        }
        let node = HeaderValue::from_str(self.hub.node_id())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-node-id"));
        router
            .fallback(|| async { ApiError::not_found("no such route") })
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

impl Gateway {
    /// What a [`SessionLayer`](crate::SessionLayer) beside this gateway should tell about
    /// sessions (`with_events`): the hub, so that the sockets of an ended session close, and
    /// the hooks' `session_created` / `session_destroyed`.
    pub fn session_events(&self) -> Arc<dyn crate::session::SessionEvents> {
        match &self.hooks {
            None => Arc::new(self.hub.clone()),
            Some(hooks) => Arc::new(hooked::HookedSessions {
                hub: self.hub.clone(),
                hooks: hooks.clone(),
            }),
        }
    }

    /// `GET /metrics` alone, for a listener of its own (see [`Gateway::with_metrics_apart`]).
    pub fn metrics_router(&self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .fallback(|| async { ApiError::not_found("this address serves /metrics only") })
            .with_state(self.clone())
    }

    /// The OpenAPI 3.1 document of the server API, as `GET /api/openapi.json` serves it.
    pub fn openapi() -> utoipa::openapi::OpenApi {
        openapi::finish(api().into_openapi())
    }
}

/// The server API: every route here is in the OpenAPI document, from its handler's
/// `#[utoipa::path]`.
fn api() -> OpenApiRouter<Gateway> {
    OpenApiRouter::with_openapi(openapi::Base::openapi())
        .routes(routes!(push::push_query, push::push_body))
        .routes(routes!(online))
        .routes(routes!(push::publish_to_channel))
        .routes(routes!(batch::publish))
        .routes(routes!(history::history))
        .routes(routes!(admin::sessions))
        .routes(routes!(admin::logout))
        .routes(routes!(control::disconnect))
        .routes(routes!(control::subscribe))
        .routes(routes!(control::unsubscribe))
        .routes(routes!(control::channels))
        .routes(routes!(control::info))
        .routes(routes!(presence::members))
        .routes(routes!(presence::stats))
}

/// Counts connections and distinct users, on every node.
#[utoipa::path(
    get,
    path = "/api/online",
    tag = "presence",
    responses((status = 200, description = "connections and distinct users", body = Online))
)]
async fn online(State(gateway): State<Gateway>) -> Result<Json<Online>, ApiError> {
    Ok(Json(gateway.presence.online().await?))
}

/// `GET /metrics`: counters and histograms recorded through the `metrics` facade, plus
/// gauges read now. Behind the metrics key, if one is set.
async fn metrics(
    State(gateway): State<Gateway>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(keys) = &gateway.metrics_key {
        match admission::bearer(&headers) {
            Some(key) if keys.verify(key.trim()) => {}
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "metrics_key_invalid",
                    "the metrics key is not valid",
                ));
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "metrics_key_required",
                    "send Authorization: Bearer <metrics key>",
                ));
            }
        }
    }
    let render = gateway
        .metrics
        .clone()
        .ok_or_else(|| ApiError::not_found("metrics are not enabled"))?;
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

/// Refuses `/socket/*` and `/api/*` without a valid `Authorization: Bearer <api key>`,
/// when keys are configured.
async fn require_api_key(
    State(gateway): State<Gateway>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let security = gateway.security();
    if security.api_keys.is_empty() {
        drop(security);
        return Ok(next.run(request).await);
    }
    match admission::bearer(request.headers()) {
        Some(key) if security.api_keys.verify(key.trim()) => {
            drop(security);
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
