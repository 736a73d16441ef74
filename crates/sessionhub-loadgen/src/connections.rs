//! The connections scenario: ramp idle WebSocket connections on one node, and measure the
//! server process's resident memory per connection and its CPU use while they idle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::client::{self, Flavor, Incoming};
use crate::procfs;
use crate::ws::Msg;

/// Flags of `connections`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConnectionsArgs {
    /// Name of this target in the results.
    #[arg(long)]
    pub(crate) label: String,
    /// What kind of server the node is.
    #[arg(long, value_enum)]
    pub(crate) flavor: Flavor,
    /// The node's address.
    #[arg(long)]
    pub(crate) node: SocketAddr,
    /// The server's process id (memory and CPU are read from /proc/<pid>).
    #[arg(long)]
    pub(crate) pid: u32,
    /// Connections to open.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) count: u32,
    /// Loopback source addresses to spread connections over (127.0.0.2 up).
    #[arg(long, default_value_t = 8)]
    pub(crate) source_ips: u8,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    pub(crate) concurrency: usize,
    /// Seconds to watch the server's CPU while every connection idles.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) idle_secs: f64,
    /// Write the result as JSON here (also printed).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

/// The result of `connections`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConnectionsReport {
    /// Always "connections".
    pub(crate) scenario: String,
    /// The target's name.
    pub(crate) label: String,
    /// Its kind.
    pub(crate) flavor: Flavor,
    /// Connections asked for.
    pub(crate) requested: u32,
    /// Connections open at the end of the ramp.
    pub(crate) opened: u64,
    /// Connection attempts that failed.
    pub(crate) failed: u64,
    /// First failure, if any.
    pub(crate) first_error: Option<String>,
    /// Seconds the ramp took.
    pub(crate) ramp_secs: f64,
    /// Server resident memory before the ramp, KiB.
    pub(crate) rss_before_kib: u64,
    /// Server resident memory with every connection open, KiB.
    pub(crate) rss_after_kib: u64,
    /// (after - before) / opened, KiB.
    pub(crate) kib_per_conn: f64,
    /// `[connections, rss KiB]` samples along the ramp.
    pub(crate) rss_curve: Vec<[f64; 2]>,
    /// Server CPU while idle, percent of one core.
    pub(crate) idle_cpu_percent: f64,
    /// Seconds the idle CPU was measured over.
    pub(crate) idle_secs: f64,
    /// Connections that ended before the measurement finished.
    pub(crate) disconnects: u64,
}

/// Runs `connections`.
pub(crate) async fn run(args: ConnectionsArgs) -> anyhow::Result<ConnectionsReport> {
    let sources = client::source_ips(args.source_ips);
    let stop = CancellationToken::new();
    let disconnects = Arc::new(AtomicU64::new(0));
    let rss_before = procfs::rss_kib(args.pid)?;
    let mut curve = vec![[0.0, rss_before as f64]];
    let mut opened = 0u64;
    let mut failed = 0u64;
    let mut first_error = None;
    let started = Instant::now();
    let chunks = 10u32;
    let mut next = 0u32;
    eprintln!(
        "[{}] ramping {} connections on {} (pid {}), rss {} KiB",
        args.label, args.count, args.node, args.pid, rss_before
    );
    for chunk in 1..=chunks {
        let end = (u64::from(args.count) * u64::from(chunk) / u64::from(chunks)) as u32;
        let results = stream::iter(next..end)
            .map(|i| {
                let source = (!sources.is_empty()).then(|| sources[i as usize % sources.len()]);
                let user = client::user_id(i);
                async move {
                    let mut last = None;
                    for attempt in 0..3u64 {
                        match client::connect(args.flavor, args.node, Some(&user), source).await {
                            Ok(ws) => return Ok(ws),
                            Err(e) => last = Some(e),
                        }
                        sleep(Duration::from_millis(100 * (attempt + 1))).await;
                    }
                    Err(last.expect("three attempts"))
                }
            })
            .buffer_unordered(args.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        next = end;
        let attempted = results.len() as u64;
        let mut chunk_failed = 0;
        for result in results {
            match result {
                Ok(ws) => {
                    opened += 1;
                    tokio::spawn(idle(args.flavor, ws, disconnects.clone(), stop.clone()));
                }
                Err(e) => {
                    chunk_failed += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        failed += chunk_failed;
        sleep(Duration::from_millis(300)).await;
        let rss = procfs::rss_kib(args.pid)?;
        curve.push([opened as f64, rss as f64]);
        eprintln!(
            "[{}] {opened} open ({failed} failed) rss {rss} KiB after {:.1} s",
            args.label,
            started.elapsed().as_secs_f64()
        );
        if chunk_failed * 10 > attempted {
            eprintln!(
                "[{}] stopping the ramp: {}",
                args.label,
                first_error.as_deref().unwrap_or("")
            );
            break;
        }
    }
    let ramp_secs = started.elapsed().as_secs_f64();
    // Let allocations settle (buffers freed after the handshakes), then measure.
    sleep(Duration::from_secs(2)).await;
    let rss_after = procfs::rss_kib(args.pid)?;
    let cpu_before = procfs::cpu_ticks(args.pid)?;
    let idle_started = Instant::now();
    sleep(Duration::from_secs_f64(args.idle_secs)).await;
    let cpu_after = procfs::cpu_ticks(args.pid)?;
    let idle_secs = idle_started.elapsed().as_secs_f64();
    let idle_cpu_percent =
        (cpu_after - cpu_before) as f64 / procfs::TICKS_PER_SEC / idle_secs * 100.0;
    stop.cancel();
    let kib_per_conn = if opened == 0 {
        0.0
    } else {
        rss_after.saturating_sub(rss_before) as f64 / opened as f64
    };
    Ok(ConnectionsReport {
        scenario: "connections".into(),
        label: args.label.clone(),
        flavor: args.flavor,
        requested: args.count,
        opened,
        failed,
        first_error,
        ramp_secs,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        kib_per_conn,
        rss_curve: curve,
        idle_cpu_percent,
        idle_secs,
        disconnects: disconnects.load(Ordering::Relaxed),
    })
}

/// Keeps a connection open, answering the server's pings, until told to stop.
async fn idle(
    flavor: Flavor,
    mut ws: client::Ws,
    disconnects: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            m = ws.next() => m,
        };
        let ping = match message {
            Ok(Some(Msg::Text(t))) => flavor.classify(t) == Incoming::Ping,
            Ok(Some(Msg::Binary(_))) => false,
            Ok(None) | Err(_) => break,
        };
        if ping && ws.send_text(flavor.pong()).await.is_err() {
            break;
        }
    }
    disconnects.fetch_add(1, Ordering::Relaxed);
}
