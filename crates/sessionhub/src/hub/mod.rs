//! The connections on this node, and the fan-out of messages to them.
//!
//! A connection joins a channel (a user's personal channel for `/websocket/{id}`). The
//! registry keeps channel -> local members and is the broker's delivery sink; the first
//! member of a channel subscribes the node to it and the last one to leave unsubscribes, so
//! a node receives only messages that some local client wants.
//!
//! On a presence channel ([`Hub::track_presence`]) the registry also counts each user's
//! connections, and a tracker task reports every change, in order, to the [`Presence`]
//! backend; when the backend answers that a user joined or left the channel cluster-wide,
//! the tracker publishes a `join` or `leave` frame on the channel's companion
//! `$presence:<channel>`, which every connection on a presence channel joins with it.
//!
//! The same tracker counts occupancy when the webhooks want `channel.occupied` /
//! `channel.vacated` ([`Hub::track_occupancy`]): a channel's first local member and its last
//! are reported as a pseudo-user of `$occupancy:<channel>`, so the presence backend decides
//! once, cluster-wide, when a channel gains its first subscriber anywhere and loses its last.
//! The tracker queues the presence and occupancy webhooks the backend's answers call for.
//!
//! Each member has a bounded outbound queue. Delivery never waits: a member whose queue is
//! full is a slow consumer and is told to disconnect, so one stuck client can neither stall
//! the others nor grow the server's memory.
//!
//! The pieces, each in its own file, share the registry's state under its locks (the order
//! of subscribes, and of presence and occupancy changes, is kept by taking them under those
//! locks), so their fields are visible to one another within `hub` and no further:
//! `delivery.rs` (what a connection's queue carries, rendered once per protocol),
//! `registry.rs` (channels, users and presence counts; the broker's sink), `connection.rs`
//! (one connection's joins and leaves) and `track.rs` (the tracker task and its webhooks).

mod connection;
mod delivery;
mod registry;
#[cfg(test)]
mod tests;
mod track;

pub use self::connection::Connection;
pub(crate) use self::delivery::{
    Delivery, Disconnect, Outbound, Position, Render, Straight, TokenRefresh, delivery_latency,
};
pub(crate) use self::registry::Registry;
use self::registry::{Member, net};
use self::track::{PresenceChange, Tracking, announce, presence_webhook, track};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

use crate::broker::{
    BatchItem, Broker, Deliver, Envelope, HistoryPage, HistoryQuery, LocalBroker, PublishOptions,
    Receipt, Recovery, StreamPosition,
};
use crate::control;
use crate::error::BrokerError;
use crate::presence::{Presence, PresenceChannels, Transition};
use crate::protocol::{SESSION_CHANNEL_PREFIX, UserId};
use crate::session::{SessionEvents, SessionId};
use crate::webhook::{EventKind, Webhooks};

/// Messages that may wait for one connection before it counts as a slow consumer.
const OUTBOUND_QUEUE: usize = 256;

/// Queue capacity a drained outbound queue keeps, so steady traffic does not reallocate.
const OUTBOX_KEPT: usize = 16;

/// How long a join waits for presence to take it into account, so that the member list a
/// subscriber is sent includes its own user; past it the join goes on (the backend is slow
/// or down, and presence catches up when it answers).
const PRESENCE_WAIT: Duration = Duration::from_secs(5);

/// Prefix of the internal channels that carry a presence channel's `join` and `leave`
/// frames; clients may not name them.
pub(crate) const PRESENCE_EVENTS_PREFIX: &str = "$presence:";
/// Where a channel's occupancy is counted in the presence backend: `$occupancy:<channel>`,
/// with one pseudo-user ([`SUBSCRIBERS`]) whose "connections" are the nodes that have
/// subscribers on the channel. Its join is the channel's first subscriber anywhere, its
/// leave the last one gone (a dead node's included, reaped as presence is): the
/// `channel.occupied` and `channel.vacated` webhooks, decided once cluster-wide.
const OCCUPANCY_PREFIX: &str = "$occupancy:";
/// The pseudo-user of an occupancy channel.
static SUBSCRIBERS: std::sync::LazyLock<UserId> =
    std::sync::LazyLock::new(|| "subscribers".parse().expect("a valid user id"));

/// Counts of what is connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Online {
    /// Open connections.
    pub online: usize,
    /// Distinct users with at least one open connection.
    pub users: usize,
}

/// The local connection registry plus the broker that links it to other nodes.
/// Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

/// A [`Hub`] that is gone once every `Hub` handle is dropped.
pub(crate) struct WeakHub(std::sync::Weak<HubInner>);

impl WeakHub {
    /// The hub, if it is still there.
    pub(crate) fn upgrade(&self) -> Option<Hub> {
        self.0.upgrade().map(|inner| Hub { inner })
    }
}

struct HubInner {
    registry: Arc<Registry>,
    broker: Arc<dyn Broker>,
    node_id: String,
    next_member: AtomicU64,
    started: std::time::Instant,
    /// What the node says it runs (`/api/info`); the library's version unless set.
    build: OnceLock<String>,
    /// The server API's questions to every node still waiting for answers.
    pending: control::Pending,
    tracking: OnceLock<Tracking>,
    /// Whether channels' occupancy is reported to the presence backend
    /// ([`Hub::track_occupancy`]).
    occupancy: std::sync::atomic::AtomicBool,
    /// Shared with the tracker task, which starts before the server sets webhooks up.
    webhooks: Arc<OnceLock<Arc<Webhooks>>>,
}

impl Hub {
    /// A hub for one node, on the embedded [`LocalBroker`].
    pub fn local(node_id: impl Into<String>) -> Self {
        Self::with_broker(node_id, |sink| Arc::new(LocalBroker::new(sink)))
    }

    /// A hub whose broker is built around the hub's registry (the broker delivers into it).
    pub fn with_broker(
        node_id: impl Into<String>,
        broker: impl FnOnce(Arc<dyn Deliver>) -> Arc<dyn Broker>,
    ) -> Self {
        let registry = Arc::new(Registry::default());
        let broker = broker(registry.clone());
        Self {
            inner: Arc::new(HubInner {
                registry,
                broker,
                node_id: node_id.into(),
                next_member: AtomicU64::new(0),
                started: std::time::Instant::now(),
                build: OnceLock::new(),
                pending: control::Pending::default(),
                tracking: OnceLock::new(),
                webhooks: Arc::default(),
                occupancy: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// A handle for the hub's own tasks, which must not keep it alive.
    pub(crate) fn downgrade(&self) -> WeakHub {
        WeakHub(Arc::downgrade(&self.inner))
    }

    /// This node's id.
    pub(crate) fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The broker, for readiness checks.
    pub(crate) fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// What is connected to this node.
    pub fn online(&self) -> Online {
        self.inner.registry.online()
    }

    /// The registry, which [`crate::presence::LocalPresence`] reads. Not the hub itself: the
    /// tracker task holds the presence, and a presence holding the hub would keep it alive.
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.inner.registry.clone()
    }

    /// Gives channels matching `channels` presence, reported to `presence` (this node's own
    /// [`crate::presence::LocalPresence`], or a cluster's). Call once, before connections
    /// join channels, within a Tokio runtime (it starts the tracker task); `false` if
    /// presence was set up already.
    pub fn track_presence(&self, channels: PresenceChannels, presence: Arc<dyn Presence>) -> bool {
        let (changes, queue) = mpsc::unbounded_channel();
        let tracking = Tracking { channels, changes };
        if self.inner.tracking.set(tracking).is_err() {
            return false;
        }
        let broker = self.inner.broker.clone();
        let node = self.inner.node_id.clone();
        let webhooks = self.inner.webhooks.clone();
        tokio::spawn(track(queue, presence, broker, node, webhooks));
        true
    }

    /// Sends this hub's events (presence joins and leaves, users online and offline, client
    /// messages) to `webhooks`; `false` if webhooks were set up already.
    pub fn set_webhooks(&self, webhooks: Arc<Webhooks>) -> bool {
        self.inner.webhooks.set(webhooks).is_ok()
    }

    /// The webhooks, if set up: for the callers that emit events.
    pub fn webhooks(&self) -> Option<&Arc<Webhooks>> {
        self.inner.webhooks.get()
    }

    /// Whether `channel` has presence. A presence events channel never has (a connection
    /// may join one alone, to watch a channel's joins and leaves without being counted),
    /// whatever the prefixes.
    pub(crate) fn has_presence(&self, channel: &str) -> bool {
        !channel.starts_with(PRESENCE_EVENTS_PREFIX)
            && self
                .inner
                .tracking
                .get()
                .is_some_and(|t| t.channels.covers(channel))
    }

    /// Also reports to the presence backend when a public channel gets its first subscriber
    /// on this node and loses its last, so that the `channel.occupied` and `channel.vacated`
    /// webhooks go out once cluster-wide. Needs [`Hub::track_presence`] (with no presence
    /// channels, if none have presence) and webhooks that want them; call before
    /// connections join channels.
    pub fn track_occupancy(&self) {
        self.inner
            .occupancy
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Queues an occupancy change of `channel` on this node (its first member came, `now`
    /// 1, or its last went, `now` 0) for the tracker, if occupancy is tracked. Called under
    /// the registry's channel lock, so the tracker gets the changes in order.
    fn count_occupancy(&self, channel: &str, now: usize) {
        let occupancy = self
            .inner
            .occupancy
            .load(std::sync::atomic::Ordering::Relaxed);
        let Some(tracking) = self.inner.tracking.get().filter(|_| occupancy) else {
            return;
        };
        if !crate::protocol::is_public_channel_name(channel) {
            return;
        }
        let _ = tracking.changes.send(PresenceChange {
            channel: [OCCUPANCY_PREFIX, channel].concat(),
            user: SUBSCRIBERS.clone(),
            was: 1 - now,
            now,
            info: None,
            limit: None,
            done: None,
        });
    }

    /// Reports every local user of every presence channel to the backend again, as if each
    /// had just joined: after the cluster took this node for dead and removed its entries.
    pub(crate) fn resend_presence(&self) {
        let Some(tracking) = self.inner.tracking.get() else {
            return;
        };
        {
            let channels = self.inner.registry.channels.lock().unwrap();
            for channel in channels.keys() {
                self.count_occupancy(channel, 1);
            }
        }
        let presence = self.inner.registry.presence.lock().unwrap();
        for (channel, users) in presence.iter() {
            for (user, counted) in users {
                let _ = tracking.changes.send(PresenceChange {
                    channel: channel.clone(),
                    user: user.clone(),
                    was: counted.connections,
                    now: counted.connections,
                    info: counted.info.clone(),
                    limit: None,
                    done: None,
                });
            }
        }
    }

    /// Tells `channel`'s subscribers on every node that `user` joined or left it.
    pub(crate) async fn announce(&self, channel: &str, user: &str, transition: Transition) {
        announce(&self.inner.broker, channel, user, transition, None).await;
        presence_webhook(self.webhooks(), channel, user, transition).await;
    }

    /// Starts noting which users come and go ([`Hub::take_user_changes`]); every user
    /// connected now counts as come.
    pub(crate) fn track_users(&self) {
        let mut users = self.inner.registry.users.lock().unwrap();
        let changes = users.members.keys().map(|u| (u.clone(), 1)).collect();
        users.changes = Some(changes);
    }

    /// The users who came (+1) or went (-1) since the last call, at most `limit` of them
    /// (the others stay for the next call).
    pub(crate) fn take_user_changes(&self, limit: usize) -> HashMap<UserId, i8> {
        let mut users = self.inner.registry.users.lock().unwrap();
        let Some(changes) = &mut users.changes else {
            return HashMap::new();
        };
        if changes.len() <= limit {
            return std::mem::take(changes);
        }
        let taken: Vec<UserId> = changes.keys().take(limit).cloned().collect();
        taken
            .into_iter()
            .filter_map(|u| changes.remove_entry(&u))
            .collect()
    }

    /// Puts back changes taken by [`Hub::take_user_changes`] that could not be sent,
    /// merged with what changed since.
    pub(crate) fn return_user_changes(&self, returned: HashMap<UserId, i8>) {
        let mut users = self.inner.registry.users.lock().unwrap();
        if let Some(changes) = &mut users.changes {
            for (user, delta) in returned {
                net(changes, user, delta);
            }
        }
    }

    /// Publishes `data` (JSON text) to every connection on `channel`, on every node.
    pub async fn publish(
        &self,
        channel: &str,
        data: Utf8Bytes,
        options: &PublishOptions,
    ) -> Result<Receipt, BrokerError> {
        let started = std::time::Instant::now();
        let receipt = self.inner.broker.publish(channel, data, options).await;
        metrics::histogram!("sessionhub_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let outcome = if receipt.is_ok() { "ok" } else { "error" };
        metrics::counter!("sessionhub_messages_in_total", "outcome" => outcome).increment(1);
        receipt
    }

    /// Publishes every item with history, together where the broker can (see
    /// [`Broker::publish_batch`]); one result per item, in order.
    pub async fn publish_batch(&self, items: &[BatchItem]) -> Vec<Result<Receipt, BrokerError>> {
        let started = std::time::Instant::now();
        let results = self.inner.broker.publish_batch(items).await;
        metrics::histogram!("sessionhub_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
        metrics::counter!("sessionhub_messages_in_total", "outcome" => "ok").increment(ok);
        metrics::counter!("sessionhub_messages_in_total", "outcome" => "error")
            .increment(results.len() as u64 - ok);
        results
    }

    /// The channel's position, and with `since` what was published after it (envelopes
    /// taken out: recovery serves protocol v1, which has no use for them).
    pub(crate) async fn recover(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
    ) -> Result<Recovery, BrokerError> {
        let mut recovery = self.inner.broker.recover(channel, since).await?;
        for publication in &mut recovery.publications {
            Envelope::take(publication);
        }
        Ok(recovery)
    }

    /// A page of the channel's history (see [`HistoryQuery`]), each publication with its
    /// envelope taken out.
    pub(crate) async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<(HistoryPage, Vec<Option<Envelope>>), BrokerError> {
        let mut page = self.inner.broker.history(channel, query).await?;
        let envelopes = page.publications.iter_mut().map(Envelope::take).collect();
        Ok((page, envelopes))
    }

    /// Local connections of `user`.
    pub(crate) fn local_connections(&self, user: &UserId) -> usize {
        self.inner.registry.connections_of(user)
    }

    /// A new local connection of `user`, in no channel yet. It counts as online until
    /// dropped. Public for the presence conformance suite (`sessionhub-testkit`), which
    /// opens connections without sockets.
    #[doc(hidden)]
    pub fn connect(&self, user: &UserId) -> Connection {
        let member = Member {
            id: self.inner.next_member.fetch_add(1, Ordering::Relaxed),
            outbox: Arc::default(),
            slow: CancellationToken::new(),
            straight: Straight::No,
        };
        {
            let mut users = self.inner.registry.users.lock().unwrap();
            users.connections += 1;
            users.add(user, &member);
        }
        Connection {
            hub: self.clone(),
            user: user.clone(),
            member,
            channels: Vec::new(),
            joined_as: HashMap::new(),
        }
    }

    /// How long this hub has run.
    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// Names what this node runs in `/api/info` (e.g. `0.1.0 (commit 1a2b3c)`, which the
    /// server binary knows and the library does not), so that a rolling upgrade shows
    /// which nodes run which build. Set once; `false` if it was set already.
    pub fn set_build(&self, build: impl Into<String>) -> bool {
        self.inner.build.set(build.into()).is_ok()
    }

    /// What [`Hub::set_build`] set, or the library's version.
    pub(crate) fn build(&self) -> &str {
        self.inner
            .build
            .get()
            .map_or(env!("CARGO_PKG_VERSION"), String::as_str)
    }

    /// The public channels local connections joined, with their local subscriber counts.
    pub(crate) fn local_channels(&self) -> Vec<(String, usize)> {
        self.inner.registry.channels()
    }

    /// Queues `item` for `user`'s connections on this node (only connection `only`, if
    /// given); how many took it.
    pub(crate) fn command_local(&self, user: &UserId, only: Option<u64>, item: &Outbound) -> usize {
        self.inner.registry.command(user, only, item)
    }

    /// The questions to every node still waiting for answers.
    pub(crate) fn pending(&self) -> &control::Pending {
        &self.inner.pending
    }

    /// Joins the control channels, so that the server API's commands (disconnect, server-side
    /// subscribe, node reports) reach this node from any node. Call once, at start.
    pub async fn start_control(&self) -> Result<(), BrokerError> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        if self.inner.registry.control.set(sender).is_err() {
            return Ok(());
        }
        tokio::spawn(control::run(self.downgrade(), receiver));
        // Both asked before either is awaited: a broker still connecting keeps both wishes
        // and joins them once connected, whatever it answers now.
        let broker = &self.inner.broker;
        let commands = broker.subscribe(control::CONTROL_CHANNEL);
        let replies = broker.subscribe(&control::reply_channel(self.node_id()));
        let (commands, replies) = futures_util::future::join(commands, replies).await;
        commands.and(replies)
    }

    /// Publishes a control message (out of history and metrics).
    pub(crate) async fn publish_control(
        &self,
        channel: &str,
        data: String,
    ) -> Result<Receipt, BrokerError> {
        self.inner
            .broker
            .publish(channel, data.into(), &PublishOptions::default())
            .await
    }

    /// Tells every connection bound to session `id`, on every node, that the session ended.
    pub(crate) async fn end_session(&self, id: &SessionId) -> Result<Receipt, BrokerError> {
        let data = Utf8Bytes::from_static("\"ended\"");
        // A control message, not a publication: straight to the broker, outside the metrics.
        self.inner
            .broker
            .publish(&session_channel(id), data, &PublishOptions::default())
            .await
    }
}

#[async_trait::async_trait]
impl SessionEvents for Hub {
    async fn ended(&self, id: &SessionId) {
        if let Err(e) = self.end_session(id).await {
            // The sockets still close when they next check their session's expiry.
            tracing::warn!(error = %e, "could not tell the cluster a session ended");
        }
    }

    async fn destroyed(&self, id: &SessionId, principal: Option<&str>) {
        if let Some(webhooks) = self.webhooks() {
            // The id is dead from now on, so handing it to the application leaks nothing.
            let data = serde_json::json!({"session": id.as_str(), "user": principal});
            webhooks.send(EventKind::SessionDestroyed, data).await;
        }
    }

    fn wants_destroyed(&self) -> bool {
        self.webhooks()
            .is_some_and(|webhooks| webhooks.wants(EventKind::SessionDestroyed))
    }
}

/// The channel of the connections bound to session `id`.
pub(crate) fn session_channel(id: &SessionId) -> String {
    format!("{SESSION_CHANNEL_PREFIX}{}", id.as_str())
}

/// The channel that carries presence channel `channel`'s `join` and `leave` frames.
pub(crate) fn presence_events_channel(channel: &str) -> String {
    [PRESENCE_EVENTS_PREFIX, channel].concat()
}
