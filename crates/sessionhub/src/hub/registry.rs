//! The registry: channel -> local members, user -> connections, presence counts; the
//! broker's delivery sink.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::broker::{Deliver, Publication};
use crate::control;
use crate::presence::Member as PresenceMember;
use crate::protocol::{SESSION_CHANNEL_PREFIX, UserId, close};
use crate::wire::{Sent, Wire};

use super::delivery::{Render, Rendered, Straight, delivery_latency};
use super::{Delivery, OUTBOUND_QUEUE, OUTBOX_KEPT, Online, Outbound, PRESENCE_EVENTS_PREFIX};

#[derive(Clone)]
pub(super) struct Member {
    pub(super) id: u64,
    pub(super) outbox: Arc<Outbox>,
    pub(super) slow: CancellationToken,
    /// Whether deliveries on this channel may be written straight to the connection's
    /// wire ([`Outbox::offer`]): the connection said so once the channel's state on its side
    /// (a subscribe reply, a greeting) was out.
    pub(super) straight: Straight,
}

/// A connection's outbound queue: bounded, one reader, and empty until something is queued.
/// Most sockets idle most of the time, and a tokio `mpsc` channel allocated ~1.3 KiB per
/// socket up front (its first block of slots), a sixth of an idle socket's memory.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) queue: Mutex<VecDeque<Outbound>>,
    pub(super) ready: Notify,
    /// The connection's wire and the frames it takes there, if it takes deliveries
    /// straight from the delivering task ([`crate::wire`]).
    pub(super) direct: OnceLock<Direct>,
}

/// Where and how a connection takes deliveries straight from the delivering task.
pub(super) struct Direct {
    pub(super) wire: Arc<Wire>,
    pub(super) render: Render,
}

/// What became of a delivery offered to a connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Offer {
    /// Written straight to its socket (all of it, or its start with the rest left to flush).
    Written,
    /// Queued for its task.
    Queued,
    /// Not for this connection (a Pusher socket the publication excludes).
    NotTaken,
    /// Its queue is full: a slow consumer.
    Full,
}

impl Outbox {
    /// Queues `item`; `false` if [`OUTBOUND_QUEUE`] items are already waiting.
    pub(super) fn push(&self, item: Outbound) -> bool {
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

    /// Writes `item` straight to the connection's socket when it can (`direct`: the member
    /// allows it; nothing queued before it; the socket's task not sending), else queues it.
    pub(super) fn offer(&self, item: &Outbound, straight: &Straight) -> Offer {
        let mut queue = self.queue.lock().unwrap();
        if let (true, Some(to), Outbound::Message(delivery)) =
            (queue.is_empty(), self.direct.get(), item)
            && !to.wire.busy.load(Ordering::Acquire)
        {
            let frame = match to.render.frame(delivery, straight) {
                Rendered::Frame(frame) => frame,
                Rendered::Skip => return Offer::NotTaken,
                Rendered::Queue => return self.queue_up(queue, item),
            };
            match to.wire.try_send(frame.as_bytes()) {
                Sent::All => {
                    delivery_latency().record(delivery.age().as_secs_f64());
                    return Offer::Written;
                }
                Sent::Part => {
                    delivery_latency().record(delivery.age().as_secs_f64());
                    counter(&SPLIT, "sessionhub_direct_writes_split_total").increment(1);
                    queue.push_back(Outbound::Flush);
                    drop(queue);
                    self.ready.notify_one();
                    return Offer::Written;
                }
                Sent::Nothing => {}
            }
        }
        self.queue_up(queue, item)
    }

    /// Queues `item` for the connection's task, in `queue` (locked).
    fn queue_up(&self, mut queue: MutexGuard<'_, VecDeque<Outbound>>, item: &Outbound) -> Offer {
        if queue.len() >= OUTBOUND_QUEUE {
            return Offer::Full;
        }
        queue.push_back(item.clone());
        drop(queue);
        self.ready.notify_one();
        Offer::Queued
    }

    /// The next item. Cancel-safe: an item leaves the queue only when it is returned.
    pub(super) async fn pop(&self) -> Outbound {
        loop {
            {
                let mut queue = self.queue.lock().unwrap();
                if let Some(item) = queue.pop_front() {
                    // Until the task looks for more ([`Outbox::idle`]), a delivery written
                    // straight to the socket could overtake this one.
                    if let Some(direct) = self.direct.get() {
                        direct.wire.busy.store(true, Ordering::Release);
                    }
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

    /// The connection's task is done with what it took: deliveries may go straight to the
    /// socket again, while the queue is empty.
    pub(super) fn idle(&self) {
        if let Some(direct) = self.direct.get() {
            direct.wire.busy.store(false, Ordering::Release);
        }
    }
}

static OUT: OnceLock<metrics::Counter> = OnceLock::new();
static DIRECT: OnceLock<metrics::Counter> = OnceLock::new();
static SPLIT: OnceLock<metrics::Counter> = OnceLock::new();

/// The counter `name`, looked up once into `slot` (a lookup by name hashes it into the
/// recorder's registry: per delivery, that showed in a node's profile).
fn counter(
    slot: &'static OnceLock<metrics::Counter>,
    name: &'static str,
) -> &'static metrics::Counter {
    slot.get_or_init(|| metrics::counter!(name))
}

/// Channel -> the local connections that joined it, user -> the user's connections here
/// (whatever channels they joined), which the server API's commands address, and on
/// presence channels, user -> how many connections the user has on the channel here.
#[derive(Default)]
pub(crate) struct Registry {
    pub(super) channels: Mutex<HashMap<String, Vec<Member>>>,
    pub(super) users: Mutex<Users>,
    pub(super) presence: Mutex<HashMap<String, HashMap<UserId, Counted>>>,
    /// Presence events channel -> what was last delivered here for each user; kept while
    /// this node has subscribers on the channel.
    pub(super) announced: Mutex<HashMap<String, LastEvents>>,
    /// Where messages on the control channels go, once [`Hub::start_control`](super::Hub::start_control) ran.
    pub(super) control: OnceLock<tokio::sync::mpsc::UnboundedSender<(String, Publication)>>,
    /// Presence channel -> the users [`crate::presence::LocalPresence`] answered joined and
    /// not left yet: here, so that every `LocalPresence` of the hub agrees.
    pub(crate) admitted: Mutex<HashMap<String, std::collections::HashSet<String>>>,
}

/// One user on one presence channel on this node.
#[derive(Default)]
pub(super) struct Counted {
    /// The user's connections to the channel here.
    pub(super) connections: usize,
    /// The info their first connection here gave ([`Connection::join_as`](super::Connection::join_as)), sent with
    /// every change that adds connections.
    pub(super) info: Option<Arc<str>>,
}

/// User -> the version and kind (join: true) of the user's latest presence event.
pub(super) type LastEvents = HashMap<String, (u64, bool)>;

/// What the registry reads of a `join` or `leave` frame.
#[derive(Deserialize)]
pub(super) struct PresenceEvent {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) user: String,
    pub(super) version: u64,
}

/// The users with local connections, and, once tracked, which of them came or went since
/// the last look ([`Hub::take_user_changes`](super::Hub::take_user_changes)), so that a cluster's presence sends Redis
/// what changed rather than every user.
#[derive(Default)]
pub(super) struct Users {
    /// User -> the user's local connections.
    pub(super) members: HashMap<UserId, Vec<Member>>,
    /// How many connections `members` holds, kept so that counting is O(1) (presence counts
    /// every 250 ms).
    pub(super) connections: usize,
    /// User -> +1 (came) or -1 (went); a user who came and went is not in it.
    pub(super) changes: Option<HashMap<UserId, i8>>,
}

impl Users {
    fn changed(&mut self, user: &UserId, delta: i8) {
        if let Some(changes) = &mut self.changes {
            net(changes, user.clone(), delta);
        }
    }

    /// Counts `member` among `user`'s connections (not among all connections).
    pub(super) fn add(&mut self, user: &UserId, member: &Member) {
        let members = self.members.entry(user.clone()).or_default();
        members.push(member.clone());
        if members.len() == 1 {
            self.changed(user, 1);
        }
    }

    /// Takes connection `id` out of `user`'s connections (not out of all connections).
    pub(super) fn remove(&mut self, user: &UserId, id: u64) {
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
pub(super) fn net(changes: &mut HashMap<UserId, i8>, user: UserId, delta: i8) {
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
    pub(super) fn is_news(&self, events: &str, publication: &Publication) -> bool {
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
    pub(super) fn connections_of(&self, user: &UserId) -> usize {
        let users = self.users.lock().unwrap();
        users.members.get(user).map_or(0, Vec::len)
    }

    /// Queues `item` for `user`'s local connections (only connection `only`, if given);
    /// returns how many took it.
    pub(super) fn command(&self, user: &UserId, only: Option<u64>, item: &Outbound) -> usize {
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
    pub(super) fn channels(&self) -> Vec<(String, usize)> {
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
        let (mut delivered, mut written) = (0, 0);
        for member in members {
            match member.outbox.offer(&outbound, &member.straight) {
                Offer::Written => {
                    delivered += 1;
                    written += 1;
                }
                Offer::Queued => delivered += 1,
                Offer::NotTaken => {}
                Offer::Full => {
                    tracing::info!(channel, "slow consumer: outbound queue full, disconnecting");
                    metrics::counter!("sessionhub_slow_consumers_total").increment(1);
                    member.slow.cancel();
                }
            }
        }
        counter(&OUT, "sessionhub_messages_out_total").increment(delivered as u64);
        if written > 0 {
            counter(&DIRECT, "sessionhub_messages_direct_total").increment(written);
        }
        delivered
    }
}
