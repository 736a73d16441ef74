//! The chaos harness: protocol v1 clients behind a load balancer, a publisher at a steady
//! rate, and whatever a test breaks meanwhile; then every delivery checked against what
//! the publisher was answered.
//!
//! A run ([`Run::start`]) starts a balancer in front of the test's nodes, `clients` v1
//! clients (client `i` on its personal channel `user:u<i>` and on `room:<i % rooms>`), each
//! reconnecting with jittered backoff and recovering from its last position, and a
//! publisher that sends `rate` messages a second through the balancer, each with an
//! idempotency key and retried until a node answers 200 (so a 503 delays a message, never
//! drops or doubles it); a few are sent a second time on purpose. The test breaks things
//! while it runs ([`Run::at`], [`Run::note`]), then [`Run::finish`] waits for the
//! publisher, sends one closing message to every channel (so that every channel's last
//! position is known and is after the faults), waits until every client has it, and
//! checks ([`Report`]). A backend is three lines: its nodes' flags, its fault, and which
//! channels that fault may give a new epoch ([`Rules`]).
//!
//! The publisher keeps a ledger: for each acknowledged answer, `(epoch, offset) -> message
//! id` per channel (an answer marked duplicate carries the first publish's epoch and
//! offset). Each client keeps a track: what it took, in order, and each `recovered: false`
//! it was told (its old position void, a new one given). The rules:
//! - publisher: every message acknowledged; no `(epoch, offset)` given to two messages; a
//!   message sent again is answered as a duplicate with its first epoch and offset (or, on a
//!   channel that may change epoch, published anew in a new epoch: its key died with the
//!   old primary);
//! - every client, every channel, as it goes: publications consecutive within an epoch and
//!   of the client's epoch; a `recovered: true` reply in the client's epoch, reaching the
//!   top, a `recovered: false` one empty and in another epoch; no message taken twice
//!   unless a `recovered: false` lies between;
//! - on a channel whose epoch must not change (one Redis that keeps its data, or a shard
//!   that did not fail over): one epoch, offsets `1..=n` for the `n` messages sent, and
//!   every client took exactly the publications after its first position, in order, and
//!   was never told `recovered: false`;
//! - on a channel that may change epoch (a failover): every acknowledged publication after
//!   a client's position is taken, unless the client was later told `recovered: false`
//!   leaving that epoch (or entering the next one past it): counted as *lost but told*; and
//!   every client ends in the channel's last epoch, at its top.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use sessionhub_testkit::{Balancer, Node};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use super::v1::*;
use super::{blocking, is_ready, node, wait_ready};

// ---------------------------------------------------------------------------------------
// The load, the nodes, one run at a time.
// ---------------------------------------------------------------------------------------

/// The shape of a run's load.
#[derive(Debug, Clone)]
pub struct Load {
    /// Clients, each on its personal channel and one room.
    pub clients: usize,
    /// Rooms; client `i` joins `room:<i % rooms>`.
    pub rooms: usize,
    /// Publications per second, all channels together.
    pub rate: u64,
    /// How long the publisher runs.
    pub publish_for: Duration,
    /// Share of publications that go to a room (the rest go to a personal channel).
    pub room_share_percent: u64,
    /// Share of messages sent a second time with the same idempotency key.
    pub resend_percent: u64,
    /// Publishes in flight at most.
    pub in_flight: usize,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            clients: 200,
            rooms: 5,
            rate: 500,
            publish_for: Duration::from_secs(16),
            room_share_percent: 10,
            resend_percent: 2,
            in_flight: 128,
        }
    }
}

impl Load {
    /// Above the publisher's message ids: the closing messages' ids start here.
    fn last_id(&self) -> u64 {
        self.rate * self.publish_for.as_secs()
    }

    /// Client `i`'s channels: its personal one and its room.
    pub fn channels_of(&self, i: usize) -> Vec<String> {
        vec![format!("user:u{i}"), format!("room:{}", i % self.rooms)]
    }

    /// Every channel of the run.
    pub fn channels(&self) -> Vec<String> {
        let users = (0..self.clients).map(|i| format!("user:u{i}"));
        users
            .chain((0..self.rooms).map(|r| format!("room:{r}")))
            .collect()
    }
}

/// Chaos runs take turns within a test process: each is hundreds of clients and several
/// nodes, and two at once on a small machine would measure each other. Take it first
/// thing in a test, before its fixtures start.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// `n` nodes named `chaos-0`, `chaos-1`, ... with the `backend` flags (`--redis URL`, ...),
/// a history long enough for the whole run and no per-IP connection limit (every client
/// comes from 127.0.0.1).
pub fn nodes(backend: &[&str], n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let name = format!("chaos-{i}");
            let mut args = backend.to_vec();
            args.extend([
                "--node-id",
                name.as_str(),
                "--history-size",
                "1000",
                "--max-connections-per-ip",
                "100000",
            ]);
            blocking(|| node(&args))
        })
        .collect()
}

/// What a run's faults may do to the channels' histories.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Channels that may start a new epoch (those served by a Redis that failed over):
    /// acknowledged publications may be lost there, if the clients are told. Every other
    /// channel keeps one epoch and loses nothing.
    pub may_change_epoch: HashSet<String>,
}

impl Rules {
    /// Every channel keeps one epoch: one Redis that keeps its data, whatever restarts.
    pub fn one_epoch() -> Self {
        Self::default()
    }

    /// `channels` may start new epochs; the others keep theirs.
    pub fn new_epochs_on(channels: impl IntoIterator<Item = String>) -> Self {
        Self {
            may_change_epoch: channels.into_iter().collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// A run.
// ---------------------------------------------------------------------------------------

/// A run under way: see the module documentation.
pub struct Run {
    label: String,
    load: Load,
    began: Instant,
    subscribed_after: Duration,
    balancer: Balancer,
    stop: watch::Sender<bool>,
    clients: Vec<JoinHandle<()>>,
    tracks: Vec<(Vec<String>, Arc<Mutex<Track>>)>,
    ledger: Arc<Mutex<Ledger>>,
    /// When the publisher started: the run's times count from here.
    publishing: Instant,
    publisher: JoinHandle<()>,
    readiness: Readiness,
    /// The nodes' HTTP bases.
    bases: Vec<String>,
    events: Vec<(String, Duration)>,
}

impl Run {
    /// Waits until every node is ready, starts the balancer and the clients, waits until
    /// every client is subscribed to its channels, and starts the publisher. `label`
    /// prefixes the figures printed.
    pub async fn start(label: &str, nodes: &[Node], load: Load) -> Self {
        let began = Instant::now();
        let client = quick_http();
        for node in nodes {
            wait_ready(&client, &node.http(), true, Duration::from_secs(20)).await;
        }
        let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
        let balancer = blocking(|| Balancer::start(&addrs)).expect("the balancer starts");

        let (stop, stopped) = watch::channel(false);
        let mut tracks = Vec::new();
        let mut clients = Vec::new();
        for i in 0..load.clients {
            let channels = load.channels_of(i);
            let track = Arc::new(Mutex::new(Track::default()));
            tracks.push((channels.clone(), track.clone()));
            clients.push(tokio::spawn(client_task(
                balancer.ws(),
                format!("u{i}"),
                channels,
                track,
                stopped.clone(),
                i as u64,
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !tracks.iter().all(|(channels, track)| {
            let track = track.lock().unwrap();
            channels.iter().all(|c| track.positions.contains_key(c))
        }) {
            assert!(
                Instant::now() < deadline,
                "{label}: the clients did not all subscribe"
            );
            sleep(Duration::from_millis(50)).await;
        }
        let subscribed_after = began.elapsed();

        let publishing = Instant::now();
        let ledger = Arc::new(Mutex::new(Ledger::new(publishing)));
        let bases: Vec<String> = nodes.iter().map(Node::http).collect();
        let readiness = Readiness::watch(bases.clone(), publishing);
        let publisher = tokio::spawn(publisher(balancer.http(), ledger.clone(), load.clone(), 7));
        Self {
            label: label.to_owned(),
            load,
            began,
            subscribed_after,
            balancer,
            stop,
            clients,
            tracks,
            ledger,
            publishing,
            publisher,
            readiness,
            bases,
            events: Vec::new(),
        }
    }

    /// Time since the publisher started.
    pub fn now(&self) -> Duration {
        self.publishing.elapsed()
    }

    /// Sleeps until `t` after the publisher started.
    pub async fn at(&self, t: Duration) {
        sleep_until(self.publishing + t).await;
    }

    /// Notes that `what` happened now (printed with the figures); returns the time.
    pub fn note(&mut self, what: impl Into<String>) -> Duration {
        let now = self.now();
        self.events.push((what.into(), now));
        now
    }

    /// Waits for the publisher, sends every channel its closing message, waits (up to 20 s)
    /// until every client has its channels' last publications, stops the clients, waits
    /// (up to 30 s) until every node is ready, checks everything by `rules` and prints the
    /// figures. The caller asserts
    /// ([`Report::assert_delivery`] and its own bounds).
    pub async fn finish(self, rules: Rules) -> Report {
        self.publisher.await.unwrap();
        let first_closing = self.load.last_id();
        close_every_channel(
            self.balancer.http(),
            &self.ledger,
            &self.load,
            first_closing,
        )
        .await;
        let published_in = self.publishing.elapsed();

        // Drain: until every client is at its channels' last position.
        let last: HashMap<String, Option<Position>> = {
            let ledger = self.ledger.lock().unwrap();
            self.load
                .channels()
                .into_iter()
                .map(|c| {
                    let last = ledger.last_position(&c);
                    (c, last)
                })
                .collect()
        };
        let caught_up = |channels: &[String], track: &Track| {
            channels
                .iter()
                .all(|c| last[c].is_none() || track.positions.get(c) == last[c].as_ref())
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && !self
                .tracks
                .iter()
                .all(|(channels, track)| caught_up(channels, &track.lock().unwrap()))
        {
            sleep(Duration::from_millis(100)).await;
        }
        let drained_in = self.publishing.elapsed() - published_in;
        self.stop.send_replace(true);
        for client in self.clients {
            client.await.unwrap();
        }
        // Every node ready again (up to 30 s more), so that the figure is known even when
        // that takes longer than the traffic.
        let client = quick_http();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready =
                futures_util::future::join_all(self.bases.iter().map(|b| is_ready(&client, b)))
                    .await;
            if ready.iter().all(|r| *r) {
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
        let unready = self.readiness.stop().await;

        let ledger = Arc::try_unwrap(self.ledger)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap();
        let mut report = Report {
            label: self.label,
            load: self.load,
            events: self.events,
            subscribed_after: self.subscribed_after,
            published_in,
            drained_in,
            unready,
            relayed: self.balancer.stats().relayed(),
            refused: self.balancer.stats().refused(),
            dropped: self.balancer.stats().dropped(),
            ..Report::default()
        };
        report.check_publisher(&ledger, &rules);
        let mut taken = HashSet::new();
        for (i, (channels, track)) in self.tracks.iter().enumerate() {
            let track = track.lock().unwrap();
            report.check_client(i, channels, &track, &ledger, &rules);
            for (channel, log) in &track.log {
                for event in log {
                    if let Event::Took { epoch, offset, .. } = event {
                        taken.insert((channel.clone(), epoch.clone(), *offset));
                    }
                }
            }
            for &(lost, back) in &track.outages {
                let (lost, back) = (lost - self.publishing, back - self.publishing);
                let (first, last, all_back) = report.outages.get_or_insert((lost, lost, back));
                *first = (*first).min(lost);
                *last = (*last).max(lost);
                *all_back = (*all_back).max(back);
            }
        }
        report.delivered_to_nobody = ledger
            .acks
            .iter()
            .flat_map(|(c, acks)| acks.iter().map(move |(e, o)| (c, e, o)))
            .flat_map(|(c, e, o)| o.keys().map(move |o| (c.clone(), e.clone(), *o)))
            .filter(|at| !taken.contains(at))
            .count();
        report.recoveries.sort_unstable();
        report.connects.sort_unstable();
        report.subscribes.sort_unstable();
        report.total = self.began.elapsed();
        report.print();
        report
    }
}

/// An HTTP client with a connection per request (the balancer picks the node per
/// connection) and a short timeout.
fn quick_http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

// ---------------------------------------------------------------------------------------
// The clients.
// ---------------------------------------------------------------------------------------

/// A small deterministic generator (splitmix64), for jitter and channel picks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `d` spread by ±50%.
    fn jitter(&mut self, d: Duration) -> Duration {
        d.mul_f64(0.5 + self.below(1000) as f64 / 1000.0)
    }
}

/// Something that happened to a client on one channel.
#[derive(Debug, Clone)]
enum Event {
    /// A publication taken, live or recovered.
    Took { epoch: String, offset: u64, id: u64 },
    /// A `recovered: false`: the position `from` is void, the client goes on from `to`.
    Told { from: Position, to: Position },
}

/// What one client saw.
#[derive(Default)]
struct Track {
    positions: HashMap<String, Position>,
    /// Where each channel's first subscription started.
    first: HashMap<String, Position>,
    /// Per channel, what happened, in order.
    log: HashMap<String, Vec<Event>>,
    /// Per channel, the message ids taken since the last `recovered: false`.
    since_told: HashMap<String, HashSet<u64>>,
    /// Anything that breaks the delivery rules as it happens.
    problems: Vec<String>,
    /// From losing a connection to having every channel subscribed on a new one.
    recoveries: Vec<Duration>,
    /// When each of those began and ended.
    outages: Vec<(Instant, Instant)>,
    /// For each of those, how long its last connect took (to the greeting), and its
    /// subscribes (to the last `subscribed` reply).
    phases: Vec<(Duration, Duration)>,
    /// Why connections ended: "4010", "closed", "subscribe:broker_unavailable", ...
    endings: BTreeMap<String, usize>,
    connections: usize,
}

impl Track {
    fn subscribed(&mut self, s: &Subscribed) {
        let channel = &s.channel;
        let to = Position {
            epoch: s.epoch.clone(),
            offset: s.offset,
        };
        let Some(at) = self.positions.get(channel).cloned() else {
            self.first.insert(channel.clone(), to.clone());
            self.positions.insert(channel.clone(), to);
            return;
        };
        if !s.recovered {
            if !s.publications.is_empty() {
                self.problems
                    .push(format!("{channel}: a partial recovery from {at:?}: {s:?}"));
            }
            if s.epoch == at.epoch {
                self.problems.push(format!(
                    "{channel}: told recovered:false from {at:?} within its epoch (now {})",
                    s.offset
                ));
            }
            self.log
                .entry(channel.clone())
                .or_default()
                .push(Event::Told {
                    from: at,
                    to: to.clone(),
                });
            self.since_told.remove(channel);
            self.positions.insert(channel.clone(), to);
            return;
        }
        if s.epoch != at.epoch {
            self.problems.push(format!(
                "{channel}: recovered:true from {at:?} into epoch {}",
                s.epoch
            ));
        }
        for (offset, data) in &s.publications {
            self.take(channel, &s.epoch, *offset, data, "recovered");
        }
        if self.positions[channel].offset != s.offset {
            self.problems.push(format!(
                "{channel}: recovered up to {} but the top is {}",
                self.positions[channel].offset, s.offset
            ));
        }
    }

    fn take(&mut self, channel: &str, epoch: &str, offset: u64, data: &Value, how: &str) {
        let id = data["id"].as_u64().unwrap_or(u64::MAX);
        let Some(at) = self.positions.get_mut(channel) else {
            self.problems.push(format!(
                "{channel}: {how} offset {offset} before subscribing"
            ));
            return;
        };
        if epoch != at.epoch {
            self.problems.push(format!(
                "{channel}: {how} offset {offset} of epoch {epoch}, expected {}",
                at.epoch
            ));
        } else if offset != at.offset + 1 {
            self.problems.push(format!(
                "{channel}: {how} offset {offset} after {}",
                at.offset
            ));
        }
        at.offset = at.offset.max(offset);
        if !self
            .since_told
            .entry(channel.to_owned())
            .or_default()
            .insert(id)
        {
            self.problems.push(format!(
                "{channel}: message {id} taken again ({how}, {epoch}/{offset}) with no \
                 recovered:false between"
            ));
        }
        self.log
            .entry(channel.to_owned())
            .or_default()
            .push(Event::Took {
                epoch: epoch.to_owned(),
                offset,
                id,
            });
    }

    fn ended(&mut self, why: impl Into<String>) {
        *self.endings.entry(why.into()).or_default() += 1;
    }
}

/// One client: connects through the balancer, subscribes (recovering) to its channels,
/// takes what comes, and on any trouble reconnects with backoff, until `stop`.
async fn client_task(
    base_ws: String,
    user: String,
    channels: Vec<String>,
    track: Arc<Mutex<Track>>,
    mut stop: watch::Receiver<bool>,
    seed: u64,
) {
    const BACKOFF_MIN: Duration = Duration::from_millis(50);
    const BACKOFF_MAX: Duration = Duration::from_secs(1);
    let mut rng = Rng(seed);
    let mut backoff = BACKOFF_MIN;
    let mut lost_at: Option<Instant> = None;
    while !*stop.borrow() {
        let connecting = Instant::now();
        let opened = tokio::select! {
            opened = open_v1(&base_ws, &user) => opened,
            _ = stop.changed() => return,
        };
        let (connect_took, subscribing) = (connecting.elapsed(), Instant::now());
        if let Ok((mut ws, _node)) = opened {
            track.lock().unwrap().connections += 1;
            let frames: Vec<String> = {
                let track = track.lock().unwrap();
                channels
                    .iter()
                    .map(|c| subscribe_frame(c, track.positions.get(c)))
                    .collect()
            };
            let mut pending: HashSet<&str> = channels.iter().map(String::as_str).collect();
            let mut sent = true;
            for frame in frames {
                sent &= ws.send(Message::Text(frame.into())).await.is_ok();
            }
            let why = loop {
                if !sent {
                    break "send failed".to_owned();
                }
                let frame = tokio::select! {
                    frame = read_frame(&mut ws) => frame,
                    _ = stop.changed() => {
                        let _ = ws.close(None).await;
                        return;
                    }
                };
                let mut track = track.lock().unwrap();
                match frame {
                    Ok(Frame::Subscribed(s)) => {
                        track.subscribed(&s);
                        pending.remove(s.channel.as_str());
                        if pending.is_empty() {
                            if let Some(at) = lost_at.take() {
                                track.recoveries.push(at.elapsed());
                                track.outages.push((at, Instant::now()));
                                track.phases.push((connect_took, subscribing.elapsed()));
                            }
                            backoff = BACKOFF_MIN;
                        }
                    }
                    Ok(Frame::Publication {
                        channel,
                        epoch,
                        offset,
                        data,
                    }) => track.take(&channel, &epoch, offset, &data, "live"),
                    Ok(Frame::Disconnect { code, reconnect }) => {
                        if !reconnect {
                            track
                                .problems
                                .push(format!("told not to reconnect ({code})"));
                        }
                        break code.to_string();
                    }
                    // A subscribe the node could not serve (Redis unreachable): try again.
                    Ok(Frame::Error { code, message }) => {
                        if code != "broker_unavailable" {
                            track.problems.push(format!("error {code}: {message}"));
                        }
                        break format!("subscribe:{code}");
                    }
                    Ok(Frame::Closed(code)) => break format!("closed {code:?}"),
                    Ok(other) => track.problems.push(format!("unexpected frame {other:?}")),
                    Err(_) => break "read error".to_owned(),
                }
            };
            track.lock().unwrap().ended(why);
        } else {
            track.lock().unwrap().ended("connect failed");
        }
        lost_at.get_or_insert_with(Instant::now);
        let pause = rng.jitter(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            () = sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The publisher.
// ---------------------------------------------------------------------------------------

/// Where a publish was answered to be: `(epoch, offset)`.
type At = (String, u64);

/// What the publisher was answered.
struct Ledger {
    /// When the publisher started.
    origin: Instant,
    /// Per channel, when its first answer came (from `origin`).
    first_answered: HashMap<String, Duration>,
    /// Per channel, epoch and offset, the message id an answer named.
    acks: HashMap<String, HashMap<String, BTreeMap<u64, u64>>>,
    /// Per channel, its epochs in the order they were first answered.
    epochs: HashMap<String, Vec<String>>,
    /// Message ids sent to each channel.
    sent: HashMap<String, Vec<u64>>,
    /// Per message, its first answer.
    first: HashMap<u64, At>,
    /// Each channel's closing message.
    closing: HashMap<String, u64>,
    /// Messages sent again whose second answer was a new publication in another epoch.
    republished: Vec<(String, u64)>,
    problems: Vec<String>,
    attempts: u64,
    /// Answers 503 or 502 (retried).
    unavailable: u64,
    /// Messages that met at least one 503/502.
    delayed: u64,
    connection_errors: u64,
    /// First answers that were duplicates (an earlier attempt had published).
    duplicates: u64,
    /// Messages deliberately sent a second time.
    resent: u64,
    /// The longest a message took from its first attempt to being taken, and its id.
    slowest: (Duration, u64),
}

impl Ledger {
    fn new(origin: Instant) -> Self {
        Self {
            origin,
            first_answered: HashMap::new(),
            acks: HashMap::new(),
            epochs: HashMap::new(),
            sent: HashMap::new(),
            first: HashMap::new(),
            closing: HashMap::new(),
            republished: Vec::new(),
            problems: Vec::new(),
            attempts: 0,
            unavailable: 0,
            delayed: 0,
            connection_errors: 0,
            duplicates: 0,
            resent: 0,
            slowest: (Duration::ZERO, 0),
        }
    }

    /// Where `channel`'s closing message was published, and its top there: where every
    /// client must end.
    fn last_position(&self, channel: &str) -> Option<Position> {
        let (epoch, _) = self.first.get(self.closing.get(channel)?)?;
        let top = *self.acks[channel][epoch].keys().next_back()?;
        Some(Position {
            epoch: epoch.clone(),
            offset: top,
        })
    }

    /// Notes what an answer says message `id` got; returns it.
    fn record(&mut self, channel: &str, id: u64, answer: &Value) -> At {
        let offset = answer["offset"].as_u64().unwrap_or(0);
        let epoch = answer["epoch"].as_str().unwrap_or_default().to_owned();
        let origin = self.origin;
        self.first_answered
            .entry(channel.to_owned())
            .or_insert_with(|| origin.elapsed());
        let epochs = self.epochs.entry(channel.to_owned()).or_default();
        if !epochs.contains(&epoch) {
            epochs.push(epoch.clone());
        }
        let previous = self
            .acks
            .entry(channel.to_owned())
            .or_default()
            .entry(epoch.clone())
            .or_default()
            .insert(offset, id);
        if previous.is_some_and(|p| p != id) {
            self.problems.push(format!(
                "{channel}: {epoch}/{offset} given to messages {previous:?} and {id}"
            ));
        }
        (epoch, offset)
    }
}

/// The epoch and offset an answer names.
fn at_of(answer: &Value) -> At {
    (
        answer["epoch"].as_str().unwrap_or_default().to_owned(),
        answer["offset"].as_u64().unwrap_or(0),
    )
}

/// Sends message `id` to `channel` through the balancer until a node answers 200 (503s and
/// connection errors are retried with the same idempotency key, so it is published once);
/// `None` if that took too long or the answer was another error.
async fn send_until_answered(
    client: &reqwest::Client,
    base: &str,
    channel: &str,
    id: u64,
    ledger: &Mutex<Ledger>,
) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let key = format!("chaos-{id}");
    let mut delayed = false;
    loop {
        let sent = client
            .post(publish_url(base, channel))
            .header("idempotency-key", &key)
            .json(&json!({ "message": { "id": id } }))
            .send()
            .await;
        ledger.lock().unwrap().attempts += 1;
        match sent {
            Ok(response) if response.status() == 200 => match response.json::<Value>().await {
                Ok(answer) => return Some(answer),
                // The node died while answering: whether it published, only a retry tells.
                Err(_) => ledger.lock().unwrap().connection_errors += 1,
            },
            Ok(response) if response.status() == 503 || response.status() == 502 => {
                let mut ledger = ledger.lock().unwrap();
                ledger.unavailable += 1;
                if !delayed {
                    delayed = true;
                    ledger.delayed += 1;
                }
            }
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                let problem = format!("message {id}: {status} {body}");
                ledger.lock().unwrap().problems.push(problem);
                return None;
            }
            Err(_) => ledger.lock().unwrap().connection_errors += 1,
        }
        if Instant::now() > deadline {
            let problem = format!("message {id}: not published within 30 s");
            ledger.lock().unwrap().problems.push(problem);
            return None;
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes message `id` once; with `again`, sends it a second time afterwards (as a
/// client that never saw the first answer would) and checks it is not published twice.
async fn publish_until_taken(
    client: reqwest::Client,
    base: String,
    channel: String,
    id: u64,
    again: bool,
    ledger: Arc<Mutex<Ledger>>,
) {
    let began = Instant::now();
    let Some(first) = send_until_answered(&client, &base, &channel, id, &ledger).await else {
        return;
    };
    let first_at = {
        let mut ledger = ledger.lock().unwrap();
        let at = ledger.record(&channel, id, &first);
        ledger.first.insert(id, at.clone());
        if first["duplicate"] == true {
            ledger.duplicates += 1;
        }
        ledger.slowest = ledger.slowest.max((began.elapsed(), id));
        at
    };
    if !again {
        return;
    }
    let Some(second) = send_until_answered(&client, &base, &channel, id, &ledger).await else {
        return;
    };
    let mut ledger = ledger.lock().unwrap();
    ledger.resent += 1;
    let second_at = at_of(&second);
    if second["duplicate"] == true && second_at == first_at {
        return;
    }
    if second["duplicate"] != true && second_at.0 != first_at.0 {
        // Published anew in another epoch: the key was lost with the first epoch. Only a
        // channel that may change epoch allows it (checked in the end).
        ledger.record(&channel, id, &second);
        ledger.republished.push((channel, id));
        return;
    }
    ledger.problems.push(format!(
        "message {id} sent again on {channel}: {second}, first {first}"
    ));
}

/// Publishes `load.rate` messages a second (or as many as the nodes take, `in_flight` at a
/// time) through the balancer for `load.publish_for`, ids from 0.
async fn publisher(base: String, ledger: Arc<Mutex<Ledger>>, load: Load, seed: u64) {
    let client = quick_http();
    let mut rng = Rng(seed);
    let in_flight = Arc::new(Semaphore::new(load.in_flight));
    let start = Instant::now();
    let mut tasks = Vec::new();
    // Bounded by time, not by count: on a busy machine fewer go out, and the faults still
    // strike while it runs.
    for id in 0..load.last_id() {
        sleep_until(start + Duration::from_micros(id * 1_000_000 / load.rate)).await;
        if start.elapsed() >= load.publish_for {
            break;
        }
        let channel = if rng.below(100) < load.room_share_percent {
            format!("room:{}", rng.below(load.rooms as u64))
        } else {
            format!("user:u{}", rng.below(load.clients as u64))
        };
        ledger
            .lock()
            .unwrap()
            .sent
            .entry(channel.clone())
            .or_default()
            .push(id);
        let again = rng.below(100) < load.resend_percent;
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let (client, base, ledger) = (client.clone(), base.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            publish_until_taken(client, base, channel, id, again, ledger).await;
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Sends one closing message to every channel (ids from `first_id`), all at once.
async fn close_every_channel(
    base: String,
    ledger: &Arc<Mutex<Ledger>>,
    load: &Load,
    first_id: u64,
) {
    let client = quick_http();
    let mut tasks = Vec::new();
    for (channel, id) in load.channels().into_iter().zip(first_id..) {
        {
            let mut ledger = ledger.lock().unwrap();
            ledger.sent.entry(channel.clone()).or_default().push(id);
            ledger.closing.insert(channel.clone(), id);
        }
        let (client, base, ledger) = (client.clone(), base.clone(), ledger.clone());
        tasks.push(tokio::spawn(publish_until_taken(
            client, base, channel, id, false, ledger,
        )));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The nodes' readiness, sampled through the run.
// ---------------------------------------------------------------------------------------

/// A task that asks every node's `/readyz` every 100 ms.
struct Readiness {
    stop: watch::Sender<bool>,
    task: JoinHandle<Samples>,
}

/// Per node, each sample's time and, if it was not ready, why.
type Samples = Vec<Vec<(Duration, Option<String>)>>;

/// A stretch of time a node was not ready: from its first unready sample to its next
/// ready one (`None`: it was still unready at the end), and why, as its first unready
/// answer said.
pub type Unready = (Duration, Option<Duration>, String);

/// `None` if `base` answers `/readyz` with 200, else what it answered.
async fn unready(client: &reqwest::Client, base: &str) -> Option<String> {
    match client.get(format!("{base}/readyz")).send().await {
        Ok(r) if r.status() == 200 => None,
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            Some(format!(
                "{status} {}",
                body.chars().take(160).collect::<String>()
            ))
        }
        Err(e) => Some(if e.is_timeout() {
            "timed out".to_owned()
        } else if e.is_connect() {
            "refused".to_owned()
        } else {
            e.to_string()
        }),
    }
}

impl Readiness {
    fn watch(bases: Vec<String>, origin: Instant) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let client = quick_http();
            let mut samples = vec![Vec::new(); bases.len()];
            while !*stopped.borrow() {
                let now = origin.elapsed();
                let answers =
                    futures_util::future::join_all(bases.iter().map(|b| unready(&client, b))).await;
                for (node, answer) in answers.into_iter().enumerate() {
                    samples[node].push((now, answer));
                }
                tokio::select! {
                    () = sleep(Duration::from_millis(100)) => {}
                    _ = stopped.changed() => {}
                }
            }
            samples
        });
        Self { stop, task }
    }

    /// Stops sampling; each node's unready stretches.
    async fn stop(self) -> Vec<Vec<Unready>> {
        self.stop.send_replace(true);
        let samples = self.task.await.unwrap();
        samples
            .iter()
            .map(|node| {
                let mut stretches = Vec::new();
                let mut since: Option<(Duration, &String)> = None;
                for (t, answer) in node {
                    match (answer, since) {
                        (Some(why), None) => since = Some((*t, why)),
                        (None, Some((from, why))) => {
                            stretches.push((from, Some(*t), why.clone()));
                            since = None;
                        }
                        _ => {}
                    }
                }
                if let Some((from, why)) = since {
                    stretches.push((from, None, why.clone()));
                }
                stretches
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The checks and the figures.
// ---------------------------------------------------------------------------------------

/// What a run did and what broke its rules (see the module documentation).
#[derive(Default)]
pub struct Report {
    pub label: String,
    pub load: Load,
    /// Every rule broken; empty when all held.
    pub failures: Vec<String>,
    /// What the test noted, and when (from the publisher's start).
    pub events: Vec<(String, Duration)>,
    pub subscribed_after: Duration,
    /// When the last closing message was answered.
    pub published_in: Duration,
    /// From then until every client had its channels' last publications.
    pub drained_in: Duration,
    pub total: Duration,
    /// Per node, its unready stretches.
    pub unready: Vec<Vec<Unready>>,
    // The publisher.
    pub messages: usize,
    pub attempts: u64,
    /// Answers 503/502 (each retried 50 ms later).
    pub unavailable: u64,
    /// Messages that met at least one of them.
    pub delayed: u64,
    pub connection_errors: u64,
    pub duplicates: u64,
    pub resent: u64,
    /// Messages sent again and published anew in a new epoch (their key lost).
    pub republished: usize,
    pub slowest: (Duration, u64),
    /// Per channel, the epochs its publications were answered in.
    pub epochs: HashMap<String, usize>,
    /// Offsets of an epoch below its top that no answer named (published, answer lost).
    pub unanswered_offsets: usize,
    // The clients.
    pub connections: usize,
    pub deliveries: usize,
    pub endings: BTreeMap<String, usize>,
    /// From losing a connection to every channel subscribed again, sorted.
    pub recoveries: Vec<Duration>,
    /// The first connection lost, the last lost, and the last recovered (from the
    /// publisher's start).
    pub outages: Option<(Duration, Duration, Duration)>,
    /// Of each recovery, its last connect and its subscribes, sorted.
    pub connects: Vec<Duration>,
    pub subscribes: Vec<Duration>,
    /// `recovered: false` replies, and the client channels that had one.
    pub told: usize,
    pub told_channels: usize,
    /// Acknowledged publications a client never took, after being told `recovered: false`
    /// (summed over clients): `lost_in_old_epoch + missed_in_new_epoch`.
    pub lost_but_told: usize,
    /// ... in the epoch the client was told was void, after its position there: lost
    /// with the failover, or published while its node was not subscribed.
    pub lost_in_old_epoch: usize,
    /// ... in the epoch the client was told to go on in, before its new position there:
    /// published before the client came back.
    pub missed_in_new_epoch: usize,
    /// Acknowledged publications that no client took at all.
    pub delivered_to_nobody: usize,
    /// Per channel, when the publisher got its first answer (from its start).
    pub first_answered: HashMap<String, Duration>,
    /// ... of which the client took the message in another epoch (sent again).
    pub taken_in_another_epoch: usize,
    /// Publications taken that no answer named (their publish's answer was lost).
    pub taken_unacknowledged: usize,
    // The balancer.
    pub relayed: Vec<u64>,
    pub refused: u64,
    pub dropped: u64,
}

impl Report {
    fn check_publisher(&mut self, ledger: &Ledger, rules: &Rules) {
        self.failures.extend(ledger.problems.iter().cloned());
        self.messages = ledger.sent.values().map(Vec::len).sum();
        self.attempts = ledger.attempts;
        self.unavailable = ledger.unavailable;
        self.delayed = ledger.delayed;
        self.connection_errors = ledger.connection_errors;
        self.duplicates = ledger.duplicates;
        self.resent = ledger.resent;
        self.republished = ledger.republished.len();
        self.slowest = ledger.slowest;
        self.first_answered = ledger.first_answered.clone();
        for (channel, id) in &ledger.republished {
            if !rules.may_change_epoch.contains(channel) {
                self.failures.push(format!(
                    "message {id} sent again on {channel} was published a second time"
                ));
            }
        }
        let none = HashMap::new();
        for (channel, ids) in &ledger.sent {
            let acks = ledger.acks.get(channel).unwrap_or(&none);
            self.epochs.insert(channel.clone(), acks.len());
            for offsets in acks.values() {
                let top = offsets.keys().next_back().copied().unwrap_or(0);
                self.unanswered_offsets += (top as usize).saturating_sub(offsets.len());
            }
            if let Some(id) = ids.iter().find(|id| !ledger.first.contains_key(id)) {
                self.failures
                    .push(format!("{channel}: message {id} was never acknowledged"));
            }
            if rules.may_change_epoch.contains(channel) {
                continue;
            }
            // One epoch, offsets 1..=n for the n messages sent, and those messages.
            let offsets = acks.values().next().cloned().unwrap_or_default();
            if offsets.keys().copied().ne(1..=ids.len() as u64) {
                self.failures.push(format!(
                    "{channel}: {} messages sent, offsets {:?}..{:?} ({} of them)",
                    ids.len(),
                    offsets.keys().next(),
                    offsets.keys().next_back(),
                    offsets.len()
                ));
            }
            let mut got: Vec<u64> = offsets.values().copied().collect();
            got.sort_unstable();
            let mut want = ids.clone();
            want.sort_unstable();
            if got != want {
                self.failures
                    .push(format!("{channel}: the ids published are not the ids sent"));
            }
            if acks.len() != 1 {
                self.failures.push(format!(
                    "{channel}: epochs {:?} (its epoch must not change)",
                    ledger.epochs.get(channel)
                ));
            }
        }
    }

    fn check_client(
        &mut self,
        i: usize,
        channels: &[String],
        track: &Track,
        ledger: &Ledger,
        rules: &Rules,
    ) {
        for problem in &track.problems {
            self.failures.push(format!("u{i}: {problem}"));
        }
        for channel in channels {
            let log = track.log.get(channel).map_or(&[][..], Vec::as_slice);
            let told: Vec<(&Position, &Position)> = log
                .iter()
                .filter_map(|e| match e {
                    Event::Told { from, to } => Some((from, to)),
                    Event::Took { .. } => None,
                })
                .collect();
            let took: Vec<(&str, u64, u64)> = log
                .iter()
                .filter_map(|e| match e {
                    Event::Took { epoch, offset, id } => Some((epoch.as_str(), *offset, *id)),
                    Event::Told { .. } => None,
                })
                .collect();
            self.deliveries += took.len();
            self.told += told.len();
            self.told_channels += usize::from(!told.is_empty());
            let Some(first) = track.first.get(channel) else {
                self.failures
                    .push(format!("u{i}: never subscribed to {channel}"));
                continue;
            };
            let last = ledger.last_position(channel);
            if last
                .as_ref()
                .is_some_and(|l| track.positions.get(channel) != Some(l))
            {
                self.failures.push(format!(
                    "u{i} on {channel}: ended at {:?}, the channel's last publication is at \
                     {last:?}",
                    track.positions.get(channel)
                ));
            }
            if rules.may_change_epoch.contains(channel) {
                self.check_epochs(i, channel, first, &told, &took, ledger);
                continue;
            }
            // One epoch: every message once, in offset order, from where the client first
            // subscribed, and never a `recovered: false`.
            for (from, to) in &told {
                self.failures.push(format!(
                    "u{i} on {channel}: told recovered:false from {from:?} (now {to:?}) on a \
                     channel whose epoch must not change"
                ));
            }
            let want: Vec<(u64, u64)> = ledger
                .acks
                .get(channel)
                .and_then(|acks| acks.get(&first.epoch))
                .map(|o| {
                    o.range(first.offset + 1..)
                        .map(|(o, id)| (*o, *id))
                        .collect()
                })
                .unwrap_or_default();
            let got: Vec<(u64, u64)> = took.iter().map(|&(_, o, id)| (o, id)).collect();
            if got != want {
                let first_difference = got.iter().zip(&want).position(|(g, w)| g != w);
                self.failures.push(format!(
                    "u{i} on {channel}: {} taken, {} published since offset {}; first \
                     difference at index {first_difference:?}; last taken {:?}, last \
                     published {:?}",
                    got.len(),
                    want.len(),
                    first.offset,
                    got.last(),
                    want.last()
                ));
            }
        }
        self.recoveries.extend(track.recoveries.iter().copied());
        self.connects.extend(track.phases.iter().map(|p| p.0));
        self.subscribes.extend(track.phases.iter().map(|p| p.1));
        for (why, n) in &track.endings {
            *self.endings.entry(why.clone()).or_default() += n;
        }
        self.connections += track.connections;
    }

    /// A channel that may change epoch: everything taken was published there, and every
    /// acknowledged publication after the client's first position was taken or lies in a
    /// stretch a `recovered: false` told the client it missed.
    fn check_epochs(
        &mut self,
        i: usize,
        channel: &str,
        first: &Position,
        told: &[(&Position, &Position)],
        took: &[(&str, u64, u64)],
        ledger: &Ledger,
    ) {
        let none = HashMap::new();
        let acks = ledger.acks.get(channel).unwrap_or(&none);
        let sent: HashSet<u64> = ledger.sent[channel].iter().copied().collect();
        let mut taken: HashMap<(&str, u64), u64> = HashMap::new();
        let mut taken_ids = HashSet::new();
        for &(epoch, offset, id) in took {
            taken.insert((epoch, offset), id);
            taken_ids.insert(id);
            match acks.get(epoch).and_then(|o| o.get(&offset)) {
                Some(&acked) if acked != id => self.failures.push(format!(
                    "u{i} on {channel}: took message {id} at {epoch}/{offset}, which the \
                     publisher was told is message {acked}"
                )),
                Some(_) => {}
                None if sent.contains(&id) => self.taken_unacknowledged += 1,
                None => self.failures.push(format!(
                    "u{i} on {channel}: took message {id} at {epoch}/{offset}, never sent there"
                )),
            }
        }
        let entered: HashSet<&str> = told
            .iter()
            .map(|(_, to)| to.epoch.as_str())
            .chain([first.epoch.as_str()])
            .collect();
        let mut silent = Vec::new();
        for (epoch, offsets) in acks {
            for (&offset, &id) in offsets {
                if taken.contains_key(&(epoch.as_str(), offset))
                    || (*epoch == first.epoch && offset <= first.offset)
                {
                    continue;
                }
                let old = told
                    .iter()
                    .any(|(from, _)| *epoch == from.epoch && offset > from.offset);
                let new = told
                    .iter()
                    .any(|(_, to)| *epoch == to.epoch && offset <= to.offset)
                    || (!told.is_empty() && !entered.contains(epoch.as_str()));
                if !old && !new {
                    silent.push((epoch.clone(), offset, id));
                } else if taken_ids.contains(&id) {
                    self.taken_in_another_epoch += 1;
                } else if old {
                    self.lost_but_told += 1;
                    self.lost_in_old_epoch += 1;
                } else {
                    self.lost_but_told += 1;
                    self.missed_in_new_epoch += 1;
                }
            }
        }
        if !silent.is_empty() {
            silent.sort();
            self.failures.push(format!(
                "u{i} on {channel}: {} acknowledged publications never taken, and never told \
                 recovered:false for them (from {first:?}; told {told:?}): first ones {:?}",
                silent.len(),
                &silent[..silent.len().min(5)]
            ));
        }
    }

    /// The `p`th percentile of the recoveries.
    pub fn recovery(&self, p: f64) -> Duration {
        percentile(&self.recoveries, p)
    }

    /// How long after `t` every node was ready again: the end of the last unready stretch
    /// that ends after `t` (zero if none does; `None` if a node was still unready at the
    /// end).
    pub fn ready_again_after(&self, t: Duration) -> Option<Duration> {
        let mut last = Duration::ZERO;
        for stretch in self.unready.iter().flatten() {
            match stretch.1 {
                None => return None,
                Some(end) if end > t => last = last.max(end - t),
                Some(_) => {}
            }
        }
        Some(last)
    }

    /// Panics with the first failures, if any rule broke.
    pub fn assert_delivery(&self) {
        if self.failures.is_empty() {
            return;
        }
        let shown: Vec<&str> = self.failures.iter().take(30).map(String::as_str).collect();
        panic!(
            "{}: {} delivery failures, first ones:\n{}",
            self.label,
            self.failures.len(),
            shown.join("\n")
        );
    }

    /// Prints the figures, one line a subject, each prefixed with the label.
    pub fn print(&self) {
        let l = &self.label;
        let load = &self.load;
        let events: Vec<String> = self
            .events
            .iter()
            .map(|(what, t)| format!("{what} at {t:.1?}"))
            .collect();
        let unready: Vec<String> = self
            .unready
            .iter()
            .enumerate()
            .map(|(node, stretches)| {
                let s: Vec<String> = stretches
                    .iter()
                    .map(|(from, to, why)| match to {
                        Some(to) => format!("{from:.1?}..{to:.1?} ({why})"),
                        None => format!("{from:.1?}..(end) ({why})"),
                    })
                    .collect();
                format!("chaos-{node} [{}]", s.join(" "))
            })
            .collect();
        println!(
            "{l}: {} clients ({} rooms of {}), {} messages in {:?} (aiming at {}/s), \
             subscribed after {:.1?}",
            load.clients,
            load.rooms,
            load.clients / load.rooms,
            self.messages,
            load.publish_for,
            load.rate,
            self.subscribed_after
        );
        println!(
            "{l}: {}; publishing took {:.1?}, drain {:.1?}",
            events.join(", "),
            self.published_in,
            self.drained_in
        );
        println!("{l}: unready {}", unready.join(", "));
        println!(
            "{l}: publisher: {} attempts, {} unavailable (503/502) for {} messages, {} \
             connection errors, {} retries answered duplicate, {} sent twice on purpose ({} \
             of them published anew in a new epoch); slowest message {:?} took {:.2?}",
            self.attempts,
            self.unavailable,
            self.delayed,
            self.connection_errors,
            self.duplicates,
            self.resent,
            self.republished,
            self.slowest.1,
            self.slowest.0,
        );
        let mut epochs: BTreeMap<usize, usize> = BTreeMap::new();
        for n in self.epochs.values() {
            *epochs.entry(*n).or_default() += 1;
        }
        println!(
            "{l}: channels by epochs answered {epochs:?}; {} offsets never answered",
            self.unanswered_offsets
        );
        println!(
            "{l}: clients: {} connections, {} publications taken, endings {:?}",
            self.connections, self.deliveries, self.endings
        );
        println!(
            "{l}: told recovered:false {} times on {} client channels; lost but told {} ({} \
             in the void epoch, {} in the new one before the client's position; and {} taken \
             again in a new epoch); {} taken though never acknowledged; {} acknowledged \
             reached no client",
            self.told,
            self.told_channels,
            self.lost_but_told,
            self.lost_in_old_epoch,
            self.missed_in_new_epoch,
            self.taken_in_another_epoch,
            self.taken_unacknowledged,
            self.delivered_to_nobody
        );
        if let Some((first, last, back)) = self.outages {
            println!(
                "{l}: connections lost from {first:.1?} to {last:.1?}, every client back by \
                 {back:.1?}"
            );
        }
        println!(
            "{l}: reconnect-to-recovered: {} recoveries, p50 {} ms, p99 {} ms, max {} ms",
            self.recoveries.len(),
            self.recovery(50.0).as_millis(),
            self.recovery(99.0).as_millis(),
            self.recoveries
                .last()
                .copied()
                .unwrap_or_default()
                .as_millis()
        );
        println!(
            "{l}: of which the last connect p50 {} ms, p99 {} ms; the subscribes p50 {} ms, \
             p99 {} ms",
            percentile(&self.connects, 50.0).as_millis(),
            percentile(&self.connects, 99.0).as_millis(),
            percentile(&self.subscribes, 50.0).as_millis(),
            percentile(&self.subscribes, 99.0).as_millis()
        );
        println!(
            "{l}: balancer relayed {:?}, {} backend refusals, {} dropped; {} failures; total \
             {:.1?}",
            self.relayed,
            self.refused,
            self.dropped,
            self.failures.len(),
            self.total
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
