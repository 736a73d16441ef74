//! A `sessionhub serve` process of the test's own.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::kill_child;

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
