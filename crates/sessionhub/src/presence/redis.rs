//! Presence across every node that shares a Redis.
//!
//! A node sends what changed, never everything it holds: a beat every 250 ms when users
//! came or went (those users only) and every 3 s otherwise (its counts and its liveness,
//! ~200 bytes), and one script per change of a user's connections to a presence channel.
//! At 100k users that is kilobytes a minute where the full snapshot it replaces was tens of
//! megabytes (`docs/benchmarks.md`, "Presence traffic").
//!
//! Keys, online counts (all in the `{presence}` slot, so that one script writes them on
//! Redis Cluster too; `scripts/presence_beat.lua`, `presence_withdraw.lua`):
//! - `<prefix>presence:{presence}:nodes`: sorted set of node ids, scored by when their
//!   liveness expires (now + [`LIVENESS_TTL`] at each beat);
//! - `:node:<node id>`: the node's counts, JSON `{"online": n, "users": m}`, with that TTL;
//! - `:users`: hash, every user online in the cluster -> how many nodes hold them;
//! - `:users:<node id>`: set, the node's users; `:channels:<node id>`: set, the presence
//!   channels the node holds users on, so that whoever reaps the node knows where to look.
//!
//! Keys of a presence channel (with the channel as hash tag, so that one script updates
//! them atomically; `scripts/presence_channel_*.lua`): `<prefix>ch:{<channel>}:presence:users`
//! (hash, user -> connections cluster-wide), `:presence:connections` (their sum),
//! `:presence:node:<node id>` (hash, user -> connections on that node),
//! `:presence:version` (counts the channel's joins and leaves; never reset, so that a
//! version is never used twice for one channel), and `:presence:info` (hash, user -> the
//! info their first connection gave, JSON text; removed with the user, a reaped one too).
//!
//! A node that stops beating is reaped by the first survivor that sees its liveness
//! expired (each node looks every 3 s): one script removes it from the online counts and
//! hands back its channels, then one script per channel removes its entries and answers the
//! users who thereby left, whose `leave` the survivor announces. Two survivors racing get
//! those answers once: the scripts decide. A node that was reaped while alive (cut off from
//! Redis for longer than the TTL) learns it from its next beat and sends everything again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::{AsyncCommands, ScriptInvocation};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ChannelStats, Member, NodeChange, Presence, Transition};
use crate::error::PresenceError;
use crate::hub::{Hub, Online};
use crate::protocol::UserId;
use crate::redis::{Keys, Managed, Reconnect, RedisConfig, scripts};
use crate::store::now_ms;
use crate::webhook::EventKind;

/// How long a node counts as alive after its last beat. A node killed without a word has
/// its users' `leave`s announced within this plus `REFRESH` (13 s, under the 30 s
/// promised).
pub const LIVENESS_TTL: Duration = Duration::from_secs(10);
/// How often a node beats even when nothing changed, and looks for dead nodes to reap.
const REFRESH: Duration = Duration::from_secs(3);
// A dead node's users leave within its liveness TTL plus one look for dead nodes: the
// 30 s promised (docs/protocol.md, "Presence") must hold with the defaults.
const _: () = assert!(LIVENESS_TTL.as_secs() + REFRESH.as_secs() <= 30);

/// How often a node checks for users who came or went.
const CHANGE_CHECK: Duration = Duration::from_millis(250);
/// Most user changes one beat sends, so that a node starting with many users fills Redis
/// in steps rather than in one script that blocks it.
const MAX_CHANGES_PER_BEAT: usize = 10_000;
/// Most dead nodes one look reaps; the others wait for the next look.
const MAX_REAPED: isize = 16;

#[derive(Serialize, Deserialize)]
struct Counts {
    online: usize,
    users: usize,
}

/// Presence across every node that shares a Redis.
pub struct RedisPresence {
    connection: Managed,
    keys: Keys,
    nodes_key: String,
    users_key: String,
    /// The presence channels this node listed in its `channels:<node id>` set, so that it
    /// is added once rather than with every change.
    indexed: Mutex<HashSet<String>>,
    /// True once the heartbeat removed what a previous process with this node id left;
    /// channel changes wait for it, or the removal could take them away.
    cleaned: watch::Sender<bool>,
    /// True once the heartbeat withdrew the node at its stop. Held by each channel change
    /// while it writes, so that no change of a closing connection can put an entry back
    /// after the withdrawal took them all away (nobody would ever reap it).
    stopped: tokio::sync::Mutex<bool>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("nodes_key", &self.nodes_key)
            .finish_non_exhaustive()
    }
}

/// Whose entries [`RedisPresence::withdraw`] may remove.
#[derive(Clone, Copy)]
enum Withdraw {
    /// Whatever the node's liveness says: this node's own, at start and at a graceful stop.
    Any,
    /// Only if the node's liveness expired: another node, presumed dead.
    Dead,
}

impl RedisPresence {
    /// Sets up presence on `url` (keys under `prefix`); it connects on first use, so a node
    /// can start while Redis is down. Fails only for an invalid URL.
    pub fn new(url: &str, prefix: &str) -> Result<Self, PresenceError> {
        let config = RedisConfig::new(url).map_err(|e| PresenceError::unavailable("redis", e))?;
        Self::lazy(&config.prefix(prefix))
    }

    /// Sets up presence on `config`'s Redis; it connects on first use. Channel presence
    /// needs the heartbeat running ([`RedisPresence::spawn_heartbeat`]).
    pub fn lazy(config: &RedisConfig) -> Result<Self, PresenceError> {
        let connection = Managed::lazy(config, Reconnect::PRESENCE).map_err(unavailable)?;
        let keys = config.keys().clone();
        Ok(Self {
            connection,
            nodes_key: keys.presence_nodes(),
            users_key: keys.presence_users(),
            keys,
            indexed: Mutex::default(),
            cleaned: watch::Sender::new(false),
            stopped: tokio::sync::Mutex::new(false),
        })
    }

    /// A command failed: tell the connection (it may have to find a new primary).
    fn failed(&self, e: ::redis::RedisError) -> PresenceError {
        self.connection.failed(&e);
        unavailable(e)
    }

    /// Beats for `hub` until `stop` is cancelled: sends the users who came or went (at most
    /// every 250 ms) and the node's counts and liveness (at least every 3 s), and reaps dead
    /// nodes. First removes what a previous process with the same node id left behind;
    /// at the end withdraws the node, so the counts drop at once. Await the returned handle
    /// after cancelling to know the withdrawal is done.
    pub fn spawn_heartbeat(
        self: Arc<Self>,
        hub: Hub,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        hub.track_users();
        tokio::spawn(async move {
            let mut cleaned = false;
            let mut beaten: Option<(Instant, Online)> = None;
            let mut looked = Instant::now();
            let mut tick = tokio::time::interval(CHANGE_CHECK);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if !cleaned {
                    match self.withdraw(&hub, hub.node_id(), Withdraw::Any).await {
                        Ok(()) => {
                            cleaned = true;
                            self.cleaned.send_replace(true);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "presence: cannot clear this node's old entries; retrying");
                            continue;
                        }
                    }
                }
                let changes = hub.take_user_changes(MAX_CHANGES_PER_BEAT);
                let online = hub.online();
                let due = beaten.is_none_or(|(at, sent)| at.elapsed() >= REFRESH || sent != online);
                if !changes.is_empty() || due {
                    match self.beat(&hub, online, &changes).await {
                        Ok(absent) => {
                            if absent && beaten.is_some() {
                                tracing::warn!(
                                    "presence: this node was taken for dead; sending all it holds again"
                                );
                                self.indexed.lock().unwrap().clear();
                                hub.track_users();
                                hub.resend_presence();
                            }
                            beaten = Some((Instant::now(), online));
                        }
                        Err(e) => {
                            hub.return_user_changes(changes);
                            tracing::warn!(error = %e, "presence beat not sent; retrying");
                        }
                    }
                }
                if looked.elapsed() >= REFRESH {
                    looked = Instant::now();
                    if let Err(e) = self.reap_dead(&hub).await {
                        tracing::warn!(error = %e, "presence: cannot look for dead nodes; retrying");
                    }
                }
            }
            let mut stopped = self.stopped.lock().await;
            *stopped = true;
            if let Err(e) = self.withdraw(&hub, hub.node_id(), Withdraw::Any).await {
                tracing::warn!(error = %e, "presence not withdrawn; a survivor reaps it");
            }
        })
    }

    /// Sends this node's counts, liveness and user `changes`; answers whether the node was
    /// missing from the node set.
    async fn beat(
        &self,
        hub: &Hub,
        online: Online,
        changes: &HashMap<UserId, i8>,
    ) -> Result<bool, PresenceError> {
        let counts = Counts {
            online: online.online,
            users: online.users,
        };
        let json = serde_json::to_string(&counts).expect("counts serialize");
        let node = hub.node_id();
        let ttl = LIVENESS_TTL.as_millis() as u64;
        let added: Vec<&str> = changes
            .iter()
            .filter(|(_, d)| **d > 0)
            .map(|(u, _)| u.as_str())
            .collect();
        let mut invocation = scripts::PRESENCE_BEAT.prepare_invoke();
        invocation
            .key(&self.nodes_key)
            .key(self.keys.presence_node(node))
            .key(self.keys.presence_node_set("users", node))
            .key(&self.users_key)
            .arg(node)
            .arg(json)
            .arg(ttl)
            .arg(now_ms() + ttl)
            .arg(added.len())
            .arg(added);
        for (user, _) in changes.iter().filter(|(_, d)| **d < 0) {
            invocation.arg(user.as_str());
        }
        let (absent, came, went): (i64, Vec<String>, Vec<String>) =
            self.invoke(&invocation).await?;
        users_webhook(hub, came, went);
        Ok(absent == 1)
    }

    /// Reaps the nodes whose liveness expired.
    async fn reap_dead(&self, hub: &Hub) -> Result<(), PresenceError> {
        let dead: Vec<String> = {
            let mut connection = self.connection.get().await.map_err(unavailable)?;
            connection
                .zrangebyscore_limit(&self.nodes_key, "-inf", now_ms(), 0, MAX_REAPED)
                .await
                .map_err(|e| self.failed(e))?
        };
        for node in dead.iter().filter(|n| *n != hub.node_id()) {
            tracing::info!(node, "presence: reaping a node that stopped beating");
            self.withdraw(hub, node, Withdraw::Dead).await?;
        }
        Ok(())
    }

    /// Takes `node` out of the online counts and its users out of every presence channel,
    /// announcing their leaves; a no-op if another node did it first (or, with
    /// [`Withdraw::Dead`], if `node` is alive).
    async fn withdraw(&self, hub: &Hub, node: &str, mode: Withdraw) -> Result<(), PresenceError> {
        let mut invocation = scripts::PRESENCE_WITHDRAW.prepare_invoke();
        let (mode, before) = match mode {
            Withdraw::Any => ("any", 0),
            Withdraw::Dead => ("dead", now_ms()),
        };
        invocation
            .key(&self.nodes_key)
            .key(self.keys.presence_node(node))
            .key(self.keys.presence_node_set("users", node))
            .key(&self.users_key)
            .key(self.keys.presence_node_set("channels", node))
            .arg(node)
            .arg(mode)
            .arg(before);
        let withdrawn: Option<(Vec<String>, Vec<String>)> = self.invoke(&invocation).await?;
        let (channels, went) = withdrawn.unwrap_or_default();
        users_webhook(hub, Vec::new(), went);
        for channel in channels {
            let mut invocation = scripts::PRESENCE_CHANNEL_REAP.prepare_invoke();
            self.channel_keys(&mut invocation, &channel, node);
            let left: Vec<(String, u64)> = self.invoke(&invocation).await?;
            for (user, version) in left {
                hub.announce(&channel, &user, Transition::Left(version))
                    .await;
            }
        }
        Ok(())
    }

    /// `channel`'s presence keys, in the order the channel scripts take them.
    fn channel_keys(&self, invocation: &mut ScriptInvocation<'_>, channel: &str, node: &str) {
        invocation
            .key(self.keys.channel_presence(channel, "users"))
            .key(
                self.keys
                    .channel_presence(channel, &["node:", node].concat()),
            )
            .key(self.keys.channel_presence(channel, "connections"))
            .key(self.keys.channel_presence(channel, "version"))
            .key(self.keys.channel_presence(channel, "info"));
    }

    async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, PresenceError> {
        let mut connection = self.connection.get().await.map_err(unavailable)?;
        invocation
            .invoke_async::<T>(&mut connection)
            .await
            .map_err(|e| self.failed(e))
    }

    /// Lists `channel` in this node's channel set, once; before its first entry is written,
    /// so that whoever reaps the node finds every channel it has entries on.
    async fn index(&self, node: &str, channel: &str) -> Result<(), PresenceError> {
        if self.indexed.lock().unwrap().contains(channel) {
            return Ok(());
        }
        let mut connection = self.connection.get().await.map_err(unavailable)?;
        let key = self.keys.presence_node_set("channels", node);
        let () = connection
            .sadd(&key, channel)
            .await
            .map_err(|e| self.failed(e))?;
        self.indexed.lock().unwrap().insert(channel.to_owned());
        Ok(())
    }

    /// Takes `channel` out of this node's channel set: the node has no entries on it left.
    async fn unindex(&self, node: &str, channel: &str) -> Result<(), PresenceError> {
        self.indexed.lock().unwrap().remove(channel);
        let mut connection = self.connection.get().await.map_err(unavailable)?;
        let key = self.keys.presence_node_set("channels", node);
        let () = connection
            .srem(&key, channel)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn online(&self) -> Result<Online, PresenceError> {
        let mut connection = self.connection.get().await.map_err(unavailable)?;
        let nodes: Vec<String> = connection
            .zrangebyscore(&self.nodes_key, now_ms(), "+inf")
            .await
            .map_err(|e| self.failed(e))?;
        if nodes.is_empty() {
            return Ok(Online::default());
        }
        let keys: Vec<String> = nodes.iter().map(|n| self.keys.presence_node(n)).collect();
        let counts: Vec<Option<String>> =
            connection.mget(&keys).await.map_err(|e| self.failed(e))?;
        let online = counts
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str::<Counts>(&json).ok())
            .map(|counts| counts.online)
            .sum();
        let users: usize = connection
            .hlen(&self.users_key)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(Online { online, users })
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError> {
        let mut invocation = scripts::PRESENCE_CHANNEL_MEMBERS.prepare_invoke();
        invocation
            .key(self.keys.channel_presence(channel, "users"))
            .key(self.keys.channel_presence(channel, "info"));
        let (users, mut info): (HashMap<String, usize>, HashMap<String, String>) =
            self.invoke(&invocation).await?;
        Ok(users
            .into_iter()
            .map(|(user, connections)| Member {
                info: info.remove(&user),
                user,
                connections,
            })
            .collect())
    }

    async fn stats(&self, channel: &str) -> Result<ChannelStats, PresenceError> {
        let mut invocation = scripts::PRESENCE_CHANNEL_STATS.prepare_invoke();
        invocation
            .key(self.keys.channel_presence(channel, "users"))
            .key(self.keys.channel_presence(channel, "connections"));
        let (users, connections): (usize, i64) = self.invoke(&invocation).await?;
        Ok(ChannelStats {
            users,
            connections: connections.max(0) as usize,
        })
    }

    async fn update(&self, change: &NodeChange<'_>) -> Result<Transition, PresenceError> {
        // Never fails: the sender lives in `self`.
        let _ = self.cleaned.subscribe().wait_for(|cleaned| *cleaned).await;
        let stopped = self.stopped.lock().await;
        if *stopped {
            return Ok(Transition::Unchanged);
        }
        if change.now > 0 {
            self.index(change.node, change.channel).await?;
        }
        let mut invocation = scripts::PRESENCE_CHANNEL_SET.prepare_invoke();
        self.channel_keys(&mut invocation, change.channel, change.node);
        invocation
            .arg(change.user.as_str())
            .arg(change.now)
            .arg(change.info.unwrap_or(""))
            .arg(change.limit.map(|l| l.to_string()).unwrap_or_default());
        let (transition, left_here, version): (i64, usize, u64) = self.invoke(&invocation).await?;
        if left_here == 0 {
            self.unindex(change.node, change.channel).await?;
        }
        Ok(match transition {
            1 => Transition::Joined(version),
            -1 => Transition::Left(version),
            2 => Transition::Refused,
            _ => Transition::Unchanged,
        })
    }
}

/// Queues the webhooks of users who came online or went offline cluster-wide, which the
/// presence scripts answered to this node alone. In the background: a node starting with
/// 10k users must not delay its next beat by 10k queue round trips.
fn users_webhook(hub: &Hub, came: Vec<String>, went: Vec<String>) {
    let Some(webhooks) = hub.webhooks() else {
        return;
    };
    let kinds = [(EventKind::Online, came), (EventKind::Offline, went)];
    for (kind, users) in kinds {
        for user in users {
            webhooks.emit(kind, serde_json::json!({"user": user}));
        }
    }
}

fn unavailable(e: ::redis::RedisError) -> PresenceError {
    PresenceError::unavailable("redis", e)
}
