//! The task that owns a Redis broker's subscription connection.
//!
//! It keeps the set of channels the hub asked for, updated in call order, and brings the
//! connection to that set with SUBSCRIBE and UNSUBSCRIBE rounds. It PINGs the idle
//! connection, reports health to [`Broker::ping`](crate::broker::Broker::ping), reconnects
//! with jittered backoff, and after a reconnection tells the sink to resync.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::Msg;
use ::redis::aio::PubSubSink;
use futures_util::future::{self, BoxFuture};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, timeout};

use super::commands::{Commands, ping_commands};
use super::reply::parse_envelope;
use crate::broker::Deliver;
use crate::broker::link::{Ack, DownOnExit, LinkState, Request};
use crate::error::BrokerError;
use crate::redis::backoff::Backoff;
use crate::redis::{Keys, RedisConfig};

/// How long the task waits for one SUBSCRIBE/UNSUBSCRIBE round before it gives the
/// connection up. Longer than the broker's `SUBSCRIBE_TIMEOUT`: resubscribing every channel
/// after a reconnection may take a while.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the idle subscription connection is probed. A connection whose peer vanished
/// without closing it (a host that lost power, a partition) never ends its stream, so only
/// an unanswered PING reveals it.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe may go unanswered.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// First delay before reconnecting.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The delay stops doubling here; with jitter one wait is at most 1.5 times this.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How one connection's lifetime ended.
enum Ended {
    /// Every broker handle is gone.
    Shutdown,
    /// The connection never became healthy (refused, timed out, SUBSCRIBE failed).
    Refused(String),
    /// A healthy connection broke.
    Lost(String),
}

/// One SUBSCRIBE/UNSUBSCRIBE exchange in flight.
struct Round {
    subscribe: Vec<String>,
    unsubscribe: Vec<String>,
    /// Subscribers whose request was applied before the round started.
    acks: Vec<Ack>,
    confirmed: BoxFuture<'static, Result<(), String>>,
}

/// The background task that owns the subscription connection.
///
/// It moves between three states: connecting (one attempt), connected (the first round
/// resubscribes everything; once it is confirmed the broker is healthy), and backing off
/// after a failure. Requests are applied to `wanted` in every state, so call order is kept
/// whether or not Redis is there.
pub(super) struct Subscriber {
    redis: RedisConfig,
    /// The broker's command connection, checked before each new connection reports
    /// healthy.
    commands: Commands,
    keys: Keys,
    sink: Arc<dyn Deliver>,
    inbox: mpsc::UnboundedReceiver<Request>,
    state: Arc<LinkState>,
    /// The channels the hub wants, as its calls left them.
    wanted: HashSet<String>,
    /// `wanted` changed since the last round started.
    dirty: bool,
    /// Subscribers waiting for the next round.
    waiting: Vec<Ack>,
}

impl Subscriber {
    /// Starts the task for a broker whose handles send their requests to `inbox` and read
    /// `state`; it stops when every sender of `inbox` is gone.
    pub(super) fn spawn(
        redis: RedisConfig,
        commands: Commands,
        sink: Arc<dyn Deliver>,
        inbox: mpsc::UnboundedReceiver<Request>,
        state: Arc<LinkState>,
    ) {
        let task = Self {
            keys: redis.keys().clone(),
            redis,
            commands,
            sink,
            inbox,
            state,
            wanted: HashSet::new(),
            dirty: false,
            waiting: Vec::new(),
        };
        tokio::spawn(task.run());
    }

    async fn run(mut self) {
        let _down = DownOnExit(self.state.clone());
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        // Set after a loss, until the next healthy connection: that one counts as a
        // reconnection.
        let mut recovering = false;
        let mut failed_attempts = 0_u32;
        loop {
            match self.connection(recovering).await {
                Ended::Shutdown => return,
                Ended::Lost(reason) => {
                    self.state.healthy.send_replace(false);
                    tracing::warn!(%reason, "redis broker: subscription connection lost, reconnecting");
                    backoff.reset();
                    recovering = true;
                    failed_attempts = 0;
                }
                Ended::Refused(reason) => {
                    failed_attempts += 1;
                    // Every failure during a long outage would flood the log.
                    if failed_attempts == 1 {
                        tracing::warn!(%reason, "redis broker: cannot connect, retrying");
                    } else {
                        tracing::debug!(%reason, failed_attempts, "redis broker: still cannot connect");
                    }
                }
            }
            self.fail_waiting();
            if self.back_off(backoff.next()).await {
                return;
            }
        }
    }

    /// Opens a connection, brings it to `wanted`, and serves it until it breaks.
    async fn connection(&mut self, recovering: bool) -> Ended {
        let redis = self.redis.clone();
        let connecting = async move { redis.pubsub().await };
        tokio::pin!(connecting);
        let (pubsub, server) = loop {
            tokio::select! {
                connected = &mut connecting => match connected {
                    Ok(connected) => break connected,
                    Err(e) => return Ended::Refused(e.to_string()),
                },
                request = self.inbox.recv() => match request {
                    Some(request) => self.apply(request),
                    None => return Ended::Shutdown,
                },
            }
        };
        // The stream ends when the connection does: redis-rs drops its sender when the
        // socket closes or fails, so `None` is the drop signal.
        let (sink, mut messages) = pubsub.split();
        let mut subscribed = HashSet::new();
        let mut healthy = false;
        let ended = |healthy: bool, reason: String| {
            if healthy {
                Ended::Lost(reason)
            } else {
                Ended::Refused(reason)
            }
        };
        let mut round: Option<Round> = None;
        let mut probe: Option<BoxFuture<'static, Result<(), String>>> = None;
        let mut probes = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        probes.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if round.is_none() && (!healthy || self.dirty || !self.waiting.is_empty()) {
                // The first round of a connection also checks the command connection.
                round = Some(self.start_round(&sink, &subscribed, !healthy));
            }
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => self.deliver(&message),
                    None => return ended(healthy, "connection closed".to_owned()),
                },
                request = self.inbox.recv() => match request {
                    Some(request) => self.apply(request),
                    None => return Ended::Shutdown,
                },
                confirmed = async { (&mut round.as_mut().unwrap().confirmed).await }, if round.is_some() => {
                    let Round { subscribe, unsubscribe, acks, .. } = round.take().unwrap();
                    if let Err(reason) = confirmed {
                        for ack in acks {
                            let _ = ack.send(Err(BrokerError::unavailable("redis", reason.clone())));
                        }
                        return ended(healthy, reason);
                    }
                    for channel in &unsubscribe {
                        subscribed.remove(channel);
                    }
                    subscribed.extend(subscribe);
                    for ack in acks {
                        let _ = ack.send(Ok(()));
                    }
                    if !healthy {
                        healthy = true;
                        self.state.healthy.send_replace(true);
                        if recovering {
                            self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(channels = subscribed.len(), "redis broker: reconnected and resubscribed");
                            // Whatever was published while we were away never reached us.
                            self.sink.resync();
                        } else {
                            tracing::info!(channels = subscribed.len(), "redis broker: connected");
                        }
                    }
                },
                _ = probes.tick(), if probe.is_none() => {
                    probe = Some(probe_connection(sink.clone(), self.redis.clone(), server.clone()));
                },
                answered = async { probe.as_mut().unwrap().await }, if probe.is_some() => {
                    probe = None;
                    if let Err(reason) = answered {
                        // The command connection may talk to the same server; if that one
                        // was demoted, a bare PUBLISH there would still be taken.
                        self.commands.forget();
                        return ended(healthy, reason);
                    }
                },
            }
        }
    }

    fn apply(&mut self, request: Request) {
        match request {
            Request::Subscribe { channel, done } => {
                self.dirty |= self.wanted.insert(channel);
                self.waiting.push(done);
            }
            Request::Unsubscribe { channel } => {
                self.dirty |= self.wanted.remove(&channel);
            }
        }
    }

    /// Sends what it takes to bring `subscribed` to `wanted`; everything missing goes in
    /// one SUBSCRIBE, which after a reconnection is every wanted channel.
    ///
    /// With `check_commands`, a confirmed round then PINGs over the command connection: if
    /// Redis went away, that connection is dead too, and it is replaced only after
    /// a command failed on it. Paying for that here, before the broker reports healthy,
    /// keeps the failure away from the first publish, which could not always be retried.
    /// The round does not fail if the PING does: [`Broker::ping`] reports that half.
    fn start_round(
        &mut self,
        sink: &PubSubSink,
        subscribed: &HashSet<String>,
        check_commands: bool,
    ) -> Round {
        self.dirty = false;
        let subscribe: Vec<String> = self.wanted.difference(subscribed).cloned().collect();
        let unsubscribe: Vec<String> = subscribed.difference(&self.wanted).cloned().collect();
        let to_redis = |channels: &[String]| -> Vec<String> {
            channels.iter().map(|c| self.keys.channel(c)).collect()
        };
        let (on, off) = (to_redis(&subscribe), to_redis(&unsubscribe));
        let (mut sink_on, mut sink_off) = (sink.clone(), sink.clone());
        let commands = check_commands.then(|| self.commands.clone());
        let confirmed = async move {
            let exchange = future::try_join(
                async {
                    match on.is_empty() {
                        true => Ok(()),
                        false => sink_on.subscribe(&on).await,
                    }
                },
                async {
                    match off.is_empty() {
                        true => Ok(()),
                        false => sink_off.unsubscribe(&off).await,
                    }
                },
            );
            let exchanged = timeout(ROUND_TIMEOUT, exchange).await;
            if let (Ok(Ok(_)), Some(commands)) = (&exchanged, commands)
                && let Err(e) = ping_commands(&commands).await
            {
                tracing::debug!(error = %e, "redis broker: the command connection is not ready");
            }
            match exchanged {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("SUBSCRIBE failed: {e}")),
                Err(_) => Err(format!("SUBSCRIBE not confirmed within {ROUND_TIMEOUT:?}")),
            }
        }
        .boxed();
        Round {
            subscribe,
            unsubscribe,
            acks: std::mem::take(&mut self.waiting),
            confirmed,
        }
    }

    fn deliver(&self, message: &Msg) {
        deliver(
            &self.keys,
            &self.sink,
            message.get_channel_name(),
            message.get_payload_bytes(),
            |channel| self.wanted.contains(channel),
        );
    }

    fn fail_waiting(&mut self) {
        for ack in self.waiting.drain(..) {
            let _ = ack.send(Err(BrokerError::unavailable(
                "redis",
                "unreachable, reconnecting",
            )));
        }
    }

    /// Waits `delay`, applying requests meanwhile; subscribers fail at once since Redis is
    /// known to be down. Returns whether the broker was dropped.
    async fn back_off(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return false,
                request = self.inbox.recv() => match request {
                    Some(request) => {
                        self.apply(request);
                        self.fail_waiting();
                    }
                    None => return true,
                },
            }
        }
    }
}

/// Hands a message that arrived on the Redis channel `redis_channel` to `sink`, if it is
/// one of ours and still `wanted`.
pub(super) fn deliver(
    keys: &Keys,
    sink: &Arc<dyn Deliver>,
    redis_channel: &str,
    payload: &[u8],
    wanted: impl Fn(&str) -> bool,
) {
    let Some(channel) = keys.channel_of(redis_channel) else {
        tracing::debug!(
            channel = redis_channel,
            "redis broker: message on a foreign channel"
        );
        return;
    };
    // Messages already on the wire when an UNSUBSCRIBE went out still arrive.
    if !wanted(channel) {
        return;
    }
    match std::str::from_utf8(payload).ok().and_then(parse_envelope) {
        Some(publication) => {
            sink.deliver(channel, publication);
        }
        None => tracing::warn!(channel, "redis broker: dropped a malformed payload"),
    }
}

/// Checks that the subscription connection to `server` still serves: it answers a PING,
/// and, under Sentinel, `server` is still the primary. Sentinel does not close the
/// connections of a primary it demotes, so without the second check a node would stay
/// subscribed to a server that no publish reaches any more, with its health green.
fn probe_connection(
    mut sink: PubSubSink,
    redis: RedisConfig,
    server: String,
) -> BoxFuture<'static, Result<(), String>> {
    async move {
        match timeout(PING_TIMEOUT, sink.ping::<::redis::Value>()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("PING failed: {e}")),
            Err(_) => return Err(format!("no PING reply within {PING_TIMEOUT:?}")),
        }
        match redis.primary().await {
            Ok(Some(primary)) if primary != server => {
                Err(format!("{server} is no longer the primary ({primary} is)"))
            }
            Ok(_) => Ok(()),
            // The connection itself works: keep it while the Sentinels cannot be asked.
            Err(e) => {
                tracing::debug!(error = %e, "redis broker: cannot ask the Sentinels for the primary");
                Ok(())
            }
        }
    }
    .boxed()
}
