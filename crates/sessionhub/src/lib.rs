//! sessionhub: shared HTTP sessions and cross-node WebSocket push for axum.
//!
//! Two kinds of state stick to the node that created them: HTTP sessions and WebSocket
//! connections. This crate moves both behind narrow traits so that any node can serve any
//! request:
//!
//! - [`auth`]: who may connect as whom, who may push, from which origin.
//! - [`session`]: a tower layer and an axum extractor for server-side sessions, with
//!   attribute-level change tracking and atomic increments.
//! - [`store`]: where session records live ([`store::SessionStore`]): in memory with an
//!   optional redb journal, or in Redis.
//! - [`broker`]: how a push reaches the node that holds the socket ([`broker::Broker`]).
//! - [`limits`]: abuse limits (connection and message rates).
//! - [`hooks`]: the application's say in connects, subscribes, publishes and lifetimes:
//!   in Rust ([`hooks::Hooks`]) or over HTTP ([`hooks::HttpHooks`]).
//! - [`hub`]: the connections on this node and the fan-out to them.
//! - [`wire`]: a connection's TCP stream, shared so that a delivery can be written to an
//!   idle socket by the task that delivers it; [`wire::serve`] serves a router that way.
//! - [`control`]: the server API's cluster-wide commands, carried by the broker to every
//!   node's hub.
//! - [`presence`]: who is online, on this node or across the cluster.
//! - [`redis`]: how the Redis backends reach Redis: one [`redis::RedisConfig`] parsed once,
//!   every key name, every Lua script.
//! - [`protocol`]: what travels over a socket, per protocol (the seed's, v1 and Pusher's).
//! - [`gateway`]: the HTTP and WebSocket routes of `sessionhub serve`.
//! - [`webhook`]: signed webhooks, queued once cluster-wide and delivered with retries.
//! - [`telemetry`]: every metric it records, described and registered in one place.
//! - [`error`]: the backends' typed errors and [`ApiError`], the one error users see.
//!
//! Each backed component is a folder: the contract in `mod.rs`, one file (or folder) per
//! backend beside it. Every backend passes the same conformance suite, in
//! `sessionhub-testkit`.
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod auth;
pub mod broker;
pub mod control;
pub mod error;
pub mod gateway;
pub mod hooks;
mod http_client;
pub mod hub;
pub mod limits;
pub mod presence;
pub mod protocol;
pub mod pusher;
pub mod redis;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod webhook;
pub mod wire;

pub use error::ApiError;
pub use session::{Session, SessionConfig, SessionLayer};
