//! The WebSocket endpoints: `GET /websocket/{id}` (the seed's protocol: raw text frames for
//! user `id`) and `GET /ws` (protocol v1: channels, offsets, recovery; see [`super::v1`]).
//!
//! Before the upgrade: the origin, the per-address connection rate, who the client is
//! (session, token or open) and the per-user connection cap. Refusals are HTTP errors with
//! a JSON code, so nothing is allocated for a client that may not connect.
//!
//! After it, one task per connection drives both directions with `select!`, so every way a
//! connection can end (client close, idle timeout, slow consumer, server shutdown,
//! oversized frame, credentials ending, message rate) is visible in one place.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::future::{self, BoxFuture};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::time::{Instant, sleep_until, timeout};

use super::Gateway;
use super::v1::{self, Plan, Step, V1};
use crate::auth::WsAuth;
use crate::broker::PublishOptions;
use crate::error::ApiError;
use crate::hub::{Connection, Outbound, session_channel};
use crate::limits::MessageRate;
use crate::protocol::{ClientFrame, FrameError, ServerFrame, UserId, close};
use crate::session::{PRINCIPAL, SessionId, presented_id};
use crate::store::{lifetime_left, now_ms};

/// How sockets behave.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// How often the server pings; at most half the idle timeout, so a live client that
    /// only answers pings is never taken for idle.
    pub ping_interval: Duration,
    /// Largest inbound message, in bytes; a larger one closes the connection with 1009.
    pub max_message_size: usize,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(600),
            ping_interval: Duration::from_secs(25),
            max_message_size: 64 * 1024,
        }
    }
}

/// Publishes one client may have under way at once.
const MAX_PUBLISHES_IN_FLIGHT: usize = 64;

/// How long a close frame may take to go out before the connection is dropped anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Slack after a session's expected expiry before checking it, so the store has expired it.
const EXPIRY_SLACK: Duration = Duration::from_millis(50);
/// The next look at credentials that nothing can end.
const FAR: Duration = Duration::from_secs(86_400);

/// What ends the connection's right to stay open, besides the client.
pub(crate) enum Credentials {
    /// Open mode: nothing.
    None,
    /// The HTTP session it was opened with: closed when that ends.
    Session {
        id: SessionId,
        /// When the session's absolute lifetime runs out, if it has one: HTTP use slides
        /// the idle timeout, never this.
        ends: Option<Instant>,
    },
    /// A token: closed when it expires.
    Token {
        expires: Instant,
        /// Channels the token lets the user join.
        channels: Vec<String>,
    },
}

#[derive(Deserialize)]
pub(crate) struct ConnectQuery {
    token: Option<String>,
    /// Protocol v1 in open mode: who the client says it is.
    user: Option<String>,
}

/// `GET /websocket/{id}`.
pub(crate) async fn upgrade(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    Query(query): Query<ConnectQuery>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(upgrade_required)?;
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
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(upgrade_required)?;
    let requested = query
        .user
        .as_deref()
        .map(str::parse::<UserId>)
        .transpose()?;
    let (user, credentials) = admit(&gateway, requested, &query, peer, &headers).await?;
    let limit = gateway.config.socket.max_message_size;
    Ok(accept(ws, limit, move |socket| {
        let protocol = Protocol::V1(V1::new(user.clone(), &credentials));
        run(socket, user, credentials, gateway, protocol)
    }))
}

fn upgrade_required(rejection: WebSocketUpgradeRejection) -> ApiError {
    ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "upgrade_required",
        format!("this is a WebSocket endpoint: {}", rejection.body_text()),
    )
}

fn accept<F, Fut>(ws: WebSocketUpgrade, limit: usize, then: F) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    ws.max_message_size(limit)
        .max_frame_size(limit)
        // A small read buffer: an idle connection's memory is mostly its buffers (4 KiB made
        // 9.8 KiB per idle connection, 1 KiB makes 6.8; docs/benchmarks.md). Larger frames
        // still arrive whole: the buffer grows for them.
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .on_upgrade(then)
}

/// Everything checked before an upgrade: origin, connection rate, who the client is (and
/// that it is `requested`, if it asked to be someone), and the per-user connection cap.
async fn admit(
    gateway: &Gateway,
    requested: Option<UserId>,
    query: &ConnectQuery,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> Result<(UserId, Credentials), ApiError> {
    let security = &gateway.config.security;
    if !security
        .origins
        .allows(headers.get(header::ORIGIN), headers.get(header::HOST))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not open sockets here (see --allowed-origins)",
        ));
    }
    if let Some(ip) = peer.map(|p| client_ip(p.0.0, headers, &gateway.sessions.trusted_proxies))
        && !gateway.connection_rate.check(ip)
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many new connections from this address; slow down",
        ));
    }
    let (user, credentials) =
        authenticate(gateway, requested, query.token.as_deref(), headers).await?;
    if gateway.hub.local_connections(&user) >= security.limits.connections_per_user {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "this user has too many open connections on this node",
        ));
    }
    Ok((user, credentials))
}

/// Who the client is, checked against the user it asks to connect as (if it asks).
async fn authenticate(
    gateway: &Gateway,
    requested: Option<UserId>,
    query_token: Option<&str>,
    headers: &HeaderMap,
) -> Result<(UserId, Credentials), ApiError> {
    let (user, credentials) = match gateway.config.security.ws_auth {
        WsAuth::Open => {
            let user = requested.clone().ok_or_else(|| {
                ApiError::bad_request("in open mode, say who you are: /ws?user=<id>")
            })?;
            (user, Credentials::None)
        }
        WsAuth::Session => {
            let not_logged_in = || {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "not_logged_in",
                    "log in first: the socket's user comes from the HTTP session",
                )
            };
            let id = presented_id(headers, &gateway.sessions).ok_or_else(not_logged_in)?;
            let record = gateway
                .store
                .load(&id, gateway.sessions.idle_timeout)
                .await?
                .ok_or_else(not_logged_in)?;
            let user = record
                .attributes
                .get(PRINCIPAL)
                .and_then(|p| p.as_str())
                .and_then(|p| p.parse::<UserId>().ok())
                .ok_or_else(not_logged_in)?;
            // An outlived session is over even before a request gets to delete it.
            let left = lifetime_left(gateway.sessions.max_lifetime, record.created_ms, now_ms());
            let ends = match left {
                Some(left) if left.is_zero() => return Err(not_logged_in()),
                left => left.map(|left| Instant::now() + left),
            };
            (user, Credentials::Session { id, ends })
        }
        WsAuth::Token => {
            let token = query_token.or_else(|| {
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            });
            let verifier = gateway.config.security.tokens.as_ref();
            let claims = match (token, verifier) {
                (Some(token), Some(verifier)) => verifier.verify(token.trim()),
                (None, _) => Err(crate::auth::TokenError::Missing),
                (Some(_), None) => Err(crate::auth::TokenError::Invalid),
            }
            .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()))?;
            let user = claims.sub.parse::<UserId>().map_err(|_| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_invalid",
                    "the token's sub is not a valid user id",
                )
            })?;
            let left = claims.exp.saturating_sub(now_ms() / 1000);
            let credentials = Credentials::Token {
                expires: Instant::now() + Duration::from_secs(left),
                channels: claims.channels,
            };
            (user, credentials)
        }
    };
    if requested.is_some_and(|r| r != user) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "you may only open your own sockets",
        ));
    }
    Ok((user, credentials))
}

/// The client's address: the peer, or the last hop a trusted proxy reports.
fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer.ip()) {
        return peer.ip();
    }
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|ip| ip.trim().parse().ok())
        .unwrap_or(peer.ip())
}

/// Which wire protocol a connection speaks.
enum Protocol {
    /// `/websocket/{id}`: every message for the user as a raw text frame.
    Seed,
    /// `/ws`: JSON frames with channels and offsets.
    V1(V1),
}

// Not an `async fn`: those move their arguments into fresh locals inside the future while
// the arguments themselves stay reserved, and with the WebSocket (368 bytes) that cost
// ~550 bytes per idle socket. An `async move` block uses what it captured in place.
#[allow(clippy::manual_async_fn)]
fn run(
    mut socket: WebSocket,
    user: UserId,
    credentials: Credentials,
    gateway: Gateway,
    mut protocol: Protocol,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut connection = gateway.hub.connect(&user);
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
        let reason = drive(
            &mut socket,
            &mut connection,
            &mut protocol,
            &user,
            &credentials,
            &gateway,
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
        if reason.0 != 0 {
            if let Protocol::V1(_) = protocol {
                let frame = v1::disconnect_frame(reason);
                let _ = timeout(CLOSE_GRACE, socket.send(Message::Text(frame.into()))).await;
            }
            let _ = send_close(&mut socket, reason).await;
        }
    }
}

/// `next`, or the session's absolute end if that comes first.
fn before_end(next: Instant, ends: Option<Instant>) -> Instant {
    ends.map_or(next, |ends| ends.min(next))
}

/// When to look at the credentials first, from what the connect learned: no round trip.
fn first_credentials_check(credentials: &Credentials, gateway: &Gateway) -> Instant {
    match credentials {
        Credentials::None => Instant::now() + FAR,
        Credentials::Token { expires, .. } => *expires,
        Credentials::Session { ends, .. } => {
            // Loading the session to admit the socket slid its expiry to a whole idle timeout.
            let idle = Instant::now() + gateway.sessions.idle_timeout + EXPIRY_SLACK;
            before_end(idle, *ends)
        }
    }
}

/// Looks at the credentials when their check is due: `None` if they ended, else when to
/// look again.
async fn check_credentials(credentials: &Credentials, gateway: &Gateway) -> Option<Instant> {
    let now = Instant::now();
    match credentials {
        Credentials::None => Some(now + FAR),
        // Checked only once its expiry has come.
        Credentials::Token { .. } => None,
        Credentials::Session { id, ends } => {
            if ends.is_some_and(|ends| now >= ends) {
                return None;
            }
            let next = match gateway.store.expires_in(id).await {
                Ok(Some(left)) => now + left + EXPIRY_SLACK,
                Ok(None) => return None,
                // The store is down: look again soon rather than close a socket on a blip.
                Err(_) => now + Duration::from_secs(1),
            };
            Some(before_end(next, *ends))
        }
    }
}

/// Slides the socket's session as an HTTP request would (its expiry and its entry in the
/// per-user index, so that logging the user out everywhere still finds it): `None` if the
/// session is gone, else when to look at it next.
async fn use_session(
    id: &SessionId,
    ends: Option<Instant>,
    user: &UserId,
    gateway: &Gateway,
) -> Option<Instant> {
    let idle = gateway.sessions.idle_timeout;
    let store = &gateway.store;
    match store.load(id, idle).await {
        Ok(Some(_)) => {
            if let Err(e) = store
                .index_add(user.as_str(), id, crate::session::index_keep(idle))
                .await
            {
                tracing::warn!(error = %e, "could not refresh a socket's session in the user index");
            }
        }
        Ok(None) => return None,
        Err(e) => {
            // The store is down: look again soon, as the expiry check does.
            tracing::warn!(error = %e, "could not slide a socket's session");
            return Some(Instant::now() + Duration::from_secs(1));
        }
    }
    let next = Instant::now() + idle + EXPIRY_SLACK;
    Some(before_end(next, ends))
}

/// Runs the connection until it ends; returns the close code to send (0: none, the client
/// closed or vanished).
async fn drive(
    socket: &mut WebSocket,
    connection: &mut Connection,
    protocol: &mut Protocol,
    user: &UserId,
    credentials: &Credentials,
    gateway: &Gateway,
) -> (u16, &'static str) {
    let config = &gateway.config.socket;
    let greeting = match protocol {
        Protocol::Seed => ServerFrame::Connected {
            id: user.as_str(),
            node: gateway.hub.node_id(),
        }
        .to_text(),
        Protocol::V1(v1) => v1.greeting(gateway.hub.node_id(), connection.id()),
    };
    if socket.send(Message::Text(greeting.into())).await.is_err() {
        return (0, "gone");
    }
    let ping_every = config
        .ping_interval
        .min(config.idle_timeout / 2)
        .max(Duration::from_millis(10));
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut idle_deadline = Instant::now() + config.idle_timeout;
    let mut credentials_check = first_credentials_check(credentials, gateway);
    // Admitting the socket loaded its session, which slid the session's expiry.
    let mut session_used = Instant::now();
    let rate = MessageRate::new(gateway.config.security.limits.messages_per_sec);
    // Publishes from this client under way, their replies sent in the order of the frames.
    let mut in_flight: FuturesOrdered<BoxFuture<'static, Vec<String>>> = FuturesOrdered::new();
    let slow = connection.slow().clone();
    let shutdown = gateway.shutdown.clone();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return close::GOING_AWAY,
            () = slow.cancelled() => return close::SLOW_CONSUMER,
            () = sleep_until(idle_deadline) => return close::IDLE_TIMEOUT,
            () = sleep_until(credentials_check) => {
                match check_credentials(credentials, gateway).await {
                    Some(next) => credentials_check = next,
                    None if matches!(credentials, Credentials::Token { .. }) => return close::TOKEN_EXPIRED,
                    None => return close::SESSION_ENDED,
                }
            }
            outbound = connection.recv() => {
                let (text, age) = match (outbound, &mut *protocol) {
                    (Outbound::Message(delivery), Protocol::Seed) => (delivery.text(), delivery.age()),
                    (Outbound::Message(delivery), Protocol::V1(v1)) => match v1.outbound(&delivery) {
                        Ok(Some(frame)) => (frame, delivery.age()),
                        Ok(None) => continue,
                        Err(close) => return close,
                    },
                    // Seed clients cannot recover; they keep receiving what comes.
                    (Outbound::Resync, Protocol::Seed) => continue,
                    (Outbound::Resync, Protocol::V1(_)) => return close::INSUFFICIENT_STATE,
                    (Outbound::Close(code, reason), _) => return (code, reason),
                };
                metrics::histogram!("sessionhub_delivery_latency_seconds")
                    .record(age.as_secs_f64());
                // A send that blocks (the client stopped reading) must not outlive a
                // slow-consumer verdict or a shutdown.
                tokio::select! {
                    sent = socket.send(Message::Text(text)) => if sent.is_err() { return (0, "gone") },
                    () = slow.cancelled() => return close::SLOW_CONSUMER,
                    () = shutdown.cancelled() => return close::GOING_AWAY,
                }
            }
            Some(replies) = in_flight.next(), if !in_flight.is_empty() => {
                for reply in replies {
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        return (0, "gone");
                    }
                }
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return (0, "gone");
                }
            }
            inbound = socket.next() => {
                idle_deadline = Instant::now() + config.idle_timeout;
                if let Some(Ok(Message::Text(_) | Message::Binary(_))) = &inbound {
                    metrics::counter!("sessionhub_client_frames_total").increment(1);
                    // A client that talks is using its session, as a request would: slide it
                    // (at most every half idle timeout), or end if it is gone.
                    if let Credentials::Session { id, ends } = credentials
                        && session_used.elapsed() >= gateway.sessions.idle_timeout / 2
                    {
                        session_used = Instant::now();
                        match use_session(id, *ends, user, gateway).await {
                            Some(next) => credentials_check = next,
                            None => return close::SESSION_ENDED,
                        }
                    }
                }
                let plan = match (inbound, &mut *protocol) {
                    (None | Some(Ok(Message::Close(_))), _) => return (0, "client closed"),
                    (Some(Ok(Message::Ping(_) | Message::Pong(_))), _) => continue,
                    (Some(Err(e)), _) => return read_error(e),
                    (Some(Ok(_)), _) if !rate.check() => return close::RATE_LIMITED,
                    (Some(Ok(Message::Text(text))), Protocol::Seed) => plan_seed_frame(&text, gateway),
                    (Some(Ok(Message::Text(text))), Protocol::V1(v1)) => match v1.plan(&text, gateway) {
                        Step::Plan(plan) => plan,
                        Step::Change(change) => {
                            let mut replies = Vec::new();
                            while let Some(earlier) = in_flight.next().await {
                                replies.extend(earlier);
                            }
                            replies.extend(v1.exclusive(change, connection, credentials, gateway).await);
                            Plan::Reply(replies)
                        }
                    },
                    (Some(Ok(Message::Binary(_))), _) => Plan::Reply(vec![error_frame(&FrameError::Binary)]),
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
            }
        }
    }
}

/// Plans one seed-protocol frame: `{"KEY", "VALUE"}` becomes a publish under way.
fn plan_seed_frame(text: &str, gateway: &Gateway) -> Plan {
    let ClientFrame::Push { to, data } = match ClientFrame::parse(text) {
        Ok(frame) => frame,
        Err(e) => return Plan::Reply(vec![error_frame(&e)]),
    };
    let security = &gateway.config.security;
    let channel = to.channel();
    if security.ws_auth != WsAuth::Open && !security.channels.can_publish(&channel) {
        return Plan::Reply(vec![error_frame(&FrameError::PublishForbidden)]);
    }
    let gateway = gateway.clone();
    Plan::Later(
        async move {
            let options = PublishOptions::with_history();
            match gateway.hub.publish(&channel, data.into(), &options).await {
                Ok(_) => Vec::new(),
                Err(e) => vec![
                    ServerFrame::Error {
                        code: "broker_unavailable",
                        message: e.to_string(),
                    }
                    .to_text(),
                ],
            }
        }
        .boxed(),
    )
}

pub(crate) fn error_frame(e: &FrameError) -> String {
    ServerFrame::Error {
        code: e.code(),
        message: e.to_string(),
    }
    .to_text()
}

fn read_error(e: axum::Error) -> (u16, &'static str) {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => close::MESSAGE_TOO_BIG,
        Some(tungstenite::Error::Protocol(_)) => close::PROTOCOL_ERROR,
        _ => (0, "read error"),
    }
}

async fn send_close(socket: &mut WebSocket, (code, reason): (u16, &'static str)) -> bool {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }));
    matches!(timeout(CLOSE_GRACE, socket.send(frame)).await, Ok(Ok(())))
}
