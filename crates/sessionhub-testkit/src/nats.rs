//! A `nats-server` with JetStream of the test's own.

use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::resp::tail;
use crate::{free_port, kill_child};

/// How long the server gets to greet a client after it was started.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// A `nats-server -js` of the test's own, on a free port (never the machine's 4222), with
/// its JetStream file store and its log in a temp dir that outlives restarts.
pub struct NatsServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one and waits until it greets clients with JetStream enabled.
    pub fn start() -> anyhow::Result<Self> {
        let mut server = Self {
            port: free_port(),
            dir: tempfile::tempdir()?,
            child: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// [`NatsServer::start`] for async code: it waits on a blocking thread, so the
    /// runtime's workers go on meanwhile. Panics if it does not start, since the test
    /// cannot go on without it.
    pub async fn start_async() -> Self {
        tokio::task::spawn_blocking(Self::start)
            .await
            .expect("the blocking start did not panic")
            .expect("nats-server starts")
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// Kills it (SIGKILL, as a crash). Its store stays for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Stops it gracefully (SIGTERM: it flushes its store and closes its clients), and
    /// waits until it has exited; kills it if it takes longer than 10 s.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(child) = &mut self.child else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("running kill")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while status.success() && Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                self.child = None;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        bail!("nats-server on port {} did not stop on SIGTERM", self.port)
    }

    /// Starts it again on the same port with the same store (killing it first if it
    /// runs), and waits until it greets clients with JetStream enabled. A new process:
    /// its `server_id` is new.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let child = Command::new("nats-server")
            .args(["--addr", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--jetstream")
            .arg("--store_dir")
            .arg(self.dir.path().join("store"))
            .arg("--log")
            .arg(self.log())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (is it installed? scripts/test.sh installs it)")?;
        self.child = Some(child);
        let deadline = Instant::now() + SERVER_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.greeting() {
                Ok(info) if info.contains("\"jetstream\":true") => return Ok(()),
                Ok(info) => last = info,
                Err(e) => last = format!("{e:#}"),
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "nats-server on port {} exited ({status}); its log:\n{}",
                    self.port,
                    tail(&self.log(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "nats-server on port {} did not greet with JetStream within {SERVER_TIMEOUT:?}; \
             last seen: {last}",
            self.port
        )
    }

    /// The `INFO` line a client gets first.
    fn greeting(&self) -> anyhow::Result<String> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // A closed stderr must not be a second panic (an abort).
            let _ = writeln!(
                std::io::stderr().lock(),
                "--- {}:\n{}",
                self.log().display(),
                tail(&self.log(), 30)
            );
        }
    }
}
