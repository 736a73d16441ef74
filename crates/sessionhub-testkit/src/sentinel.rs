//! A Redis Sentinel deployment of the test's own: one primary, one replica and three
//! sentinels (quorum 2), all on free loopback ports.
//!
//! Why: `--redis-sentinel` is tested against real failovers, not a mock. The fixture starts
//! the processes, waits until the deployment is settled (the replica in sync, every
//! sentinel agreeing on the primary and knowing the replica and the other two sentinels),
//! and then lets a test break it: [`RedisSentinel::kill_primary`] (a crash, the sentinels
//! elect a leader and promote the replica), [`RedisSentinel::failover`] (a promotion while
//! the old primary stays up), [`RedisSentinel::restart`] (the crashed server comes back as
//! a replica). Every wait is bounded and fails with what it last saw.
//!
//! Timings are short (`down-after-milliseconds` 1000, `failover-timeout` 3000), so that a
//! crash is noticed in about a second; the sentinels' other periods are Redis's defaults.
//! Sentinel answers in nested arrays, which [`redis_command`](crate::redis_command) (one
//! line) does not read: `resp.rs`'s `query` reads whole RESP2 replies. Each server is a
//! `process.rs` `ServerProcess`, as the cluster fixture's nodes are.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::free_port;
use crate::process::{ServerProcess, stop_all};
use crate::resp::{Reply, info_field, query};

/// The master name the sentinels monitor unless [`RedisSentinel::start_with`] says another.
const DEFAULT_MASTER_NAME: &str = "mymaster";
/// How long [`RedisSentinel::start`] waits for the deployment to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one server gets to answer PING, or a restarted replica to get in sync.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two polls.
const POLL: Duration = Duration::from_millis(50);
/// Sentinels in a deployment that can fail over, and how many must agree that the primary
/// is down.
const SENTINELS: usize = 3;
const QUORUM: usize = 2;

/// One primary, one replica and three sentinels (quorum 2) monitoring it, each process on a
/// free loopback port with its config file in a temporary directory; dropping it kills them
/// all and removes the directory.
///
/// Roles change: [`RedisSentinel::primary_port`] and [`RedisSentinel::replica_port`] are
/// the roles at start, [`RedisSentinel::current_primary_port`] asks a sentinel.
#[derive(Debug)]
pub struct RedisSentinel {
    /// How many sentinels must agree that the primary is down.
    quorum: usize,
    master_name: String,
    primary: u16,
    replica: u16,
    servers: Vec<ServerProcess>,
    sentinels: Vec<ServerProcess>,
    dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Starts the deployment monitoring master name `mymaster` and waits (up to 20 s) until
    /// it is settled: the replica in sync with the primary, and every sentinel reporting the
    /// primary, the replica and the two other sentinels.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(DEFAULT_MASTER_NAME)
    }

    /// [`RedisSentinel::start`] for async code: it starts and waits on a blocking thread, so
    /// the runtime's workers go on meanwhile. Panics if it does not start, since the test
    /// cannot go on without it.
    pub async fn start_async() -> Self {
        tokio::task::spawn_blocking(Self::start)
            .await
            .expect("the blocking start did not panic")
            .expect("the Sentinel deployment starts")
    }

    /// [`RedisSentinel::start`] with the sentinels monitoring `master_name` (a name
    /// Sentinel accepts: no spaces).
    pub fn start_with(master_name: &str) -> anyhow::Result<Self> {
        Self::start_deployment(master_name, SENTINELS, QUORUM)
    }

    /// A deployment with one sentinel (quorum 1), settled in about a second instead of
    /// several (sentinels find each other only through hello messages every 2 s): for tests
    /// that need Sentinel to name the primary but fail nothing over, such as the
    /// conformance suites. Waits on a blocking thread; panics if it does not start.
    pub async fn start_lean() -> Self {
        tokio::task::spawn_blocking(|| Self::start_deployment(DEFAULT_MASTER_NAME, 1, 1))
            .await
            .expect("the blocking start did not panic")
            .expect("the Sentinel deployment starts")
    }

    fn start_deployment(
        master_name: &str,
        sentinels: usize,
        quorum: usize,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        // Different ports: the OS may hand out a just-released one again.
        let mut ports = Vec::with_capacity(2 + sentinels);
        while ports.len() < 2 + sentinels {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let (primary, replica) = (ports[0], ports[1]);
        let mut fixture = Self {
            quorum,
            master_name: master_name.to_owned(),
            primary,
            replica,
            servers: vec![
                server(dir.path(), primary, "redis"),
                server(dir.path(), replica, "redis"),
            ],
            sentinels: ports[2..]
                .iter()
                .map(|&port| server(dir.path(), port, "sentinel"))
                .collect(),
            dir,
        };
        fixture.spawn_all()?;
        fixture.settle()?;
        Ok(fixture)
    }

    fn spawn_all(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.path();
        // No diskless-sync delay: the primary would wait 5 s for more replicas to sync at
        // once, and so would every test.
        let data = "save \"\"\nappendonly no\nreplica-announce-ip 127.0.0.1\n\
                    repl-diskless-sync-delay 0\n";
        self.servers[0].write_conf(dir, data)?;
        self.servers[0].spawn(&[])?;
        let replicaof = format!("{data}replicaof 127.0.0.1 {}\n", self.primary);
        self.servers[1].write_conf(dir, &replicaof)?;
        self.servers[1].spawn(&[])?;
        let name = &self.master_name;
        let sentinel = format!(
            "sentinel resolve-hostnames no\n\
             sentinel announce-ip 127.0.0.1\n\
             sentinel monitor {name} 127.0.0.1 {} {}\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 3000\n\
             sentinel parallel-syncs {name} 1\n",
            self.primary, self.quorum
        );
        for process in &mut self.sentinels {
            process.write_conf(dir, &sentinel)?;
            process.spawn(&["--sentinel"])?;
        }
        Ok(())
    }

    /// Waits until the replica is in sync and every sentinel knows the whole deployment.
    fn settle(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.settled() {
                Ok(None) => return Ok(()),
                Ok(Some(state)) => last = state,
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(POLL);
        }
        bail!("the Sentinel deployment did not settle within {SETTLE_TIMEOUT:?}; last seen: {last}")
    }

    /// `None` once settled, else what is missing.
    fn settled(&self) -> anyhow::Result<Option<String>> {
        let primary = info_field(self.primary, "replication", "connected_slaves")?;
        let link = info_field(self.replica, "replication", "master_link_status")?;
        if primary.as_deref() != Some("1") || link.as_deref() != Some("up") {
            return Ok(Some(format!(
                "primary connected_slaves:{primary:?}, replica master_link_status:{link:?}"
            )));
        }
        for sentinel in &self.sentinels {
            let port = self.master_addr(sentinel.port)?;
            let master = query(
                sentinel.port,
                &format!("SENTINEL master {}", self.master_name),
            )?;
            let field = |key: &str| master.field(key).unwrap_or("?").to_owned();
            let (others, slaves) = (field("num-other-sentinels"), field("num-slaves"));
            let expected_others = (self.sentinels.len() - 1).to_string();
            if port != Some(self.primary) || others != expected_others || slaves != "1" {
                return Ok(Some(format!(
                    "sentinel {}: master port {port:?}, num-other-sentinels {others}, \
                     num-slaves {slaves}",
                    sentinel.port
                )));
            }
        }
        Ok(None)
    }

    /// The sentinels' addresses, `127.0.0.1:<port>` each.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The master name the sentinels monitor (`mymaster` unless
    /// [`RedisSentinel::start_with`] said another).
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The port of the server that was the primary at start.
    pub fn primary_port(&self) -> u16 {
        self.primary
    }

    /// The port of the server that was the replica at start.
    pub fn replica_port(&self) -> u16 {
        self.replica
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url_of(&self, port: u16) -> String {
        format!("redis://127.0.0.1:{port}")
    }

    /// The primary's port as the first sentinel that answers reports it
    /// (`SENTINEL get-master-addr-by-name`).
    pub fn current_primary_port(&self) -> anyhow::Result<u16> {
        let mut errors = Vec::new();
        for sentinel in &self.sentinels {
            match self.master_addr(sentinel.port) {
                Ok(Some(port)) => return Ok(port),
                Ok(None) => errors.push(format!("{}: no address", sentinel.port)),
                Err(e) => errors.push(format!("{}: {e:#}", sentinel.port)),
            }
        }
        bail!("no sentinel reported the primary: {}", errors.join("; "))
    }

    /// The role the server (or sentinel) on `port` reports (`ROLE`): `master`, `slave` or
    /// `sentinel`.
    pub fn role(&self, port: u16) -> anyhow::Result<String> {
        match query(port, "ROLE")? {
            Reply::Array(items) => match items.first() {
                Some(Reply::Bulk(role)) => Ok(role.clone()),
                other => bail!("ROLE on port {port}: unexpected first element {other:?}"),
            },
            other => bail!("ROLE on port {port}: unexpected reply {other:?}"),
        }
    }

    /// Kills the current primary (SIGKILL, as a crash) and returns its port. The sentinels
    /// notice after `down-after-milliseconds` (1 s) and promote the replica: see
    /// [`RedisSentinel::wait_for_new_primary`].
    pub fn kill_primary(&mut self) -> anyhow::Result<u16> {
        let port = self.current_primary_port()?;
        self.kill(port)?;
        Ok(port)
    }

    /// Kills the data server on `port` (SIGKILL); [`RedisSentinel::restart`] brings it
    /// back.
    pub fn kill(&mut self, port: u16) -> anyhow::Result<()> {
        self.server_mut(port)?.kill();
        Ok(())
    }

    /// Asks a sentinel to promote the replica now (`SENTINEL FAILOVER`), the primary
    /// staying up: the sentinels then make the old primary a replica of the new one. Returns
    /// once the sentinel accepted; see [`RedisSentinel::wait_for_new_primary`].
    pub fn failover(&self) -> anyhow::Result<()> {
        let sentinel = self.sentinels[0].port;
        match query(sentinel, &format!("SENTINEL FAILOVER {}", self.master_name))? {
            Reply::Line(ok) if ok == "OK" => Ok(()),
            other => bail!("SENTINEL FAILOVER on sentinel {sentinel}: {other:?}"),
        }
    }

    /// Waits until the server on `port` reports `ROLE` slave: the sentinels reconfigure a
    /// primary demoted while it stayed up only on their next INFO poll (~10 s after a
    /// [`RedisSentinel::failover`]). Fails after `timeout`.
    pub fn wait_for_demotion(&self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let role = self.role(port)?;
            if role == "slave" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the server on port {port} is still {role} after {timeout:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until every sentinel reports the same primary other than `old_port`, and that
    /// server answers `ROLE` as master; returns its port. Fails after `timeout` with what
    /// the sentinels last reported.
    pub fn wait_for_new_primary(&self, old_port: u16, timeout: Duration) -> anyhow::Result<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            let reports: Vec<_> = self
                .sentinels
                .iter()
                .map(|s| self.master_addr(s.port).ok().flatten())
                .collect();
            let last = match reports.first() {
                Some(Some(port))
                    if *port != old_port && reports.iter().all(|r| r == &Some(*port)) =>
                {
                    match self.role(*port) {
                        Ok(role) if role == "master" => return Ok(*port),
                        Ok(role) => format!("sentinels agree on {port}, which says {role}"),
                        Err(e) => format!("sentinels agree on {port}, which fails: {e:#}"),
                    }
                }
                _ => format!("sentinels report {reports:?}"),
            };
            if Instant::now() >= deadline {
                bail!("no new primary other than {old_port} within {timeout:?}; {last}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts the data server on `port` again (killing it first if it runs), empty. If the
    /// sentinels report another primary, it comes back as that one's replica (as the
    /// sentinels would reconfigure it) and this waits until it is in sync; if they still
    /// report this one, it comes back as an empty primary.
    pub fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        self.server_mut(port)?.kill();
        let primary = self.current_primary_port()?;
        let primary_port = primary.to_string();
        let args: &[&str] = if primary == port {
            &[]
        } else {
            &["--replicaof", "127.0.0.1", &primary_port]
        };
        self.server_mut(port)?.spawn(args)?;
        if primary == port {
            return Ok(());
        }
        let deadline = Instant::now() + SERVER_TIMEOUT;
        let mut last = None;
        while Instant::now() < deadline {
            last = info_field(port, "replication", "master_link_status")?;
            if last.as_deref() == Some("up") {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "restarted server {port} not in sync with {primary} within {SERVER_TIMEOUT:?} \
             (master_link_status {last:?})"
        )
    }

    fn server_mut(&mut self, port: u16) -> anyhow::Result<&mut ServerProcess> {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .with_context(|| format!("no data server of this fixture on port {port}"))
    }

    /// The primary's port as the sentinel on `sentinel` reports it, if it knows one.
    fn master_addr(&self, sentinel: u16) -> anyhow::Result<Option<u16>> {
        let command = format!("SENTINEL get-master-addr-by-name {}", self.master_name);
        match query(sentinel, &command)? {
            Reply::Array(items) => match items.as_slice() {
                [Reply::Bulk(_host), Reply::Bulk(port)] => Ok(Some(port.parse()?)),
                _ => bail!("sentinel {sentinel}: unexpected address {items:?}"),
            },
            Reply::Nil => Ok(None),
            other => bail!("sentinel {sentinel}: unexpected reply {other:?}"),
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        stop_all(self.sentinels.iter_mut().chain(&mut self.servers));
    }
}

/// A data server (`kind` "redis") or Sentinel ("sentinel") on `port`, its files in `dir`.
fn server(dir: &Path, port: u16, kind: &str) -> ServerProcess {
    ServerProcess::new(
        port,
        dir.join(format!("{kind}-{port}.conf")),
        dir.join(format!("{kind}-{port}.log")),
    )
}
