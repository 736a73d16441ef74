//! The WebSocket endpoints, `GET /websocket/{id}` (the seed's protocol) and `GET /ws`
//! (protocol v1), and the one task per connection that drives both directions with
//! `select!`, so that every way a connection can end (client close, idle timeout, slow
//! consumer, server shutdown, oversized frame, credentials ending, message rate) is visible
//! in one place. Who may connect is [`super::admission`]'s; what a frame means is the
//! protocol's ([`super::seed`], [`super::v1`]), answered as a [`Plan`] this loop carries out.
//!
//! Just over 700 lines with its tests, and one subject: a socket's life from the upgrade to
//! the close, whose loop, deadlines ([`LoopTimers`], which the Pusher loop shares) and close
//! handling change together. Deliveries the hub writes straight to the socket
//! ([`crate::wire`]) never pass through this loop; it only flushes the rest of one the kernel
//! took in part.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::Extension;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::future::{self, BoxFuture};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::time::{Instant, Sleep, sleep_until, timeout, timeout_at};
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use super::admission::{
    ConnectQuery, Credentials, admit, check_credentials, client_address, first_credentials_check,
    use_session,
};
use super::hooked::{self, next_look};
use super::plan::Plan;
use super::seed;
use super::state::Gateway;
use super::upgrade::{Socket, Upgrade};
use super::v1::{self, Step, V1};
use crate::error::ApiError;
use crate::hooks::{Denial, Transport};
use crate::hub::{
    Connection, Delivery, Outbound, Render, Straight, delivery_latency, session_channel,
};
use crate::limits::MessageRate;
use crate::protocol::{FrameError, UserId, close};

/// Publishes one client may have under way at once.
const MAX_PUBLISHES_IN_FLIGHT: usize = 64;

/// How long a close frame may take to go out before the connection is dropped anyway.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// `GET /websocket/{id}`.
pub(crate) async fn upgrade(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    Query(query): Query<ConnectQuery>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ws: Result<Upgrade, ApiError>,
) -> Result<Response, ApiError> {
    let ws = ws?;
    let user: UserId = id.parse()?;
    let (user, credentials) = admit(&gateway, Some(user), &query, peer, &headers).await?;
    let limit = gateway.config.socket.max_message_size;
    Ok(accept(ws, limit, move |socket| {
        run(socket, user, credentials, gateway, Protocol::Seed)
    }))
}

/// `GET /ws`: protocol v1. The user comes from the credentials (`?user=` in open mode).
pub(crate) async fn upgrade_v1(
    State(gateway): State<Gateway>,
    Query(query): Query<ConnectQuery>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ws: Result<Upgrade, ApiError>,
) -> Result<Response, ApiError> {
    let ws = ws?;
    let requested = query
        .user
        .as_deref()
        .map(str::parse::<UserId>)
        .transpose()?;
    let address = peer
        .as_ref()
        .map(|p| client_address(p.0.0, &headers, &gateway));
    let (user, credentials) = admit(&gateway, requested, &query, peer, &headers).await?;
    let limit = gateway.config.socket.max_message_size;
    let (user, hooked) =
        match hooked::connect(&gateway, &user, Transport::WebSocket, &headers).await {
            Ok(Some((user, hooked))) => (user, Some(hooked)),
            Ok(None) => (user, None),
            // Refused with a close code, which a browser sees (an HTTP status it would not).
            Err(denial) => return Ok(accept(ws, limit, move |socket| refuse(socket, denial))),
        };
    Ok(accept(ws, limit, move |socket| {
        let v1 = V1::new(user.clone(), &credentials)
            .with_hooks(hooked)
            .with_address(address);
        let protocol = Protocol::V1(v1);
        run(socket, user, credentials, gateway, protocol)
    }))
}

/// Closes a socket the connect hook refused, as v1 closes any: `disconnect`, then the close.
async fn refuse(mut socket: Socket, denial: Denial) {
    let said = (denial.close_code(), denial.close_reason());
    let frame = crate::protocol::v1::Reply::disconnect(said);
    let _ = timeout(CLOSE_GRACE, socket.send(Message::Text(frame.into()))).await;
    let _ = send_close(&mut socket, said).await;
}

pub(super) fn accept<F, Fut>(ws: Upgrade, limit: usize, then: F) -> Response
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        // A small read buffer: every idle connection holds one (4 KiB made 9.8 KiB per idle
        // connection, 1 KiB 6.8, 512 bytes takes 0.5 KiB more off; docs/benchmarks.md).
        // Larger frames still arrive whole: the buffer grows for them, and tungstenite reads
        // them in pieces of this size. What clients send is small (pongs, subscribe and
        // publish frames of a few hundred bytes).
        .read_buffer_size(512)
        .write_buffer_size(0);
    ws.accept(config, then)
}

/// Which wire protocol a connection speaks.
enum Protocol {
    /// `/websocket/{id}`: every message for the user as a raw text frame.
    Seed,
    /// `/ws`: JSON frames with channels and offsets.
    V1(V1),
}

impl Protocol {
    /// The connection's hook state (v1 on a gateway with hooks).
    fn hooked(&self) -> Option<&hooked::Hooked> {
        match self {
            Self::Seed => None,
            Self::V1(v1) => v1.hooked_ref(),
        }
    }

    fn hooked_mut(&mut self) -> Option<&mut hooked::Hooked> {
        match self {
            Self::Seed => None,
            Self::V1(v1) => v1.hooked(),
        }
    }

    /// The frame this connection sends for `delivery` (`None`: none), or the close a
    /// delivery it cannot take calls for (v1: a gap in a channel's offsets). Records the
    /// delivery latency metric for a frame.
    fn frame(&mut self, delivery: &Delivery) -> Result<Option<Utf8Bytes>, (u16, &'static str)> {
        let frame = match self {
            Self::Seed => Some(delivery.seed_frame()),
            Self::V1(v1) => v1.outbound(delivery)?,
        };
        if frame.is_some() {
            delivery_latency().record(delivery.age().as_secs_f64());
        }
        Ok(frame)
    }

    /// The error frame for a frame refused whatever it said (a binary one).
    fn refusal(&self, e: &FrameError) -> String {
        match self {
            Self::Seed => seed::refusal(e),
            Self::V1(_) => v1::refusal(None, e),
        }
    }
}

// Not an `async fn`: those move their arguments into fresh locals inside the future while
// the arguments themselves stay reserved, and with the WebSocket (368 bytes) that cost
// ~550 bytes per idle socket. An `async move` block uses what it captured in place.
#[allow(clippy::manual_async_fn)]
fn run(
    mut socket: Socket,
    user: UserId,
    mut credentials: Credentials,
    gateway: Gateway,
    mut protocol: Protocol,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut connection = gateway.hub.connect(&user);
        // Deliveries may be written straight to its wire, on the channels it says.
        if let Some(wire) = socket.get_ref().wire() {
            let render = match protocol {
                Protocol::Seed => Render::Seed,
                Protocol::V1(_) => Render::V1,
            };
            connection.attach(wire.clone(), render);
        }
        // The seed protocol is the user's personal channel; v1 clients choose their channels.
        let mut joined = match protocol {
            Protocol::Seed => connection.join(&user.channel()).await,
            Protocol::V1(_) => Ok(()),
        };
        if let (Ok(()), Credentials::Session { id, .. }) = (&joined, &credentials) {
            joined = connection.join(&session_channel(id)).await;
        }
        if let Err(e) = joined {
            tracing::warn!(error = %e, "socket refused: cannot subscribe");
            let _ = send_close(&mut socket, close::BROKER_UNAVAILABLE).await;
            return;
        }
        let kind = match protocol {
            Protocol::Seed => "seed",
            Protocol::V1(_) => "v1",
        };
        let node = gateway.hub.node_id().to_owned();
        let opened = std::time::Instant::now();
        tracing::info!(%node, user = %user, protocol = kind, "socket open");
        // The server API's reason, when it disconnected the socket.
        let mut told = None;
        let reason = drive(
            &mut socket,
            &mut connection,
            &mut protocol,
            &user,
            &mut credentials,
            &gateway,
            &mut told,
        )
        .await;
        // Counted before the connection leaves the hub: once a socket is off the online count
        // its disconnect is in the metrics (a test that waited for the count read them too
        // early under load).
        metrics::counter!("sessionhub_disconnects_total", "reason" => reason.1).increment(1);
        drop(connection);
        tracing::info!(
            %node,
            user = %user,
            protocol = kind,
            code = reason.0,
            reason = reason.1,
            seconds = opened.elapsed().as_secs(),
            "socket closed"
        );
        if let Protocol::V1(v1) = &mut protocol
            && let Some(hooked) = v1.hooked()
        {
            hooked.disconnected(reason.0, told.as_deref().unwrap_or(reason.1));
        }
        if reason.0 != 0 {
            let said = (reason.0, told.as_deref().unwrap_or(reason.1));
            if let Protocol::V1(_) = protocol {
                let frame = crate::protocol::v1::Reply::disconnect(said);
                let _ = timeout(CLOSE_GRACE, socket.send(Message::Text(frame.into()))).await;
            }
            let _ = send_close(&mut socket, said).await;
            if client_at_fault(reason.0) {
                linger(&mut socket).await;
            }
        }
    }
}

/// Runs the connection until it ends; returns the close code to send (0: none, the client
/// closed or vanished). A disconnect by the server API leaves its reason in `told`.
async fn drive(
    socket: &mut Socket,
    connection: &mut Connection,
    protocol: &mut Protocol,
    user: &UserId,
    credentials: &mut Credentials,
    gateway: &Gateway,
    told: &mut Option<String>,
) -> (u16, &'static str) {
    let config = &gateway.config.socket;
    // Boxed: inline, the joins' futures (over 1 KiB) would be room in every idle socket.
    if !Box::pin(greet(
        socket,
        connection,
        protocol,
        user,
        credentials,
        gateway,
    ))
    .await
    {
        return (0, "gone");
    }
    // After the greeting and the `subscribed` replies, which come first.
    match protocol {
        Protocol::Seed => connection.deliver(&user.channel(), Straight::Yes),
        Protocol::V1(v1) => v1.deliver_straight(connection),
    }
    let ping_every = config
        .ping_interval
        .min(config.idle_timeout / 2)
        .max(Duration::from_millis(10));
    let mut timers = LoopTimers::new(ping_every, config.idle_timeout);
    let mut credentials_check = first_credentials_check(credentials, gateway);
    // Admitting the socket loaded its session, which slid the session's expiry.
    let mut session_used = Instant::now();
    let rate = MessageRate::new(gateway.security().limits.messages_per_sec);
    // Publishes from this client under way, their replies sent in the order of the frames.
    let mut in_flight: FuturesOrdered<BoxFuture<'static, Vec<String>>> = FuturesOrdered::new();
    // The timer and the cancellation waits live as long as the loop and are moved only when
    // their deadline changes. Made afresh in every `select!`, each message registered two
    // timers and two waits and took them out again: a quarter of a node's CPU per delivery
    // at fan-out 100 (perf; docs/benchmarks.md, "Cost per unit of work").
    let shutting_down = gateway.shutdown.clone().cancelled_owned();
    let slow_verdict = connection.slow().clone().cancelled_owned();
    let timer = sleep_until(timers.deadline(next_look(credentials_check, protocol.hooked())));
    tokio::pin!(shutting_down, slow_verdict, timer);
    // They stay in the connection's future through every await of the loop, so the rare
    // awaits below (credentials, hooks, channel changes: futures of several hundred bytes)
    // are boxed, allocated only while they run: inline, the future would reserve room for
    // the largest of them beside these three in every idle socket.
    loop {
        connection.idle();
        let look_at = next_look(credentials_check, protocol.hooked());
        timers.arm(timer.as_mut(), look_at);
        tokio::select! {
            biased;
            () = &mut shutting_down, if timers.drain_turn.is_none() => {
                timers.drain_turn = Some(gateway.drain_turn(connection.id()));
            }
            () = &mut slow_verdict => return close::SLOW_CONSUMER,
            () = &mut timer => match timers.due(timer.as_mut(), look_at) {
                Due::Restart => return close::SERVICE_RESTART,
                Due::Quiet => return close::IDLE_TIMEOUT,
                Due::Ping => {
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        return (0, "gone");
                    }
                }
                Due::Look => {
                    if let Err(denial) = Box::pin(hooked::look_if_due(protocol.hooked_mut())).await {
                        *told = Some(denial.close_reason().to_owned());
                        return (denial.close_code(), "hook");
                    }
                    if Instant::now() < credentials_check {
                        continue;
                    }
                    match Box::pin(check_credentials(credentials, gateway)).await {
                        Some(next) => credentials_check = next,
                        None if matches!(credentials, Credentials::Token { .. }) => return close::TOKEN_EXPIRED,
                        None => return close::SESSION_ENDED,
                    }
                }
                Due::Nothing => {}
            },
            outbound = connection.recv() => {
                if let Outbound::Flush = outbound {
                    tokio::select! {
                        biased;
                        flushed = socket.flush() => if flushed.is_err() { return (0, "gone") },
                        () = &mut slow_verdict => return close::SLOW_CONSUMER,
                        () = &mut shutting_down, if timers.drain_turn.is_none() => return close::SERVICE_RESTART,
                    }
                    continue;
                }
                if let Outbound::Subscribe(_) | Outbound::Unsubscribe(_) = outbound {
                    // Seed sockets have their one channel by protocol.
                    let Protocol::V1(v1) = &mut *protocol else { continue };
                    let mut replies = settle(&mut in_flight).await;
                    replies.extend(Box::pin(v1.by_server(&outbound, connection, credentials, gateway)).await);
                    for reply in replies {
                        if socket.send(Message::Text(reply.into())).await.is_err() {
                            return (0, "gone");
                        }
                    }
                    v1.deliver_straight(connection);
                    continue;
                }
                let text = match (outbound, &mut *protocol) {
                    (Outbound::Message(delivery), protocol) => match protocol.frame(&delivery) {
                        Ok(Some(frame)) => frame,
                        Ok(None) => continue,
                        Err(close) => return close,
                    },
                    // Seed clients cannot recover; they keep receiving what comes.
                    (Outbound::Resync, Protocol::Seed) => continue,
                    (Outbound::Resync, Protocol::V1(_)) => return close::INSUFFICIENT_STATE,
                    (Outbound::Close(code, reason), _) => return (code, reason),
                    (Outbound::Disconnect(disconnect), _) => {
                        *told = Some(disconnect.reason.clone());
                        return disconnect.code;
                    }
                    // Sockets refresh with a frame; this is for SSE streams.
                    (Outbound::Subscribe(_) | Outbound::Unsubscribe(_) | Outbound::Refresh(_) | Outbound::Flush, _) => continue,
                };
                // A send that blocks (the client stopped reading) must not outlive a
                // slow-consumer verdict or a shutdown.
                tokio::select! {
                    biased;
                    sent = socket.send(Message::Text(text)) => if sent.is_err() { return (0, "gone") },
                    () = &mut slow_verdict => return close::SLOW_CONSUMER,
                    // Stuck on a client that stopped reading when the drain began: it
                    // would not read its turn's close either.
                    () = &mut shutting_down, if timers.drain_turn.is_none() => return close::SERVICE_RESTART,
                }
            }
            Some(replies) = in_flight.next(), if !in_flight.is_empty() => {
                for reply in replies {
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        return (0, "gone");
                    }
                }
            }
            inbound = socket.next() => {
                let mut changed = false;
                timers.quiet = Instant::now() + config.idle_timeout;
                if let Some(Ok(Message::Text(_) | Message::Binary(_))) = &inbound {
                    metrics::counter!("sessionhub_client_frames_total").increment(1);
                    // A client that talks is using its session, as a request would: slide it
                    // (at most every half idle timeout), or end if it is gone.
                    if let Credentials::Session { id, ends } = credentials
                        && session_used.elapsed() >= gateway.sessions.idle_timeout / 2
                    {
                        session_used = Instant::now();
                        match Box::pin(use_session(id, *ends, user, gateway)).await {
                            Some(next) => credentials_check = next,
                            None => return close::SESSION_ENDED,
                        }
                    }
                }
                let plan = match (inbound, &mut *protocol) {
                    (None | Some(Ok(Message::Close(_))), _) => return (0, "client closed"),
                    (Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))), _) => continue,
                    (Some(Err(e)), _) => return read_error(e),
                    (Some(Ok(_)), _) if !rate.check() => return close::RATE_LIMITED,
                    (Some(Ok(Message::Text(text))), Protocol::Seed) => seed::plan(&text, gateway),
                    (Some(Ok(Message::Text(text))), Protocol::V1(v1)) => match v1.plan(&text, gateway) {
                        Step::Plan(plan) => plan,
                        Step::Change(change) => {
                            changed = true;
                            let mut replies = settle(&mut in_flight).await;
                            replies.extend(Box::pin(v1.exclusive(change, connection, credentials, gateway)).await);
                            Plan::Reply(replies)
                        }
                        Step::Refresh { token, id } => {
                            let mut replies = settle(&mut in_flight).await;
                            replies.push(Box::pin(v1.refresh(id, &token, credentials, gateway)).await);
                            // Moves the expiry (a refused refresh left it where it was).
                            if let Credentials::Token { expires, .. } = credentials {
                                credentials_check = *expires;
                            }
                            Plan::Reply(replies)
                        }
                    },
                    (Some(Ok(Message::Binary(_))), protocol) => Plan::Reply(vec![protocol.refusal(&FrameError::Binary)]),
                };
                let replies = match plan {
                    Plan::Reply(replies) if in_flight.is_empty() => replies,
                    Plan::Reply(replies) => {
                        in_flight.push_back(future::ready(replies).boxed());
                        continue;
                    }
                    Plan::Later(publish) => {
                        // Bounded: a client that publishes faster than the broker answers
                        // waits for its oldest publish instead of piling up more.
                        let replies = if in_flight.len() >= MAX_PUBLISHES_IN_FLIGHT {
                            in_flight.next().await.unwrap_or_default()
                        } else {
                            Vec::new()
                        };
                        in_flight.push_back(publish);
                        replies
                    }
                };
                for reply in replies {
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        return (0, "gone");
                    }
                }
                if changed && let Protocol::V1(v1) = protocol {
                    v1.deliver_straight(connection);
                }
            }
        }
    }
}

/// The socket loop's deadlines, which share one timer: the next WebSocket ping, the end of
/// the client's allowed silence, the connection's turn in a drain, and the loop's own look
/// (credentials, hooks). Separate, they were three timers in every connection (an
/// `Interval` keeps its `Sleep` on the heap besides): more bytes per idle socket, and more
/// timers for every `select!` to poll per message.
pub(super) struct LoopTimers {
    ping_every: Duration,
    next_ping: Instant,
    /// When the client has been silent too long; everything it sends moves this.
    pub(super) quiet: Instant,
    /// In a drain, the moment this connection closes; until then it keeps delivering.
    pub(super) drain_turn: Option<Instant>,
}

/// What the loop's timer found due, the most pressing first.
pub(super) enum Due {
    /// The connection's turn in a drain came.
    Restart,
    /// The client was silent past [`LoopTimers::quiet`].
    Quiet,
    /// The loop's look (credentials, hooks).
    Look,
    /// A ping to send; the next is a period from now.
    Ping,
    /// Nothing yet (the timer is armed again).
    Nothing,
}

impl LoopTimers {
    /// Pings every `ping_every`; the client may be silent for `quiet_after`.
    pub(super) fn new(ping_every: Duration, quiet_after: Duration) -> Self {
        let now = Instant::now();
        Self {
            ping_every,
            next_ping: now + ping_every,
            quiet: now + quiet_after,
            drain_turn: None,
        }
    }

    /// The soonest deadline, the loop's look (due at `look`) among them.
    pub(super) fn deadline(&self, look: Instant) -> Instant {
        let quiet = self
            .drain_turn
            .map_or(self.quiet, |turn| turn.min(self.quiet));
        quiet.min(look).min(self.next_ping)
    }

    /// Moves `timer` to the soonest deadline, if that changed (moving a timer costs more
    /// than comparing).
    pub(super) fn arm(&self, timer: Pin<&mut Sleep>, look: Instant) {
        let at = self.deadline(look);
        if timer.deadline() != at {
            timer.reset(at);
        }
    }

    /// What is due now that `timer` fired; one thing at a time, the loop comes back for
    /// the rest. A ping due is taken: the next is due a period from now.
    pub(super) fn due(&mut self, timer: Pin<&mut Sleep>, look: Instant) -> Due {
        let now = Instant::now();
        if self.drain_turn.is_some_and(|turn| now >= turn) {
            Due::Restart
        } else if now >= self.quiet {
            Due::Quiet
        } else if now >= look {
            Due::Look
        } else if now >= self.next_ping {
            self.next_ping = now + self.ping_every;
            Due::Ping
        } else {
            // Fired before its deadline by our clock: a fired `Sleep` stays ready, so it
            // must be armed again or the loop would spin until the deadline.
            timer.reset(self.deadline(look));
            Due::Nothing
        }
    }
}

/// Sends the greeting, and on v1 joins the channels the token claims and the connect hook
/// names, with their replies; `false` if the client is gone.
async fn greet(
    socket: &mut Socket,
    connection: &mut Connection,
    protocol: &mut Protocol,
    user: &UserId,
    credentials: &Credentials,
    gateway: &Gateway,
) -> bool {
    let greeting = match protocol {
        Protocol::Seed => seed::greeting(user, gateway.hub.node_id()),
        Protocol::V1(v1) => v1.greeting(gateway.hub.node_id(), connection.id()),
    };
    if socket.send(Message::Text(greeting.into())).await.is_err() {
        return false;
    }
    let Protocol::V1(v1) = protocol else {
        return true;
    };
    let mut joined = v1.claimed(connection, credentials, gateway).await;
    joined.extend(v1.join_initial(connection, credentials, gateway).await);
    for reply in joined {
        if socket.send(Message::Text(reply.into())).await.is_err() {
            return false;
        }
    }
    true
}

/// Waits for every publish under way; their replies, in order. A change of channels waits
/// for them, so that replies keep the order of what caused them.
async fn settle(in_flight: &mut FuturesOrdered<BoxFuture<'static, Vec<String>>>) -> Vec<String> {
    let mut replies = Vec::new();
    while let Some(earlier) = in_flight.next().await {
        replies.extend(earlier);
    }
    replies
}

pub(super) fn read_error(e: tungstenite::Error) -> (u16, &'static str) {
    match e {
        tungstenite::Error::Capacity(_) => close::MESSAGE_TOO_BIG,
        tungstenite::Error::Utf8(_) => close::INVALID_PAYLOAD,
        tungstenite::Error::Protocol(_) => close::PROTOCOL_ERROR,
        _ => (0, "read error"),
    }
}

pub(super) async fn send_close(socket: &mut Socket, (code, reason): (u16, &str)) -> bool {
    let frame = Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from(reason),
    }));
    matches!(timeout(CLOSE_GRACE, socket.send(frame)).await, Ok(Ok(())))
}

/// Whether a close code blames what the client sent: it may still be sending (the rest of
/// an oversized frame, more messages), so the close needs `linger` to reach it.
pub(super) fn client_at_fault(code: u16) -> bool {
    [
        close::PROTOCOL_ERROR,
        close::INVALID_PAYLOAD,
        close::MESSAGE_TOO_BIG,
        close::RATE_LIMITED,
    ]
    .iter()
    .any(|&(c, _)| c == code)
}

/// After a close for the client's fault, reads and throws away what the client still sends,
/// below the WebSocket layer (after an oversized frame's header the stream is not at a frame
/// boundary any more), until the client's own close frame or the end of its stream, within
/// bounds. Dropping the socket with unread input makes the kernel answer with a reset, and a
/// client that is still writing then fails its write and never reads the close frame: it saw
/// 1006 or a reset instead of 1009. nginx's `lingering_close` does the same for HTTP.
pub(super) async fn linger(socket: &mut Socket) {
    let io = socket.get_mut();
    let deadline = Instant::now() + LINGER_TIME;
    let mut left = LINGER_BYTES;
    // Allocated only here: a buffer in the future itself would cost every idle socket.
    let mut buf = vec![0; 16 * 1024];
    while left > 0 && !io.close_received() {
        match timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n as u64),
            // The end of input, an error, or the deadline.
            _ => return,
        }
    }
}

/// How long `linger` may read after a close: long enough for a client on a slow link to
/// finish a frame it was sending, short enough that a client that never stops costs little
/// (a task, a file descriptor and a 16 KiB buffer).
const LINGER_TIME: Duration = Duration::from_secs(5);
/// How much `linger` may read: a 64 MiB frame, not an endless stream.
const LINGER_BYTES: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without one: making it takes a live socket.
    fn returned_size<A, B, C, D, E, F: Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        size_of::<F>()
    }

    /// One timer for four deadlines: it fires at the soonest, and what is due comes out most
    /// pressing first, one at a time.
    #[tokio::test]
    async fn the_loop_timers_give_what_is_due_most_pressing_first() {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut timers = LoopTimers::new(Duration::from_secs(30), Duration::from_secs(60));
        assert_eq!(timers.deadline(far), timers.next_ping);
        let timer = sleep_until(far);
        tokio::pin!(timer);
        // Early by our clock: nothing, and the timer armed again at the soonest deadline.
        assert!(matches!(timers.due(timer.as_mut(), far), Due::Nothing));
        assert_eq!(timer.deadline(), timers.next_ping);

        timers.next_ping = Instant::now();
        assert!(matches!(timers.due(timer.as_mut(), far), Due::Ping));
        assert!(timers.next_ping >= Instant::now() + Duration::from_secs(29));
        timers.next_ping = Instant::now();
        let look = Instant::now();
        assert_eq!(timers.deadline(look), look.min(timers.next_ping));
        assert!(matches!(timers.due(timer.as_mut(), look), Due::Look));
        timers.quiet = Instant::now();
        assert!(matches!(timers.due(timer.as_mut(), look), Due::Quiet));
        // A drain turn shortens the quiet deadline, and comes first once reached.
        timers.quiet = far;
        timers.next_ping = far;
        let turn = Instant::now() + Duration::from_secs(5);
        timers.drain_turn = Some(turn);
        assert_eq!(timers.deadline(far), turn);
        timers.quiet = Instant::now();
        timers.drain_turn = Some(Instant::now());
        assert!(matches!(timers.due(timer.as_mut(), look), Due::Restart));
    }

    /// Every open socket is a task holding this future, so its size is paid per idle
    /// socket (docs/benchmarks.md, "It costs memory per idle socket"). A rare await left
    /// inline (joins, hooks, credentials: 400-1 200 bytes each) or another timer beside the
    /// loop's one would show here first.
    /// 2 392 bytes now, debug and release alike. With tokio's header and trailer (~110
    /// bytes, rounded up to its 128-byte alignment) the task stays within 2 560 bytes.
    const LIMIT: usize = 2432;

    #[test]
    fn the_connection_future_stays_small() {
        let size = returned_size(run);
        eprintln!("connection future: {size} bytes");
        assert!(
            size <= LIMIT,
            "the connection future is {size} bytes, over {LIMIT}"
        );
    }
}
