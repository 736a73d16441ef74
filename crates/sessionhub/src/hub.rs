//! The connections on this node, and the fan-out of messages to them.
//!
//! A connection joins a channel (a user's personal channel for `/websocket/{id}`). The
//! registry keeps channel -> local members and is the broker's delivery sink; the first
//! member of a channel subscribes the node to it and the last one to leave unsubscribes, so
//! a node receives only messages that some local client wants.
//!
//! Each member has a bounded outbound queue. Delivery never waits: a member whose queue is
//! full is a slow consumer and is told to disconnect, so one stuck client can neither stall
//! the others nor grow the server's memory.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    BatchItem, Broker, Deliver, HistoryPage, HistoryQuery, LocalBroker, Publication,
    PublishOptions, Receipt, Recovery, StreamPosition,
};
use crate::control;
use crate::error::BrokerError;
use crate::protocol::{SESSION_CHANNEL_PREFIX, UserId, close, seed, v1};
use crate::session::{SessionEvents, SessionId};

/// Messages that may wait for one connection before it counts as a slow consumer.
const OUTBOUND_QUEUE: usize = 256;

/// Queue capacity a drained outbound queue keeps, so steady traffic does not reallocate.
const OUTBOX_KEPT: usize = 16;

/// Counts of what is connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Online {
    /// Open connections.
    pub online: usize,
    /// Distinct users with at least one open connection.
    pub users: usize,
}

/// What a connection's queue carries.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// A publication on one of the connection's channels.
    Message(Arc<Delivery>),
    /// The node may have missed publications: recover, if the connection can.
    Resync,
    /// Close the connection with this code and reason (its session ended).
    Close(u16, &'static str),
    /// The server API disconnects the connection.
    Disconnect(Arc<Disconnect>),
    /// The server API subscribes the connection to a channel, as if it had asked.
    Subscribe(Arc<str>),
    /// The server API unsubscribes the connection from a channel.
    Unsubscribe(Arc<str>),
}

/// A disconnect ordered through the server API.
#[derive(Debug)]
pub(crate) struct Disconnect {
    /// The close code, and its name (the metrics label).
    pub(crate) code: (u16, &'static str),
    /// Why, for the client: the `disconnect` frame's and the close frame's reason.
    pub(crate) reason: String,
}

/// One publication on its way to every local subscriber, rendered at most once per
/// protocol however many connections take it.
#[derive(Debug)]
pub(crate) struct Delivery {
    channel: String,
    publication: Publication,
    /// When it reached this node, for the delivery latency metric.
    arrived: std::time::Instant,
    seed_frame: OnceLock<Utf8Bytes>,
    v1_frame: OnceLock<Utf8Bytes>,
}

impl Delivery {
    pub(crate) fn new(channel: &str, publication: Publication) -> Self {
        Self {
            channel: channel.to_owned(),
            publication,
            arrived: std::time::Instant::now(),
            seed_frame: OnceLock::new(),
            v1_frame: OnceLock::new(),
        }
    }

    /// How long ago it reached this node.
    pub(crate) fn age(&self) -> std::time::Duration {
        self.arrived.elapsed()
    }

    /// The channel it was published on.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// The publication.
    pub(crate) fn publication(&self) -> &Publication {
        &self.publication
    }

    /// The frame the seed endpoint sends ([`seed::message`]).
    pub(crate) fn seed_frame(&self) -> Utf8Bytes {
        self.seed_frame
            .get_or_init(|| seed::message(&self.publication))
            .clone()
    }

    /// The protocol v1 `publication` frame ([`v1::publication_frame`]).
    pub(crate) fn v1_frame(&self) -> Utf8Bytes {
        self.v1_frame
            .get_or_init(|| v1::publication_frame(&self.channel, &self.publication).into())
            .clone()
    }
}

#[derive(Clone)]
struct Member {
    id: u64,
    outbox: Arc<Outbox>,
    slow: CancellationToken,
}

/// A connection's outbound queue: bounded, one reader, and empty until something is queued.
/// Most sockets idle most of the time, and a tokio `mpsc` channel allocated ~1.3 KiB per
/// socket up front (its first block of slots), a sixth of an idle socket's memory.
#[derive(Default)]
struct Outbox {
    queue: Mutex<VecDeque<Outbound>>,
    ready: Notify,
}

impl Outbox {
    /// Queues `item`; `false` if [`OUTBOUND_QUEUE`] items are already waiting.
    fn push(&self, item: Outbound) -> bool {
        let mut queue = self.queue.lock().unwrap();
        if queue.len() >= OUTBOUND_QUEUE {
            return false;
        }
        queue.push_back(item);
        drop(queue);
        // With the reader not waiting, this leaves a permit for its next wait.
        self.ready.notify_one();
        true
    }

    /// The next item. Cancel-safe: an item leaves the queue only when it is returned.
    async fn pop(&self) -> Outbound {
        loop {
            {
                let mut queue = self.queue.lock().unwrap();
                if let Some(item) = queue.pop_front() {
                    // A burst leaves its capacity behind; give it back once drained, so that
                    // a socket that was busy once does not keep it while it idles.
                    if queue.is_empty() && queue.capacity() > OUTBOX_KEPT {
                        queue.shrink_to(OUTBOX_KEPT);
                    }
                    return item;
                }
            }
            self.ready.notified().await;
        }
    }
}

/// Channel -> the local connections that joined it, and user -> the user's connections here
/// (whatever channels they joined), which the server API's commands address.
#[derive(Default)]
struct Registry {
    channels: Mutex<HashMap<String, Vec<Member>>>,
    users: Mutex<HashMap<UserId, Vec<Member>>>,
    /// Where messages on the control channels go, once [`Hub::start_control`] ran.
    control: OnceLock<tokio::sync::mpsc::UnboundedSender<(String, Publication)>>,
    /// Bumped whenever a connection opens or closes, so presence can tell whether anything
    /// changed.
    generation: AtomicU64,
}

impl Registry {
    /// Counts the local connections and distinct users.
    fn online(&self) -> Online {
        let users = self.users.lock().unwrap();
        Online {
            online: users.values().map(Vec::len).sum(),
            users: users.len(),
        }
    }

    /// The users with at least one local connection.
    fn users(&self) -> Vec<String> {
        let users = self.users.lock().unwrap();
        users.keys().map(|u| u.as_str().to_owned()).collect()
    }

    /// Local connections of `user`.
    fn connections_of(&self, user: &UserId) -> usize {
        let users = self.users.lock().unwrap();
        users.get(user).map_or(0, Vec::len)
    }

    /// Queues `item` for `user`'s local connections (only connection `only`, if given);
    /// returns how many took it.
    fn command(&self, user: &UserId, only: Option<u64>, item: &Outbound) -> usize {
        let users = self.users.lock().unwrap();
        let Some(members) = users.get(user) else {
            return 0;
        };
        let mut taken = 0;
        for member in members.iter().filter(|m| only.is_none_or(|id| m.id == id)) {
            if member.outbox.push(item.clone()) {
                taken += 1;
            } else {
                member.slow.cancel();
            }
        }
        taken
    }

    /// The channels local connections joined, with how many joined each; internal
    /// channels (sessions, control) left out.
    fn channels(&self) -> Vec<(String, usize)> {
        let channels = self.channels.lock().unwrap();
        channels
            .iter()
            .filter(|(name, _)| crate::protocol::is_public_channel_name(name))
            .map(|(name, members)| (name.clone(), members.len()))
            .collect()
    }
}

impl Deliver for Registry {
    fn resync(&self) {
        metrics::counter!("sessionhub_broker_reconnects_total").increment(1);
        let channels = self.channels.lock().unwrap();
        let mut told = std::collections::HashSet::new();
        for member in channels.values().flatten() {
            if told.insert(member.id) && !member.outbox.push(Outbound::Resync) {
                member.slow.cancel();
            }
        }
    }

    fn deliver(&self, channel: &str, publication: Publication) -> usize {
        if control::is_control_channel(channel) {
            return self
                .control
                .get()
                .is_some_and(|control| control.send((channel.to_owned(), publication)).is_ok())
                .into();
        }
        let channels = self.channels.lock().unwrap();
        let Some(members) = channels.get(channel) else {
            return 0;
        };
        // A session channel carries only the news that the session ended.
        let outbound = if channel.starts_with(SESSION_CHANNEL_PREFIX) {
            Outbound::Close(close::SESSION_ENDED.0, close::SESSION_ENDED.1)
        } else {
            Outbound::Message(Arc::new(Delivery::new(channel, publication)))
        };
        let mut delivered = 0;
        for member in members {
            if member.outbox.push(outbound.clone()) {
                delivered += 1;
            } else {
                tracing::info!(channel, "slow consumer: outbound queue full, disconnecting");
                metrics::counter!("sessionhub_slow_consumers_total").increment(1);
                member.slow.cancel();
            }
        }
        metrics::counter!("sessionhub_messages_out_total").increment(delivered as u64);
        delivered
    }
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
    /// The server API's questions to every node still waiting for answers.
    pending: control::Pending,
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
                pending: control::Pending::default(),
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

    /// The users with at least one connection on this node.
    pub(crate) fn users(&self) -> Vec<String> {
        self.inner.registry.users()
    }

    /// A number that changes whenever a connection opens or closes.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.registry.generation.load(Ordering::Relaxed)
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

    /// The channel's position, and with `since` what was published after it.
    pub(crate) async fn recover(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
    ) -> Result<Recovery, BrokerError> {
        self.inner.broker.recover(channel, since).await
    }

    /// A page of the channel's history (see [`HistoryQuery`]).
    pub(crate) async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        self.inner.broker.history(channel, query).await
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
        let registry = &self.inner.registry;
        let member = Member {
            id: self.inner.next_member.fetch_add(1, Ordering::Relaxed),
            outbox: Arc::default(),
            slow: CancellationToken::new(),
        };
        registry
            .users
            .lock()
            .unwrap()
            .entry(user.clone())
            .or_default()
            .push(member.clone());
        registry.generation.fetch_add(1, Ordering::Relaxed);
        Connection {
            hub: self.clone(),
            user: user.clone(),
            member,
            channels: Vec::new(),
        }
    }

    /// How long this hub has run.
    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
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
}

/// The channel of the connections bound to session `id`.
pub(crate) fn session_channel(id: &SessionId) -> String {
    format!("{SESSION_CHANNEL_PREFIX}{}", id.as_str())
}

/// One local connection: its outbound queue and the channels it joined. Dropping it leaves
/// every channel. Public only for [`Hub::connect`]'s test use.
#[doc(hidden)]
pub struct Connection {
    hub: Hub,
    user: UserId,
    member: Member,
    channels: Vec<String>,
}

impl Connection {
    /// Joins `channel`. Messages published after this returns reach the connection.
    pub async fn join(&mut self, channel: &str) -> Result<(), BrokerError> {
        if self.channels.iter().any(|c| c == channel) {
            return Ok(());
        }
        let registry = &self.hub.inner.registry;
        let subscribed = {
            let mut channels = registry.channels.lock().unwrap();
            channels
                .entry(channel.to_owned())
                .or_default()
                .push(self.member.clone());
            // Asked on every join, not only the first: an earlier member's SUBSCRIBE may still
            // be in flight, and this member must not be told it is subscribed before the node
            // is. The broker answers once a subscription round that started after this call
            // is confirmed (a no-op round when nothing changes). Queued under the lock so
            // subscribe and unsubscribe keep their order.
            self.hub.inner.broker.subscribe(channel)
        };
        self.channels.push(channel.to_owned());
        if let Err(e) = subscribed.await {
            self.leave(channel);
            return Err(e);
        }
        Ok(())
    }

    /// Leaves `channel`; the node unsubscribes when its last connection leaves.
    pub fn leave(&mut self, channel: &str) {
        self.channels.retain(|c| c != channel);
        let registry = &self.hub.inner.registry;
        let mut channels = registry.channels.lock().unwrap();
        if let Some(members) = channels.get_mut(channel) {
            members.retain(|m| m.id != self.member.id);
            if members.is_empty() {
                channels.remove(channel);
                self.hub.inner.broker.unsubscribe(channel);
            }
        }
    }

    /// The next thing to send. Cancel-safe.
    pub(crate) async fn recv(&self) -> Outbound {
        self.member.outbox.pop().await
    }

    /// This connection's id on this node.
    pub(crate) fn id(&self) -> u64 {
        self.member.id
    }

    /// How many channels the connection joined.
    pub(crate) fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Cancelled when the connection fell too far behind and must be closed.
    pub(crate) fn slow(&self) -> &CancellationToken {
        &self.member.slow
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.member.id)
            .field("user", &self.user)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for channel in std::mem::take(&mut self.channels) {
            self.leave(&channel);
        }
        let registry = &self.hub.inner.registry;
        let mut users = registry.users.lock().unwrap();
        if let Entry::Occupied(mut members) = users.entry(self.user.clone()) {
            members.get_mut().retain(|m| m.id != self.member.id);
            if members.get().is_empty() {
                members.remove();
            }
        }
        registry.generation.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::timeout;

    use super::{OUTBOUND_QUEUE, OUTBOX_KEPT, Outbound, Outbox};

    fn code(item: Outbound) -> u16 {
        match item {
            Outbound::Close(code, _) => code,
            _ => panic!("not a numbered close"),
        }
    }

    #[tokio::test]
    async fn the_outbox_is_bounded_and_keeps_order() {
        let outbox = Outbox::default();
        for n in 0..OUTBOUND_QUEUE {
            assert!(outbox.push(Outbound::Close(n as u16, "")));
        }
        assert!(!outbox.push(Outbound::Resync), "full: a slow consumer");
        for n in 0..OUTBOUND_QUEUE {
            assert_eq!(code(outbox.pop().await), n as u16);
        }
        assert!(
            outbox.push(Outbound::Close(7, "")),
            "room again once drained"
        );
        assert_eq!(code(outbox.pop().await), 7);
    }

    #[tokio::test]
    async fn a_drained_outbox_gives_back_its_burst() {
        let outbox = Outbox::default();
        assert_eq!(
            outbox.queue.lock().unwrap().capacity(),
            0,
            "nothing until used"
        );
        for n in 0..200 {
            outbox.push(Outbound::Close(n, ""));
        }
        assert!(outbox.queue.lock().unwrap().capacity() >= 200);
        for _ in 0..200 {
            outbox.pop().await;
        }
        assert!(outbox.queue.lock().unwrap().capacity() <= OUTBOX_KEPT);
    }

    #[tokio::test]
    async fn pop_waits_for_a_push_and_loses_nothing_when_cancelled() {
        let outbox = std::sync::Arc::new(Outbox::default());
        // Cancelled while waiting (as a select! branch is): nothing is taken.
        assert!(
            timeout(Duration::from_millis(20), outbox.pop())
                .await
                .is_err()
        );
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { code(outbox.pop().await) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.push(Outbound::Close(1, ""));
        outbox.push(Outbound::Close(2, ""));
        let first = timeout(Duration::from_secs(2), waiting).await;
        assert_eq!(first.expect("woken by the push").unwrap(), 1);
        assert_eq!(code(outbox.pop().await), 2, "the second is still there");
    }
}
