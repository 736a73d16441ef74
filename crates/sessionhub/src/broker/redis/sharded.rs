//! The subscription task on a Redis Cluster: sharded pub/sub, one connection per primary.
//!
//! A channel's messages are published with `SPUBLISH` on the primary that owns the
//! channel's slot, and reach only the clients subscribed there. So the task keeps one
//! RESP3 connection to each primary that owns a channel the hub wants, and brings each to
//! its share of the wanted set; nothing more is ever subscribed than the hub asked for.
//!
//! It works by reconciling: what each connection should hold follows from the wanted
//! channels and the slot map ([`Topology`]); a round sends the difference and records what
//! the server confirmed. Anything that may have broken a subscription makes the next round
//! start from the facts again:
//! - a connection closes, or does not answer the PING sent every 2 s: it is dropped, with
//!   all its subscriptions, and the map is read again (its primary may have failed over);
//! - a node tells us `sunsubscribe` for a channel we did not leave (its slot moved to
//!   another primary): the connection is dropped too, since redis-rs takes that message
//!   for the reply of the oldest command in flight on it;
//! - `SSUBSCRIBE` is refused (`MOVED`, `CLUSTERDOWN`...): the map is read again;
//! - the map, read every 2 s, names another owner for a subscribed channel's slot.
//!
//! Each `SSUBSCRIBE` and `SUNSUBSCRIBE` names one channel: a command with channels of
//! several slots is refused with CROSSSLOT (the resubscription bug that redis-rs, node-redis,
//! ioredis and redis-py all had), and one confirmation per command is what redis-rs'
//! multiplexed connection expects. They are pipelined, so a resubscription after a
//! failover is one round trip per primary however many channels it holds.
//!
//! The broker is healthy while every wanted channel is subscribed on the primary that owns
//! its slot. A node that lost a subscription on the way may have missed publications, so
//! when it is healthy again it tells the sink to resync, as on one Redis.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::aio::{MultiplexedConnection, SendError};
use ::redis::{PushInfo, PushKind, Value};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, join_all};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, timeout};

use super::commands::{Commands, ping_commands};
use super::subscriber::deliver;
use crate::broker::Deliver;
use crate::broker::link::{Ack, DownOnExit, LinkState, Request};
use crate::error::BrokerError;
use crate::redis::Keys;
use crate::redis::backoff::Backoff;
use crate::redis::cluster::{Node, Topology, is_redirect, slot};

/// How often each connection is PINGed and the slot map read again.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe may go unanswered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one round (connecting and every command in it) may take.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);
/// First delay before a failed round is tried again.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The delay stops doubling here.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Pushes from every connection, each tagged with its connection's id.
type Pushes = mpsc::UnboundedSender<(u64, PushInfo)>;

/// Forwards one connection's pushes, tagged, into the task's one queue. Unbounded, as
/// redis-rs' own push channel is: a connection's reader must never block on us.
struct Tagged {
    id: u64,
    pushes: Pushes,
}

impl ::redis::aio::AsyncPushSender for Tagged {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        self.pushes.send((self.id, info)).map_err(|_| SendError)
    }
}

/// One primary's subscription connection.
struct Shard {
    id: u64,
    connection: MultiplexedConnection,
    /// Channels the server confirmed.
    subscribed: HashSet<String>,
    /// Channels with a `SUNSUBSCRIBE` in flight: a `sunsubscribe` for them is our own.
    leaving: HashSet<String>,
}

/// What a round is to do on one primary.
struct Plan {
    node: Node,
    /// The connection, or `None` if one must be opened first.
    connection: Option<(u64, MultiplexedConnection)>,
    subscribe: Vec<String>,
    unsubscribe: Vec<String>,
}

/// What a round did on one primary.
struct Outcome {
    node: Node,
    /// A connection opened by the round.
    opened: Option<(u64, MultiplexedConnection)>,
    /// Per channel, whether the server confirmed it.
    subscribed: Vec<(String, Result<(), String>)>,
    unsubscribed: Vec<(String, Result<(), String>)>,
    /// Why nothing could be done there.
    failed: Option<String>,
}

/// The task. See the module documentation.
pub(super) struct Sharded {
    topology: Arc<Topology>,
    commands: Commands,
    keys: Keys,
    sink: Arc<dyn Deliver>,
    inbox: mpsc::UnboundedReceiver<Request>,
    state: Arc<LinkState>,
    /// The channels the hub wants, with their slots.
    wanted: HashMap<String, u16>,
    /// Subscribers waiting for their channel to be confirmed.
    waiting: Vec<(String, Ack)>,
    shards: HashMap<Node, Shard>,
    pushes_in: Pushes,
    pushes: mpsc::UnboundedReceiver<(u64, PushInfo)>,
    /// The id of the next connection.
    next_id: u64,
    /// Something changed since the last round: the next one must look.
    dirty: bool,
    /// A subscription was broken since the broker was last healthy: resync once it is.
    interrupted: bool,
    /// The first round has not succeeded yet.
    starting: bool,
}

impl Sharded {
    /// Starts the task; it stops when every sender of `inbox` is gone.
    pub(super) fn spawn(
        topology: Arc<Topology>,
        commands: Commands,
        keys: Keys,
        sink: Arc<dyn Deliver>,
        inbox: mpsc::UnboundedReceiver<Request>,
        state: Arc<LinkState>,
    ) {
        let (pushes_in, pushes) = mpsc::unbounded_channel();
        let task = Self {
            topology,
            commands,
            keys,
            sink,
            inbox,
            state,
            wanted: HashMap::new(),
            waiting: Vec::new(),
            shards: HashMap::new(),
            pushes_in,
            pushes,
            next_id: 0,
            dirty: true,
            interrupted: false,
            starting: true,
        };
        tokio::spawn(task.run());
    }

    async fn run(mut self) {
        let _down = DownOnExit(self.state.clone());
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut round: Option<BoxFuture<'static, Vec<Outcome>>> = None;
        let mut retry_at: Option<Instant> = None;
        let mut probe: Option<BoxFuture<'static, (Vec<u64>, bool)>> = None;
        let mut probes = tokio::time::interval_at(Instant::now() + PROBE_INTERVAL, PROBE_INTERVAL);
        probes.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failures = 0_u32;
        loop {
            let due = retry_at.is_none_or(|at| at <= Instant::now());
            if round.is_none() && due && (self.dirty || !self.waiting.is_empty()) {
                retry_at = None;
                round = Some(self.start_round());
            }
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((id, push)) = self.pushes.recv() => self.on_push(id, push),
                request = self.inbox.recv() => match request {
                    Some(request) => self.apply(request),
                    None => return,
                },
                outcomes = async { round.as_mut().unwrap().await }, if round.is_some() => {
                    round = None;
                    match self.finish_round(outcomes).await {
                        Ok(()) => {
                            backoff.reset();
                            failures = 0;
                        }
                        Err(reason) => {
                            failures += 1;
                            if failures == 1 {
                                tracing::warn!(%reason, "redis cluster broker: subscriptions incomplete, retrying");
                            } else {
                                tracing::debug!(%reason, failures, "redis cluster broker: subscriptions still incomplete");
                            }
                            self.fail_waiting(&reason);
                            self.dirty = true;
                            retry_at = Some(Instant::now() + backoff.next());
                        }
                    }
                },
                () = retry => {}
                _ = probes.tick(), if probe.is_none() => probe = Some(self.probe()),
                (dead, changed) = async { probe.as_mut().unwrap().await }, if probe.is_some() => {
                    probe = None;
                    for id in dead {
                        self.drop_shard_by_id(id, "no PING reply");
                    }
                    self.dirty |= changed;
                },
            }
        }
    }

    fn apply(&mut self, request: Request) {
        match request {
            Request::Subscribe { channel, done } => {
                if !self.wanted.contains_key(&channel) {
                    let slot = slot(&self.keys.channel(&channel));
                    self.wanted.insert(channel.clone(), slot);
                    self.dirty = true;
                }
                self.waiting.push((channel, done));
            }
            Request::Unsubscribe { channel } => {
                self.dirty |= self.wanted.remove(&channel).is_some();
            }
        }
    }

    fn healthy(&mut self, healthy: bool) {
        self.state.healthy.send_replace(healthy);
    }

    /// Plans the difference between what each primary should hold and what it holds, and
    /// returns the future that sends it.
    fn start_round(&mut self) -> BoxFuture<'static, Vec<Outcome>> {
        self.dirty = false;
        let topology = self.topology.clone();
        let map = topology.map();
        if map.primaries().is_empty() || topology.take_stale() {
            // Nothing is known yet, or what is known is out of date: read the map, and
            // plan in the next round.
            self.dirty = true;
            return async move {
                let failed = match topology.refresh().await {
                    Ok(_) => None,
                    Err(e) => {
                        topology.invalidate();
                        Some(e.to_string())
                    }
                };
                vec![Outcome {
                    node: Node::from(""),
                    opened: None,
                    subscribed: Vec::new(),
                    unsubscribed: Vec::new(),
                    failed,
                }]
            }
            .boxed();
        }
        let mut desired: HashMap<Node, Vec<&String>> = HashMap::new();
        let mut unowned = None;
        for (channel, slot) in &self.wanted {
            match map.owner(*slot) {
                Some(node) => desired.entry(node.clone()).or_default().push(channel),
                None => unowned = Some(*slot),
            }
        }
        let mut plans = Vec::new();
        for (node, shard) in &mut self.shards {
            let want = desired.remove(node).unwrap_or_default();
            let subscribe: Vec<String> = want
                .iter()
                .filter(|c| !shard.subscribed.contains(c.as_str()))
                .map(|c| (*c).clone())
                .collect();
            let want: HashSet<&String> = want.into_iter().collect();
            let unsubscribe: Vec<String> = shard
                .subscribed
                .iter()
                .filter(|c| !want.contains(c) && !shard.leaving.contains(*c))
                .cloned()
                .collect();
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            // A still-wanted channel leaving this primary moved to another: whatever was
            // published between its moving and our subscribing there is missed.
            if unsubscribe.iter().any(|c| self.wanted.contains_key(c)) {
                self.interrupted = true;
            }
            shard.leaving.extend(unsubscribe.iter().cloned());
            plans.push(Plan {
                node: node.clone(),
                connection: Some((shard.id, shard.connection.clone())),
                subscribe,
                unsubscribe,
            });
        }
        for (node, want) in desired {
            plans.push(Plan {
                node,
                connection: None,
                subscribe: want.into_iter().cloned().collect(),
                unsubscribe: Vec::new(),
            });
        }
        let mut opening = Vec::new();
        for plan in &plans {
            if plan.connection.is_none() {
                opening.push(self.next_id);
                self.next_id += 1;
            }
        }
        let keys = self.keys.clone();
        let pushes = self.pushes_in.clone();
        let mut ids = opening.into_iter();
        let work: Vec<_> = plans
            .into_iter()
            .map(|plan| {
                let id = if plan.connection.is_none() {
                    ids.next()
                } else {
                    None
                };
                execute(plan, id, topology.clone(), keys.clone(), pushes.clone())
            })
            .collect();
        async move {
            let mut outcomes = join_all(work).await;
            if let Some(slot) = unowned {
                outcomes.push(Outcome {
                    node: Node::from(""),
                    opened: None,
                    subscribed: Vec::new(),
                    unsubscribed: Vec::new(),
                    failed: Some(format!("no primary owns slot {slot}")),
                });
                topology.invalidate();
            }
            outcomes
        }
        .boxed()
    }

    /// Records what a round did; `Err` if any of it failed, with the first reason.
    async fn finish_round(&mut self, outcomes: Vec<Outcome>) -> Result<(), String> {
        let mut first_failure = None;
        for outcome in outcomes {
            if let Some((id, connection)) = outcome.opened {
                self.shards.insert(
                    outcome.node.clone(),
                    Shard {
                        id,
                        connection,
                        subscribed: HashSet::new(),
                        leaving: HashSet::new(),
                    },
                );
            }
            if let Some(reason) = outcome.failed {
                first_failure.get_or_insert(reason);
            }
            let Some(shard) = self.shards.get_mut(&outcome.node) else {
                continue;
            };
            for (channel, result) in outcome.unsubscribed {
                shard.leaving.remove(&channel);
                match result {
                    Ok(()) => {
                        shard.subscribed.remove(&channel);
                    }
                    Err(reason) => {
                        first_failure.get_or_insert(reason);
                    }
                }
            }
            for (channel, result) in outcome.subscribed {
                match result {
                    Ok(()) => {
                        shard.subscribed.insert(channel);
                    }
                    Err(reason) => {
                        first_failure.get_or_insert(reason);
                    }
                }
            }
        }
        // Primaries left with nothing: their connection goes.
        self.shards
            .retain(|_, shard| !shard.subscribed.is_empty() || !shard.leaving.is_empty());
        self.ack_confirmed();
        if let Some(reason) = first_failure {
            self.healthy(false);
            return Err(reason);
        }
        if self.dirty {
            return Ok(());
        }
        if self.interrupted || self.starting {
            // The command links may talk to a primary that is gone; a failure here is
            // the readiness check's to report.
            let _ = ping_commands(&self.commands).await;
        }
        self.healthy(true);
        if self.interrupted {
            self.interrupted = false;
            self.state.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                channels = self.wanted.len(),
                primaries = self.shards.len(),
                "redis cluster broker: subscriptions restored"
            );
            self.sink.resync();
        } else if self.starting {
            tracing::info!("redis cluster broker: connected");
        }
        self.starting = false;
        Ok(())
    }

    /// Answers every waiting subscriber whose channel is subscribed where it lives.
    fn ack_confirmed(&mut self) {
        let map = self.topology.map();
        for (channel, ack) in std::mem::take(&mut self.waiting) {
            let confirmed = self
                .wanted
                .get(&channel)
                .and_then(|slot| map.owner(*slot))
                .and_then(|node| self.shards.get(node))
                .is_some_and(|shard| shard.subscribed.contains(&channel));
            if confirmed {
                let _ = ack.send(Ok(()));
            } else {
                self.waiting.push((channel, ack));
            }
        }
    }

    fn fail_waiting(&mut self, reason: &str) {
        for (_, ack) in self.waiting.drain(..) {
            let _ = ack.send(Err(BrokerError::unavailable(
                "redis cluster",
                reason.to_owned(),
            )));
        }
    }

    fn on_push(&mut self, id: u64, push: PushInfo) {
        let Some(node) = self
            .shards
            .iter()
            .find(|(_, shard)| shard.id == id)
            .map(|(node, _)| node.clone())
        else {
            // A connection already given up.
            return;
        };
        match push.kind {
            PushKind::SMessage => {
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (push.data.first(), push.data.get(1))
                else {
                    return;
                };
                let Ok(channel) = std::str::from_utf8(channel) else {
                    return;
                };
                deliver(&self.keys, &self.sink, channel, payload, |c| {
                    self.wanted.contains_key(c)
                });
            }
            PushKind::Disconnection => self.drop_shard(&node, "connection closed"),
            PushKind::SUnsubscribe => {
                let shard = &self.shards[&node];
                let ours = push
                    .data
                    .first()
                    .and_then(|c| match c {
                        Value::BulkString(c) => std::str::from_utf8(c).ok(),
                        _ => None,
                    })
                    .and_then(|c| self.keys.channel_of(c))
                    .is_none_or(|c| shard.leaving.contains(c) || !shard.subscribed.contains(c));
                if !ours {
                    self.drop_shard(&node, "the server dropped a subscription (slot moved)");
                }
            }
            _ => {}
        }
    }

    fn drop_shard_by_id(&mut self, id: u64, reason: &str) {
        let node = self
            .shards
            .iter()
            .find(|(_, shard)| shard.id == id)
            .map(|(node, _)| node.clone());
        if let Some(node) = node {
            self.drop_shard(&node, reason);
        }
    }

    /// Gives up the connection to `node` and everything subscribed on it.
    fn drop_shard(&mut self, node: &Node, reason: &str) {
        let Some(shard) = self.shards.remove(node) else {
            return;
        };
        tracing::warn!(%node, reason, channels = shard.subscribed.len(), "redis cluster broker: subscription connection given up");
        if shard.subscribed.iter().any(|c| self.wanted.contains_key(c)) {
            self.interrupted = true;
        }
        self.healthy(false);
        self.dirty = true;
        // Its primary may have failed over, or lost the slot.
        self.topology.invalidate();
    }

    /// PINGs every connection and reads the slot map; answers the connections that did not
    /// answer and whether the map changed.
    fn probe(&self) -> BoxFuture<'static, (Vec<u64>, bool)> {
        let topology = self.topology.clone();
        let pings: Vec<_> = self
            .shards
            .values()
            .map(|shard| {
                let (id, mut connection) = (shard.id, shard.connection.clone());
                async move {
                    let ping = ::redis::cmd("PING");
                    match timeout(PROBE_TIMEOUT, ping.query_async::<Value>(&mut connection)).await {
                        Ok(Ok(_)) => None,
                        _ => Some(id),
                    }
                }
            })
            .collect();
        async move {
            let (dead, refreshed) = futures_util::future::join(join_all(pings), async {
                timeout(PROBE_TIMEOUT * 2, topology.refresh()).await
            })
            .await;
            let changed = matches!(refreshed, Ok(Ok(true)));
            (dead.into_iter().flatten().collect(), changed)
        }
        .boxed()
    }
}

/// Carries out one primary's part of a round: connects if it must, then one command per
/// channel, all pipelined.
fn execute(
    plan: Plan,
    id: Option<u64>,
    topology: Arc<Topology>,
    keys: Keys,
    pushes: Pushes,
) -> BoxFuture<'static, Outcome> {
    async move {
        let Plan {
            node,
            connection,
            subscribe,
            unsubscribe,
        } = plan;
        let mut outcome = Outcome {
            node: node.clone(),
            opened: None,
            subscribed: Vec::new(),
            unsubscribed: Vec::new(),
            failed: None,
        };
        let connection = match connection {
            Some((_, connection)) => connection,
            None => {
                let id = id.expect("an id for every connection to open");
                let sender = Tagged { id, pushes };
                match timeout(ROUND_TIMEOUT, topology.subscriber(&node, sender)).await {
                    Ok(Ok(connection)) => {
                        outcome.opened = Some((id, connection.clone()));
                        connection
                    }
                    Ok(Err(e)) => {
                        topology.invalidate();
                        outcome.failed = Some(format!("cannot connect to {node}: {e}"));
                        return outcome;
                    }
                    Err(_) => {
                        outcome.failed =
                            Some(format!("cannot connect to {node} within {ROUND_TIMEOUT:?}"));
                        return outcome;
                    }
                }
            }
        };
        let send = |command: &'static str, channel: String| {
            let mut connection = connection.clone();
            let name = keys.channel(&channel);
            let topology = topology.clone();
            let node = node.clone();
            async move {
                let mut request = ::redis::cmd(command);
                request.arg(&name);
                let sent = request.query_async::<Value>(&mut connection);
                let result = match timeout(ROUND_TIMEOUT, sent).await {
                    Ok(Ok(Value::ServerError(e))) => Err(format!("{command} refused: {e:?}")),
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => {
                        if is_redirect(&e) {
                            topology.invalidate();
                        }
                        Err(format!("{command} failed on {node}: {e}"))
                    }
                    Err(_) => Err(format!("{command} not confirmed within {ROUND_TIMEOUT:?}")),
                };
                (channel, result)
            }
        };
        let (subscribed, unsubscribed) = futures_util::future::join(
            join_all(subscribe.into_iter().map(|c| send("SSUBSCRIBE", c))),
            join_all(unsubscribe.into_iter().map(|c| send("SUNSUBSCRIBE", c))),
        )
        .await;
        outcome.subscribed = subscribed;
        outcome.unsubscribed = unsubscribed;
        outcome
    }
    .boxed()
}
