//! `GET /app/{key}?protocol=7`: one Pusher Channels connection, a hub connection like a v1
//! socket's, driven by one task with `select!` as `gateway/socket.rs` drives v1 (and with
//! its pieces: the handshake, the close and its linger, drain turns, slow consumers, the
//! session's end). What differs is Pusher's: the wire frames ([`crate::protocol::pusher`]),
//! the app's signatures for private channels, client events, cache channels, and a silent
//! client pinged with `pusher:ping` before it is closed with 4201.
//!
//! Who the connection is: the user of the sessionhub session its upgrade request presents
//! (it then joins the session's control channel, so a logout closes it on every node, as it
//! closes v1 sockets), else an anonymous user of its own, `pusher-<socket_id>`. Once it
//! signs in (`pusher:signin`), it is the signed-in user's.
//!
//! A `socket_id` is `<node part>.<counter>`: the node part is drawn at random (64 bits)
//! when the process starts, the counter counts the process's Pusher connections; two nodes
//! share a socket id only if they drew the same node part.
//!
//! Sign-in (`pusher:signin`, events to the user, watchlists) lives in `user.rs`; the unit
//! tests in `socket/tests.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Extension;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::{Instant, sleep_until};
use tungstenite::{Message, Utf8Bytes};

use super::super::admission::{
    Credentials, admit_as, check_credentials, first_credentials_check, session_user, use_session,
};
use super::super::socket::{
    Due, LoopTimers, accept, client_at_fault, linger, read_error, send_close,
};
use super::super::state::Gateway;
use super::super::upgrade::{Socket, Upgrade};
use super::user::{self, SignedIn};
use crate::broker::{Envelope, PublishOptions};
use crate::error::ApiError;
use crate::hub::{
    Connection, Delivery, Outbound, PRESENCE_EVENTS_PREFIX, Render, Straight, delivery_latency,
    session_channel,
};
use crate::limits::MessageRate;
use crate::protocol::pusher::{self, ChannelKind, Request, close};
use crate::protocol::pusher_user::USER_CHANNEL_PREFIX;
use crate::protocol::v1::MAX_SUBSCRIPTIONS;
use crate::protocol::{UserId, close as hub_close};
use crate::pusher::PusherApp;

/// The most a client may stay silent after the activity timeout, answering the server's
/// `pusher:ping`, before it is closed (Pusher's clients wait 30 s for a pong too).
const PONG_GRACE: Duration = Duration::from_secs(30);

/// `?protocol=7&client=js&version=8.4.0`; only `protocol` matters.
#[derive(Deserialize)]
pub(in crate::gateway) struct PusherQuery {
    protocol: Option<String>,
}

/// `GET /app/{key}`.
pub(in crate::gateway) async fn upgrade(
    State(gateway): State<Gateway>,
    Path(key): Path<String>,
    Query(query): Query<PusherQuery>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ws: Result<Upgrade, ApiError>,
) -> Result<Response, ApiError> {
    let ws = ws?;
    let limit = gateway.config.socket.max_message_size;
    let app = gateway.pusher.as_ref().and_then(|apps| apps.by_key(&key));
    // Refused with a close code, which pusher-js acts on (an HTTP status it would not see).
    let refusal = match (app, query.protocol.as_deref()) {
        (None, _) => Some(close::UNKNOWN_APP),
        (_, None) => Some(close::NO_PROTOCOL),
        (_, Some(p)) if p != pusher::PROTOCOL => Some(close::UNSUPPORTED_PROTOCOL),
        _ => None,
    };
    if let Some(code) = refusal {
        return Ok(accept(ws, limit, move |mut socket: Socket| async move {
            let _ = send_close(&mut socket, code).await;
        }));
    }
    let app = app.expect("checked above").clone();
    let socket_id = next_socket_id();
    let anonymous: UserId = format!("pusher-{socket_id}")
        .parse()
        .expect("digits and a dot make a user id");
    let who = async {
        let user = session_user(&gateway, &headers).await?;
        Ok(user.unwrap_or((anonymous, Credentials::None)))
    };
    let (user, credentials) = admit_as(&gateway, peer, &headers, who).await?;
    Ok(accept(ws, limit, move |socket| {
        let state = PusherConnection::new(app, socket_id, &gateway);
        run(socket, state, user, credentials, gateway)
    }))
}

/// This process's part of every socket id it hands out.
static NODE_PART: LazyLock<u64> = LazyLock::new(|| {
    let mut bytes = [0; 8];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    u64::from_le_bytes(bytes)
});
static NEXT_SOCKET: AtomicU64 = AtomicU64::new(1);

fn next_socket_id() -> String {
    let n = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
    format!("{}.{n}", *NODE_PART)
}

/// One channel the connection subscribed to.
struct Subscription {
    /// On a presence channel, the member this connection is (`channel_data.user_id`).
    member: Option<String>,
    /// The replayed publication of a cache channel (epoch, offset): the same one arriving
    /// live just after the join is not sent twice.
    replayed: Option<(std::sync::Arc<str>, u64)>,
    /// Deliveries on the channel may go straight to the wire once the subscribe reply is
    /// out ([`PusherConnection::deliver_directly`]).
    direct_next: bool,
}

/// A Pusher connection's state.
struct PusherConnection {
    app: std::sync::Arc<PusherApp>,
    socket_id: String,
    channels: HashMap<String, Subscription>,
    client_events: MessageRate,
    /// `activity_timeout`: silence after which the server pings, and clients should.
    activity: Duration,
    /// Who the connection signed in as (`pusher:signin`), if it did.
    signed_in: Option<SignedIn>,
}

impl PusherConnection {
    fn new(app: std::sync::Arc<PusherApp>, socket_id: String, gateway: &Gateway) -> Self {
        // Pusher's 120 s, or the node's idle timeout if that is shorter.
        let idle = gateway.config.socket.idle_timeout;
        let activity = Duration::from_secs(pusher::ACTIVITY_TIMEOUT_SECS)
            .min(idle)
            .max(Duration::from_secs(1));
        let client_events = MessageRate::new(app.client_event_rate.max(1));
        Self {
            app,
            socket_id,
            channels: HashMap::new(),
            client_events,
            activity,
            signed_in: None,
        }
    }

    /// What to send for a publication: nothing if the connection is not on its channel, or
    /// it is the socket the publication excludes, or the live copy of a replayed one.
    fn outbound(&mut self, delivery: &Delivery) -> Option<Utf8Bytes> {
        // The sign-in's channels are named with `#`, which no Pusher channel has: not
        // taken by the sign-in, they are on none of `channels` either.
        if let Some(frame) =
            (self.signed_in.as_mut()).and_then(|s| s.outbound(delivery, &self.socket_id))
        {
            return Some(frame);
        }
        if let Some(channel) = delivery.channel().strip_prefix(PRESENCE_EVENTS_PREFIX) {
            // A member came or went: not told to the member itself.
            let me = self.channels.get(channel)?.member.as_deref();
            let data = delivery.publication().data.as_str();
            let name = pusher::pusher_name(channel);
            return pusher::member_event(name, data, me).map(Utf8Bytes::from);
        }
        let subscription = self.channels.get_mut(delivery.channel())?;
        let except = delivery.envelope().and_then(|e| e.except.as_deref());
        if except == Some(self.socket_id.as_str()) {
            return None;
        }
        if let Some((epoch, offset)) = subscription.replayed.take() {
            let publication = delivery.publication();
            if publication.offset == offset && publication.epoch == epoch {
                return None;
            }
        }
        Some(delivery.pusher_frame())
    }

    /// Answers `pusher:subscribe`: the frames to send.
    async fn subscribe(
        &mut self,
        channel: String,
        auth: Option<String>,
        channel_data: Option<String>,
        connection: &mut Connection,
        credentials: &Credentials,
        gateway: &Gateway,
    ) -> Vec<String> {
        let refuse = |kind: &str, status: u16, message: &str| {
            vec![pusher::subscription_error(&channel, kind, status, message)]
        };
        if channel.starts_with(USER_CHANNEL_PREFIX) {
            return vec![SignedIn::subscribe(self.signed_in.as_ref(), &channel)];
        }
        let hub = match self.app.hub_channel(&channel) {
            Ok(hub) => hub,
            Err(e) => return refuse("InvalidChannel", 400, &e.to_string()),
        };
        let kind = ChannelKind::of(&channel);
        let presence = kind == ChannelKind::Presence;
        let signed_data = channel_data.filter(|_| presence);
        // pusher-js sends none when signed in: the member is the signed-in user.
        let channel_data = signed_data.clone().or_else(|| {
            let user = self.signed_in.as_ref().filter(|_| presence)?;
            Some(user.user.channel_data())
        });
        if presence && channel_data.is_none() {
            return refuse("AuthError", 401, "a presence channel needs channel_data");
        }
        if kind.is_private() {
            let message = pusher::signed_message(&self.socket_id, &channel, signed_data.as_deref());
            if !self.app.verify_auth(auth.as_deref(), &message) {
                return refuse(
                    "AuthError",
                    401,
                    "invalid signature: auth must be KEY:HMAC-SHA256(secret, \
                     socket_id:channel[:channel_data])",
                );
            }
        }
        if let Some(subscription) = self.channels.get(&hub) {
            // pusher-js subscribes again after a reconnect only; answer as before.
            let mut data = "{}".to_owned();
            if subscription.member.is_some() {
                match gateway.presence.members(&hub).await {
                    Ok(members) => data = pusher::presence_data(&members),
                    Err(e) => return refuse("Unavailable", 503, &e.to_string()),
                }
            }
            return vec![pusher::subscription_succeeded(&channel, &data)];
        }
        let session = usize::from(matches!(credentials, Credentials::Session { .. }));
        let signed_in = self.signed_in.as_ref().map_or(0, |s| s.hub_channels);
        if connection.channel_count() >= MAX_SUBSCRIPTIONS + session + signed_in {
            let message = format!("at most {MAX_SUBSCRIPTIONS} channels per connection");
            return refuse("LimitReached", 429, &message);
        }
        let mut succeeded = "{}".to_owned();
        let mut member = None;
        if let Some(channel_data) = channel_data {
            let joined = self
                .join_presence(&hub, &channel_data, connection, gateway)
                .await;
            match joined {
                Ok((user, data)) => {
                    member = Some(user);
                    succeeded = data;
                }
                Err((kind, status, message)) => return refuse(kind, status, &message),
            }
        } else if let Err(e) = connection.join(&hub).await {
            // Joined before the cache is read, so nothing published in between is lost.
            return refuse("Unavailable", 503, &e.to_string());
        }
        let mut frames = vec![pusher::subscription_succeeded(&channel, &succeeded)];
        let mut replayed = None;
        if pusher::is_cache_channel(&channel) {
            match super::cached_event(&hub, gateway).await {
                Ok(Some(cached)) => {
                    frames.push(cached.frame);
                    replayed = Some(cached.position);
                }
                Ok(None) => {
                    frames.push(pusher::cache_miss(&channel));
                    if let Some(webhooks) = gateway.hub.webhooks() {
                        let event = serde_json::json!({"channel": hub});
                        webhooks.emit(crate::webhook::EventKind::CacheMiss, event);
                    }
                }
                Err(e) => {
                    connection.leave(&hub);
                    return refuse("Unavailable", 503, &e.to_string());
                }
            }
        }
        let direct_next = takes_as_rendered(&hub);
        let subscription = Subscription {
            member,
            replayed,
            direct_next,
        };
        self.channels.insert(hub, subscription);
        frames
    }

    /// Joins presence channel `channel` as the member `channel_data` names (signed by the
    /// app already): the member's id and `subscription_succeeded`'s data, the members
    /// cluster-wide; or why not (as `subscription_error`'s type, status and message).
    async fn join_presence(
        &self,
        channel: &str,
        channel_data: &str,
        connection: &mut Connection,
        gateway: &Gateway,
    ) -> Result<(String, String), (&'static str, u16, String)> {
        let member = pusher::PresenceMember::parse(channel_data)
            .map_err(|e| ("InvalidChannelData", 400, e.to_string()))?;
        if member
            .info
            .as_ref()
            .is_some_and(|i| i.len() > self.app.max_user_info_bytes)
        {
            let message = format!("user_info is over {} bytes", self.app.max_user_info_bytes);
            return Err(("InvalidChannelData", 413, message));
        }
        if !gateway.hub.has_presence(channel) {
            let message = "presence- channels have no presence here (see --presence-channels)";
            return Err(("Unavailable", 501, message.to_owned()));
        }
        let unavailable = |e: &dyn std::fmt::Display| ("Unavailable", 503, e.to_string());
        // The presence backend checks the limit with the join, atomically cluster-wide.
        let max = self.app.max_presence_members;
        let joined = connection
            .join_within(channel, &member.id, member.info.clone(), max)
            .await
            .map_err(|e| unavailable(&e))?;
        if !joined {
            let message = format!("the channel has its {max} members already");
            return Err(("LimitReached", 403, message));
        }
        // Read after the join, which waited for presence to count this connection.
        let members = match gateway.presence.members(channel).await {
            Ok(members) => members,
            Err(e) => {
                connection.leave(channel);
                return Err(unavailable(&e));
            }
        };
        Ok((member.id.to_string(), pusher::presence_data(&members)))
    }

    /// Once a subscribe reply is out: deliveries on the channel it subscribed go straight
    /// to the wire from now on, where the connection takes them as every subscriber does.
    fn deliver_directly(&mut self, connection: &Connection) {
        for (hub, subscription) in &mut self.channels {
            if std::mem::take(&mut subscription.direct_next) {
                connection.deliver(hub, Straight::Yes);
            }
        }
    }

    /// Answers `pusher:unsubscribe` (with nothing, as Pusher does).
    fn unsubscribe(&mut self, channel: &str, connection: &mut Connection) {
        let Ok(hub) = self.app.hub_channel(channel) else {
            return;
        };
        if self.channels.remove(&hub).is_some() {
            connection.leave(&hub);
        }
    }

    /// Publishes a client event to the channel's other subscribers: an error frame if it is
    /// refused, or a close past the client event rate.
    async fn client_event(
        &mut self,
        event: String,
        channel: String,
        data: Box<RawValue>,
        gateway: &Gateway,
    ) -> Result<Option<String>, (u16, &'static str)> {
        if !self.client_events.check() {
            return Err(close::CLIENT_EVENT_RATE);
        }
        let refuse = |message: &str| Ok(Some(pusher::error(None, message)));
        if !self.app.client_events {
            return refuse("client events are not enabled for this app");
        }
        if !ChannelKind::of(&channel).takes_client_events() {
            return refuse("client events are only sent on private and presence channels");
        }
        let Some((hub, subscription)) = self
            .app
            .hub_channel(&channel)
            .ok()
            .and_then(|hub| self.channels.get_key_value(&hub))
        else {
            return refuse("subscribe to the channel before sending client events on it");
        };
        if data.get().len() > self.app.max_event_bytes {
            let message = format!(
                "client event data is over {} bytes",
                self.app.max_event_bytes
            );
            return Ok(Some(pusher::error(None, &message)));
        }
        let envelope = Envelope {
            event: Some(event),
            except: Some(self.socket_id.clone()),
            user: subscription.member.clone(),
            at: pusher::is_cache_channel(&channel).then(crate::store::now_ms),
        };
        let options = PublishOptions {
            history: pusher::is_cache_channel(&channel),
            idempotency_key: None,
        };
        let payload = envelope.wrap(data.get());
        if let Err(e) = gateway.hub.publish(hub, payload, &options).await {
            return refuse(&e.to_string());
        }
        if let Some(webhooks) = gateway.hub.webhooks() {
            // Sent by the sender's node alone: once per client event, cluster-wide.
            let event = serde_json::json!({
                "channel": hub,
                "event": envelope.event,
                "data": data,
                "socket_id": self.socket_id,
                "user": envelope.user,
            });
            webhooks.emit(crate::webhook::EventKind::Message, event);
        }
        Ok(None)
    }
}

// Not an `async fn`, for the reason `socket::run` gives.
#[allow(clippy::manual_async_fn)]
fn run(
    mut socket: Socket,
    mut state: PusherConnection,
    user: UserId,
    mut credentials: Credentials,
    gateway: Gateway,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut connection = gateway.hub.connect(&user);
        if let Some(wire) = socket.get_ref().wire() {
            connection.attach(
                wire.clone(),
                Render::Pusher(state.socket_id.as_str().into()),
            );
        }
        if let Credentials::Session { id, .. } = &credentials
            && let Err(e) = Box::pin(connection.join(&session_channel(id))).await
        {
            tracing::warn!(error = %e, "pusher socket refused: cannot subscribe");
            let _ = send_close(&mut socket, close::from_hub(hub_close::BROKER_UNAVAILABLE)).await;
            return;
        }
        let node = gateway.hub.node_id().to_owned();
        let opened = std::time::Instant::now();
        tracing::info!(%node, user = %user, protocol = "pusher", socket_id = %state.socket_id, "socket open");
        let reason = drive(
            &mut socket,
            &mut connection,
            &mut state,
            &user,
            &mut credentials,
            &gateway,
        )
        .await;
        metrics::counter!("sessionhub_disconnects_total", "reason" => reason.1).increment(1);
        drop(connection);
        tracing::info!(
            %node,
            user = %user,
            protocol = "pusher",
            code = reason.0,
            reason = reason.1,
            seconds = opened.elapsed().as_secs(),
            "socket closed"
        );
        if reason.0 != 0 {
            let _ = send_close(&mut socket, close::from_hub(reason)).await;
            if client_at_fault(reason.0) || reason == close::CLIENT_EVENT_RATE {
                linger(&mut socket).await;
            }
        }
    }
}

/// Runs the connection until it ends; the sessionhub close code to send (0: none, the
/// client closed or vanished), which [`close::from_hub`] puts in Pusher's ranges.
async fn drive(
    socket: &mut Socket,
    connection: &mut Connection,
    state: &mut PusherConnection,
    user: &UserId,
    credentials: &mut Credentials,
    gateway: &Gateway,
) -> (u16, &'static str) {
    let established = pusher::connection_established(&state.socket_id, state.activity.as_secs());
    if socket
        .send(Message::Text(established.into()))
        .await
        .is_err()
    {
        return (0, "gone");
    }
    let config = &gateway.config.socket;
    // WebSocket pings, which every client answers by itself: a live client is never silent.
    let ping_every = config
        .ping_interval
        .min(state.activity / 2)
        .max(Duration::from_millis(10));
    // The client's quiet deadline: when it has been silent too long, first a
    // `pusher:ping`, then the close.
    let mut timers = LoopTimers::new(ping_every, state.activity);
    let mut pinged = false;
    let mut credentials_check = first_credentials_check(credentials, gateway);
    let mut session_used = Instant::now();
    let rate = MessageRate::new(gateway.security().limits.messages_per_sec);
    // The timer and waits live as long as the loop, moved only when their deadline
    // changes, as `socket.rs` keeps v1's: made afresh in every `select!`, each delivery
    // would register and take out timers and waits.
    let shutting_down = gateway.shutdown.clone().cancelled_owned();
    let slow_verdict = connection.slow().clone().cancelled_owned();
    let timer = sleep_until(timers.deadline(credentials_check));
    tokio::pin!(shutting_down, slow_verdict, timer);
    loop {
        connection.idle();
        timers.arm(timer.as_mut(), credentials_check);
        tokio::select! {
            biased;
            () = &mut shutting_down, if timers.drain_turn.is_none() => {
                timers.drain_turn = Some(gateway.drain_turn(connection.id()));
            }
            () = &mut slow_verdict => return hub_close::SLOW_CONSUMER,
            () = &mut timer => match timers.due(timer.as_mut(), credentials_check) {
                Due::Restart => return hub_close::SERVICE_RESTART,
                Due::Quiet if pinged => return close::PONG_NOT_RECEIVED,
                Due::Quiet => {
                    pinged = true;
                    timers.quiet = Instant::now() + PONG_GRACE.min(state.activity);
                    if socket.send(Message::Text(pusher::ping().into())).await.is_err() {
                        return (0, "gone");
                    }
                }
                Due::Look => match Box::pin(check_credentials(credentials, gateway)).await {
                    Some(next) => credentials_check = next,
                    None => return hub_close::SESSION_ENDED,
                },
                Due::Ping => {
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        return (0, "gone");
                    }
                }
                Due::Nothing => {}
            },
            outbound = connection.recv() => {
                if let Outbound::Flush = outbound {
                    tokio::select! {
                        biased;
                        flushed = socket.flush() => if flushed.is_err() { return (0, "gone") },
                        () = &mut slow_verdict => return hub_close::SLOW_CONSUMER,
                        () = &mut shutting_down, if timers.drain_turn.is_none() => return hub_close::SERVICE_RESTART,
                    }
                    continue;
                }
                let text = match outbound {
                    Outbound::Message(delivery) => match state.outbound(&delivery) {
                        Some(text) => {
                            delivery_latency().record(delivery.age().as_secs_f64());
                            text
                        }
                        None => continue,
                    },
                    // Pusher clients cannot recover: they reconnect and carry on.
                    Outbound::Resync => return hub_close::INSUFFICIENT_STATE,
                    Outbound::Close(code, reason) => return (code, reason),
                    Outbound::Disconnect(disconnect) => return disconnect.code,
                    // The server API's subscribe orders name v1 channels; SSE refreshes.
                    Outbound::Subscribe(_) | Outbound::Unsubscribe(_) | Outbound::Refresh(_) | Outbound::Flush => continue,
                };
                tokio::select! {
                    biased;
                    sent = socket.send(Message::Text(text)) => if sent.is_err() { return (0, "gone") },
                    () = &mut slow_verdict => return hub_close::SLOW_CONSUMER,
                    () = &mut shutting_down, if timers.drain_turn.is_none() => return hub_close::SERVICE_RESTART,
                }
            }
            inbound = socket.next() => {
                timers.quiet = Instant::now() + state.activity;
                pinged = false;
                let mut subscribed = false;
                let text = match inbound {
                    None | Some(Ok(Message::Close(_))) => return (0, "client closed"),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Err(e)) => return read_error(e),
                    Some(Ok(_)) if !rate.check() => return hub_close::RATE_LIMITED,
                    Some(Ok(Message::Binary(_))) => {
                        let refused = pusher::error(None, "binary frames are not supported; send JSON text");
                        if socket.send(Message::Text(refused.into())).await.is_err() {
                            return (0, "gone");
                        }
                        continue;
                    }
                    Some(Ok(Message::Text(text))) => text,
                };
                metrics::counter!("sessionhub_client_frames_total").increment(1);
                if let Credentials::Session { id, ends } = credentials
                    && session_used.elapsed() >= gateway.sessions.idle_timeout / 2
                {
                    session_used = Instant::now();
                    match Box::pin(use_session(id, *ends, user, gateway)).await {
                        Some(next) => credentials_check = next,
                        None => return hub_close::SESSION_ENDED,
                    }
                }
                let replies = match Request::parse(&text) {
                    Err(e) => vec![pusher::error(e.code(), &e.to_string())],
                    Ok(Request::Ping) => vec![pusher::pong()],
                    Ok(Request::Pong) => Vec::new(),
                    Ok(Request::Subscribe { channel, auth, channel_data }) => {
                        subscribed = true;
                        Box::pin(state.subscribe(channel, auth, channel_data, connection, credentials, gateway)).await
                    }
                    Ok(Request::Unsubscribe { channel }) => {
                        state.unsubscribe(&channel, connection);
                        Vec::new()
                    }
                    Ok(Request::SignIn { auth, user_data }) => {
                        let signed_in = &mut state.signed_in;
                        match Box::pin(user::sign_in(signed_in, &state.app, &state.socket_id, auth, user_data, connection, gateway)).await {
                            Ok(frames) => frames,
                            Err(refused) => {
                                let _ = socket.send(Message::Text(refused.into())).await;
                                return close::UNAUTHORIZED;
                            }
                        }
                    }
                    Ok(Request::ClientEvent { event, channel, data }) => {
                        match Box::pin(state.client_event(event, channel, data, gateway)).await {
                            Ok(reply) => reply.into_iter().collect(),
                            Err(close) => return close,
                        }
                    }
                };
                for reply in replies {
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        return (0, "gone");
                    }
                }
                if subscribed {
                    state.deliver_directly(connection);
                }
            }
        }
    }
}

/// Whether a Pusher socket takes every delivery on hub channel `hub` as
/// [`Render::Pusher`] makes it: not on a cache channel (its replayed event must not come
/// twice) nor on the sign-in's `#` channels (their frames are the connection's own).
fn takes_as_rendered(hub: &str) -> bool {
    !pusher::is_cache_channel(hub) && !hub.contains('#')
}

#[cfg(test)]
mod tests;
