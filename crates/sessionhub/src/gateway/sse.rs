//! The SSE transport: `GET /sse` streams protocol v1's server frames as Server-Sent Events
//! (for clients that cannot open a WebSocket), and `POST /sse/publish` takes v1's `publish`
//! frame over plain HTTP. Both admit a client exactly as `/ws` does ([`super::admission`]),
//! and the stream keeps its channels' positions with the same state as a v1 socket
//! ([`V1`]), so recovery, gap detection and duplicates follow the same rules; only the
//! framing differs. `docs/protocol.md` ("SSE transport") specifies the wire format.
//!
//! A stream has no inbound direction: its channels come from the query, its last positions
//! from the `Last-Event-ID` header (which `EventSource` resends by itself), and every
//! `publication` event's `id` carries the positions of all its channels, so that a reconnect
//! to any node recovers each of them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, future, stream};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use super::admission::{
    ConnectQuery, Credentials, admit, authenticate, check_credentials, check_origin,
    client_address, connection_token, first_credentials_check,
};
use super::hooked::{self, Publishing, next_look};
use super::state::Gateway;
use super::tokens;
use super::v1::{self, Refused, V1};
use crate::auth::{TokenError, WsAuth};
use crate::broker::StreamPosition;
use crate::control::{self, Command};
use crate::error::ApiError;
use crate::hooks::{Denial, Transport, UNAVAILABLE};
use crate::hub::{Connection, Outbound, PRESENCE_EVENTS_PREFIX, session_channel};
use crate::protocol::v1::{Reply, Request};
use crate::protocol::{FrameError, UserId, close};
use crate::store::now_ms;

/// Most channels one stream may join: each one's position rides in every event id, which
/// comes back as a request header, so the id must stay well under a proxy's header limit
/// (16 channels of 160 characters make under 4 KiB).
pub(crate) const MAX_SSE_CHANNELS: usize = 16;

/// How long an `EventSource` waits before reconnecting after the stream ends (`retry:`).
const RETRY: Duration = Duration::from_millis(500);

/// Events buffered between the stream's task and the HTTP response: the hub's bounded
/// queue behind it decides when a client is too slow, as for sockets.
const BUFFERED_EVENTS: usize = 16;

/// The query of `GET /sse`, besides the credentials ([`ConnectQuery`]).
#[derive(Deserialize)]
pub(super) struct StreamQuery {
    /// Comma-separated channel names.
    channels: Option<String>,
    /// For clients that cannot set `Last-Event-ID` (an `EventSource` opened anew).
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
    /// Comma-separated subscribe tokens for the private channels among `channels`, in any
    /// order: each names its channel.
    tokens: Option<String>,
}

/// `GET /sse`: checks everything and joins every channel before answering, so that a client
/// that may not have this stream gets an HTTP error instead of an event stream.
pub(super) async fn stream(
    State(gateway): State<Gateway>,
    Query(query): Query<ConnectQuery>,
    Query(stream): Query<StreamQuery>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let requested = query
        .user
        .as_deref()
        .map(str::parse::<UserId>)
        .transpose()?;
    let (user, credentials) = admit(&gateway, requested, &query, peer, &headers).await?;
    let (user, hooked) = match hooked::connect(&gateway, &user, Transport::Sse, &headers).await {
        Ok(Some((user, hooked))) => (user, Some(hooked)),
        Ok(None) => (user, None),
        Err(denial) => return Err(denial_error(&denial)),
    };
    // The connect hook may name every channel itself.
    let hook_joins = hooked.as_ref().is_some_and(|h| !h.initial.is_empty());
    let mut channels = match stream.channels.as_deref() {
        None | Some("") if hook_joins => Vec::new(),
        named => channel_list(named)?,
    };
    // The token's channels claim: joined as if asked for, so that the event id carries their
    // positions too and a reopen recovers them.
    if let Credentials::Token {
        channels: claimed, ..
    } = &credentials
    {
        for channel in claimed {
            if !channels.contains(channel) {
                channels.push(channel.clone());
            }
        }
        if channels.len() > MAX_SSE_CHANNELS {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_SSE_CHANNELS} channels per stream, the token's channels included"
            )));
        }
    }
    let last_id = match headers.get("last-event-id") {
        Some(id) => Some(id.to_str().map_err(|_| bad_event_id())?),
        None => stream.last_event_id.as_deref(),
    };
    let mut since = match last_id {
        Some(id) => decode_event_id(id)?,
        None => HashMap::new(),
    };
    let mut v1 = V1::new(user.clone(), &credentials).with_hooks(hooked);
    let presented: Vec<&str> = stream
        .tokens
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .collect();
    let token_for = |channel: &str| {
        let names = |t: &&&str| tokens::claimed_channel(t).is_some_and(|c| c == channel);
        presented.iter().find(names).copied()
    };
    for channel in &channels {
        let token = token_for(channel);
        v1.may_join(channel, token, &gateway)
            .await
            .map_err(refused)?;
    }
    let mut connection = gateway.hub.connect(&user);
    if let Credentials::Session { id, .. } = &credentials {
        connection.join(&session_channel(id)).await?;
    }
    let greeting = v1.greeting(gateway.hub.node_id(), connection.id());
    let mut events = vec![
        Event::default()
            .event("connected")
            .retry(RETRY)
            .data(greeting),
    ];
    let mut subscribed = Vec::new();
    for channel in &channels {
        let from = since.remove(channel.as_str());
        let reply = v1
            .subscribe(
                None,
                channel,
                from.as_ref(),
                token_for(channel),
                &mut connection,
                &credentials,
                &gateway,
                false,
            )
            .await
            .map_err(refused)?;
        subscribed.push(reply);
    }
    subscribed.extend(
        v1.join_initial(&mut connection, &credentials, &gateway)
            .await,
    );
    let id = event_id(&v1);
    events.extend(subscribed.into_iter().map(|reply| {
        let kind = frame_type(&reply);
        with_id(Event::default().event(kind).data(reply), &id)
    }));
    let (tx, rx) = mpsc::channel(BUFFERED_EVENTS);
    let (last_tx, last_rx) = oneshot::channel();
    let task = run(
        tx,
        last_tx,
        v1,
        connection,
        user,
        credentials,
        gateway.clone(),
    );
    tokio::spawn(task);
    // The opening events, everything the task queues, then its last event: that one waits
    // for no room in the queue, so even a slow consumer that reads later learns why its
    // stream ended.
    let queued = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (event, rx))
    });
    let last = stream::once(last_rx).filter_map(|last| future::ready(last.ok()));
    let events = stream::iter(events)
        .chain(queued)
        .chain(last)
        .map(Ok::<_, Infallible>);
    let heartbeat = KeepAlive::new().interval(gateway.config.socket.sse_heartbeat);
    Ok((
        cors(&headers),
        // Proxies such as nginx would otherwise hold events back to fill a buffer.
        [(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        )],
        Sse::new(events).keep_alive(heartbeat),
    )
        .into_response())
}

/// CORS for a page on an allowed origin (the caller has checked it): unlike a WebSocket, an
/// `EventSource` or `fetch` from another origin may read the answer only if it says so. With
/// credentials, so that a session cookie works across origins too.
fn cors(headers: &HeaderMap) -> HeaderMap {
    let mut cors = HeaderMap::new();
    if let Some(origin) = headers.get(header::ORIGIN) {
        cors.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        let yes = HeaderValue::from_static("true");
        cors.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, yes);
        cors.insert(header::VARY, HeaderValue::from_static("origin"));
    }
    cors
}

/// `OPTIONS /sse/publish`: the preflight of a cross-origin publish, granted only to the
/// origins that may use the stream, so that no other page can send the JSON content type.
pub(super) async fn preflight(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_origin(&gateway, &headers)?;
    let allow = [
        (
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        ),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type, authorization, x-auth-token"),
        ),
        (
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        ),
    ];
    Ok((StatusCode::NO_CONTENT, cors(&headers), allow).into_response())
}

/// The stream's task: runs until the stream ends, and says why in a last `disconnect`
/// event.
async fn run(
    tx: mpsc::Sender<Event>,
    last_tx: oneshot::Sender<Event>,
    mut v1: V1,
    mut connection: Connection,
    user: UserId,
    mut credentials: Credentials,
    gateway: Gateway,
) {
    let node = gateway.hub.node_id().to_owned();
    tracing::info!(%node, user = %user, protocol = "sse", "stream open");
    // The server API's reason, when it disconnected the stream.
    let mut told = None;
    let reason = drive(
        &tx,
        &mut v1,
        &mut connection,
        &mut credentials,
        &gateway,
        &mut told,
    )
    .await;
    // Counted before the connection leaves the hub, as for sockets.
    metrics::counter!("sessionhub_disconnects_total", "reason" => reason.1).increment(1);
    drop(connection);
    if let Some(hooked) = v1.hooked() {
        hooked.disconnected(reason.0, told.as_deref().unwrap_or(reason.1));
    }
    tracing::info!(%node, user = %user, protocol = "sse", code = reason.0, reason = reason.1, "stream closed");
    drop(tx);
    if reason.0 != 0 {
        let said = (reason.0, told.as_deref().unwrap_or(reason.1));
        let last = Event::default()
            .event("disconnect")
            .data(Reply::disconnect(said));
        let _ = last_tx.send(last);
    }
}

/// Forwards live publications until something ends the stream; returns the close code and
/// reason of v1's sockets (0: the client went away). A disconnect by the server API leaves
/// its reason in `told`.
async fn drive(
    tx: &mpsc::Sender<Event>,
    v1: &mut V1,
    connection: &mut Connection,
    credentials: &mut Credentials,
    gateway: &Gateway,
    told: &mut Option<String>,
) -> (u16, &'static str) {
    let mut credentials_check = first_credentials_check(credentials, gateway);
    let slow = connection.slow().clone();
    let shutdown = gateway.shutdown.clone();
    // In a drain, the moment this stream ends (see the WebSocket loop).
    let mut drain_turn: Option<tokio::time::Instant> = None;
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled(), if drain_turn.is_none() => {
                drain_turn = Some(gateway.drain_turn(connection.id()));
                continue;
            }
            () = sleep_until(drain_turn.unwrap_or(credentials_check)), if drain_turn.is_some() => {
                return close::SERVICE_RESTART;
            }
            () = slow.cancelled() => return close::SLOW_CONSUMER,
            // The response was dropped: the client left, or a heartbeat could not be written.
            () = tx.closed() => return (0, "gone"),
            () = sleep_until(next_look(credentials_check, v1.hooked_ref())) => {
                if let Err(denial) = hooked::look_if_due(v1.hooked()).await {
                    *told = Some(denial.close_reason().to_owned());
                    return (denial.close_code(), "hook");
                }
                if tokio::time::Instant::now() < credentials_check {
                    continue;
                }
                match check_credentials(credentials, gateway).await {
                    Some(next) => credentials_check = next,
                    None if matches!(credentials, Credentials::Token { .. }) => return close::TOKEN_EXPIRED,
                    None => return close::SESSION_ENDED,
                }
                continue;
            }
            outbound = connection.recv() => match outbound {
                Outbound::Message(delivery) => match v1.outbound(&delivery) {
                    Err(ended) => return ended,
                    Ok(None) => continue,
                    Ok(Some(frame)) => {
                        crate::hub::delivery_latency().record(delivery.age().as_secs_f64());
                        // A presence channel's join or leave comes as its own frame.
                        let kind = if delivery.channel().starts_with(PRESENCE_EVENTS_PREFIX) {
                            frame_type(&frame)
                        } else {
                            "publication".into()
                        };
                        let event = Event::default().event(kind).data(frame.as_str());
                        with_id(event, &event_id(v1))
                    }
                },
                Outbound::Resync => return close::INSUFFICIENT_STATE,
                // `POST /sse/refresh` (on any node) verified a new token for this stream.
                Outbound::Refresh(refresh) => {
                    let Credentials::Token { expires, channels } = &mut *credentials else { continue };
                    let left = refresh.expires_ms.saturating_sub(now_ms());
                    *expires = tokio::time::Instant::now() + Duration::from_millis(left);
                    channels.clone_from(&refresh.channels);
                    credentials_check = *expires;
                    v1.token_replaced(credentials);
                    let refreshed = Reply::Refreshed { id: None, expires_in: left / 1000 };
                    Event::default().event("refreshed").data(refreshed.to_text())
                }
                Outbound::Close(code, reason) => return (code, reason),
                // A stream has no wire ([`crate::wire`]): nothing is ever half-written.
                Outbound::Flush => continue,
                Outbound::Disconnect(disconnect) => {
                    *told = Some(disconnect.reason.clone());
                    return disconnect.code;
                }
                // The server API's subscribe or unsubscribe: the events a reopen with the
                // new channels would bring, with the id that names them.
                order @ (Outbound::Subscribe(_) | Outbound::Unsubscribe(_)) => {
                    let mut events = Vec::new();
                    for reply in v1.by_server(&order, connection, credentials, gateway).await {
                        let kind = frame_type(&reply);
                        events.push(with_id(Event::default().event(kind).data(reply), &event_id(v1)));
                    }
                    for event in events {
                        if tx.send(event).await.is_err() {
                            return (0, "gone");
                        }
                    }
                    continue;
                }
            },
        };
        // A send that waits (the client stopped reading) must not outlive a slow-consumer
        // verdict or a shutdown.
        tokio::select! {
            biased;
            sent = tx.send(event) => if sent.is_err() { return (0, "gone") },
            () = slow.cancelled() => return close::SLOW_CONSUMER,
            () = shutdown.cancelled(), if drain_turn.is_none() => return close::SERVICE_RESTART,
        }
    }
}

/// A v1 frame's `type`, which names its SSE event (`subscribed`, `join`, `error`, ...).
fn frame_type(frame: &str) -> String {
    serde_json::from_str::<serde_json::Value>(frame)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "error".into())
}

/// `POST /sse/publish`: v1's `publish` frame as a JSON body, answered with v1's `published`
/// reply. The same credentials as the stream; `Content-Type: application/json` is required
/// so that a cross-site form (which cannot send it without a CORS preflight) cannot publish
/// with the user's cookie.
pub(super) async fn publish(
    State(gateway): State<Gateway>,
    Query(query): Query<ConnectQuery>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_origin(&gateway, &headers)?;
    require_json(&headers)?;
    let requested = query
        .user
        .as_deref()
        .map(str::parse::<UserId>)
        .transpose()?;
    let (user, _) = authenticate(&gateway, requested, query.token.as_deref(), &headers).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| frame_error(FrameError::NotJson("not UTF-8".into())))?;
    let (id, channel, data, idempotency_key) = match Request::parse(text) {
        Ok(Request::Publish {
            channel,
            data,
            id,
            idempotency_key,
        }) => (id, channel, data, idempotency_key),
        Ok(_) => {
            let only = FrameError::Message("only a publish frame can be sent here".into());
            return Err(frame_error(only));
        }
        Err((e, _)) => return Err(frame_error(e)),
    };
    v1::may_publish(&channel, &gateway).map_err(frame_error)?;
    let address = peer.map(|p| client_address(p.0.0, &headers, &gateway));
    v1::publish_rate(&user, address, &gateway).await?;
    let data = match &gateway.hooks {
        None => data,
        Some(hooks) => {
            let caller = hooked::sse_publisher(user, &headers);
            match hooked::publish(&**hooks, &caller, &channel, data).await {
                Ok(Publishing::Publish(data)) => data,
                Ok(Publishing::Handled) => {
                    let json = [(header::CONTENT_TYPE, "application/json")];
                    let reply = v1::handled(id, &channel);
                    return Ok((cors(&headers), json, reply).into_response());
                }
                Err(denial) => return Err(denial_error(&denial)),
            }
        }
    };
    let published = v1::publish_checked(id, &channel, &data, idempotency_key, &gateway).await?;
    let json = [(header::CONTENT_TYPE, "application/json")];
    Ok((cors(&headers), json, published).into_response())
}

/// A hook's refusal as an HTTP error: 503 when the hook could not be asked, else 403.
fn denial_error(denial: &Denial) -> ApiError {
    if denial.code == UNAVAILABLE {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        return ApiError::new(status, "hook_unavailable", denial.reason.clone());
    }
    ApiError::new(StatusCode::FORBIDDEN, "denied", denial.reason.clone())
}

/// Refuses a body that is not `Content-Type: application/json`: a cross-site form cannot
/// send that type without a CORS preflight, which only allowed origins get.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if json {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the frame as JSON, with Content-Type: application/json",
    ))
}

/// The body of `POST /sse/refresh`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    /// The stream's `client`, from its `connected` event: `<node>/<n>`.
    client: String,
    /// The new connection token.
    token: String,
}

/// `POST /sse/refresh`: a stream's `refresh`, which it cannot send itself. The new token is
/// verified here, on whichever node the request reaches, and the stream's node is told
/// through the control channel to move the stream's expiry; the stream then sends a
/// `refreshed` event, which is the confirmation. The token is the credential: it reaches
/// only its own user's stream of that id, so a token for another user extends nothing.
pub(super) async fn refresh(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_origin(&gateway, &headers)?;
    require_json(&headers)?;
    let body: RefreshBody = serde_json::from_slice(&body)
        .map_err(|e| frame_error(FrameError::Message(e.to_string())))?;
    if gateway.security().ws_auth != WsAuth::Token {
        let e = TokenError::NotUsed;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            e.code(),
            e.to_string(),
        ));
    }
    let target = body
        .client
        .rsplit_once('/')
        .and_then(|(node, n)| Some((node.to_owned(), n.parse::<u64>().ok()?)));
    let Some((node, connection)) = target else {
        return Err(ApiError::bad_request(
            "client: the `client` of the stream's connected event, <node>/<n>",
        ));
    };
    let (user, credentials) = connection_token(&gateway, Some(&body.token))
        .await
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()))?;
    let Credentials::Token { expires, channels } = credentials else {
        let e = TokenError::Invalid;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            e.code(),
            e.to_string(),
        ));
    };
    let left = expires.saturating_duration_since(tokio::time::Instant::now());
    let command = Command::Refresh {
        user: user.to_string(),
        node,
        connection,
        expires_ms: now_ms() + u64::try_from(left.as_millis()).unwrap_or(u64::MAX / 2),
        channels,
    };
    control::send(&gateway.hub, &command).await?;
    let sent = serde_json::json!({"type": "refresh_sent", "expires_in": left.as_secs()});
    let json = [(header::CONTENT_TYPE, "application/json")];
    Ok((StatusCode::ACCEPTED, cors(&headers), json, sent.to_string()).into_response())
}

/// A refused subscribe as an HTTP error.
fn refused(refused: Refused) -> ApiError {
    match refused {
        Refused::Frame(e) => frame_error(e),
        Refused::Broker(e) => e.into(),
        Refused::Presence(e) => e.into(),
        Refused::Token(e) => ApiError::new(StatusCode::FORBIDDEN, e.code(), e.to_string()),
        Refused::Denied(denial) => denial_error(&denial),
    }
}

/// A refused frame as an HTTP error: 403 for a permission, 400 for the rest.
fn frame_error(e: FrameError) -> ApiError {
    let status = match e {
        FrameError::SubscribeForbidden | FrameError::PublishForbidden => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.code(), e.to_string())
}

/// The channels of `?channels=a,b`: at least one, at most [`MAX_SSE_CHANNELS`], no repeats.
fn channel_list(channels: Option<&str>) -> Result<Vec<String>, ApiError> {
    let list: Vec<String> = channels
        .unwrap_or_default()
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        return Err(ApiError::bad_request(
            "name the channels: /sse?channels=a,b",
        ));
    }
    if list.len() > MAX_SSE_CHANNELS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_SSE_CHANNELS} channels per stream"
        )));
    }
    if list.iter().enumerate().any(|(i, c)| list[..i].contains(c)) {
        return Err(frame_error(FrameError::AlreadySubscribed));
    }
    Ok(list)
}

/// The event id: every channel's position as `channel=epoch:offset`, comma-separated,
/// sorted by channel. Channel names contain no `=` or `,`, and epochs (base64url) no `:`,
/// so the first `=` ends the name and the last `:` starts the offset.
fn event_id(v1: &V1) -> String {
    let mut positions: Vec<_> = v1.positions().collect();
    positions.sort_unstable();
    let pairs: Vec<String> = positions
        .into_iter()
        .map(|(channel, epoch, offset)| format!("{channel}={epoch}:{offset}"))
        .collect();
    pairs.join(",")
}

/// `event` with the id `id`, unless there is no position to give (no channel keeps history).
fn with_id(event: Event, id: &str) -> Event {
    if id.is_empty() { event } else { event.id(id) }
}

fn bad_event_id() -> ApiError {
    ApiError::bad_request("Last-Event-ID: expected channel=epoch:offset,...")
}

/// Reads an event id back into each channel's position; anything malformed is a 400, so
/// that a client never silently restarts from nothing.
fn decode_event_id(id: &str) -> Result<HashMap<String, StreamPosition>, ApiError> {
    let bad = bad_event_id;
    if id.is_empty() {
        return Ok(HashMap::new());
    }
    let mut positions = HashMap::new();
    for pair in id.split(',') {
        let (channel, position) = pair.split_once('=').ok_or_else(bad)?;
        let (epoch, offset) = position.rsplit_once(':').ok_or_else(bad)?;
        let offset = offset.parse().map_err(|_| bad())?;
        if positions.len() >= MAX_SSE_CHANNELS || epoch.is_empty() {
            return Err(bad());
        }
        let position = StreamPosition {
            epoch: epoch.to_owned(),
            offset,
        };
        positions.insert(channel.to_owned(), position);
    }
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_malformed_ones_are_refused() {
        let decoded = decode_event_id("room:1=ab-_C9:4,user:alice@x.y=e1:0").unwrap();
        assert_eq!(decoded["room:1"].epoch, "ab-_C9");
        assert_eq!(decoded["room:1"].offset, 4);
        assert_eq!(decoded["user:alice@x.y"].offset, 0);
        assert!(decode_event_id("").unwrap().is_empty());
        for bad in [
            "room:1",
            "room:1=e",
            "room:1=e:x",
            "room:1=:3",
            "a=e:1,",
            "\u{0}",
        ] {
            assert!(decode_event_id(bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_SSE_CHANNELS)
            .map(|n| format!("c{n}=e:1"))
            .collect();
        assert!(decode_event_id(&many.join(",")).is_err(), "bounded");
    }

    #[test]
    fn channel_lists_are_bounded_and_without_repeats() {
        assert_eq!(channel_list(Some("a,b")).unwrap(), ["a", "b"]);
        assert!(channel_list(None).is_err());
        assert!(channel_list(Some(",")).is_err());
        assert!(channel_list(Some("a,a")).is_err());
        let many: Vec<String> = (0..=MAX_SSE_CHANNELS).map(|n| format!("c{n}")).collect();
        assert!(channel_list(Some(&many.join(","))).is_err());
    }
}
