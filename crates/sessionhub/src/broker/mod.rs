//! How a publication reaches the nodes that hold its subscribers, and how a client that
//! missed some gets them back.
//!
//! A [`Broker`] does three things per channel, atomically where it matters:
//! - **publish**: assign the next offset in the channel's history, append the publication
//!   to the history (the last [`HistoryConfig::size`] for [`HistoryConfig::ttl`]), and fan
//!   it out to every subscribed node, in one step, so every live publication carries its
//!   offset and epoch;
//! - **recover**: give back every publication after a position, or say it cannot
//!   (never a partial result);
//! - **history**: read a page of what the channel still keeps, oldest or newest first
//!   (for the server API, where part of the history is a fine answer);
//! - **subscribe / unsubscribe**: tell which channels this node's clients want.
//!
//! A [`Deliver`] sink (the hub's registry of local connections) receives what arrives. The
//! embedded [`LocalBroker`] serves one node from memory; [`RedisBroker`] and
//! [`NatsBroker`] serve many.

mod envelope;
mod link;
mod local;
mod nats;
mod redis;

pub use self::envelope::{DEFAULT_EVENT, Envelope};
pub use self::local::LocalBroker;
pub use self::nats::{NatsBroker, NatsBrokerConfig};
pub use self::redis::{RedisBroker, RedisBrokerConfig};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tungstenite::Utf8Bytes;

use crate::error::BrokerError;

/// One publication on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Position in the channel's history, from 1; 0 on channels without history.
    pub offset: u64,
    /// The generation of the channel's history; a new epoch means the old history is gone.
    pub epoch: Arc<str>,
    /// The data, as JSON text.
    pub data: Utf8Bytes,
}

/// A position in a channel's history: the last publication a client saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The history's epoch.
    pub epoch: String,
    /// The offset of the last publication seen.
    pub offset: u64,
}

/// How to publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Keep the publication in the channel's history and give it an offset.
    pub history: bool,
    /// A publish with a key seen within [`HistoryConfig::idempotency_window`] is not
    /// published again; the first publish's receipt is returned, marked duplicate.
    pub idempotency_key: Option<String>,
}

impl PublishOptions {
    /// With history, without an idempotency key.
    pub fn with_history() -> Self {
        Self {
            history: true,
            idempotency_key: None,
        }
    }
}

/// One publication of [`Broker::publish_batch`].
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// The channel.
    pub channel: String,
    /// The data, as JSON text.
    pub data: Utf8Bytes,
    /// As [`PublishOptions::idempotency_key`].
    pub idempotency_key: Option<String>,
}

/// What a publish reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Nodes that were subscribed to the channel and took the message.
    pub nodes: usize,
    /// Connections that took it, when the broker can know (the local broker can; a
    /// cross-node broker learns only how many nodes took it).
    pub connections: Option<usize>,
    /// The publication's offset (0 without history).
    pub offset: u64,
    /// The history's epoch ("" without history).
    pub epoch: Arc<str>,
    /// The idempotency key was seen before: nothing was published this time.
    pub duplicate: bool,
}

/// The answer to [`Broker::recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The history's current epoch.
    pub epoch: Arc<str>,
    /// The offset of the newest publication (0 if none yet).
    pub offset: u64,
    /// Whether `publications` holds everything after the asked position. False when the
    /// epoch changed or the history no longer reaches back that far; then
    /// `publications` is empty: never a partial result.
    pub recovered: bool,
    /// The missed publications, in order.
    pub publications: Vec<Publication>,
}

impl Recovery {
    /// The answer of a broker that keeps no history: nothing to recover, at a position
    /// (epoch "", offset 0) that no publication moves. A client that comes back with a
    /// position may have missed anything, so it is told `recovered: false`.
    pub(crate) fn without_history(since: Option<&StreamPosition>) -> Self {
        Self {
            epoch: "".into(),
            offset: 0,
            recovered: since.is_none(),
            publications: Vec::new(),
        }
    }

    /// Decides a recovery from what a backend read in one step: the current `epoch` and
    /// top `offset`, and the history entries after `since.offset` it found (in order).
    pub(crate) fn decide(
        epoch: Arc<str>,
        offset: u64,
        since: Option<&StreamPosition>,
        entries: Vec<Publication>,
    ) -> Self {
        let Some(since) = since else {
            return Self {
                epoch,
                offset,
                recovered: true,
                publications: Vec::new(),
            };
        };
        let complete = *since.epoch == *epoch
            && since.offset <= offset
            && entries.len() as u64 == offset - since.offset
            && entries
                .iter()
                .zip(since.offset + 1..)
                .all(|(p, expected)| p.offset == expected);
        Self {
            epoch,
            offset,
            recovered: complete,
            publications: if complete { entries } else { Vec::new() },
        }
    }
}

/// Which part of a channel's history [`Broker::history`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only publications after this position. A position from another epoch selects
    /// nothing: its offsets count another history.
    pub since: Option<StreamPosition>,
    /// At most this many publications (0: only the channel's position).
    pub limit: usize,
    /// Newest first, and then the newest `limit`; otherwise oldest first, the oldest
    /// `limit` after `since`.
    pub reverse: bool,
}

impl HistoryQuery {
    /// Picks the page from `entries`, the kept publications of the channel in `epoch`,
    /// oldest first.
    pub(crate) fn select(
        &self,
        epoch: &str,
        entries: impl DoubleEndedIterator<Item = Publication>,
    ) -> Vec<Publication> {
        if self.since.as_ref().is_some_and(|s| *s.epoch != *epoch) {
            return Vec::new();
        }
        let after = self.since.as_ref().map_or(0, |s| s.offset);
        let wanted = entries.filter(|p| p.offset > after);
        if self.reverse {
            wanted.rev().take(self.limit).collect()
        } else {
            wanted.take(self.limit).collect()
        }
    }
}

/// The answer to [`Broker::history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The history's current epoch ("" on a broker without history).
    pub epoch: Arc<str>,
    /// The offset of the newest publication (0 if none yet).
    pub offset: u64,
    /// The publications the query selected, in the order it asked for. Unlike a
    /// [`Recovery`], possibly only part of what was published after `since`: what the
    /// history no longer keeps is left out.
    pub publications: Vec<Publication>,
}

impl HistoryPage {
    /// The answer of a broker that keeps no history: epoch "", offset 0, nothing.
    pub(crate) fn without_history() -> Self {
        Self {
            epoch: "".into(),
            offset: 0,
            publications: Vec::new(),
        }
    }
}

/// How much history each channel keeps.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// Publications kept per channel. 0 keeps no history at all: every publication has
    /// offset 0 and epoch "", nothing can be recovered, and a publish costs the backend only
    /// its delivery (in Redis a bare PUBLISH instead of a script that also writes a stream;
    /// idempotency keys are still honoured, with a script that only remembers the key).
    pub size: usize,
    /// How long a publication is kept.
    pub ttl: Duration,
    /// How long a channel's epoch and top offset outlive its last use; past it, the channel
    /// starts a new epoch.
    pub meta_ttl: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            ttl: Duration::from_secs(300),
            meta_ttl: Duration::from_secs(86_400),
            idempotency_window: Duration::from_secs(120),
        }
    }
}

impl HistoryConfig {
    /// Whether channels keep any history (`size` > 0).
    pub fn keeps_history(&self) -> bool {
        self.size > 0
    }
}

/// A fresh random epoch.
pub(crate) fn new_epoch() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Epoch candidates without a system call each: a random prefix per source and a counter.
/// Every Redis publish must offer one (the script adopts it only when the channel has no
/// valid epoch), so this is on the hot path; uniqueness is all an epoch needs.
pub(crate) struct Epochs {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl Epochs {
    pub(crate) fn new() -> Self {
        Self {
            prefix: new_epoch(),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn next(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}{n:x}", self.prefix)
    }
}

/// [`Broker::publish_batch`] for a backend that sends each item on its own.
pub(crate) async fn publish_one_by_one<B: Broker + ?Sized>(
    broker: &B,
    items: &[BatchItem],
) -> Vec<Result<Receipt, BrokerError>> {
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let options = PublishOptions {
            history: true,
            idempotency_key: item.idempotency_key.clone(),
        };
        results.push(
            broker
                .publish(&item.channel, item.data.clone(), &options)
                .await,
        );
    }
    results
}

/// Receives the publications that arrive on subscribed channels.
pub trait Deliver: Send + Sync + 'static {
    /// Hands `publication` to every local connection on `channel`; returns how many took it.
    fn deliver(&self, channel: &str, publication: Publication) -> usize;

    /// The node may have missed publications (its link to the other nodes broke and came
    /// back): connections that can recover should do so.
    fn resync(&self);
}

/// Carries publications by channel between the nodes that share it, and keeps history.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes `data` (JSON text) on `channel`. Callers report an error rather than a
    /// success that delivered nothing. An error means it was not published, except when the
    /// link to a shared backend broke with the publish in flight: then the broker cannot
    /// tell. It never sends such a publish again by itself unless
    /// [`PublishOptions::idempotency_key`] makes that harmless; a caller that retries
    /// should pass a key too.
    async fn publish(
        &self,
        channel: &str,
        data: Utf8Bytes,
        options: &PublishOptions,
    ) -> Result<Receipt, BrokerError>;

    /// Publishes every item with history, as [`Broker::publish`] would one after another
    /// (so items on one channel take their offsets in order); one result per item, in
    /// order. A backend that can send them together does: Redis in one pipeline per
    /// server. Never retried: an item that failed may have been published unless it had
    /// an idempotency key, with which it is safe to send again.
    async fn publish_batch(&self, items: &[BatchItem]) -> Vec<Result<Receipt, BrokerError>> {
        publish_one_by_one(self, items).await
    }

    /// The channel's current position, and with `since` every publication after it (see
    /// [`Recovery`]). Starts the channel's epoch if it has none yet, so the position a new
    /// subscriber gets stays valid.
    async fn recover(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
    ) -> Result<Recovery, BrokerError>;

    /// The channel's current position and the page of its kept history that `query`
    /// selects (see [`HistoryQuery`]). Starts the channel's epoch if it has none yet, as
    /// [`Broker::recover`] does.
    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError>;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(offset: u64) -> Publication {
        Publication {
            offset,
            epoch: "e".into(),
            data: Utf8Bytes::from(offset.to_string()),
        }
    }

    fn since(epoch: &str, offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: epoch.into(),
            offset,
        }
    }

    #[test]
    fn a_history_query_takes_the_oldest_or_the_newest_after_its_position() {
        let kept = || (3..=7).map(publication);
        let offsets = |query: HistoryQuery| -> Vec<u64> {
            query.select("e", kept()).iter().map(|p| p.offset).collect()
        };
        let query = |since: Option<StreamPosition>, limit, reverse| HistoryQuery {
            since,
            limit,
            reverse,
        };
        assert_eq!(offsets(query(None, 2, false)), [3, 4]);
        assert_eq!(offsets(query(None, 2, true)), [7, 6]);
        assert_eq!(offsets(query(Some(since("e", 4)), 10, false)), [5, 6, 7]);
        assert_eq!(offsets(query(Some(since("e", 4)), 10, true)), [7, 6, 5]);
        assert_eq!(offsets(query(Some(since("e", 4)), 0, true)), [0u64; 0]);
        assert_eq!(offsets(query(Some(since("f", 4)), 10, false)), [0u64; 0]);
    }

    #[test]
    fn a_covered_gap_is_recovered_whole() {
        let r = Recovery::decide(
            "e".into(),
            5,
            Some(&since("e", 2)),
            (3..=5).map(publication).collect(),
        );
        assert!(r.recovered);
        assert_eq!(r.publications.len(), 3);
    }

    #[test]
    fn a_gap_wider_than_the_history_is_not_recovered_and_nothing_partial_is_returned() {
        let r = Recovery::decide(
            "e".into(),
            9,
            Some(&since("e", 2)),
            (5..=9).map(publication).collect(),
        );
        assert!(!r.recovered);
        assert!(r.publications.is_empty());
    }

    #[test]
    fn another_epoch_is_not_recovered() {
        let r = Recovery::decide("f".into(), 1, Some(&since("e", 0)), vec![publication(1)]);
        assert!(!r.recovered);
    }

    #[test]
    fn up_to_date_is_recovered_with_nothing() {
        let r = Recovery::decide("e".into(), 4, Some(&since("e", 4)), vec![]);
        assert!(r.recovered && r.publications.is_empty());
        let ahead = Recovery::decide("e".into(), 4, Some(&since("e", 7)), vec![]);
        assert!(
            !ahead.recovered,
            "a position past the top is from another history"
        );
    }
}
