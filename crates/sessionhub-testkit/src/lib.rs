//! Test harness: real `redis-server` and `sessionhub` processes on free loopback ports,
//! stopped when dropped. Blocking on purpose, so it works from any test, async or not.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// Kills the process (SIGKILL), if there is one, and reaps it.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

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

    /// Sends one inline command and returns the raw first reply line (enough for
    /// PING, FLUSHALL, CONFIG RESETSTAT and counters).
    pub fn command(&self, command: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        self.send(command)?.read_line(&mut line)?;
        Ok(line)
    }

    /// Sends one inline command on a new connection; the reply is to be read from it.
    fn send(&self, command: &str) -> anyhow::Result<BufReader<TcpStream>> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{command}\r\n").as_bytes())?;
        Ok(BufReader::new(stream))
    }

    /// `INFO <section>` as text.
    pub fn info(&self, section: &str) -> anyhow::Result<String> {
        let mut reader = self.send(&format!("INFO {section}"))?;
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let len: usize = header
            .trim()
            .strip_prefix('$')
            .context("INFO reply is a bulk string")?
            .parse()?;
        let mut body = vec![0; len + 2];
        std::io::Read::read_exact(&mut reader, &mut body)?;
        Ok(String::from_utf8_lossy(&body[..len]).into_owned())
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
        let info = self.info("stats")?;
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .context("total_commands_processed in INFO stats")?
            .trim()
            .parse()
            .context("parsing total_commands_processed")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `sessionhub serve` process.
pub struct Node {
    binary: PathBuf,
    args: Vec<String>,
    data_dir: tempfile::TempDir,
    child: Option<Child>,
    addr: SocketAddr,
    stderr_log: PathBuf,
}

impl Node {
    /// Starts `binary serve --listen 127.0.0.1:0 --data-dir <temp> <args>` and waits for
    /// its `listening on` line.
    pub fn start(binary: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let data_dir = tempfile::tempdir()?;
        let mut node = Self {
            binary: binary.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            stderr_log: data_dir.path().join("stderr.log"),
            data_dir,
            child: None,
            addr: "127.0.0.1:0".parse()?,
        };
        node.spawn("127.0.0.1:0")?;
        Ok(node)
    }

    fn spawn(&mut self, listen: &str) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)?;
        let mut child = Command::new(&self.binary)
            .arg("serve")
            .args(["--listen", listen])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(&self.args)
            .env("RUST_LOG", "info,sessionhub=debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => {
                self.addr = addr.parse()?;
                Ok(())
            }
            Err(_) => bail!("sessionhub did not start; stderr:\n{}", self.stderr()),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:<port>`.
    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (up to `within`) for it to exit; returns its exit code.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<Option<i32>> {
        let mut child = self.child.take().context("node is not running")?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("sessionhub did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts it again with the same data directory, flags and port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let listen = self.addr.to_string();
        // The old socket may linger a moment in the kernel; retry briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn(&listen) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    self.kill();
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs the binary with `args` (no `serve` prefix added) to completion; returns its
    /// exit code and stderr.
    pub fn run_once(binary: &Path, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
        let out = Command::new(binary).args(args).output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A round-robin TCP load balancer on a free loopback port, in front of loopback backends.
///
/// Each accepted connection goes to the next backend in turn; a backend that refuses (or
/// does not accept within a second) is skipped for that connection, so a killed node drops
/// out and a restarted one comes back by itself. If no backend accepts, the client's
/// connection is closed. Bytes are relayed untouched both ways; when either side closes or
/// fails, so does the other.
///
/// It runs on a thread and runtime of its own, so it works from any test, async or not.
/// Dropping it stops it and closes every connection it relays.
pub struct Balancer {
    addr: SocketAddr,
    stats: std::sync::Arc<BalancerStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a [`Balancer`] did so far.
#[derive(Debug, Default)]
pub struct BalancerStats {
    /// Connections relayed to each backend, in the order the backends were given.
    relayed: Vec<std::sync::atomic::AtomicU64>,
    /// Connection attempts a backend refused (or did not accept in time).
    refused: std::sync::atomic::AtomicU64,
    /// Client connections closed because no backend accepted.
    dropped: std::sync::atomic::AtomicU64,
}

impl BalancerStats {
    /// Connections relayed to each backend so far.
    pub fn relayed(&self) -> Vec<u64> {
        self.relayed
            .iter()
            .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }

    /// Backend connection attempts that failed.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Client connections closed because no backend accepted.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How long a backend may take to accept before it is skipped.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl Balancer {
    /// Starts balancing over `backends` (loopback addresses only).
    pub fn start(backends: &[SocketAddr]) -> anyhow::Result<Self> {
        anyhow::ensure!(!backends.is_empty(), "a balancer needs a backend");
        anyhow::ensure!(
            backends.iter().all(|b| b.ip().is_loopback()),
            "the test balancer only relays to loopback backends"
        );
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stats = std::sync::Arc::new(BalancerStats {
            relayed: backends.iter().map(|_| Default::default()).collect(),
            ..Default::default()
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let backends = backends.to_vec();
        let task_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name(format!("balancer-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(_) => return,
                    };
                    tokio::select! {
                        () = balance(listener, backends, task_stats) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here cancels every relay and closes its sockets.
            })?;
        Ok(Self {
            addr,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:<port>`.
    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// What it did so far.
    pub fn stats(&self) -> &BalancerStats {
        &self.stats
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn balance(
    listener: tokio::net::TcpListener,
    backends: Vec<SocketAddr>,
    stats: std::sync::Arc<BalancerStats>,
) {
    let mut next = 0_usize;
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or similar: wait a moment rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let first = next;
        next = (next + 1) % backends.len();
        let (backends, stats) = (backends.clone(), stats.clone());
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            for i in (0..backends.len()).map(|k| (first + k) % backends.len()) {
                let connecting = tokio::net::TcpStream::connect(backends[i]);
                match tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, connecting).await {
                    Ok(Ok(backend)) => {
                        stats.relayed[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = backend.set_nodelay(true);
                        relay(client, backend).await;
                        return;
                    }
                    _ => {
                        stats
                            .refused
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            stats
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

/// Copies both ways until one side is done; a half-close is passed on, and an error on
/// either side ends both.
async fn relay(mut client: tokio::net::TcpStream, mut backend: tokio::net::TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
}
