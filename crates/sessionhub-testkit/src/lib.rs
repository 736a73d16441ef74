//! Test harness: real `redis-server` and `sessionhub` processes on free loopback ports,
//! stopped when dropped. Blocking on purpose, so it works from any test, async or not.
#![forbid(unsafe_code)]

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

/// A `redis-server` of the test's own, on a free port, never the machine's 6379.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers PING.
    pub fn start() -> anyhow::Result<Self> {
        let mut server = Self {
            port: free_port(),
            dir: tempfile::tempdir()?,
            child: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills it (SIGKILL; nothing is saved: it keeps no data on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty), and waits until it answers PING.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
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
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{command}\r\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line)
    }

    /// `INFO <section>` as text.
    pub fn info(&self, section: &str) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("INFO {section}\r\n").as_bytes())?;
        let mut reader = BufReader::new(stream);
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
