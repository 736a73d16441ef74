//! How a push reaches the node that holds the socket.
//!
//! A [`Broker`] carries payloads by channel between nodes; a [`Deliver`] sink (the hub's
//! registry of local connections) receives what arrives on the channels this node is
//! subscribed to. The embedded [`LocalBroker`] serves one node; the Redis broker serves many.

mod local;
mod redis;

pub use self::local::LocalBroker;
pub use self::redis::{DEFAULT_PREFIX, RedisBroker, RedisBrokerConfig};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use futures_util::future::BoxFuture;

use crate::error::BrokerError;

/// Receives the messages that arrive on subscribed channels.
pub trait Deliver: Send + Sync + 'static {
    /// Hands `payload` to every local connection on `channel`; returns how many took it.
    fn deliver(&self, channel: &str, payload: &Utf8Bytes) -> usize;
}

/// What a publish reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Nodes that were subscribed to the channel and took the message.
    pub nodes: usize,
    /// Connections that took it, when the broker can know (the local broker can; a
    /// cross-node broker learns only how many nodes took it).
    pub connections: Option<usize>,
}

/// Carries messages by channel between the nodes that share it.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Sends `payload` to every node subscribed to `channel`. An error means it was not
    /// sent: callers report that rather than a success that delivered nothing.
    async fn publish(&self, channel: &str, payload: Utf8Bytes) -> Result<Receipt, BrokerError>;

    /// Starts receiving `channel`. The request is queued before this returns, so calls made
    /// in some order take effect in that order; the future resolves once messages published
    /// afterwards will arrive.
    fn subscribe(&self, channel: &str) -> BoxFuture<'static, Result<(), BrokerError>>;

    /// Stops receiving `channel`, ordered with [`Broker::subscribe`] like it.
    fn unsubscribe(&self, channel: &str);

    /// Whether the broker can carry messages right now (for `/readyz`).
    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}
