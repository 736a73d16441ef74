//! Counting the nodes a publication reaches.
//!
//! Redis answers PUBLISH with the number of subscribers; NATS tells a publisher nothing,
//! and a message the history stream republishes does not even come from the publisher.
//! So each publish first asks: a probe, a message with the `Sessionhub-Probe` header and a
//! reply inbox, goes to the channel's live subject just before the publication, on the
//! same connection. Every node subscribed there answers it (and hands nothing to its
//! sockets). Like PUBLISH's count, this counts the nodes subscribed at publish time.
//!
//! With no node subscribed, the server itself answers at once with "no responders", so
//! a push nobody receives costs one round trip more, not a wait. Otherwise the count
//! takes the answers that arrive until as long again as the first one took (at least
//! [`LINGER`]) after it, within
//! [`NatsBrokerConfig::probe_wait`](super::NatsBrokerConfig::probe_wait) in all: NATS cannot
//! say how many answers to expect, so a node slower than that is not counted (the
//! publication still reaches it). The count is a lower bound.

use std::time::Duration;

use async_nats::{Client, HeaderMap, StatusCode, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::{Instant, timeout_at};

use super::headers;
use crate::error::BrokerError;

/// The least a publisher waits for more answers after the first one: nodes on one
/// server get the probe at the same moment, and answer within it unless one is busy.
const LINGER: Duration = Duration::from_millis(5);

/// A probe sent, and the inbox its answers come to.
pub(super) struct Census {
    sent: Instant,
    answers: Subscriber,
}

impl Census {
    /// Sends a probe to the live subject `live`. The inbox is subscribed before the probe
    /// goes out on the same connection, so the server has it before anyone can answer.
    pub(super) async fn ask(client: &Client, live: String) -> Result<Self, BrokerError> {
        let failed = |e| BrokerError::unavailable("nats probe", e);
        let inbox = client.new_inbox();
        let answers = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| BrokerError::unavailable("nats subscribe", e))?;
        let mut probe = HeaderMap::new();
        probe.insert(headers::PROBE, "1");
        client
            .publish_with_reply_and_headers(live, inbox, probe, Bytes::new())
            .await
            .map_err(failed)?;
        Ok(Self {
            sent: Instant::now(),
            answers,
        })
    }

    /// The nodes that answered (see the module doc); unsubscribes.
    pub(super) async fn count(mut self, wait: Duration) -> usize {
        let deadline = self.sent + wait;
        match timeout_at(deadline, self.answers.next()).await {
            Ok(Some(first)) if first.status != Some(StatusCode::NO_RESPONDERS) => {}
            _ => return 0,
        }
        let linger = self.sent.elapsed().max(LINGER);
        let until = deadline.min(Instant::now() + linger);
        let mut nodes = 1;
        while let Ok(Some(_)) = timeout_at(until, self.answers.next()).await {
            nodes += 1;
        }
        nodes
    }
}
