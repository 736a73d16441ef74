//! The task that owns a NATS broker's subscriptions and health.
//!
//! One core NATS subscription per channel some local socket needs, on the live subject
//! of that channel only (never a wildcard), each read by a small task of its own that
//! hands what arrives to the sink and answers probes (see `census`). Requests are applied
//! in call order; a subscribe is confirmed once a round trip to the server has come back
//! after the SUB, so messages published afterwards will arrive.
//!
//! The client reconnects by itself (async-nats) and sends SUB again for every
//! subscription, but core NATS kept nothing of what was published meanwhile. So after a
//! reconnection the task makes a round trip (the SUBs went out before it, so they are in
//! place), makes sure the streams exist (a nats-server that lost its store has none),
//! forgets the cached channel positions, and only then reports healthy and tells the sink
//! to resync, so that clients recover what they missed from the history. A subscription
//! that overflowed its buffer (a slow consumer: async-nats dropped messages) asks for a
//! resync too.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{Client, Event};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};

use super::headers::{self, Live};
use super::history::History;
use super::order::Order;
use super::subjects::Subjects;
use crate::broker::Deliver;
use crate::broker::link::{DownOnExit, LinkState, Request};
use crate::error::BrokerError;

/// How long a subscribe waits for the server to confirm.
pub(super) const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a (re)connection may take to get ready (round trip, streams) before it is tried
/// again, and how long to wait before that.
const BRING_UP_TIMEOUT: Duration = Duration::from_secs(2);
const BRING_UP_RETRY: Duration = Duration::from_millis(250);
/// async-nats reports a slow consumer once per message it drops: one resync per this
/// long is enough (each one closes the node's v1 sockets, which then recover).
const SLOW_RESYNC_EVERY: Duration = Duration::from_secs(1);

/// The task reading one channel's subscription; dropping it ends the task, which drops
/// the subscription (async-nats then sends UNSUB).
struct Forwarder(JoinHandle<()>);

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) struct Subscriber {
    client: Client,
    history: Arc<History>,
    subjects: Subjects,
    sink: Arc<dyn Deliver>,
    inbox: mpsc::UnboundedReceiver<Request>,
    events: mpsc::UnboundedReceiver<Event>,
    state: Arc<LinkState>,
    /// The channels the hub wants, each with its subscription.
    subscriptions: HashMap<String, Forwarder>,
}

impl Subscriber {
    pub(super) fn spawn(
        client: Client,
        history: Arc<History>,
        subjects: Subjects,
        sink: Arc<dyn Deliver>,
        inbox: mpsc::UnboundedReceiver<Request>,
        events: mpsc::UnboundedReceiver<Event>,
        state: Arc<LinkState>,
    ) {
        let task = Self {
            client,
            history,
            subjects,
            sink,
            inbox,
            events,
            state,
            subscriptions: HashMap::new(),
        };
        tokio::spawn(task.run());
    }

    async fn run(mut self) {
        let _down = DownOnExit(self.state.clone());
        let mut bring_up: Option<BoxFuture<'static, Result<(), BrokerError>>> = None;
        let mut retry: Option<Instant> = None;
        let mut connected = false;
        // Set once a connection was lost: the next healthy one is a reconnection.
        let mut recovering = false;
        let mut slow_resync: Option<Instant> = None;
        loop {
            tokio::select! {
                request = self.inbox.recv() => match request {
                    Some(request) => self.apply(request).await,
                    None => return,
                },
                event = self.events.recv() => match event {
                    Some(Event::Connected) => {
                        connected = true;
                        retry = None;
                        bring_up = Some(self.bring_up());
                    }
                    Some(Event::Disconnected) => {
                        connected = false;
                        bring_up = None;
                        retry = None;
                        recovering = true;
                        if self.state.healthy.send_replace(false) {
                            tracing::warn!("nats broker: disconnected, reconnecting");
                        }
                    }
                    Some(Event::SlowConsumer(_)) => {
                        if slow_resync.is_none_or(|at| at.elapsed() >= SLOW_RESYNC_EVERY) {
                            slow_resync = Some(Instant::now());
                            tracing::warn!("nats broker: a subscription overflowed and dropped messages; resyncing");
                            self.sink.resync();
                        }
                    }
                    Some(event) => tracing::debug!(%event, "nats broker: client event"),
                    // The client is gone (closed): nothing will come back.
                    None => return,
                },
                ready = async { bring_up.as_mut().unwrap().await }, if bring_up.is_some() => {
                    bring_up = None;
                    match ready {
                        Ok(()) => {
                            self.state.healthy.send_replace(true);
                            if recovering {
                                recovering = false;
                                self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(channels = self.subscriptions.len(), "nats broker: reconnected and resubscribed");
                                // Whatever was published while we were away never reached us.
                                self.sink.resync();
                            } else {
                                tracing::info!("nats broker: connected");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "nats broker: connected but not ready, retrying");
                            retry = Some(Instant::now() + BRING_UP_RETRY);
                        }
                    }
                },
                () = async { sleep_until(retry.unwrap()).await }, if retry.is_some() && connected => {
                    retry = None;
                    bring_up = Some(self.bring_up());
                },
            }
        }
    }

    /// Makes a fresh connection ready: the resubscriptions processed, the streams in
    /// place, no stale channel positions.
    fn bring_up(&self) -> BoxFuture<'static, Result<(), BrokerError>> {
        let (client, history) = (self.client.clone(), self.history.clone());
        async move {
            let ready = async {
                super::round_trip(&client).await?;
                history.ensure_streams().await?;
                history.forget();
                Ok(())
            };
            timeout(BRING_UP_TIMEOUT, ready).await.unwrap_or_else(|_| {
                Err(BrokerError::unavailable(
                    "nats",
                    format!("not ready within {BRING_UP_TIMEOUT:?}"),
                ))
            })
        }
        .boxed()
    }

    /// Applies `request` and every request queued behind it, then confirms the
    /// subscribes among them with one round trip.
    async fn apply(&mut self, request: Request) {
        let mut waiting = Vec::new();
        let mut next = Some(request);
        while let Some(request) = next {
            match request {
                Request::Subscribe { channel, done } => match self.subscribe(channel).await {
                    Ok(()) => waiting.push(done),
                    Err(e) => {
                        let _ = done.send(Err(e));
                    }
                },
                Request::Unsubscribe { channel } => {
                    self.subscriptions.remove(&channel);
                }
            }
            next = self.inbox.try_recv().ok();
        }
        if waiting.is_empty() {
            return;
        }
        let confirmed = if *self.state.healthy.borrow() {
            match timeout(SUBSCRIBE_TIMEOUT, super::round_trip(&self.client)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("not confirmed within {SUBSCRIBE_TIMEOUT:?}")),
            }
        } else {
            // Kept: the subscription is sent again once connected.
            Err("unreachable, reconnecting".to_owned())
        };
        for done in waiting {
            let _ = done.send(
                confirmed
                    .clone()
                    .map_err(|e| BrokerError::unavailable("nats subscribe", e)),
            );
        }
    }

    async fn subscribe(&mut self, channel: String) -> Result<(), BrokerError> {
        if self.subscriptions.contains_key(&channel) {
            return Ok(());
        }
        let subscription = self
            .client
            .subscribe(self.subjects.live(&channel))
            .await
            .map_err(|e| BrokerError::unavailable("nats subscribe", e))?;
        let task = tokio::spawn(forward(
            channel.clone(),
            subscription,
            self.client.clone(),
            self.sink.clone(),
        ));
        self.subscriptions.insert(channel, Forwarder(task));
        Ok(())
    }
}

/// Hands what arrives on `channel` to the sink, in offset order (see `order`), and
/// answers probes.
async fn forward(
    channel: String,
    mut subscription: async_nats::Subscriber,
    client: Client,
    sink: Arc<dyn Deliver>,
) {
    let mut order = Order::default();
    loop {
        let until = order.until();
        let released = tokio::select! {
            message = subscription.next() => {
                let Some(message) = message else { return };
                match headers::live(message.headers.as_ref(), message.payload) {
                    Some(Live::Publication(publication)) => order.take(publication, Instant::now()),
                    Some(Live::Probe) => {
                        if let Some(reply) = message.reply {
                            // Only the publisher's count suffers if this fails.
                            let _ = client.publish(reply, Bytes::new()).await;
                        }
                        continue;
                    }
                    Some(Live::Start) => continue,
                    None => {
                        tracing::warn!(channel, "nats broker: dropped a malformed message");
                        continue;
                    }
                }
            }
            () = async { sleep_until(until.unwrap()).await }, if until.is_some() => order.expire(),
        };
        for publication in released {
            sink.deliver(&channel, publication);
        }
    }
}
