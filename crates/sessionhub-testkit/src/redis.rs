//! A `redis-server` of the test's own, and the one place tests speak RESP over raw TCP.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{free_port, kill_child};

/// A `redis-server` of the test's own, on a free port, never the machine's 6379.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    persistent: bool,
}

impl RedisServer {
    /// Starts one (keeping nothing on disk) and waits until it answers PING.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    /// Starts one that writes every change to an append-only file before answering
    /// (`appendonly yes`, `appendfsync always`), so that [`RedisServer::restart`], even
    /// after a SIGKILL, comes back with every acknowledged write: history, epochs and
    /// idempotency keys survive.
    pub fn start_persistent() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    /// [`RedisServer::start`] for async code: it waits for PING on a blocking thread, so
    /// the runtime's workers go on meanwhile. Panics if it does not start, since the test
    /// cannot go on without it.
    pub async fn start_async() -> Self {
        tokio::task::spawn_blocking(Self::start)
            .await
            .expect("the blocking start did not panic")
            .expect("redis-server starts")
    }

    fn start_with(persistent: bool) -> anyhow::Result<Self> {
        let mut server = Self {
            port: free_port(),
            dir: tempfile::tempdir()?,
            child: None,
            persistent,
        };
        server.restart()?;
        Ok(server)
    }

    /// Whether it keeps its data across restarts ([`RedisServer::start_persistent`]).
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills it (SIGKILL). Unless it is persistent, everything it held is lost.
    pub fn stop(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts it again on the same port (empty, unless persistent: then with what it had
    /// written), and waits until it answers PING (a persistent one answers once it has
    /// loaded its data).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let persistence: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed? .ci/run installs it)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command("PING").is_ok_and(|r| r.starts_with("+PONG")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server on port {} did not answer PING", self.port)
    }

    /// Sends one inline command and returns the raw first reply line (see
    /// [`redis_command`]).
    pub fn command(&self, command: &str) -> anyhow::Result<String> {
        redis_command(self.port, command)
    }

    /// `INFO <section>` as text.
    pub fn info(&self, section: &str) -> anyhow::Result<String> {
        redis_info(self.port, section)
    }

    /// Calls per command so far (`INFO commandstats`), the commands scripts ran included.
    pub fn commandstats(&self) -> anyhow::Result<HashMap<String, u64>> {
        Ok(self
            .info("commandstats")?
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect())
    }

    /// The calls per command Redis ran while `work` ran (commands with none left out; the
    /// `INFO` that measured before counts once), and what `work` returned.
    pub async fn calls_during<F: std::future::Future>(
        &self,
        work: F,
    ) -> anyhow::Result<(HashMap<String, u64>, F::Output)> {
        let before = self.commandstats()?;
        let output = work.await;
        let calls = self
            .commandstats()?
            .into_iter()
            .map(|(name, n)| {
                let was = before.get(&name).copied().unwrap_or(0);
                (name, n - was)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        Ok((calls, output))
    }

    /// Total commands Redis has processed (`total_commands_processed`), for counting
    /// round trips. The query itself counts as one.
    pub fn total_commands(&self) -> anyhow::Result<u64> {
        self.stat("total_commands_processed")
    }

    /// Read events Redis has processed (see [`redis_reads`]).
    pub fn total_reads(&self) -> anyhow::Result<u64> {
        redis_reads(self.port)
    }

    /// A counter of `INFO stats`.
    fn stat(&self, name: &str) -> anyhow::Result<u64> {
        redis_stat(self.port, name)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends one inline command to the Redis on `port` (loopback) on a connection of its own
/// and returns the raw first reply line, CRLF included: enough for PING, FLUSHALL, CONFIG
/// RESETSTAT, PUBLISH and counters. It needs no [`RedisServer`] borrowed, so it also works
/// from a callback that outlives one (a broker's resync probe, on a thread of its own).
pub fn redis_command(port: u16, command: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    send(port, command)?.read_line(&mut line)?;
    Ok(line)
}

/// Sends inline `commands` to the Redis on `port` (loopback) one after the other on one
/// connection of their own and returns each one's reply line: for commands that answer in
/// one line (`SET`, `WAIT`, counters), since the rest of a longer reply would be read as
/// the next one's. What needs one
/// connection: `WAIT` waits for the writes of the connection it is sent on, so a write and
/// the `WAIT` that makes sure the replicas have it must share one (on a connection without
/// writes, `WAIT` answers at once, whatever the replicas lack).
pub fn redis_commands(port: u16, commands: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut replies = Vec::with_capacity(commands.len());
    for command in commands {
        stream.write_all(format!("{command}\r\n").as_bytes())?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        replies.push(line);
    }
    Ok(replies)
}

/// Sends one inline command on a new connection; the reply is to be read from it.
/// `INFO <section>` of the Redis on `port` (loopback), as text.
fn redis_info(port: u16, section: &str) -> anyhow::Result<String> {
    let mut reader = send(port, &format!("INFO {section}"))?;
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let len: usize = header
        .trim()
        .strip_prefix('$')
        .context("INFO reply is a bulk string")?
        .parse()?;
    let mut body = vec![0; len + 2];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body[..len]).into_owned())
}

/// Read events the Redis on `port` has processed (`total_reads_processed`): a pipeline that
/// fits in one socket read is one, however many commands it holds, so this counts round
/// trips where `total_commands_processed` counts commands. Asking costs a read or two.
pub fn redis_reads(port: u16) -> anyhow::Result<u64> {
    redis_stat(port, "total_reads_processed")
}

/// A counter of `INFO stats` of the Redis on `port`.
fn redis_stat(port: u16, name: &str) -> anyhow::Result<u64> {
    let info = redis_info(port, "stats")?;
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .with_context(|| format!("{name} in INFO stats"))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {name}"))
}

fn send(port: u16, command: &str) -> anyhow::Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    Ok(BufReader::new(stream))
}
