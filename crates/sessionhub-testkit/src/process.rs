//! One `redis-server` process of a multi-server fixture ([`crate::RedisSentinel`],
//! [`crate::RedisCluster`]): its config file, its log, starting it and waiting until it
//! answers, killing it. Kept apart so that both fixtures start, wait for and stop their
//! servers the same way.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::kill_child;
use crate::resp::{Reply, query, tail};

/// How long a server gets to answer PING after it was started.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two PINGs.
const POLL: Duration = Duration::from_millis(50);

/// A `redis-server` (data server, Sentinel or cluster node) started from a config file of
/// its own, logging to a file of its own.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    pub(crate) port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    /// A server on `port` with its config at `conf` and its log at `log`; not started.
    pub(crate) fn new(port: u16, conf: PathBuf, log: PathBuf) -> Self {
        Self {
            port,
            conf,
            log,
            child: None,
        }
    }

    /// Writes the config file: what every server has (port, loopback only, files under
    /// `dir`), then `extra`.
    pub(crate) fn write_conf(&self, dir: &Path, extra: &str) -> anyhow::Result<()> {
        let conf = format!(
            "port {}\nbind 127.0.0.1\ndaemonize no\ndir \"{}\"\nlogfile \"{}\"\n{extra}",
            self.port,
            dir.display(),
            self.log.display(),
        );
        std::fs::write(&self.conf, conf).with_context(|| format!("writing {}", self.conf.display()))
    }

    /// Starts it (again) from its config file, `args` after it (`--sentinel`, overrides),
    /// and waits until it answers PING; fails early, with its log, if it exits.
    pub(crate) fn spawn(&mut self, args: &[&str]) -> anyhow::Result<()> {
        kill_child(&mut self.child);
        let child = Command::new("redis-server")
            .arg(&self.conf)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed? .ci/run installs it)")?;
        self.child = Some(child);
        let deadline = Instant::now() + SERVER_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match query(self.port, "PING") {
                Ok(Reply::Line(pong)) if pong == "PONG" => return Ok(()),
                Ok(other) => last = format!("{other:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "redis-server on port {} exited ({status}); its log:\n{}",
                    self.port,
                    tail(&self.log, 20)
                );
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "redis-server on port {} did not answer PING within {SERVER_TIMEOUT:?}; last seen: \
             {last}",
            self.port
        )
    }

    /// Kills it (SIGKILL, as a crash), if it runs.
    pub(crate) fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Whether it was started and not killed since.
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// What a fixture's `Drop` does: kills every server, then, if the test is failing, prints
/// the end of each one's log, so that its output shows what the servers saw. Every server
/// is killed first, and a closed stderr is no second panic (an abort).
pub(crate) fn stop_all<'a>(servers: impl IntoIterator<Item = &'a mut ServerProcess>) {
    let servers: Vec<&mut ServerProcess> = servers.into_iter().collect();
    let mut logs = Vec::new();
    for server in servers {
        server.kill();
        logs.push(server.log.clone());
    }
    if std::thread::panicking() {
        let mut stderr = std::io::stderr().lock();
        for log in logs {
            let _ = writeln!(stderr, "--- {}:\n{}", log.display(), tail(&log, 30));
        }
    }
}
