//! The fan-out scenario: many WebSocket clients spread over the target's nodes, a
//! publisher pushing to their users at a fixed rate, end-to-end latency, loss and
//! duplicates measured by the clients; optionally a search for the highest rate whose p99
//! stays under a limit. One scenario, one file: the clients, the publisher and the search
//! share the run's state and are read together.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};

use crate::client::{self, Flavor, Incoming, Ws};
use crate::clock;
use crate::http;
use crate::pacing::Schedule;
use crate::payload::Payload;
use crate::procfs::{CpuMeters, CpuSeconds, CpuUse};
use crate::pusher;
use crate::stats::{ConnTally, Delivery, Latency, LatencySummary};
use crate::ws::Msg;

/// How the publisher pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PublishMode {
    /// `POST /socket/{id}` with the message as the body.
    Http,
    /// Client frames on publisher sockets (`{"KEY","VALUE"}`; Socket.IO `push` events).
    Frame,
}

/// Flags of `fanout`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FanoutArgs {
    /// Name of this target in the results.
    #[arg(long)]
    pub(crate) label: String,
    /// What kind of server the nodes are.
    #[arg(long, value_enum)]
    pub(crate) flavor: Flavor,
    /// A node's address, e.g. 127.0.0.1:8001 (repeat for every node).
    #[arg(long = "node", required = true)]
    pub(crate) nodes: Vec<SocketAddr>,
    /// WebSocket clients, spread evenly over the nodes.
    #[arg(long, default_value_t = 1000)]
    pub(crate) clients: u32,
    /// Connections per user, on different nodes where possible.
    #[arg(long, default_value_t = 2)]
    pub(crate) conns_per_user: u32,
    /// How the publisher pushes.
    #[arg(long, value_enum, default_value = "http")]
    pub(crate) publish: PublishMode,
    /// Concurrent HTTP pushes, or publisher sockets in frame mode.
    #[arg(long, default_value_t = 32)]
    pub(crate) publishers: usize,
    /// Published messages per second (the first rate of a search).
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) rate: f64,
    /// Step the rate up until p99 or loss exceeds its limit; report the best passing rate.
    #[arg(long)]
    pub(crate) search: bool,
    /// Rate multiplier between search steps.
    #[arg(long, default_value_t = 1.6)]
    pub(crate) factor: f64,
    /// Steps budgeted for the climb; the refinements and their retries are budgeted on top,
    /// in one cap for the whole search (a climb that runs over eats into the refinements).
    #[arg(long, default_value_t = 10)]
    pub(crate) max_steps: u32,
    /// After the first failure, how many times the search halves the gap between the best
    /// passing rate and the lowest failing one (each halving is one more step).
    #[arg(long, default_value_t = 2)]
    pub(crate) refine: u32,
    /// A failed step is run again this many times (0 or 1) before the search moves on.
    #[arg(long, default_value_t = 1)]
    pub(crate) retries: u32,
    /// A step passes while p99 stays below this, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) p99_limit_ms: f64,
    /// A step passes while lost deliveries stay below this fraction.
    #[arg(long, default_value_t = 0.001)]
    pub(crate) max_loss: f64,
    /// Seconds of publishing per step.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Size of each message, in bytes.
    #[arg(long, default_value_t = 64)]
    pub(crate) payload_bytes: usize,
    /// Loopback source addresses to spread client connections over (127.0.0.2 up).
    #[arg(long, default_value_t = 4)]
    pub(crate) source_ips: u8,
    /// Process ids of the target's servers, to report their CPU use (repeat).
    #[arg(long = "pid")]
    pub(crate) pids: Vec<u32>,
    /// Process id of a redis-server, to report its CPU use (repeat for every primary of a
    /// Redis Cluster: each is reported on its own and all together).
    #[arg(long = "redis-pid")]
    pub(crate) redis_pids: Vec<u32>,
    /// Bearer key for the push API, if the target wants one.
    #[arg(long, env = "LOADGEN_API_KEY")]
    pub(crate) api_key: Option<String>,
    /// Write the result as JSON here (also printed).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

/// One fixed-rate run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StepResult {
    /// Published messages per second asked for.
    pub(crate) rate: f64,
    /// Published messages per second achieved (pushes completed over the window).
    pub(crate) publish_rate: f64,
    /// Messages published.
    pub(crate) published: u64,
    /// Pushes that failed (counted as lost too).
    pub(crate) publish_errors: u64,
    /// Deliveries.
    pub(crate) delivery: Delivery,
    /// Distinct deliveries per second of publishing window.
    pub(crate) delivered_per_sec: f64,
    /// End-to-end latency, from when each message was due to when a client read it.
    pub(crate) latency: LatencySummary,
    /// Clients whose connection ended during the step.
    pub(crate) disconnects: u64,
    /// CPU use over the step (publishing and drain), percent of one core.
    pub(crate) cpu: CpuUse,
    /// The same CPU use as amounts, seconds over the step, each Redis process on its own
    /// (absent from results written before it was recorded).
    #[serde(default)]
    pub(crate) cpu_seconds: CpuSeconds,
    /// [`StepResult::cpu_seconds`] per 100 000 distinct deliveries; `None` without any.
    #[serde(default)]
    pub(crate) cpu_per_100k: Option<CpuSeconds>,
    /// p99 under the limit, loss under the limit, no disconnect.
    pub(crate) pass: bool,
}

/// The result of `fanout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FanoutReport {
    /// Always "fanout".
    pub(crate) scenario: String,
    /// The target's name.
    pub(crate) label: String,
    /// Its kind.
    pub(crate) flavor: Flavor,
    /// How it was pushed to.
    pub(crate) publish: PublishMode,
    /// Nodes.
    pub(crate) nodes: usize,
    /// Clients.
    pub(crate) clients: u32,
    /// Distinct users.
    pub(crate) users: u32,
    /// Message size in bytes.
    pub(crate) payload_bytes: usize,
    /// Seconds per step.
    pub(crate) duration: f64,
    /// p99 limit of a passing step.
    pub(crate) p99_limit_ms: f64,
    /// Seconds to open every client.
    pub(crate) connect_secs: f64,
    /// Every step in order.
    pub(crate) steps: Vec<StepResult>,
    /// The passing step with the most deliveries per second.
    pub(crate) best: Option<StepResult>,
}

/// What the clients record into during one step.
struct StepState {
    step: u32,
    tallies: Vec<Mutex<ConnTally>>,
    latency: Vec<Mutex<Latency>>,
    unique: AtomicU64,
}

impl StepState {
    fn new(step: u32, clients: usize) -> Self {
        Self {
            step,
            tallies: (0..clients).map(|_| Mutex::default()).collect(),
            latency: (0..LATENCY_SHARDS).map(|_| Mutex::default()).collect(),
            unique: AtomicU64::new(0),
        }
    }
}

/// Histograms are sharded so that clients on different threads rarely share a lock.
const LATENCY_SHARDS: usize = 8;

/// Shared between the clients and the driver.
struct Shared {
    current: RwLock<Arc<StepState>>,
    disconnects: AtomicU64,
}

/// How client `index` is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Index of its user.
    pub(crate) user: u32,
    /// Index of its node.
    pub(crate) node: usize,
}

/// Client `index` belongs to user `index / per_user`; consecutive clients go to
/// consecutive nodes, so a user's connections sit on different nodes.
pub(crate) fn place(index: u32, per_user: u32, nodes: usize) -> Placement {
    Placement {
        user: index / per_user.max(1),
        node: index as usize % nodes.max(1),
    }
}

/// Users for `clients` clients with `per_user` connections each (the last may have fewer).
pub(crate) fn user_count(clients: u32, per_user: u32) -> u32 {
    clients.div_ceil(per_user.max(1))
}

/// Messages among the first `published` (sent round-robin) that went to `user`.
pub(crate) fn sent_to(user: u32, users: u32, published: u64) -> u64 {
    let users = u64::from(users.max(1));
    published / users + u64::from(u64::from(user) < published % users)
}

/// The recipient and sequence number of message `index` (round-robin over users).
pub(crate) fn route(index: u64, users: u32) -> (u32, u64) {
    let users = u64::from(users.max(1));
    ((index % users) as u32, index / users)
}

/// Runs `fanout`.
pub(crate) async fn run(args: FanoutArgs) -> anyhow::Result<FanoutReport> {
    let users = user_count(args.clients, args.conns_per_user);
    let shared = Arc::new(Shared {
        current: RwLock::new(Arc::new(StepState::new(u32::MAX, 0))),
        disconnects: AtomicU64::new(0),
    });
    let sources = client::source_ips(args.source_ips);
    eprintln!(
        "[{}] connecting {} clients ({} users) to {} node(s)",
        args.label,
        args.clients,
        users,
        args.nodes.len()
    );
    let started = Instant::now();
    let clients = open_clients(&args, &sources, shared.clone()).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    eprintln!("[{}] connected in {connect_secs:.1} s", args.label);

    let mut publisher = Publisher::new(&args, &sources).await?;
    // Let subscriptions settle everywhere before the first message.
    sleep(Duration::from_millis(500)).await;

    let mut steps: Vec<StepResult> = Vec::new();
    let mut search = Search::new(args.factor, args.refine);
    let mut rate = args.rate;
    let mut retried = false;
    let mut step = 0;
    // A failure may be run twice, the refinements included, so that noise cannot use up
    // the refinements.
    while step < args.max_steps + args.retries + args.refine * (1 + args.retries) {
        let result = run_step(&args, step, rate, users, &shared, &mut publisher).await?;
        step += 1;
        eprintln!(
            "[{}] step {step}: rate {:.0}/s published {:.0}/s delivered {:.0}/s p50 {:.2} ms p99 \
             {:.2} ms p999 {:.2} ms lost {} dup {} errors {} disconnects {} cpu server {:.0}% redis {:.0}%{} \
             loadgen {:.0}% other {:.0}% -> {}",
            args.label,
            result.rate,
            result.publish_rate,
            result.delivered_per_sec,
            result.latency.p50_ms,
            result.latency.p99_ms,
            result.latency.p999_ms,
            result.delivery.lost,
            result.delivery.duplicated,
            result.publish_errors,
            result.disconnects,
            result.cpu.server,
            result.cpu.redis,
            each_percent(&result.cpu_seconds),
            result.cpu.loadgen,
            result.cpu.other,
            if result.pass { "pass" } else { "FAIL" }
        );
        let pass = result.pass;
        steps.push(result);
        if !args.search {
            break;
        }
        // On a shared machine one step can fail to noise: run a failed rate once more.
        if !pass && !retried && args.retries > 0 && shared.disconnects.load(Ordering::Relaxed) == 0
        {
            retried = true;
            sleep(Duration::from_secs(1)).await;
            continue;
        }
        retried = false;
        let Some(next) = search.next(rate, pass) else {
            break;
        };
        rate = next;
        if shared.disconnects.load(Ordering::Relaxed) > 0 {
            eprintln!(
                "[{}] clients were disconnected; stopping the search",
                args.label
            );
            break;
        }
        // Let queues drain before the next step.
        sleep(Duration::from_secs(1)).await;
    }
    for c in clients {
        c.abort();
    }
    Ok(FanoutReport {
        scenario: "fanout".into(),
        label: args.label.clone(),
        flavor: args.flavor,
        publish: args.publish,
        nodes: args.nodes.len(),
        clients: args.clients,
        users,
        payload_bytes: args.payload_bytes,
        duration: args.duration,
        p99_limit_ms: args.p99_limit_ms,
        connect_secs,
        best: best_of(&steps).cloned(),
        steps,
    })
}

/// Where a rate search stands: the rate goes up by `factor` until a step fails, then the gap
/// between the best passing rate and the lowest failing one is halved `refine` times, so
/// the limit lies below `1 + (factor - 1) / 2^refine` times the figure reported rather than
/// a whole factor above it (two targets a step apart would otherwise read as equal).
#[derive(Debug, Clone)]
struct Search {
    factor: f64,
    refine_left: u32,
    best_pass: Option<f64>,
    lowest_fail: Option<f64>,
}

impl Search {
    fn new(factor: f64, refine: u32) -> Self {
        Self {
            factor,
            refine_left: refine,
            best_pass: None,
            lowest_fail: None,
        }
    }

    /// Records how a step at `rate` went; the next rate to try, or `None` when done.
    fn next(&mut self, rate: f64, pass: bool) -> Option<f64> {
        if pass {
            self.best_pass = Some(self.best_pass.map_or(rate, |b| b.max(rate)));
        } else {
            self.lowest_fail = Some(self.lowest_fail.map_or(rate, |f| f.min(rate)));
        }
        match (self.best_pass, self.lowest_fail) {
            (_, None) => Some(rate * self.factor),
            // Not even the first rate passed: nothing to refine.
            (None, Some(_)) => None,
            (Some(_), Some(_)) if self.refine_left == 0 => None,
            (Some(pass), Some(fail)) => {
                self.refine_left -= 1;
                Some((pass + fail) / 2.0)
            }
        }
    }
}

/// With several Redis processes, each one's share of a core, e.g. " (11+10+12)"; else "".
fn each_percent(used: &CpuSeconds) -> String {
    if used.redis_each.len() < 2 || used.wall <= 0.0 {
        return String::new();
    }
    let each: Vec<String> = used
        .redis_each
        .iter()
        .map(|s| format!("{:.0}", s / used.wall * 100.0))
        .collect();
    format!(" ({})", each.join("+"))
}

fn best_of(steps: &[StepResult]) -> Option<&StepResult> {
    steps
        .iter()
        .filter(|s| s.pass)
        .max_by(|a, b| a.delivered_per_sec.total_cmp(&b.delivered_per_sec))
}

async fn open_clients(
    args: &FanoutArgs,
    sources: &[IpAddr],
    shared: Arc<Shared>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let opened = stream::iter(0..args.clients)
        .map(|i| {
            let place = place(i, args.conns_per_user, args.nodes.len());
            let node = args.nodes[place.node];
            let source = (!sources.is_empty()).then(|| sources[i as usize % sources.len()]);
            let user = client::user_id(place.user);
            async move {
                let mut last = None;
                for attempt in 0..3u64 {
                    match client::connect(args.flavor, node, Some(&user), source).await {
                        Ok(ws) => return Ok((i, place.user, ws)),
                        Err(e) => last = Some(e),
                    }
                    sleep(Duration::from_millis(200 * (attempt + 1))).await;
                }
                Err(last
                    .expect("three attempts")
                    .context(format!("client {i} to {node}")))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut handles = Vec::with_capacity(opened.len());
    for result in opened {
        let (index, user, ws) = result?;
        handles.push(tokio::spawn(client_loop(
            args.flavor,
            index as usize,
            user,
            ws,
            shared.clone(),
        )));
    }
    Ok(handles)
}

/// One client: reads its socket until it ends (or the task is aborted at the end of the
/// run), recording every benchmark message into the current step.
async fn client_loop(flavor: Flavor, index: usize, user: u32, mut ws: Ws, shared: Arc<Shared>) {
    loop {
        let message = ws.next().await;
        let now = clock::now_us();
        let incoming = match message {
            Ok(Some(Msg::Text(text))) => flavor.classify(text),
            Ok(Some(Msg::Binary(_))) => continue,
            Ok(None) | Err(_) => {
                shared.disconnects.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        match incoming {
            Incoming::Payload(p) => {
                let state = shared.current.read().unwrap();
                if p.step != state.step {
                    continue;
                }
                let mut tally = state.tallies[index].lock().unwrap();
                if p.user != user {
                    tally.misrouted += 1;
                    continue;
                }
                if tally.record(p.seq) {
                    state.unique.fetch_add(1, Ordering::Relaxed);
                }
                drop(tally);
                state.latency[index % LATENCY_SHARDS]
                    .lock()
                    .unwrap()
                    .record(now.saturating_sub(p.due_us));
            }
            Incoming::Ping => {
                if ws.send_text(flavor.pong()).await.is_err() {
                    shared.disconnects.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            Incoming::Other => {}
        }
    }
}

/// Pushes messages: HTTP connections, or publisher sockets.
enum Publisher {
    Http {
        /// Per worker, one keep-alive connection per node.
        workers: Vec<Vec<http::Conn>>,
        /// `Bearer <key>`, if the target wants one.
        authorization: Option<Arc<str>>,
    },
    Frame {
        flavor: Flavor,
        sockets: Vec<Ws>,
    },
}

impl Publisher {
    async fn new(args: &FanoutArgs, sources: &[IpAddr]) -> anyhow::Result<Self> {
        if args.flavor == Flavor::Pusher {
            // Every request is signed with the app: it must be there before the first.
            pusher::ws_path()?;
        }
        Ok(match args.publish {
            PublishMode::Http => Self::Http {
                workers: (0..args.publishers.max(1))
                    .map(|_| args.nodes.iter().map(|&n| http::Conn::new(n)).collect())
                    .collect(),
                authorization: args.api_key.as_ref().map(|k| format!("Bearer {k}").into()),
            },
            PublishMode::Frame if args.flavor == Flavor::Pusher => {
                anyhow::bail!("Pusher targets are published to over HTTP (--publish http)")
            }
            PublishMode::Frame => {
                let mut sockets = Vec::new();
                for i in 0..args.publishers {
                    let node = args.nodes[i % args.nodes.len()];
                    let source = sources.first().copied();
                    sockets.push(
                        client::connect(args.flavor, node, None, source)
                            .await
                            .with_context(|| format!("publisher socket to {node}"))?,
                    );
                }
                Self::Frame {
                    flavor: args.flavor,
                    sockets,
                }
            }
        })
    }
}

/// Waits until `due` unless it has passed already (no timer for a publisher that is
/// behind).
async fn wait_until(due: Instant) {
    if due > Instant::now() {
        sleep_until(due).await;
    }
}

async fn run_step(
    args: &FanoutArgs,
    step: u32,
    rate: f64,
    users: u32,
    shared: &Arc<Shared>,
    publisher: &mut Publisher,
) -> anyhow::Result<StepResult> {
    let state = Arc::new(StepState::new(step, args.clients as usize));
    *shared.current.write().unwrap() = state.clone();
    let disconnects_before = shared.disconnects.load(Ordering::Relaxed);
    let window = Duration::from_secs_f64(args.duration);
    let start = Instant::now() + Duration::from_millis(20);
    let schedule = Arc::new(Schedule::new(start, rate, window));
    let errors = Arc::new(AtomicU64::new(0));
    let size = args.payload_bytes;
    let meters = CpuMeters::start(&args.pids, &args.redis_pids);

    match publisher {
        Publisher::Http {
            workers,
            authorization,
        } => {
            let flavor = args.flavor;
            let tasks: Vec<_> = workers
                .drain(..)
                .map(|mut conns| {
                    let (schedule, errors, authorization) =
                        (schedule.clone(), errors.clone(), authorization.clone());
                    tokio::spawn(async move {
                        let mut body = Vec::with_capacity(size.max(64));
                        while let Some((index, due)) = schedule.claim() {
                            wait_until(due).await;
                            let (user, seq) = route(index, users);
                            body.clear();
                            Payload {
                                step,
                                user,
                                seq,
                                due_us: clock::us_of(due),
                            }
                            .encode_into(size, &mut body);
                            let n = conns.len();
                            let conn = &mut conns[index as usize % n];
                            if flavor == Flavor::Pusher {
                                let text = std::mem::take(&mut body);
                                let mut target = Vec::new();
                                let timestamp = pusher::unix_secs();
                                pusher::events_request(
                                    user,
                                    &text,
                                    timestamp,
                                    &mut target,
                                    &mut body,
                                )
                                .expect("the app was checked at start");
                                conn.start("POST", |path| path.extend_from_slice(&target))
                                    .header("content-type", b"application/json");
                            } else {
                                conn.start("POST", |path| {
                                    path.extend_from_slice(b"/socket/");
                                    client::push_user_id(path, user);
                                })
                                .header("content-type", b"text/plain");
                            }
                            if let Some(value) = &authorization {
                                conn.header("authorization", value.as_bytes());
                            }
                            // The whole answer is read, so the connection is reused.
                            match conn.send(&body).await {
                                Ok(r) if r.is_success() => {}
                                _ => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        conns
                    })
                })
                .collect();
            for t in tasks {
                workers.push(t.await?);
            }
        }
        Publisher::Frame { flavor, sockets } => {
            let flavor = *flavor;
            let tasks: Vec<_> = sockets
                .drain(..)
                .map(|mut ws| {
                    let (schedule, errors) = (schedule.clone(), errors.clone());
                    tokio::spawn(async move {
                        let (mut text, mut frame) = (Vec::new(), Vec::new());
                        while let Some((index, due)) = schedule.claim() {
                            // Answer pings while waiting for the message to be due.
                            while due > Instant::now() {
                                tokio::select! {
                                    biased;
                                    () = sleep_until(due) => break,
                                    m = ws.next() => {
                                        let ping = match m {
                                            Ok(Some(Msg::Text(t))) => flavor.classify(t) == Incoming::Ping,
                                            Ok(Some(Msg::Binary(_))) => false,
                                            Ok(None) | Err(_) => break,
                                        };
                                        if ping {
                                            let _ = ws.send_text(flavor.pong()).await;
                                        }
                                    }
                                }
                            }
                            let (user, seq) = route(index, users);
                            text.clear();
                            Payload {
                                step,
                                user,
                                seq,
                                due_us: clock::us_of(due),
                            }
                            .encode_into(size, &mut text);
                            frame.clear();
                            flavor.push_frame_into(user, &text, &mut frame);
                            if ws.send_text(&frame).await.is_err() {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        ws
                    })
                })
                .collect();
            for t in tasks {
                sockets.push(t.await?);
            }
        }
    }
    let published = schedule.claimed();
    let publish_secs = start.elapsed().as_secs_f64().max(args.duration);

    // Wait for stragglers: until every delivery arrived or a grace period passed.
    let expected_total: u64 = (0..args.clients)
        .map(|i| sent_to(place(i, args.conns_per_user, 1).user, users, published))
        .sum();
    let grace = Instant::now() + Duration::from_secs(3);
    while state.unique.load(Ordering::Relaxed) < expected_total && Instant::now() < grace {
        sleep(Duration::from_millis(20)).await;
    }
    // Later messages of this step are ignored from here on.
    *shared.current.write().unwrap() = Arc::new(StepState::new(u32::MAX, 0));
    let (cpu, cpu_seconds) = meters.read_both();

    let mut delivery = Delivery::default();
    for (i, tally) in state.tallies.iter().enumerate() {
        let user = place(i as u32, args.conns_per_user, 1).user;
        delivery.add(&tally.lock().unwrap(), sent_to(user, users, published));
    }
    let mut latency = Latency::default();
    for shard in &state.latency {
        latency.merge(&shard.lock().unwrap());
    }
    let latency = latency.summary();
    let publish_errors = errors.load(Ordering::Relaxed);
    let disconnects = shared.disconnects.load(Ordering::Relaxed) - disconnects_before;
    let cpu_per_100k = cpu_seconds.per(delivery.delivered, 100_000.0);
    let pass = latency.count > 0
        && latency.p99_ms < args.p99_limit_ms
        && delivery.loss_ratio() <= args.max_loss
        && disconnects == 0;
    Ok(StepResult {
        rate,
        publish_rate: published.saturating_sub(publish_errors) as f64 / publish_secs,
        published,
        publish_errors,
        delivered_per_sec: delivery.delivered as f64 / publish_secs,
        delivery,
        latency,
        disconnects,
        cpu,
        cpu_per_100k,
        cpu_seconds,
        pass,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_spreads_users_over_nodes() {
        // 2 connections per user, 3 nodes: a user's two connections are on two nodes.
        for i in (0..30).step_by(2) {
            let a = place(i, 2, 3);
            let b = place(i + 1, 2, 3);
            assert_eq!(a.user, b.user);
            assert_ne!(a.node, b.node);
        }
        let per_node = (0..30).fold([0; 3], |mut n, i| {
            n[place(i, 2, 3).node] += 1;
            n
        });
        assert_eq!(per_node, [10, 10, 10]);
        assert_eq!(user_count(30, 2), 15);
        assert_eq!(user_count(31, 2), 16);
        assert_eq!(user_count(5, 0), 5);
    }

    #[test]
    fn the_search_climbs_then_halves_the_gap() {
        let mut search = Search::new(2.0, 2);
        assert_eq!(search.next(1000.0, true), Some(2000.0));
        assert_eq!(search.next(2000.0, true), Some(4000.0));
        // First failure: halfway between the best pass and it.
        assert_eq!(search.next(4000.0, false), Some(3000.0));
        // A pass moves the lower bound up...
        assert_eq!(search.next(3000.0, true), Some(3500.0));
        // ...and after `refine` halvings the search stops, whatever the last step did.
        assert_eq!(search.next(3500.0, false), None);

        let mut search = Search::new(2.0, 2);
        assert_eq!(search.next(1000.0, true), Some(2000.0));
        assert_eq!(search.next(2000.0, false), Some(1500.0));
        // A failure moves the upper bound down.
        assert_eq!(search.next(1500.0, false), Some(1250.0));
        assert_eq!(search.next(1250.0, true), None);
    }

    #[test]
    fn a_search_whose_first_rate_fails_stops() {
        assert_eq!(Search::new(1.6, 3).next(1000.0, false), None);
        // Without refinement, the first failure ends it.
        let mut search = Search::new(1.6, 0);
        assert_eq!(search.next(1000.0, true), Some(1600.0));
        assert_eq!(search.next(1600.0, false), None);
    }

    #[test]
    fn several_redis_processes_are_logged_each() {
        let used = |redis_each: Vec<f64>| CpuSeconds {
            wall: 10.0,
            redis_each,
            ..CpuSeconds::default()
        };
        assert_eq!(each_percent(&used(vec![1.0, 1.25, 0.5])), " (10+12+5)");
        assert_eq!(each_percent(&used(vec![1.0])), "");
        assert_eq!(each_percent(&used(vec![])), "");
    }

    #[test]
    fn a_step_written_before_cpu_seconds_still_reads() {
        let old = r#"{"rate":1000.0,"publish_rate":1000.0,"published":5000,"publish_errors":0,
            "delivery":{"expected":10000,"delivered":10000,"lost":0,"duplicated":0,"misrouted":0},
            "delivered_per_sec":2000.0,
            "latency":{"count":10000,"mean_ms":1.0,"p50_ms":1.0,"p90_ms":2.0,"p99_ms":3.0,"p999_ms":4.0,"max_ms":5.0,"curve":[]},
            "disconnects":0,"cpu":{"server":50.0,"redis":10.0,"loadgen":20.0,"other":1.0},"pass":true}"#;
        let step: StepResult = serde_json::from_str(old).unwrap();
        assert_eq!(step.cpu_seconds, CpuSeconds::default());
        assert_eq!(step.cpu_per_100k, None);
    }

    #[test]
    fn routing_and_sent_counts_agree() {
        let users = 7;
        let published = 50;
        let mut counts = vec![0u64; users as usize];
        for index in 0..published {
            let (user, seq) = route(index, users);
            assert_eq!(
                seq, counts[user as usize],
                "sequence numbers are dense per user"
            );
            counts[user as usize] += 1;
        }
        for user in 0..users {
            assert_eq!(sent_to(user, users, published), counts[user as usize]);
        }
        assert_eq!(sent_to(0, users, 0), 0);
    }
}
