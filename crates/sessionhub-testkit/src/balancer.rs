//! A TCP load balancer in front of test nodes.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

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
    /// Bumped by [`Balancer::silence`]: the relays that began before go quiet.
    silenced: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
        let silenced = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let silence = silenced.clone();
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
                        () = balance(listener, backends, task_stats, silence) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here cancels every relay and closes its sockets.
            })?;
        Ok(Self {
            addr,
            stats,
            silenced,
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

    /// Every connection relayed so far stops passing bytes either way and stays open, as
    /// when a firewall or NAT forgets a connection: no FIN, no RST, just silence. Whatever
    /// is sent on them from now on is swallowed; new connections are relayed as before.
    pub fn silence(&self) {
        self.silenced
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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
    silenced: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
        let silenced = silenced.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            for i in (0..backends.len()).map(|k| (first + k) % backends.len()) {
                let connecting = tokio::net::TcpStream::connect(backends[i]);
                match tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, connecting).await {
                    Ok(Ok(backend)) => {
                        stats.relayed[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = backend.set_nodelay(true);
                        relay(client, backend, &silenced).await;
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

/// Copies both ways until both sides are done; a half-close is passed on, and an error on
/// either side ends both. Once the balancer is silenced, it forwards nothing more, not even
/// a close, and holds both sockets open until the balancer stops.
async fn relay(
    client: tokio::net::TcpStream,
    backend: tokio::net::TcpStream,
    silenced: &std::sync::atomic::AtomicU64,
) {
    let born = silenced.load(std::sync::atomic::Ordering::SeqCst);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut backend_read, mut backend_write) = backend.into_split();
    let _ = tokio::try_join!(
        pipe(&mut client_read, &mut backend_write, silenced, born),
        pipe(&mut backend_read, &mut client_write, silenced, born),
    );
}

/// One direction of a relay: copies until the end of the stream, which it passes on as a
/// half-close, or an error.
async fn pipe(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    silenced: &std::sync::atomic::AtomicU64,
    born: u64,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = from.read(&mut buffer).await?;
        // Checked after the read, so that what was sent after `silence` returned is lost.
        if silenced.load(std::sync::atomic::Ordering::SeqCst) != born {
            std::future::pending::<()>().await;
        }
        if read == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buffer[..read]).await?;
    }
}
