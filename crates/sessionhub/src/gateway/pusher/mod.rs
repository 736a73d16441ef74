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

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use super::Gateway;
use crate::broker::HistoryQuery;
use crate::error::BrokerError;
use crate::protocol::pusher;

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

/// The event a cache channel keeps: its last.
pub(super) struct Cached {
    /// The event as a subscriber gets it.
    pub(super) frame: String,
    /// Its position in the channel's history (epoch, offset).
    pub(super) position: (Arc<str>, u64),
    /// When it was published (milliseconds since the Unix epoch), if it says.
    pub(super) at: Option<u64>,
}

/// The event hub channel `hub` (a cache channel) keeps, if it keeps one: replayed to a
/// subscriber, and told by `info=cache`.
pub(super) async fn cached_event(
    hub: &str,
    gateway: &Gateway,
) -> Result<Option<Cached>, BrokerError> {
    let query = HistoryQuery {
        since: None,
        limit: 1,
        reverse: true,
    };
    let (page, envelopes) = gateway.hub.history(hub, &query).await?;
    let (Some(publication), Some(envelope)) = (page.publications.first(), envelopes.first()) else {
        return Ok(None);
    };
    let envelope = envelope.as_ref();
    let event = envelope
        .and_then(|e| e.event.as_deref())
        .unwrap_or(crate::broker::DEFAULT_EVENT);
    let user = envelope.and_then(|e| e.user.as_deref());
    Ok(Some(Cached {
        frame: pusher::event(
            event,
            pusher::pusher_name(hub),
            publication.data.as_str(),
            user,
        ),
        position: (publication.epoch.clone(), publication.offset),
        at: envelope.and_then(|e| e.at),
    }))
}
