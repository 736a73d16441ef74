//! The Pusher Channels protocol (version 7) on the hub: `GET /app/{key}` for pusher-js and
//! Laravel Echo, the HTTP API under `/apps/{id}` for the Pusher server SDKs, and
//! `/pusher/auth` and `/pusher/user-auth`, which sign subscriptions and sign-ins for the
//! HTTP session's user (`auth.rs`). Mounted only when [`Gateway::with_pusher`] configured
//! an app.
//!
//! A Pusher connection is a hub connection like a v1 socket's: it joins the same channels
//! through the same broker and presence, so a publication reaches Pusher and v1 clients of
//! a channel alike, on every node and backend. What Pusher adds (event names, `socket_id`
//! exclusion, the sender of a client event) travels in the publication's
//! [`Envelope`](crate::broker::Envelope).
//!
//! `socket.rs` runs a Pusher connection; `rest.rs` answers the HTTP API, whose requests
//! are checked by [`crate::pusher::request`].

mod auth;
mod rest;
mod socket;
mod user;

use axum::Router;
use axum::routing::{get, post};

use super::Gateway;

/// The Pusher routes.
pub(super) fn routes() -> Router<Gateway> {
    Router::new()
        .route("/app/{key}", get(socket::upgrade))
        .route("/apps/{id}/events", post(rest::events))
        .route("/apps/{id}/batch_events", post(rest::batch_events))
        .route("/apps/{id}/channels", get(rest::channels))
        .route("/apps/{id}/channels/{channel}", get(rest::channel))
        .route("/apps/{id}/channels/{channel}/users", get(rest::users))
        .route(
            "/apps/{id}/users/{user}/terminate_connections",
            post(rest::terminate_connections),
        )
        .route(
            "/users/{user}/terminate_connections",
            post(rest::terminate_connections_of_key),
        )
        .route("/pusher/auth", post(auth::channel))
        .route("/pusher/auth/{key}", post(auth::channel))
        .route("/pusher/user-auth", post(auth::user))
        .route("/pusher/user-auth/{key}", post(auth::user))
}
