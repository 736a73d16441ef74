//! A Redis Cluster of the test's own: three primaries with a replica each (or another
//! shape, [`RedisCluster::start_with`]), all on free loopback ports.
//!
//! Why: Redis Cluster support (sharded pub/sub, keys spread over slots) is tested against
//! a real cluster, not a mock: a slot's owner crashing and its replica taking over, and a
//! slot moving to another primary, which is when the server tells sharded subscribers
//! `sunsubscribe`. The fixture starts the nodes, joins them (`redis-cli --cluster create`,
//! or by hand for fewer than three primaries, which `redis-cli` refuses), waits until
//! every node reports every slot served and every replica in sync, and then lets a test
//! break it: [`RedisCluster::kill`] (a crash), [`RedisCluster::wait_for_failover`] (the
//! replica promoted), [`RedisCluster::restart`] (the node back, rejoining with its node
//! id), [`RedisCluster::migrate_slot`] (one slot and its keys moved, as `redis-cli
//! --cluster reshard` does). Every wait is bounded and fails with what it last saw. One
//! subject, a cluster's life cycle, hence one file; starting and stopping one server is
//! `process.rs`'s, shared with the Sentinel fixture.
//!
//! Ports: a node also listens on its port + 10000 (the cluster bus), so both must be free.
//! They are drawn from 12000..22000 (buses 22000..32000), below the OS's ephemeral range
//! (32768 and up on Linux), so that an outgoing connection cannot take one between the
//! check and the start; one test process never hands the same port out twice.
//!
//! Timings are short (`cluster-node-timeout` 2000): a crash is noticed in about two
//! seconds and the replica is promoted about a second later.
//!
//! Just over 700 lines: one subject, a cluster's life (start, join, wait for health, break,
//! heal), whose steps share the nodes' ports and processes and are read in order.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::process::{ServerProcess, stop_all};
use crate::resp::{Reply, info_field, query, query_args, tail};

/// The hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;
/// What a node's cluster bus port is above its port.
const BUS_OFFSET: u16 = 10000;
/// Where ports are drawn from: these and their bus ports are below the ephemeral range.
const PORT_RANGE: std::ops::Range<u16> = 12000..22000;
/// Ports this test process has handed out, never again.
static RESERVED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// How long [`RedisCluster::start`] waits for the cluster to settle, and
/// [`RedisCluster::restart`] and [`RedisCluster::migrate_slot`] for it to settle again.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two polls.
const POLL: Duration = Duration::from_millis(50);
/// Keys one `MIGRATE` moves.
const MIGRATE_BATCH: usize = 100;

/// A Redis Cluster (three primaries with one replica each unless
/// [`RedisCluster::start_with`] says otherwise), each node on a free loopback port with its
/// own directory in a temporary one; dropping it kills them all and removes the directory.
///
/// Roles change: [`RedisCluster::primaries`] and [`RedisCluster::primary_for_slot`] ask
/// the cluster.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    /// What each primary killed by [`RedisCluster::kill`] served, by port.
    killed: HashMap<u16, KilledPrimary>,
    dir: tempfile::TempDir,
}

/// One `redis-server --cluster-enabled yes`, started from a config file of its own. It
/// is its [`ServerProcess`] (port, start, kill) plus its cluster node id.
#[derive(Debug)]
struct ClusterNode {
    server: ServerProcess,
    /// Its cluster node id (`CLUSTER MYID`), kept across restarts in its `nodes.conf`.
    id: String,
}

impl std::ops::Deref for ClusterNode {
    type Target = ServerProcess;

    fn deref(&self) -> &ServerProcess {
        &self.server
    }
}

impl std::ops::DerefMut for ClusterNode {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.server
    }
}

/// A primary as it was when [`RedisCluster::kill`] killed it.
#[derive(Debug)]
struct KilledPrimary {
    slots: Vec<(u16, u16)>,
    replicas: Vec<u16>,
}

impl ClusterNode {
    /// Creates its directory and config file.
    fn new(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let dir = dir.join(port.to_string());
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let server = ServerProcess::new(port, dir.join("redis.conf"), dir.join("redis.log"));
        // No replica validity limit: a replica promotes itself however long ago it last
        // heard from its primary. No replica migration: the shape stays as started. No
        // diskless-sync delay: a primary would wait 5 s for more replicas to sync at once.
        server.write_conf(
            &dir,
            "cluster-enabled yes\ncluster-config-file nodes.conf\n\
             cluster-node-timeout 2000\ncluster-replica-validity-factor 0\n\
             cluster-allow-replica-migration no\n\
             save \"\"\nappendonly no\nrepl-diskless-sync-delay 0\n",
        )?;
        Ok(Self {
            server,
            id: String::new(),
        })
    }
}

impl RedisCluster {
    /// Starts three primaries with one replica each and waits (up to 30 s) until it is
    /// settled: on every node `cluster_state:ok`, all 16384 slots assigned, every node
    /// known and none failing, the same roles and slot owners; every replica in sync.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(3, 1)
    }

    /// [`RedisCluster::start`] for async code: it starts and waits on a blocking thread, so
    /// the runtime's workers go on meanwhile. Panics if it does not start, since the test
    /// cannot go on without it.
    pub async fn start_async() -> Self {
        tokio::task::spawn_blocking(Self::start)
            .await
            .expect("the blocking start did not panic")
            .expect("the Redis Cluster starts")
    }

    /// A cluster shared by the tests of this process while any of them holds it, and a key
    /// prefix no other caller gets (`check<n>:`). A six-node cluster takes ~3 s to start:
    /// once per check would be minutes. With its own prefix, a check running beside others
    /// never sees their keys. The last holder to drop it stops the processes; a later
    /// caller starts another.
    pub async fn shared() -> (std::sync::Arc<Self>, String) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Weak};
        static SHARED: tokio::sync::Mutex<Weak<RedisCluster>> =
            tokio::sync::Mutex::const_new(Weak::new());
        static CHECKS: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!("check{}:", CHECKS.fetch_add(1, Ordering::Relaxed));
        let mut shared = SHARED.lock().await;
        if let Some(cluster) = shared.upgrade() {
            return (cluster, prefix);
        }
        let cluster = Arc::new(Self::start_async().await);
        *shared = Arc::downgrade(&cluster);
        (cluster, prefix)
    }

    /// [`RedisCluster::start`] with `primaries` primaries (at least one), the slots split
    /// evenly between them, and `replicas_per_primary` replicas each: `(1, 0)` is a one
    /// shard cluster, settled in about two seconds.
    pub fn start_with(primaries: usize, replicas_per_primary: usize) -> anyhow::Result<Self> {
        ensure!(
            (1..=usize::from(SLOTS)).contains(&primaries),
            "a cluster needs 1 to {SLOTS} primaries, not {primaries}"
        );
        let dir = tempfile::tempdir()?;
        let ports = pick_ports(primaries * (1 + replicas_per_primary))?;
        let mut cluster = Self {
            nodes: ports
                .iter()
                .map(|&port| ClusterNode::new(dir.path(), port))
                .collect::<anyhow::Result<_>>()?,
            killed: HashMap::new(),
            dir,
        };
        for node in &mut cluster.nodes {
            node.spawn(&[])?;
            node.id = match query(node.port, "CLUSTER MYID")? {
                Reply::Bulk(id) => id,
                other => bail!("CLUSTER MYID on port {}: {other:?}", node.port),
            };
        }
        if primaries >= 3 {
            cluster.create_with_redis_cli(replicas_per_primary)?;
        } else {
            cluster.create_by_hand(primaries, replicas_per_primary)?;
        }
        cluster.settle(SETTLE_TIMEOUT, "the cluster settling")?;
        Ok(cluster)
    }

    /// `redis-cli --cluster create`: it picks the primaries, assigns the slots, sets
    /// distinct config epochs, makes the nodes meet and the replicas replicate.
    fn create_with_redis_cli(&self, replicas_per_primary: usize) -> anyhow::Result<()> {
        let log = self.dir.path().join("cluster-create.log");
        let output = std::fs::File::create(&log)?;
        let mut child = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", &replicas_per_primary.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .context("starting redis-cli (is it installed? it comes with redis-server)")?;
        let status = wait_until(SETTLE_TIMEOUT, "redis-cli --cluster create exiting", || {
            Ok(match child.try_wait()? {
                Some(status) => Ok(status),
                None => Err(tail(&log, 5)),
            })
        });
        let _ = child.kill();
        let _ = child.wait();
        let status = status?;
        ensure!(
            status.success(),
            "redis-cli --cluster create failed ({status}):\n{}",
            tail(&log, 30)
        );
        Ok(())
    }

    /// What `redis-cli --cluster create` does, for fewer than three primaries: the first
    /// `primaries` nodes get the slots, every node meets the first, the others replicate.
    fn create_by_hand(&self, primaries: usize, replicas_per_primary: usize) -> anyhow::Result<()> {
        let slots = usize::from(SLOTS);
        for (i, node) in self.nodes[..primaries].iter().enumerate() {
            let (first, last) = (i * slots / primaries, (i + 1) * slots / primaries - 1);
            query(node.port, &format!("CLUSTER ADDSLOTSRANGE {first} {last}"))?;
        }
        let seed = self.nodes[0].port;
        for node in &self.nodes[1..] {
            query(node.port, &format!("CLUSTER MEET 127.0.0.1 {seed}"))?;
        }
        // A replica must know its primary first.
        let total = self.nodes.len().to_string();
        wait_until(SETTLE_TIMEOUT, "every node knowing every other", || {
            for node in &self.nodes {
                let known = cluster_info(node.port)?.remove("cluster_known_nodes");
                if known.as_deref() != Some(total.as_str()) {
                    return Ok(Err(format!(
                        "node {}: cluster_known_nodes {known:?} of {total}",
                        node.port
                    )));
                }
            }
            Ok(Ok(()))
        })?;
        for (i, replica) in self.nodes[primaries..].iter().enumerate() {
            let primary = &self.nodes[i / replicas_per_primary];
            query(replica.port, &format!("CLUSTER REPLICATE {}", primary.id))?;
        }
        Ok(())
    }

    /// Waits until [`RedisCluster::unsettled`] finds nothing missing.
    fn settle(&self, timeout: Duration, what: &str) -> anyhow::Result<()> {
        wait_until(timeout, what, || {
            Ok(match self.unsettled()? {
                None => Ok(()),
                Some(state) => Err(state),
            })
        })
    }

    /// `None` once every running node reports `cluster_state:ok`, all slots assigned, every
    /// node known, no running node failing and the same roles and slot owners as the others, and
    /// every running replica is in sync; else what is missing.
    fn unsettled(&self) -> anyhow::Result<Option<String>> {
        let total = self.nodes.len().to_string();
        let running: Vec<u16> = self.running().map(|n| n.port).collect();
        let mut topologies: Option<(u16, String)> = None;
        for &port in &running {
            let mut info = cluster_info(port)?;
            let mut field = |key: &str| info.remove(key).unwrap_or_else(|| "?".to_owned());
            let (state, assigned, known) = (
                field("cluster_state"),
                field("cluster_slots_assigned"),
                field("cluster_known_nodes"),
            );
            if state != "ok" || assigned != SLOTS.to_string() || known != total {
                return Ok(Some(format!(
                    "node {port}: cluster_state:{state}, cluster_slots_assigned:{assigned}, \
                     cluster_known_nodes:{known} of {total}"
                )));
            }
            let view = cluster_nodes(port)?;
            if let Some(entry) = view.iter().find(|e| {
                running.contains(&e.port)
                    && ["fail", "fail?", "handshake", "noaddr"]
                        .iter()
                        .any(|f| e.has_flag(f))
            }) {
                return Ok(Some(format!(
                    "node {port} sees node {} as {}",
                    entry.port,
                    entry.flags.join(",")
                )));
            }
            if view
                .iter()
                .any(|e| e.has_flag("myself") && e.has_flag("slave"))
            {
                let link = info_field(port, "replication", "master_link_status")?;
                if link.as_deref() != Some("up") {
                    return Ok(Some(format!("replica {port}: master_link_status:{link:?}")));
                }
            }
            let map = topology(&view);
            match &topologies {
                None => topologies = Some((port, map)),
                Some((first, first_map)) if *first_map != map => {
                    return Ok(Some(format!(
                        "node {first} says {first_map}; node {port} says {map}"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(None)
    }

    fn running(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// `CLUSTER NODES` as the first running node that answers reports it.
    fn view(&self) -> anyhow::Result<Vec<NodeEntry>> {
        let mut errors = Vec::new();
        for node in self.running() {
            match cluster_nodes(node.port) {
                Ok(view) => return Ok(view),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("no node answered CLUSTER NODES: {}", errors.join("; "))
    }

    /// `redis://127.0.0.1:<port>` for every node, primaries and replicas: seed URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Every node's port, primaries and replicas, killed ones included.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The ports of the primaries serving slots and not failing now (`CLUSTER NODES` on a
    /// running node), ascending.
    pub fn primaries(&self) -> anyhow::Result<Vec<u16>> {
        let mut ports: Vec<u16> = self
            .view()?
            .iter()
            .filter(|e| e.has_flag("master") && !e.slots.is_empty())
            .filter(|e| !e.has_flag("fail") && !e.has_flag("fail?"))
            .map(|e| e.port)
            .collect();
        ports.sort_unstable();
        Ok(ports)
    }

    /// The port of the primary serving `slot` (`CLUSTER NODES` on a running node): until
    /// a failover, a killed primary still serves its slots.
    pub fn primary_for_slot(&self, slot: u16) -> anyhow::Result<u16> {
        ensure!(slot < SLOTS, "slot {slot} is not below {SLOTS}");
        owner(&self.view()?, slot).with_context(|| format!("no node serves slot {slot}"))
    }

    /// The hash slot of `key`, as a running node computes it (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> anyhow::Result<u16> {
        let node = self.running().next().context("no node is running")?;
        match query_args(node.port, &["CLUSTER", "KEYSLOT", key])? {
            Reply::Line(slot) => Ok(slot.parse()?),
            other => bail!("CLUSTER KEYSLOT on port {}: {other:?}", node.port),
        }
    }

    /// Kills the node on `port` (SIGKILL, as a crash). If it was a primary serving slots,
    /// the others notice after `cluster-node-timeout` (2 s) and promote its replica: see
    /// [`RedisCluster::wait_for_failover`]. [`RedisCluster::restart`] brings it back.
    pub fn kill(&mut self, port: u16) -> anyhow::Result<()> {
        let node = self.node(port)?;
        if node.is_running() {
            let view = cluster_nodes(port)?;
            let me = view
                .iter()
                .find(|e| e.has_flag("myself"))
                .with_context(|| format!("node {port} does not list itself"))?;
            if me.has_flag("master") && !me.slots.is_empty() {
                let replicas = view
                    .iter()
                    .filter(|e| e.master_id.as_deref() == Some(me.id.as_str()))
                    .map(|e| e.port)
                    .collect();
                let slots = me.slots.clone();
                self.killed.insert(port, KilledPrimary { slots, replicas });
            }
        }
        self.node_mut(port)?.kill();
        Ok(())
    }

    /// Waits until one of the replicas of `old_primary` (a primary [`RedisCluster::kill`]
    /// killed) serves its slots as a primary and the running nodes are settled again
    /// (`cluster_state:ok`, the same slot owners); returns its port. Fails after `timeout`
    /// with what it last saw.
    pub fn wait_for_failover(&self, old_primary: u16, timeout: Duration) -> anyhow::Result<u16> {
        let killed = self.killed.get(&old_primary).with_context(|| {
            format!("node {old_primary} is not a primary that RedisCluster::kill killed")
        })?;
        let probe = killed.slots[0].0;
        let what = format!(
            "a replica of {old_primary} ({:?}) serving slot {probe}",
            killed.replicas
        );
        wait_until(timeout, &what, || {
            if let Some(state) = self.unsettled()? {
                return Ok(Err(state));
            }
            let view = self.view()?;
            Ok(match owner(&view, probe) {
                Some(port) if killed.replicas.contains(&port) => Ok(port),
                other => Err(format!("slot {probe} served by {other:?}")),
            })
        })
    }

    /// Starts the node on `port` again (killing it first if it runs), empty but with its
    /// node id and view of the cluster (its `nodes.conf`), and waits (up to 30 s) until the
    /// running nodes are settled: a primary that was failed over comes back as a replica
    /// of its successor, in sync.
    pub fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        self.node_mut(port)?.spawn(&[])?;
        self.killed.remove(&port);
        self.settle(
            SETTLE_TIMEOUT,
            &format!("the cluster settling after node {port} restarted"),
        )
    }

    /// Moves `slot` and its keys from the primary serving it to the primary on `to_port`,
    /// as `redis-cli --cluster reshard` does: `CLUSTER SETSLOT IMPORTING` on the target,
    /// `MIGRATING` on the source, `MIGRATE` of the keys, then `CLUSTER SETSLOT NODE` on the
    /// target, the source and the other primaries; waits (up to 30 s) until every running
    /// node reports the new owner. The source then tells its sharded subscribers of the
    /// slot's channels `sunsubscribe`. Nothing to do if `to_port` serves it already.
    pub fn migrate_slot(&self, slot: u16, to_port: u16) -> anyhow::Result<()> {
        let from_port = self.primary_for_slot(slot)?;
        if from_port == to_port {
            return Ok(());
        }
        let primaries = self.primaries()?;
        ensure!(
            primaries.contains(&to_port),
            "node {to_port} is not a primary (primaries: {primaries:?})"
        );
        let (from, to) = (&self.node(from_port)?.id, &self.node(to_port)?.id);
        let slot_arg = slot.to_string();
        let setslot = |port: u16, args: &[&str]| -> anyhow::Result<()> {
            let command = [&["CLUSTER", "SETSLOT", slot_arg.as_str()], args].concat();
            query_args(port, &command).map(drop)
        };
        setslot(to_port, &["IMPORTING", from])?;
        setslot(from_port, &["MIGRATING", to])?;
        let to_arg = to_port.to_string();
        let batch = MIGRATE_BATCH.to_string();
        wait_until(
            SETTLE_TIMEOUT,
            &format!("slot {slot}'s keys moving"),
            || {
                let keys = match query_args(
                    from_port,
                    &["CLUSTER", "GETKEYSINSLOT", &slot_arg, &batch],
                )? {
                    Reply::Array(keys) if keys.is_empty() => return Ok(Ok(())),
                    Reply::Array(keys) => keys,
                    other => bail!("CLUSTER GETKEYSINSLOT on port {from_port}: {other:?}"),
                };
                let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_arg, "", "0", "5000", "REPLACE"];
                migrate.push("KEYS");
                for key in &keys {
                    let Reply::Bulk(key) = key else {
                        bail!("CLUSTER GETKEYSINSLOT on port {from_port}: a key {key:?}");
                    };
                    migrate.push(key);
                }
                query_args(from_port, &migrate)?;
                Ok(Err(format!("{} keys moved in the last batch", keys.len())))
            },
        )?;
        setslot(to_port, &["NODE", to])?;
        setslot(from_port, &["NODE", to])?;
        for &port in primaries
            .iter()
            .filter(|&&p| p != from_port && p != to_port)
        {
            setslot(port, &["NODE", to])?;
        }
        wait_until(
            SETTLE_TIMEOUT,
            &format!("every node reporting {to_port} serving slot {slot}"),
            || {
                if let Some(state) = self.unsettled()? {
                    return Ok(Err(state));
                }
                for node in self.running() {
                    let owner = owner(&cluster_nodes(node.port)?, slot);
                    if owner != Some(to_port) {
                        return Ok(Err(format!("node {} says {owner:?}", node.port)));
                    }
                }
                Ok(Ok(()))
            },
        )
    }

    fn node(&self, port: u16) -> anyhow::Result<&ClusterNode> {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .with_context(|| format!("no node of this cluster on port {port}"))
    }

    fn node_mut(&mut self, port: u16) -> anyhow::Result<&mut ClusterNode> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .with_context(|| format!("no node of this cluster on port {port}"))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        stop_all(self.nodes.iter_mut().map(|node| &mut node.server));
    }
}

/// Calls `check` every [`POLL`] until it returns `Ok(Ok(_))`; an `Ok(Err(state))` or an
/// error (a node not answering, say) is what it last saw, in the error after `timeout`.
fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Result<T, String>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(state)) => state,
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}; last seen: {last}");
        }
        std::thread::sleep(POLL);
    }
}

/// `count` different ports in [`PORT_RANGE`] that, and whose bus ports, nobody listens on
/// now and this process has not handed out before.
fn pick_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let mut reserved = RESERVED.lock().unwrap_or_else(PoisonError::into_inner);
    let random = RandomState::new();
    let width = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    let mut ports = Vec::with_capacity(count);
    for attempt in 0..10 * width {
        if ports.len() == count {
            break;
        }
        let port = PORT_RANGE.start + u16::try_from(random.hash_one(attempt) % width)?;
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if !reserved.contains(&port) && free(port) && free(port + BUS_OFFSET) {
            reserved.insert(port);
            ports.push(port);
        }
    }
    ensure!(
        ports.len() == count,
        "found only {} of {count} free port pairs in {PORT_RANGE:?}",
        ports.len()
    );
    Ok(ports)
}

/// `CLUSTER INFO` on the node on `port`, as fields.
fn cluster_info(port: u16) -> anyhow::Result<HashMap<String, String>> {
    let Reply::Bulk(info) = query(port, "CLUSTER INFO")? else {
        bail!("CLUSTER INFO on port {port} is not a bulk string");
    };
    Ok(info
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeEntry {
    id: String,
    port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`, ...
    flags: Vec<String>,
    /// A replica's primary.
    master_id: Option<String>,
    /// The slot ranges it serves, inclusive; slots being imported or migrated left out.
    slots: Vec<(u16, u16)>,
}

impl NodeEntry {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// `CLUSTER NODES` on the node on `port`:
/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
fn cluster_nodes(port: u16) -> anyhow::Result<Vec<NodeEntry>> {
    let Reply::Bulk(nodes) = query(port, "CLUSTER NODES")? else {
        bail!("CLUSTER NODES on port {port} is not a bulk string");
    };
    nodes
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [
                id,
                addr,
                flags,
                master,
                _ping,
                _pong,
                _epoch,
                _link,
                slots @ ..,
            ] = fields.as_slice()
            else {
                bail!("CLUSTER NODES on port {port}: a short line {line:?}");
            };
            let node_port = addr
                .split(['@', ','])
                .next()
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
                .with_context(|| format!("CLUSTER NODES on port {port}: an address {addr:?}"))?;
            let slots = slots
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| {
                    let (first, last) = s.split_once('-').unwrap_or((s, s));
                    Ok((first.parse()?, last.parse()?))
                })
                .collect::<anyhow::Result<_>>()
                .with_context(|| format!("CLUSTER NODES on port {port}: slots in {line:?}"))?;
            Ok(NodeEntry {
                id: (*id).to_owned(),
                port: node_port,
                flags: flags.split(',').map(str::to_owned).collect(),
                master_id: (*master != "-").then(|| (*master).to_owned()),
                slots,
            })
        })
        .collect()
}

/// The port of the primary serving `slot` in a `CLUSTER NODES` view.
fn owner(view: &[NodeEntry], slot: u16) -> Option<u16> {
    view.iter()
        .find(|e| e.has_flag("master") && e.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .map(|e| e.port)
}

/// The roles and slot owners in a `CLUSTER NODES` view, for comparing views: each node as
/// `port:master` or `port:replica-of-port`, then `first-last:port` per slot range.
fn topology(view: &[NodeEntry]) -> String {
    let port_of = |id: &str| view.iter().find(|e| e.id == id).map_or(0, |e| e.port);
    let mut roles: Vec<String> = view
        .iter()
        .map(|e| match &e.master_id {
            Some(master) => format!("{}:replica-of-{}", e.port, port_of(master)),
            None if e.has_flag("master") => format!("{}:master", e.port),
            None => format!("{}:{}", e.port, e.flags.join(",")),
        })
        .collect();
    roles.sort_unstable();
    let mut ranges: Vec<(u16, u16, u16)> = view
        .iter()
        .filter(|e| e.has_flag("master"))
        .flat_map(|e| e.slots.iter().map(|&(a, b)| (a, b, e.port)))
        .collect();
    ranges.sort_unstable();
    let ranges = ranges.iter().map(|(a, b, port)| format!("{a}-{b}:{port}"));
    roles
        .into_iter()
        .chain(ranges)
        .collect::<Vec<_>>()
        .join(" ")
}
