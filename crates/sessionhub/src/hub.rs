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
//! Over 700 lines: the registry, the hub, a connection and the presence (and occupancy)
//! tracker all work on the registry's private state under its locks (the order of
//! subscribes, and of presence and occupancy changes, is kept by taking them under those
//! locks), and their unit tests sit with them. The tracker and its webhooks are the part
//! that could move out next (`hub/track.rs`), once the registry's locks have an interface.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

use crate::broker::{
    BatchItem, Broker, Deliver, Envelope, HistoryPage, HistoryQuery, LocalBroker, Publication,
    PublishOptions, Receipt, Recovery, StreamPosition,
};
use crate::control;
use crate::error::BrokerError;
use crate::presence::{
    Member as PresenceMember, NodeChange, Presence, PresenceChannels, Transition,
};
use crate::protocol::{SESSION_CHANNEL_PREFIX, UserId, close, pusher, seed, v1};
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
    /// An SSE stream's token was refreshed (`POST /sse/refresh`, on any node).
    Refresh(Arc<TokenRefresh>),
}

/// A refreshed token, for the connection it names.
#[derive(Debug)]
pub(crate) struct TokenRefresh {
    /// The new token's `exp`, in milliseconds since the Unix epoch.
    pub(crate) expires_ms: u64,
    /// The new token's `channels` claim.
    pub(crate) channels: Vec<String>,
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
    /// What the publication carries besides its data, taken out of it.
    envelope: Option<Envelope>,
    /// When it reached this node, for the delivery latency metric.
    arrived: std::time::Instant,
    seed_frame: OnceLock<Utf8Bytes>,
    v1_frame: OnceLock<Utf8Bytes>,
    pusher_frame: OnceLock<Utf8Bytes>,
}

impl Delivery {
    /// A delivery of `publication` as a broker handed it over, envelope and all.
    pub(crate) fn new(channel: &str, mut publication: Publication) -> Self {
        let envelope = Envelope::take(&mut publication);
        Self {
            channel: channel.to_owned(),
            publication,
            envelope,
            arrived: std::time::Instant::now(),
            seed_frame: OnceLock::new(),
            v1_frame: OnceLock::new(),
            pusher_frame: OnceLock::new(),
        }
    }

    /// What the publication carries besides its data (event name, excluded socket, sender).
    pub(crate) fn envelope(&self) -> Option<&Envelope> {
        self.envelope.as_ref()
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

    /// The Pusher event frame ([`pusher::event`]): the envelope's event (or
    /// [`crate::broker::DEFAULT_EVENT`]) and sender. Whether a connection takes it (the
    /// envelope's `except`) is the connection's business.
    pub(crate) fn pusher_frame(&self) -> Utf8Bytes {
        self.pusher_frame
            .get_or_init(|| {
                let envelope = self.envelope.as_ref();
                let event = envelope
                    .and_then(|e| e.event.as_deref())
                    .unwrap_or(crate::broker::DEFAULT_EVENT);
                let user = envelope.and_then(|e| e.user.as_deref());
                let data = self.publication.data.as_str();
                // Every Pusher subscriber of a hub channel belongs to the app whose
                // namespace it is in, and knows the channel by its Pusher name.
                pusher::event(event, pusher::pusher_name(&self.channel), data, user).into()
            })
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

/// Channel -> the local connections that joined it, user -> the user's connections here
/// (whatever channels they joined), which the server API's commands address, and on
/// presence channels, user -> how many connections the user has on the channel here.
#[derive(Default)]
pub(crate) struct Registry {
    channels: Mutex<HashMap<String, Vec<Member>>>,
    users: Mutex<Users>,
    presence: Mutex<HashMap<String, HashMap<UserId, Counted>>>,
    /// Presence events channel -> what was last delivered here for each user; kept while
    /// this node has subscribers on the channel.
    announced: Mutex<HashMap<String, LastEvents>>,
    /// Where messages on the control channels go, once [`Hub::start_control`] ran.
    control: OnceLock<tokio::sync::mpsc::UnboundedSender<(String, Publication)>>,
    /// Presence channel -> the users [`crate::presence::LocalPresence`] answered joined and
    /// not left yet: here, so that every `LocalPresence` of the hub agrees.
    pub(crate) admitted: Mutex<HashMap<String, std::collections::HashSet<String>>>,
}

/// One user on one presence channel on this node.
#[derive(Default)]
struct Counted {
    /// The user's connections to the channel here.
    connections: usize,
    /// The info their first connection here gave ([`Connection::join_as`]), sent with
    /// every change that adds connections.
    info: Option<Arc<str>>,
}

/// User -> the version and kind (join: true) of the user's latest presence event.
type LastEvents = HashMap<String, (u64, bool)>;

/// What the registry reads of a `join` or `leave` frame.
#[derive(Deserialize)]
struct PresenceEvent {
    #[serde(rename = "type")]
    kind: String,
    user: String,
    version: u64,
}

/// The users with local connections, and, once tracked, which of them came or went since
/// the last look ([`Hub::take_user_changes`]), so that a cluster's presence sends Redis
/// what changed rather than every user.
#[derive(Default)]
struct Users {
    /// User -> the user's local connections.
    members: HashMap<UserId, Vec<Member>>,
    /// How many connections `members` holds, kept so that counting is O(1) (presence counts
    /// every 250 ms).
    connections: usize,
    /// User -> +1 (came) or -1 (went); a user who came and went is not in it.
    changes: Option<HashMap<UserId, i8>>,
}

impl Users {
    fn changed(&mut self, user: &UserId, delta: i8) {
        if let Some(changes) = &mut self.changes {
            net(changes, user.clone(), delta);
        }
    }

    /// Counts `member` among `user`'s connections (not among all connections).
    fn add(&mut self, user: &UserId, member: &Member) {
        let members = self.members.entry(user.clone()).or_default();
        members.push(member.clone());
        if members.len() == 1 {
            self.changed(user, 1);
        }
    }

    /// Takes connection `id` out of `user`'s connections (not out of all connections).
    fn remove(&mut self, user: &UserId, id: u64) {
        if let Entry::Occupied(mut members) = self.members.entry(user.clone()) {
            members.get_mut().retain(|m| m.id != id);
            if members.get().is_empty() {
                members.remove();
                self.changed(user, -1);
            }
        }
    }
}

/// Adds `delta` to `user`'s net change, dropping it when the changes cancel out.
fn net(changes: &mut HashMap<UserId, i8>, user: UserId, delta: i8) {
    let entry = changes.entry(user);
    match entry {
        Entry::Occupied(mut sum) => {
            *sum.get_mut() += delta;
            if *sum.get() == 0 {
                sum.remove();
            }
        }
        Entry::Vacant(slot) => {
            slot.insert(delta);
        }
    }
}

impl Registry {
    /// Whether a presence event is newer than the last one delivered here for its user and
    /// says something else. Nodes announce on their own, so a join and a leave decided in
    /// one order may arrive in the other; passing on only what is newer leaves subscribers
    /// with the user's latest state, never a ghost or a missing join.
    fn is_news(&self, events: &str, publication: &Publication) -> bool {
        let Ok(event) = serde_json::from_str::<PresenceEvent>(publication.data.as_str()) else {
            return false;
        };
        let joined = event.kind == "join";
        let mut announced = self.announced.lock().unwrap();
        let users = announced.entry(events.to_owned()).or_default();
        match users.get_mut(&event.user) {
            Some((version, _)) if *version >= event.version => false,
            Some(last) => {
                let news = last.1 != joined;
                *last = (event.version, joined);
                news
            }
            None => {
                users.insert(event.user, (event.version, joined));
                true
            }
        }
    }

    /// Counts the local connections and distinct users.
    pub(crate) fn online(&self) -> Online {
        let users = self.users.lock().unwrap();
        Online {
            online: users.connections,
            users: users.members.len(),
        }
    }

    /// Local connections of `user`.
    fn connections_of(&self, user: &UserId) -> usize {
        let users = self.users.lock().unwrap();
        users.members.get(user).map_or(0, Vec::len)
    }

    /// Queues `item` for `user`'s local connections (only connection `only`, if given);
    /// returns how many took it.
    fn command(&self, user: &UserId, only: Option<u64>, item: &Outbound) -> usize {
        let users = self.users.lock().unwrap();
        let Some(members) = users.members.get(user) else {
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

    /// The local users on presence channel `channel`, with their connections to it.
    pub(crate) fn members(&self, channel: &str) -> Vec<PresenceMember> {
        let presence = self.presence.lock().unwrap();
        presence.get(channel).map_or_else(Vec::new, |users| {
            users
                .iter()
                .map(|(user, counted)| PresenceMember {
                    user: user.as_str().to_owned(),
                    connections: counted.connections,
                    info: counted.info.as_deref().map(str::to_owned),
                })
                .collect()
        })
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
        if channel.starts_with(PRESENCE_EVENTS_PREFIX) && !self.is_news(channel, &publication) {
            return 0;
        }
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

/// Which channels have presence, and the queue of their changes to the tracker task.
struct Tracking {
    channels: PresenceChannels,
    changes: mpsc::UnboundedSender<PresenceChange>,
}

/// One user's connections to one presence channel changed on this node.
struct PresenceChange {
    channel: String,
    user: UserId,
    was: usize,
    now: usize,
    /// The user's info on this node, with a change that adds connections.
    info: Option<Arc<str>>,
    /// The channel's member limit, for a join that has one ([`NodeChange::limit`]).
    limit: Option<usize>,
    /// Told once the backend has taken the change into account: false if it refused it.
    done: Option<oneshot::Sender<bool>>,
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

/// Publishes that `user` joined or left `channel` (a join with the user's `info`, if any),
/// as the v1 frame its subscribers get.
async fn announce(
    broker: &Arc<dyn Broker>,
    channel: &str,
    user: &str,
    transition: Transition,
    info: Option<&str>,
) {
    if channel.starts_with(OCCUPANCY_PREFIX) {
        return;
    }
    let Some(frame) = v1::presence_event(channel, user, transition, info) else {
        return;
    };
    let events = presence_events_channel(channel);
    let published = broker
        .publish(&events, frame.into(), &PublishOptions::default())
        .await;
    if let Err(e) = published {
        tracing::warn!(error = %e, channel, "a presence event was not published");
    }
}

/// Queues the webhook of a join or leave, which the presence backend answered to this node
/// alone: a user's on a presence channel, or the occupancy of a channel (occupied, vacated).
async fn presence_webhook(
    webhooks: Option<&Arc<Webhooks>>,
    channel: &str,
    user: &str,
    transition: Transition,
) {
    let Some(webhooks) = webhooks else { return };
    let (kind, data) = match (channel.strip_prefix(OCCUPANCY_PREFIX), transition) {
        (_, Transition::Unchanged | Transition::Refused) => return,
        (Some(channel), Transition::Joined(_)) => {
            (EventKind::Occupied, serde_json::json!({"channel": channel}))
        }
        (Some(channel), Transition::Left(_)) => {
            (EventKind::Vacated, serde_json::json!({"channel": channel}))
        }
        // Internal channels' presence (a Pusher user's sign-ins, on `#server-to-user-…`)
        // is the server's business, not the application's.
        (None, _) if !crate::protocol::is_public_channel_name(channel) => return,
        (None, Transition::Joined(_)) => (
            EventKind::Join,
            serde_json::json!({"channel": channel, "user": user}),
        ),
        (None, Transition::Left(_)) => (
            EventKind::Leave,
            serde_json::json!({"channel": channel, "user": user}),
        ),
    };
    webhooks.send(kind, data).await;
}

/// The tracker task: reports each presence change to the backend in order, and announces
/// the joins and leaves it answers. Ends with the hub (when the queue's sender drops).
async fn track(
    mut queue: mpsc::UnboundedReceiver<PresenceChange>,
    presence: Arc<dyn Presence>,
    broker: Arc<dyn Broker>,
    node: String,
    webhooks: Arc<OnceLock<Arc<Webhooks>>>,
) {
    while let Some(change) = queue.recv().await {
        let update = NodeChange {
            node: &node,
            channel: &change.channel,
            user: &change.user,
            was: change.was,
            now: change.now,
            info: change.info.as_deref(),
            limit: change.limit,
        };
        let admitted = match presence.update(&update).await {
            Ok(Transition::Refused) => false,
            Ok(transition) => {
                let user = change.user.as_str();
                let info = change.info.as_deref();
                announce(&broker, &change.channel, user, transition, info).await;
                presence_webhook(webhooks.get(), &change.channel, user, transition).await;
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    channel = change.channel,
                    "a presence change was not recorded; the user's next change on the \
                     channel records it"
                );
                true
            }
        };
        if let Some(done) = change.done {
            let _ = done.send(admitted);
        }
    }
}

/// One local connection: its outbound queue and the channels it joined. Dropping it leaves
/// every channel. Public only for [`Hub::connect`]'s test use.
#[doc(hidden)]
pub struct Connection {
    hub: Hub,
    user: UserId,
    member: Member,
    channels: Vec<String>,
    /// Presence channel -> the user the connection counts as there, where it joined as
    /// another user than its own ([`Connection::join_as`]).
    joined_as: HashMap<String, UserId>,
}

impl Connection {
    /// Joins `channel`. Messages published after this returns reach the connection.
    pub async fn join(&mut self, channel: &str) -> Result<(), BrokerError> {
        self.join_counted(channel, None, None).await.map(drop)
    }

    /// Joins `channel` as [`Connection::join`] does, but on a presence channel counts the
    /// connection as `user`'s (not its own user's), with `info` (JSON text; text that is
    /// not JSON is kept as a JSON string) as what the user's first connection to the
    /// channel tells about them: a Pusher socket names its presence user per subscription.
    /// Leaving the channel, or dropping the connection, takes exactly that back. On a
    /// channel without presence, `user` and `info` are not used; on a channel the
    /// connection joined already, nothing changes.
    pub async fn join_as(
        &mut self,
        channel: &str,
        user: &UserId,
        info: Option<String>,
    ) -> Result<(), BrokerError> {
        let info = info.map(|info| Arc::from(crate::presence::info_json(info)));
        self.join_counted(channel, Some((user.clone(), info)), None)
            .await
            .map(drop)
    }

    /// Joins presence channel `channel` as [`Connection::join_as`] does, unless the channel
    /// has `limit` users already (cluster-wide, decided by the presence backend atomically
    /// with the join): `Ok(false)` then, and the connection is not on the channel. A user
    /// already on the channel may always add a connection. If the backend does not answer
    /// in time, the join goes on, as [`Connection::join_as`]'s does.
    pub async fn join_within(
        &mut self,
        channel: &str,
        user: &UserId,
        info: Option<String>,
        limit: usize,
    ) -> Result<bool, BrokerError> {
        let info = info.map(|info| Arc::from(crate::presence::info_json(info)));
        self.join_counted(channel, Some((user.clone(), info)), Some(limit))
            .await
    }

    /// Joins `channel`, counted on a presence channel as `counted` (the user and their
    /// info), or as this connection's user without info, within `limit` users if given;
    /// `Ok(false)` if the limit refused it.
    async fn join_counted(
        &mut self,
        channel: &str,
        counted: Option<(UserId, Option<Arc<str>>)>,
        limit: Option<usize>,
    ) -> Result<bool, BrokerError> {
        if self.channels.iter().any(|c| c == channel) {
            return Ok(true);
        }
        let events = self
            .hub
            .has_presence(channel)
            .then(|| presence_events_channel(channel));
        let subscribed = self.add_member(channel);
        let events_subscribed = events.as_deref().map(|events| self.add_member(events));
        self.channels.push(channel.to_owned());
        let mut result = subscribed.await;
        if let Some(events_subscribed) = events_subscribed {
            result = result.and(events_subscribed.await);
        }
        if let Err(e) = result {
            // Not `leave`: the user was not counted on the channel yet.
            self.channels.retain(|c| c != channel);
            self.remove_member(channel);
            if let Some(events) = &events {
                self.remove_member(events);
            }
            return Err(e);
        }
        if events.is_some() {
            let (user, info) = match counted {
                Some((user, info)) => {
                    self.joined_as.insert(channel.to_owned(), user.clone());
                    (user, info)
                }
                None => (self.user.clone(), None),
            };
            let (done, taken) = oneshot::channel();
            self.count_presence(channel, &user, 1, info, Some((limit, done)));
            let refused = matches!(
                tokio::time::timeout(PRESENCE_WAIT, taken).await,
                Ok(Ok(false))
            );
            if refused {
                // Counted here but not by the backend: taking it back sends an absolute
                // count the backend already has, so nobody hears of a leave.
                self.leave(channel);
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Adds this connection to `channel`'s members; the returned future ends once the node
    /// is subscribed to it.
    fn add_member(&self, channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        let mut channels = self.hub.inner.registry.channels.lock().unwrap();
        let members = channels.entry(channel.to_owned()).or_default();
        if members.is_empty() {
            self.hub.count_occupancy(channel, 1);
        }
        members.push(self.member.clone());
        // Asked on every join, not only the first: an earlier member's SUBSCRIBE may still
        // be in flight, and this member must not be told it is subscribed before the node
        // is. The broker answers once a subscription round that started after this call
        // is confirmed (a no-op round when nothing changes). Queued under the lock so
        // subscribe and unsubscribe keep their order.
        self.hub.inner.broker.subscribe(channel)
    }

    /// Removes this connection from `channel`'s members; the node unsubscribes when its last
    /// connection leaves.
    fn remove_member(&self, channel: &str) {
        let mut channels = self.hub.inner.registry.channels.lock().unwrap();
        if let Some(members) = channels.get_mut(channel) {
            members.retain(|m| m.id != self.member.id);
            if members.is_empty() {
                channels.remove(channel);
                self.hub.count_occupancy(channel, 0);
                self.hub.inner.broker.unsubscribe(channel);
                if channel.starts_with(PRESENCE_EVENTS_PREFIX) {
                    let registry = &self.hub.inner.registry;
                    registry.announced.lock().unwrap().remove(channel);
                }
            }
        }
    }

    /// Adds `delta` to `user`'s connections to presence channel `channel` (their first
    /// connection here gives the `info` kept for them) and queues the change for the
    /// tracker; under the lock, so the tracker gets the changes in the order they happened.
    /// `done`: the member limit of the join, if any, and who is told whether the backend
    /// took it.
    fn count_presence(
        &self,
        channel: &str,
        user: &UserId,
        delta: isize,
        info: Option<Arc<str>>,
        done: Option<(Option<usize>, oneshot::Sender<bool>)>,
    ) {
        let Some(tracking) = self.hub.inner.tracking.get() else {
            return;
        };
        let mut presence = self.hub.inner.registry.presence.lock().unwrap();
        let users = presence.entry(channel.to_owned()).or_default();
        let counted = users.entry(user.clone()).or_default();
        let was = counted.connections;
        if was == 0 {
            counted.info = info;
        }
        counted.connections = was.saturating_add_signed(delta);
        let now = counted.connections;
        let info = (now > was).then(|| counted.info.clone()).flatten();
        if now == 0 {
            users.remove(user);
            if users.is_empty() {
                presence.remove(channel);
            }
        }
        let _ = tracking.changes.send(PresenceChange {
            channel: channel.to_owned(),
            user: user.clone(),
            was,
            now,
            info,
            limit: done.as_ref().and_then(|(limit, _)| *limit),
            done: done.map(|(_, done)| done),
        });
    }

    /// Makes the connection `user`'s from now on (a Pusher socket that signed in): the
    /// server API's commands for `user` reach it, and it counts among `user`'s connections
    /// online. Presence channels it joined already stay counted as the user they were.
    pub(crate) fn rename(&mut self, user: &UserId) {
        if *user == self.user {
            return;
        }
        for channel in &self.channels {
            if self.hub.has_presence(channel) && !self.joined_as.contains_key(channel) {
                self.joined_as.insert(channel.clone(), self.user.clone());
            }
        }
        let mut users = self.hub.inner.registry.users.lock().unwrap();
        users.remove(&self.user, self.member.id);
        users.add(user, &self.member);
        drop(users);
        self.user = user.clone();
    }

    /// Leaves `channel`; the node unsubscribes when its last connection leaves.
    pub fn leave(&mut self, channel: &str) {
        let was_joined = self.channels.iter().any(|c| c == channel);
        self.channels.retain(|c| c != channel);
        self.remove_member(channel);
        let joined_as = self.joined_as.remove(channel);
        if self.hub.has_presence(channel) {
            self.remove_member(&presence_events_channel(channel));
            if was_joined {
                let user = joined_as.unwrap_or_else(|| self.user.clone());
                self.count_presence(channel, &user, -1, None, None);
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
        // One by one rather than taken at once: `leave` counts a presence channel's leave only
        // for a channel the connection is still in.
        while let Some(channel) = self.channels.first().cloned() {
            self.leave(&channel);
        }
        let mut users = self.hub.inner.registry.users.lock().unwrap();
        users.connections -= 1;
        users.remove(&self.user, self.member.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::timeout;

    use super::{OUTBOUND_QUEUE, OUTBOX_KEPT, Outbound, Outbox, Publication, Registry};

    fn code(item: Outbound) -> u16 {
        match item {
            Outbound::Close(code, _) => code,
            _ => panic!("not a numbered close"),
        }
    }

    #[test]
    fn presence_events_pass_only_when_newer_and_different() {
        let registry = Registry::default();
        let event = |kind: &str, version: u64| Publication {
            offset: 0,
            epoch: "".into(),
            data: format!(r#"{{"type":"{kind}","channel":"c","user":"u","version":{version}}}"#)
                .into(),
        };
        let passed = |kind, version| registry.is_news("$presence:c", &event(kind, version));
        // Decided join 1, leave 2, join 3, leave 4; arriving 1, 3, 2, 4.
        assert!(passed("join", 1));
        assert!(
            !passed("join", 3),
            "a second join in a row says nothing new"
        );
        assert!(!passed("leave", 2), "older than what was seen");
        assert!(passed("leave", 4));
        // Decided leave 6 after join 5, arriving the other way round: ends absent.
        assert!(!passed("leave", 6), "already absent");
        assert!(!passed("join", 5), "older than the leave");
        assert!(!registry.is_news(
            "$presence:c",
            &Publication {
                offset: 0,
                epoch: "".into(),
                data: "not an event".into(),
            }
        ));
    }

    /// The next `join` or `leave` frame `connection` receives, as JSON.
    async fn next_event(connection: &super::Connection) -> serde_json::Value {
        let item = timeout(Duration::from_secs(5), connection.recv()).await;
        match item.expect("an event within 5 s") {
            Outbound::Message(delivery) => {
                serde_json::from_str(delivery.publication().data.as_str()).unwrap()
            }
            other => panic!("not a message: {other:?}"),
        }
    }

    /// A connection joined as another user is announced as that user, with the info of
    /// their first connection; their leave carries none, and comes when the last of their
    /// connections goes, however those joined.
    #[tokio::test]
    async fn joins_as_a_user_are_announced_with_their_info() {
        let hub = super::Hub::local("node-a");
        let presence = std::sync::Arc::new(crate::presence::LocalPresence::new(&hub));
        let channels = crate::presence::PresenceChannels::new(["room:"]);
        assert!(hub.track_presence(channels, presence));
        let user = |id: &str| -> crate::protocol::UserId { id.parse().unwrap() };
        let mut watcher = hub.connect(&user("watcher"));
        watcher.join("room:1").await.unwrap();
        assert_eq!(next_event(&watcher).await["user"], "watcher");
        let mut socket = hub.connect(&user("socket-1"));
        socket
            .join_as("room:1", &user("alice"), Some(r#"{"name":"Alice"}"#.into()))
            .await
            .unwrap();
        let join = next_event(&watcher).await;
        assert_eq!(
            (&join["type"], &join["user"], &join["info"]),
            (
                &"join".into(),
                &"alice".into(),
                &serde_json::json!({"name": "Alice"})
            )
        );
        let mut again = hub.connect(&user("socket-2"));
        again.join_as("room:1", &user("alice"), None).await.unwrap();
        drop(socket);
        drop(again);
        let leave = next_event(&watcher).await;
        assert_eq!(
            (&leave["type"], &leave["user"]),
            (&"leave".into(), &"alice".into())
        );
        assert!(leave.get("info").is_none(), "{leave}");
    }

    /// A renamed connection (a Pusher socket that signed in) is its new user's for commands
    /// and counts, and a presence channel it joined before stays counted as its old user.
    #[tokio::test]
    async fn a_renamed_connection_is_its_new_user_s() {
        let hub = super::Hub::local("node-a");
        let presence = std::sync::Arc::new(crate::presence::LocalPresence::new(&hub));
        let channels = crate::presence::PresenceChannels::new(["room:"]);
        assert!(hub.track_presence(channels, presence));
        let user = |id: &str| -> crate::protocol::UserId { id.parse().unwrap() };
        hub.track_users();
        let mut watcher = hub.connect(&user("watcher"));
        watcher.join("room:1").await.unwrap();
        assert_eq!(next_event(&watcher).await["user"], "watcher");
        let mut socket = hub.connect(&user("anon"));
        socket.join("room:1").await.unwrap();
        assert_eq!(next_event(&watcher).await["user"], "anon");
        socket.rename(&user("ann"));
        assert_eq!(hub.local_connections(&user("anon")), 0);
        assert_eq!(hub.local_connections(&user("ann")), 1);
        assert_eq!(
            hub.online(),
            super::Online {
                online: 2,
                users: 2
            }
        );
        let changes = hub.take_user_changes(10);
        let want = [(user("watcher"), 1), (user("ann"), 1)];
        assert_eq!(changes, want.into_iter().collect(), "anon came and went");
        let close = Outbound::Close(4000, "");
        assert_eq!(hub.command_local(&user("ann"), None, &close), 1);
        assert_eq!(hub.command_local(&user("anon"), None, &close), 0);
        drop(socket);
        let leave = next_event(&watcher).await;
        assert_eq!(
            (&leave["type"], &leave["user"]),
            (&"leave".into(), &"anon".into())
        );
        assert_eq!(
            hub.take_user_changes(10),
            [(user("ann"), -1)].into_iter().collect()
        );
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
