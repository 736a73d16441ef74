//! Signed webhooks: the application hears when users come and go, channels fill and empty,
//! presence changes, clients publish and sessions end, by an HTTP POST to its own URL.
//!
//! Whoever learns of an event once cluster-wide emits it ([`Webhooks::emit`]): the presence
//! backend's scripts decide who announces a join, a leave, a user's first and last
//! connection, so each comes out of exactly one node. The event goes into a [`Queue`] shared
//! by the nodes (a Redis stream read by a consumer group in cluster mode; a redb file on a
//! single node; memory otherwise), so it is delivered by one node, not by each, and survives
//! the node that queued it. Every node runs a delivery task ([`Webhooks::spawn_delivery`])
//! that claims events, POSTs each signed ([`signature`]), acknowledges what the receiver took
//! (any 2xx) and gives the rest back for a later try, with exponential backoff and jitter,
//! up to a number of attempts. Delivery is at least once: a node killed between the POST and
//! the acknowledgement leaves the event to be claimed again, so every event carries an `id`
//! for the receiver to drop duplicates.
//!
//! A target with a grace ([`WebhookConfig::grace`]; Pusher apps' 3 s) holds a channel's
//! vacated and a member's leave in the shared queue ([`Queue::hold`]), due after the grace;
//! a comeback (the channel occupied again, the member added again, decided once
//! cluster-wide like the leave) takes it back ([`Queue::cancel`]) if no node claimed it
//! yet, and then is not sent either. The held event lives in the queue, not in a node's
//! timer, so the leave on one node, the comeback on another and the death of either
//! change nothing: whichever node claims it when due sends it.
//!
//! The body of each POST is one event as JSON:
//! `{"id": "<32 hex>", "type": "user.online", "time": <ms since the Unix epoch>,
//! "node": "<node id>", "data": {...}}`, or Pusher's body for a Pusher app's webhooks
//! ([`Format`]). A node may send to several targets (its own URL, each Pusher app's), each
//! with its own config and queue ([`Webhooks::with_target`]).

mod deliver;
mod format;
mod local;
mod redis;
pub mod signature;

pub use self::format::Format;
pub use self::local::LocalQueue;
pub use self::redis::RedisQueue;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// A user's first connection anywhere in the cluster.
    #[serde(rename = "user.online")]
    Online,
    /// A user's last connection anywhere in the cluster closed.
    #[serde(rename = "user.offline")]
    Offline,
    /// A channel got its first subscriber anywhere in the cluster.
    #[serde(rename = "channel.occupied")]
    Occupied,
    /// A channel lost its last subscriber anywhere in the cluster.
    #[serde(rename = "channel.vacated")]
    Vacated,
    /// A user joined a presence channel.
    #[serde(rename = "presence.join")]
    Join,
    /// A user left a presence channel.
    #[serde(rename = "presence.leave")]
    Leave,
    /// A client published on a channel.
    #[serde(rename = "client.message")]
    Message,
    /// A session was destroyed (logout, invalidation).
    #[serde(rename = "session.destroyed")]
    SessionDestroyed,
    /// A Pusher client subscribed to a cache channel that had no event to replay.
    #[serde(rename = "channel.cache_miss")]
    CacheMiss,
}

impl EventKind {
    /// Every kind, in the order of the documentation.
    pub const ALL: [EventKind; 9] = [
        Self::Online,
        Self::Offline,
        Self::Occupied,
        Self::Vacated,
        Self::Join,
        Self::Leave,
        Self::Message,
        Self::SessionDestroyed,
        Self::CacheMiss,
    ];

    /// The event's `type` in the body, e.g. `user.online`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Online => "user.online",
            Self::Offline => "user.offline",
            Self::Occupied => "channel.occupied",
            Self::Vacated => "channel.vacated",
            Self::Join => "presence.join",
            Self::Leave => "presence.leave",
            Self::Message => "client.message",
            Self::SessionDestroyed => "session.destroyed",
            Self::CacheMiss => "channel.cache_miss",
        }
    }

    /// The short name `--webhook-events` also takes (`online`, `join`, ...).
    fn short(self) -> &'static str {
        self.name().split_once('.').map_or("", |(_, s)| s)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An event kind that does not exist.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown webhook event {0:?} (expected one of: online, offline, occupied, vacated, join, leave, message, destroyed)"
)]
pub struct UnknownEvent(String);

impl FromStr for EventKind {
    type Err = UnknownEvent;

    /// `user.online` or `online`, and so on.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s || k.short() == s)
            .ok_or_else(|| UnknownEvent(s.to_owned()))
    }
}

/// Which kinds of events are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSet(u16);

impl EventSet {
    /// Every kind.
    pub fn all() -> Self {
        Self::from_iter(EventKind::ALL)
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

impl FromIterator<EventKind> for EventSet {
    fn from_iter<I: IntoIterator<Item = EventKind>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |set, k| set | k.bit()))
    }
}

/// One event, as the receiver gets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event (128 random bits, hex): a retried or reclaimed delivery carries the
    /// same id, so the receiver can drop duplicates.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When it happened, in milliseconds since the Unix epoch.
    pub time: u64,
    /// The node that emitted it.
    pub node: String,
    /// What it is about (`user`, `channel`, `data`, `session`: per kind, see docs/hooks.md).
    pub data: serde_json::Value,
}

impl Event {
    /// A new event of `kind` with a fresh id, timed now.
    pub fn new(kind: EventKind, node: &str, data: serde_json::Value) -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS has randomness");
        Self {
            id: hex::encode(bytes),
            kind,
            time: crate::store::now_ms(),
            node: node.to_owned(),
            data,
        }
    }
}

/// An event claimed from a [`Queue`] by one consumer; nobody else gets it until the claim's
/// lease runs out.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The event.
    pub event: Event,
    /// How many deliveries of it failed before this claim.
    pub attempts: u32,
    /// The backend's handle on the entry, for [`Queue::ack`] and [`Queue::retry`].
    pub receipt: String,
}

/// A queue failed (its backend is unreachable or its storage broken).
#[derive(Debug, thiserror::Error)]
#[error("webhook queue ({backend}) unavailable: {source}")]
pub struct QueueError {
    backend: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl QueueError {
    pub(crate) fn new(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            backend,
            source: source.into(),
        }
    }
}

/// A bounded queue of events shared by every node that delivers them: each event is claimed
/// by one consumer at a time, and comes back to be claimed again if it is neither
/// acknowledged nor retried within the lease (its consumer died).
#[async_trait]
pub trait Queue: Send + Sync + fmt::Debug + 'static {
    /// Adds `event`; `Ok(false)` if the queue is at its bound (the event is dropped).
    async fn push(&self, event: &Event) -> Result<bool, QueueError>;

    /// Claims up to `max` events that are due, for this consumer, for the queue's lease.
    async fn claim(&self, max: usize) -> Result<Vec<Claimed>, QueueError>;

    /// Removes a claimed event: it was delivered (or given up on).
    async fn ack(&self, claimed: &Claimed) -> Result<(), QueueError>;

    /// Gives a claimed event back, with one more failed attempt, due again after `delay`.
    async fn retry(&self, claimed: &Claimed, delay: Duration) -> Result<(), QueueError>;

    /// Adds `event` held for `grace` under `key`: not due before it, and until it is first
    /// claimed [`Queue::cancel`] with the same key takes it back. Another event held under
    /// `key` and not claimed yet is replaced. `Ok(false)` if the queue is at its bound.
    async fn hold(&self, event: &Event, key: &str, grace: Duration) -> Result<bool, QueueError>;

    /// Takes back the event held under `key`, if it was not claimed yet; answers whether it
    /// did (then that event is never delivered). Once claimed, an event is on its way like
    /// any other and this answers false.
    async fn cancel(&self, key: &str) -> Result<bool, QueueError>;
}

/// Where and how webhooks are sent.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The receiver's URL (http or https).
    pub url: String,
    /// Signing secrets: each signs every request (one `v1=` each), so a receiver can move to
    /// a new secret while the old one still verifies.
    pub secrets: Vec<String>,
    /// Which events are sent.
    pub events: EventSet,
    /// How long one POST may take.
    pub timeout: Duration,
    /// How many POSTs of one event may fail before it is dropped.
    pub max_attempts: u32,
    /// The delay before the first retry; it doubles with each failure (with jitter).
    pub backoff: Duration,
    /// The longest delay between retries.
    pub max_backoff: Duration,
    /// The body and signature: sessionhub's (signed with `secrets`) or a Pusher app's.
    pub format: Format,
    /// How long a channel's vacated and a member's leave wait before they are sent; a
    /// comeback within it (the channel occupied again, the member back, on any node)
    /// cancels both the held event and the comeback's own, so a page reload sends nothing.
    /// Zero sends them at once (the default; Pusher apps get [`crate::pusher::WEBHOOK_GRACE`]).
    pub grace: Duration,
}

impl WebhookConfig {
    /// Every event to `url`, signed with `secret`; 5 s timeout, 10 attempts, backoff from
    /// 1 s to 60 s.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secrets: vec![secret.into()],
            events: EventSet::all(),
            timeout: Duration::from_secs(5),
            max_attempts: 10,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            format: Format::Sessionhub,
            grace: Duration::ZERO,
        }
    }
}

/// Where one kind of webhook goes: a config and the queue of its events.
struct Target {
    config: WebhookConfig,
    queue: Arc<dyn Queue>,
}

/// The webhooks of one node: emits events into each target's queue, delivers what it claims.
pub struct Webhooks {
    targets: Vec<Target>,
    node: String,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for target in &self.targets {
            list.entry(&(&target.config.url, &target.queue));
        }
        list.finish()
    }
}

impl Webhooks {
    /// Webhooks of node `node` per `config`, queued in `queue`.
    pub fn new(config: WebhookConfig, queue: Arc<dyn Queue>, node: impl Into<String>) -> Self {
        Self {
            targets: vec![Target { config, queue }],
            node: node.into(),
        }
    }

    /// Also sends to another target, per `config`, queued in `queue` (a queue of its own:
    /// each target acknowledges its deliveries alone).
    pub fn with_target(mut self, config: WebhookConfig, queue: Arc<dyn Queue>) -> Self {
        self.targets.push(Target { config, queue });
        self
    }

    /// Whether events of `kind` are sent: callers skip the work of finding them out if not.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.targets.iter().any(|t| t.config.events.contains(kind))
    }

    /// Queues an event of `kind` about `data` in the background, if `kind` is wanted; timed
    /// now. For callers that must not wait for the queue (the presence heartbeat, whose
    /// delay could get its node taken for dead); [`Webhooks::send`] waits until it is
    /// queued.
    pub fn emit(self: &Arc<Self>, kind: EventKind, data: serde_json::Value) {
        if !self.wants(kind) {
            return;
        }
        let event = Event::new(kind, &self.node, data);
        let this = self.clone();
        tokio::spawn(async move { this.push(event).await });
    }

    /// Queues an event of `kind` about `data`, if `kind` is wanted. A full or failing queue
    /// drops it, counted and logged.
    pub async fn send(&self, kind: EventKind, data: serde_json::Value) {
        if !self.wants(kind) {
            return;
        }
        self.push(Event::new(kind, &self.node, data)).await;
    }

    /// Queues `event` for every target that wants it.
    async fn push(&self, event: Event) {
        for target in &self.targets {
            let config = &target.config;
            if config.events.contains(event.kind) && config.format.carries(event.kind, &event.data)
            {
                Self::push_to(target, &event).await;
            }
        }
    }

    async fn push_to(target: &Target, event: &Event) {
        let kind = event.kind;
        let grace = target.config.grace;
        let queued = match Grace::of(event) {
            Some(Grace::Leave(key)) if !grace.is_zero() => {
                target.queue.hold(event, &key, grace).await
            }
            Some(Grace::Comeback(key)) if !grace.is_zero() => {
                match target.queue.cancel(&key).await {
                    Ok(true) => {
                        tracing::debug!(id = %event.id, kind = %kind, "a comeback within the grace: neither event is sent");
                        metrics::counter!("sessionhub_webhooks_cancelled_total").increment(2);
                        return;
                    }
                    // Not cancelled (or not known): the comeback goes out as it would.
                    Ok(false) | Err(_) => target.queue.push(event).await,
                }
            }
            _ => target.queue.push(event).await,
        };
        let reason = match queued {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(id = %event.id, kind = %kind, "webhook queue full: event dropped");
                "queue_full"
            }
            Err(e) => {
                tracing::warn!(id = %event.id, kind = %kind, error = %e, "webhook not queued: event dropped");
                "queue_error"
            }
        };
        metrics::counter!("sessionhub_webhooks_dropped_total", "reason" => reason).increment(1);
    }
}

/// What the grace does with an event: holds a leave (channel vacated, member removed)
/// under a key, or cancels the held leave a comeback (channel occupied, member added) has
/// the same key as.
enum Grace {
    Leave(String),
    Comeback(String),
}

impl Grace {
    fn of(event: &Event) -> Option<Self> {
        let channel = event.data["channel"].as_str()?;
        // JSON, so that no channel or user name can make one key another's.
        let key = |what: &str| match event.data["user"].as_str() {
            Some(user) => serde_json::json!([what, channel, user]).to_string(),
            None => serde_json::json!([what, channel]).to_string(),
        };
        Some(match event.kind {
            EventKind::Vacated => Self::Leave(key("vacated")),
            EventKind::Occupied => Self::Comeback(key("vacated")),
            EventKind::Leave => Self::Leave(key("left")),
            EventKind::Join => Self::Comeback(key("left")),
            _ => return None,
        })
    }
}

impl Webhooks {
    /// Sends `hub`'s users' first and last connections as online and offline events, for a
    /// node with no cluster presence: on one node they are the cluster's. (With Redis the
    /// presence heartbeat decides them, cluster-wide.)
    pub fn watch_local_users(
        self: Arc<Self>,
        hub: crate::hub::Hub,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        hub.track_users();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                for (user, delta) in hub.take_user_changes(usize::MAX) {
                    let kind = if delta > 0 {
                        EventKind::Online
                    } else {
                        EventKind::Offline
                    };
                    self.send(kind, serde_json::json!({"user": user.as_str()}))
                        .await;
                }
            }
        })
    }
}
