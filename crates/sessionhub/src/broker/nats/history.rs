//! Channel history in JetStream: the two streams, channel offsets and epochs, publishing
//! with history, and recovery.
//!
//! # Offsets
//!
//! JetStream numbers messages per stream, not per subject, and clients need offsets that
//! count 1, 2, 3 per channel with no gap ([`Recovery::decide`] checks exactly that, and a
//! v1 socket that sees a gap asks to recover). So the offset is ours, in a header: a
//! publish reads the channel's last message (`direct get last_by_subject`, cached per
//! channel on the node that published it), writes offset + 1 with the same epoch, and
//! sends it with `Nats-Expected-Last-Subject-Sequence` set to the last message's stream
//! sequence. The server stores it only if no other message reached the subject in
//! between; if one did (another node published), it refuses the publish, stores nothing,
//! and the broker reads the last message again and tries again. So offsets are assigned
//! by a compare-and-set on the subject: two publications can never take the same offset,
//! and none is skipped. On one node, publishes to a channel wait for each other (a lock
//! per channel) instead of racing to refuse each other.
//!
//! Each message also carries the stream sequence of the channel's message before it
//! (the expected sequence it was sent with), so recovery walks back from the last message
//! to the position asked for, one direct get per publication, and knows the chain is
//! whole only if every offset on the way is there, in the same epoch, and young enough.
//!
//! # Live delivery
//!
//! The history stream republishes each message, headers included, to the channel's live
//! subject once it is stored, and only then: a message the server refused (wrong last
//! sequence, a duplicate idempotency key) never reaches a node. That is why publications
//! go to a subject of their own (`<prefix>.h.<c>`) and nodes listen on another
//! (`<prefix>.ch.<c>`): a stream that captured the live subject would not stop core NATS
//! from delivering what it then refused. The copies come in store order, except that two
//! publishing connections' copies can cross (see `order`).
//!
//! # Epochs
//!
//! The epoch is stored with every message and carried forward by the next publish; a
//! channel without any message (never used, or idle past [`HistoryConfig::meta_ttl`], the
//! stream's `max_age`) starts a new random one. An epoch is also bound to the
//! `server_id` of the nats-server that stored it: nats-server acknowledges a publish
//! before its file store has it on disk, so a crash may lose the newest messages, and
//! reusing their offsets in the same epoch would let a recovering client skip
//! publications. A nats-server picks a new `server_id` each time it starts, so after any
//! restart every channel starts a new epoch at its next publish or recovery, and clients
//! that come back are told `recovered: false` rather than given a history with a hole.
//!
//! `recover` on a channel without an epoch starts one by storing a start marker (offset
//! 0, no data, not delivered), with the same compare-and-set, so that the position it
//! hands out stays valid.
//!
//! # Limits
//!
//! The stream keeps [`HistoryConfig::size`] + 1 messages per channel (one for a start
//! marker) for [`HistoryConfig::meta_ttl`], so that a channel's last offset and epoch
//! outlive its history like Redis's meta key does; recovery serves only the last `size`
//! publications, and only those younger than [`HistoryConfig::ttl`] (judged by the
//! server's timestamp against this node's clock).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, Republish};
use async_nats::jetstream::{self, Context};
use async_nats::{Client, HeaderMap, connection::State};
use bytes::Bytes;
use tokio::time::{Instant, timeout_at};

use super::headers::{self, Stored};
use super::subjects::Subjects;
use crate::broker::{
    HistoryConfig, HistoryPage, HistoryQuery, Publication, Recovery, StreamPosition, new_epoch,
};
use crate::error::BrokerError;

/// The whole of one publish or recovery, retries included: the caller hears about an
/// outage within this, never later (as the Redis broker's command timeout).
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_millis(1500);

/// Channels whose last message a node remembers before it forgets the idle ones: the
/// cache only saves a read per publish, and a node may see millions of channels.
const CACHED_CHANNELS: usize = 10_000;

/// What a publish stored.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) offset: u64,
    pub(super) epoch: Arc<str>,
    /// The idempotency key was seen before; nothing was stored or delivered.
    pub(super) duplicate: bool,
}

/// A channel's last message, as far as the next publish needs it.
#[derive(Debug, Clone)]
struct Top {
    seq: u64,
    offset: u64,
    epoch: Arc<str>,
    bind: Arc<str>,
}

impl From<&Stored> for Top {
    fn from(stored: &Stored) -> Self {
        Self {
            seq: stored.seq,
            offset: stored.offset,
            epoch: stored.epoch.clone(),
            bind: stored.bind.clone(),
        }
    }
}

/// JetStream for one broker: its streams, and per channel the last message it knows of.
pub(super) struct History {
    client: Client,
    js: Context,
    subjects: Subjects,
    config: HistoryConfig,
    /// Per channel: a lock that orders this node's publishes, around the last message
    /// this node stored or read (`None`: to be read).
    tops: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Top>>>>>,
}

impl History {
    pub(super) fn new(client: Client, subjects: Subjects, config: HistoryConfig) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(COMMAND_TIMEOUT)
            .build(client.clone());
        Self {
            client,
            js,
            subjects,
            config,
            tops: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn config(&self) -> &HistoryConfig {
        &self.config
    }

    /// Creates the streams, or updates them to this node's settings (the last node to
    /// start sets them, so every node should have the same history settings).
    pub(super) async fn ensure_streams(&self) -> Result<(), BrokerError> {
        let failed = |e| BrokerError::unavailable("nats stream", e);
        let idempotency = self.config.idempotency_window;
        if self.config.keeps_history() {
            let (subjects, destination) = self.subjects.history_filter();
            let config = stream::Config {
                name: self.subjects.history_stream(),
                subjects: vec![subjects.clone()],
                // One more than the history: an epoch's start marker may hold a slot.
                max_messages_per_subject: i64::try_from(self.config.size + 1).unwrap_or(i64::MAX),
                max_age: self.config.meta_ttl,
                // JetStream refuses a window longer than the age limit.
                duplicate_window: idempotency.min(self.config.meta_ttl),
                allow_direct: true,
                republish: Some(Republish {
                    source: subjects,
                    destination,
                    headers_only: false,
                }),
                ..Default::default()
            };
            self.js
                .create_or_update_stream(config)
                .await
                .map_err(failed)?;
        }
        let (subjects, destination) = self.subjects.keys_filter();
        let keys = stream::Config {
            name: self.subjects.keys_stream(),
            subjects: vec![subjects.clone()],
            // The key is what matters; the message only has to live until republished.
            max_messages_per_subject: 1,
            max_age: idempotency,
            duplicate_window: idempotency,
            republish: Some(Republish {
                source: subjects,
                destination,
                headers_only: false,
            }),
            ..Default::default()
        };
        self.js
            .create_or_update_stream(keys)
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Forgets every cached last message: after a reconnection they may be stale.
    pub(super) fn forget(&self) {
        self.tops.lock().expect("never poisoned").clear();
    }

    /// Fails at once while disconnected: async-nats would queue the request and send it
    /// after reconnecting, possibly after the caller was told it failed.
    pub(super) fn connected(&self) -> Result<(), BrokerError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(BrokerError::unavailable(
                "nats",
                format!("not connected ({state})"),
            )),
        }
    }

    /// The `server_id` epochs are bound to now.
    fn server(&self) -> Arc<str> {
        self.client.server_info().server_id.into()
    }

    fn top(&self, channel: &str) -> Arc<tokio::sync::Mutex<Option<Top>>> {
        let mut tops = self.tops.lock().expect("never poisoned");
        if tops.len() >= CACHED_CHANNELS && !tops.contains_key(channel) {
            // Only entries nobody holds: a held one orders publishes in progress.
            tops.retain(|_, top| Arc::strong_count(top) > 1);
        }
        tops.entry(channel.to_owned()).or_default().clone()
    }

    /// Publishes `data` on `channel` with history (see the module doc).
    pub(super) async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        key: Option<&str>,
    ) -> Result<Outcome, BrokerError> {
        self.connected()?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let subject = self.subjects.history(channel);
        let top = self.top(channel);
        let mut top = top.lock().await;
        let attempts = async {
            loop {
                let server = self.server();
                if top.as_ref().is_none_or(|t| t.bind != server) {
                    *top = self.last(&subject).await?.as_ref().map(Top::from);
                }
                let (epoch, offset, prev): (Arc<str>, u64, u64) = match &*top {
                    Some(t) if t.bind == server => (t.epoch.clone(), t.offset + 1, t.seq),
                    // Stored by another server process: that history may have lost its tail.
                    Some(t) => (new_epoch().into(), 1, t.seq),
                    None => (new_epoch().into(), 1, 0),
                };
                let mut headers = entry_headers(offset, &epoch, &server, prev);
                if let Some(key) = key {
                    headers.insert(
                        async_nats::header::NATS_MESSAGE_ID,
                        Subjects::message_id(channel, key),
                    );
                }
                match self.send(&subject, headers, data.clone()).await? {
                    Sent::Stored(seq) => {
                        *top = Some(Top {
                            seq,
                            offset,
                            epoch: epoch.clone(),
                            bind: server,
                        });
                        return Ok(Outcome {
                            offset,
                            epoch,
                            duplicate: false,
                        });
                    }
                    Sent::Duplicate(seq) => return self.first(seq).await,
                    // Another node published in between: nothing was stored, read again.
                    Sent::Behind => *top = None,
                }
            }
        };
        timeout_at(deadline, attempts)
            .await
            .unwrap_or_else(|_| Err(timed_out("publish")))
    }

    /// Publishes `data` on `channel` out of history with the idempotency key `key`: the
    /// key stream stores it (so a second publish with the key is refused as a duplicate)
    /// and republishes it, without offset or epoch.
    pub(super) async fn publish_keyed(
        &self,
        channel: &str,
        data: Bytes,
        key: &str,
    ) -> Result<Outcome, BrokerError> {
        self.connected()?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            Subjects::message_id(channel, key),
        );
        let sent = timeout_at(
            deadline,
            self.send(&self.subjects.keys(channel), headers, data),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out("publish")))?;
        Ok(Outcome {
            offset: 0,
            epoch: "".into(),
            duplicate: matches!(sent, Sent::Duplicate(_)),
        })
    }

    /// The channel's position, and with `since` what was published after it.
    pub(super) async fn recover(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
    ) -> Result<Recovery, BrokerError> {
        self.connected()?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let subject = self.subjects.history(channel);
        let top = self.top(channel);
        let mut cached = top.lock().await;
        let recovery = async {
            let top = self.current(&subject).await?;
            *cached = Some(Top::from(&top));
            let mut entries = Vec::new();
            if let Some(since) = since
                && *since.epoch == *top.epoch
                && since.offset < top.offset
                && top.offset - since.offset <= self.config.size as u64
            {
                entries = self.walk_back(top.clone(), since.offset).await?;
            }
            Ok(Recovery::decide(top.epoch, top.offset, since, entries))
        };
        timeout_at(deadline, recovery)
            .await
            .unwrap_or_else(|_| Err(timed_out("recover")))
    }

    /// The channel's last message in a current epoch, starting an epoch (a start marker)
    /// if it has none.
    async fn current(&self, subject: &str) -> Result<Stored, BrokerError> {
        loop {
            let server = self.server();
            let last = self.last(subject).await?;
            let prev = match last {
                Some(last) if last.bind == server => return Ok(last),
                Some(stale) => stale.seq,
                None => 0,
            };
            let epoch: Arc<str> = new_epoch().into();
            let mut headers = entry_headers(0, &epoch, &server, prev);
            headers.insert(headers::START, "1");
            match self.send(subject, headers, Bytes::new()).await? {
                Sent::Stored(seq) => {
                    return Ok(Stored {
                        seq,
                        offset: 0,
                        epoch,
                        bind: server,
                        prev,
                        stored_at_nanos: now_nanos(),
                        data: None,
                    });
                }
                // Another node started the epoch or published first: take what it stored.
                Sent::Behind | Sent::Duplicate(_) => {}
            }
        }
    }

    /// The publications from `since + 1` to `top`, in order, walking the chain of
    /// previous sequences back from `top`; empty if any of them is missing, expired, from
    /// another epoch, or not where its offset says (never a partial result).
    async fn walk_back(&self, top: Stored, since: u64) -> Result<Vec<Publication>, BrokerError> {
        let wanted = (top.offset - since) as usize;
        let mut entries = self.newest(top, since, wanted).await?;
        if entries.len() < wanted {
            return Ok(Vec::new());
        }
        entries.reverse();
        Ok(entries)
    }

    /// The channel's position and the page of its history `query` selects: the chain
    /// walked back from the top as far as it is whole, down to `query.since`.
    pub(super) async fn page(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        self.connected()?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let subject = self.subjects.history(channel);
        let top = self.top(channel);
        let mut cached = top.lock().await;
        let page = async {
            let top = self.current(&subject).await?;
            *cached = Some(Top::from(&top));
            let (epoch, offset) = (top.epoch.clone(), top.offset);
            let same_epoch = query.since.as_ref().is_none_or(|s| *s.epoch == *epoch);
            let since = query.since.as_ref().map_or(0, |s| s.offset);
            let mut newest = Vec::new();
            if same_epoch && query.limit > 0 && since < offset {
                // Newest first the walk can stop at the limit; oldest first it must reach
                // the oldest kept publication.
                let max = if query.reverse {
                    query.limit
                } else {
                    self.config.size
                };
                newest = self.newest(top, since, max).await?;
            }
            newest.reverse();
            let publications = query.select(&epoch, newest.into_iter());
            Ok(HistoryPage {
                epoch,
                offset,
                publications,
            })
        };
        timeout_at(deadline, page)
            .await
            .unwrap_or_else(|_| Err(timed_out("history")))
    }

    /// Up to `max` publications after offset `since`, newest first, walking the chain of
    /// previous sequences back from `top` while each is there, young enough, in top's
    /// epoch and where its offset says; never more than the history's size.
    async fn newest(
        &self,
        top: Stored,
        since: u64,
        max: usize,
    ) -> Result<Vec<Publication>, BrokerError> {
        let oldest = now_nanos() - self.config.ttl.as_nanos() as i128;
        let max = max.min(self.config.size);
        let mut entries = Vec::new();
        let mut current = top.clone();
        while entries.len() < max {
            let expected = top.offset - entries.len() as u64;
            if expected <= since || current.stored_at_nanos < oldest {
                break;
            }
            match current.publication() {
                Some(p) if current.epoch == top.epoch && p.offset == expected => entries.push(p),
                _ => break,
            }
            if expected == since + 1 || entries.len() == max {
                break;
            }
            match self.get(current.prev).await? {
                Some(previous) => current = previous,
                None => break,
            }
        }
        Ok(entries)
    }

    /// The channel's last message, if it has one.
    async fn last(&self, subject: &str) -> Result<Option<Stored>, BrokerError> {
        let stream = self.history_stream().await?;
        match stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Stored::read(message).map(Some).ok_or_else(foreign),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(BrokerError::unavailable("nats direct get", e)),
        }
    }

    /// The history message with stream sequence `seq`, if it is still kept.
    async fn get(&self, seq: u64) -> Result<Option<Stored>, BrokerError> {
        let stream = self.history_stream().await?;
        match stream.direct_get(seq).await {
            Ok(message) => Stored::read(message).map(Some).ok_or_else(foreign),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(BrokerError::unavailable("nats direct get", e)),
        }
    }

    /// What the first publish with a key that turned out a duplicate stored, found by its
    /// stream sequence. If it has left the history meanwhile (trimmed by newer
    /// publications), its offset is no longer known: the receipt says offset 0.
    async fn first(&self, seq: u64) -> Result<Outcome, BrokerError> {
        let (offset, epoch) = match self.get(seq).await? {
            Some(first) => (first.offset, first.epoch),
            None => (0, "".into()),
        };
        Ok(Outcome {
            offset,
            epoch,
            duplicate: true,
        })
    }

    async fn history_stream(&self) -> Result<stream::Stream<()>, BrokerError> {
        self.js
            .get_stream_no_info(self.subjects.history_stream())
            .await
            .map_err(|e| BrokerError::unavailable("nats stream", e))
    }

    /// Sends one message to a stream and reads the answer. Never sent twice: only a
    /// refusal proves that nothing was stored.
    async fn send(
        &self,
        subject: &str,
        headers: HeaderMap,
        data: Bytes,
    ) -> Result<Sent, BrokerError> {
        let failed = |e| BrokerError::unavailable("nats publish", e);
        let ack = self
            .js
            .send_publish(
                subject.to_owned(),
                PublishMessage::build().headers(headers).payload(data),
            )
            .await
            .map_err(failed)?
            .await;
        match ack {
            Ok(ack) if ack.duplicate => Ok(Sent::Duplicate(ack.sequence)),
            Ok(ack) => Ok(Sent::Stored(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Sent::Behind),
            Err(e) => Err(failed(e)),
        }
    }
}

/// How a stream answered a message.
enum Sent {
    /// Stored with this sequence (and republished).
    Stored(u64),
    /// Its idempotency key was seen: the first message with it has this sequence.
    Duplicate(u64),
    /// The subject's last sequence was not the one expected: nothing was stored.
    Behind,
}

/// The headers of a history entry (or start marker), with the compare-and-set on the
/// channel's last sequence.
fn entry_headers(offset: u64, epoch: &str, server: &str, prev: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(headers::OFFSET, offset.to_string());
    headers.insert(headers::EPOCH, epoch);
    headers.insert(headers::BIND, server);
    headers.insert(headers::PREV, prev.to_string());
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        prev.to_string(),
    );
    headers
}

fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn foreign() -> BrokerError {
    BrokerError::unavailable(
        "nats history",
        "a message without sessionhub's headers in the history stream",
    )
}

fn timed_out(what: &'static str) -> BrokerError {
    BrokerError::unavailable(
        format!("nats {what}"),
        format!("no answer within {COMMAND_TIMEOUT:?}"),
    )
}
