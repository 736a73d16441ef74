//! What a cross-node broker's subscription task shares with the broker's handles, the same
//! for Redis and NATS: the requests it takes and the health it reports.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::{oneshot, watch};

use crate::error::BrokerError;

/// What the subscription task tells the broker handles.
pub(super) struct LinkState {
    /// Connected and subscribed to every wanted channel (for NATS: with its streams in
    /// place), so `/readyz` may be green.
    pub(super) healthy: watch::Sender<bool>,
    /// Times the link was lost and brought back.
    pub(super) reconnects: AtomicU64,
}

impl LinkState {
    pub(super) fn new() -> Self {
        Self {
            healthy: watch::Sender::new(false),
            reconnects: AtomicU64::new(0),
        }
    }
}

/// Reports the broker down when the task ends for any reason, a panic included, so that
/// readiness cannot stay green with nobody reading the subscription connection.
pub(super) struct DownOnExit(pub(super) Arc<LinkState>);

impl Drop for DownOnExit {
    fn drop(&mut self) {
        self.0.healthy.send_replace(false);
    }
}

/// Answers a subscribe once the node receives the channel.
pub(super) type Ack = oneshot::Sender<Result<(), BrokerError>>;

/// What the broker handles ask of the subscription task, in the order they asked.
pub(super) enum Request {
    Subscribe { channel: String, done: Ack },
    Unsubscribe { channel: String },
}
