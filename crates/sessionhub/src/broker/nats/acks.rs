//! Counting the nodes a publication reached.
//!
//! Redis answers PUBLISH with the number of subscribers; NATS answers nothing, and a
//! message that the history stream republishes does not even come from the publisher. So
//! every publication names a fresh inbox of the publisher's (the `Sessionhub-Ack`
//! header), each node that receives it on its live subscription sends an empty message
//! there after handing it to its sockets, and the publisher counts what arrives within
//! [`NatsBrokerConfig::ack_wait`](super::NatsBrokerConfig::ack_wait) of the store's
//! answer. The count is therefore a lower bound: a node slower than that to acknowledge
//! is not counted (the publication still reaches it). The wait is paid by every publish,
//! including one that no node receives: NATS cannot say how many to expect.

use std::time::Duration;

use async_nats::{Client, Subscriber};
use futures_util::StreamExt;
use tokio::time::{Instant, timeout_at};

use crate::error::BrokerError;

/// A publication's inbox for acknowledgements.
pub(super) struct Acks {
    subject: String,
    subscriber: Subscriber,
}

impl Acks {
    /// Subscribes to a fresh inbox. The subscription goes out before the publication on
    /// the same connection, so the server has it before any node can answer.
    pub(super) async fn listen(client: &Client) -> Result<Self, BrokerError> {
        let subject = client.new_inbox();
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| BrokerError::unavailable("nats subscribe", e))?;
        Ok(Self {
            subject,
            subscriber,
        })
    }

    /// Where nodes acknowledge.
    pub(super) fn subject(&self) -> &str {
        &self.subject
    }

    /// The acknowledgements that arrive within `wait` from now; unsubscribes.
    pub(super) async fn count(mut self, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        let mut nodes = 0;
        while let Ok(Some(_)) = timeout_at(deadline, self.subscriber.next()).await {
            nodes += 1;
        }
        nodes
    }
}
