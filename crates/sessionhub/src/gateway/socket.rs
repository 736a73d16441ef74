//! `GET /websocket/{id}`: one connection of user `id`.
//!
//! One task per connection drives both directions with `select!`, so every way a
//! connection can end (client close, idle timeout, slow consumer, server shutdown,
//! oversized frame) is visible in one place.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::StreamExt;
use tokio::time::{Instant, sleep_until, timeout};

use super::Gateway;
use crate::error::ApiError;
use crate::hub::{Connection, Outbound};
use crate::protocol::{ClientFrame, FrameError, ServerFrame, UserId, close};

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

/// How long a close frame may take to go out before the connection is dropped anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub(crate) async fn upgrade(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let user: UserId = id
        .parse()
        .map_err(|e: crate::protocol::InvalidUserId| ApiError::bad_request(e.to_string()))?;
    let limit = gateway.config.socket.max_message_size;
    Ok(ws
        .max_message_size(limit)
        .max_frame_size(limit)
        // A small read buffer: most of a connection's memory is its buffers.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| run(socket, user, gateway)))
}

async fn run(mut socket: WebSocket, user: UserId, gateway: Gateway) {
    let mut connection = gateway.hub.connect();
    if let Err(e) = connection.join(&user.channel()).await {
        tracing::warn!(error = %e, "socket refused: cannot subscribe");
        let _ = send_close(&mut socket, close::BROKER_UNAVAILABLE).await;
        return;
    }
    tracing::debug!(user = %user, "socket open");
    let reason = drive(&mut socket, &mut connection, &user, &gateway).await;
    drop(connection);
    tracing::debug!(user = %user, reason = reason.1, "socket closed");
    if reason.0 != 0 {
        let _ = send_close(&mut socket, reason).await;
    }
}

/// Runs the connection until it ends; returns the close code to send (0: none, the client
/// closed or vanished).
async fn drive(
    socket: &mut WebSocket,
    connection: &mut Connection,
    user: &UserId,
    gateway: &Gateway,
) -> (u16, &'static str) {
    let config = &gateway.config.socket;
    let greeting = ServerFrame::Connected {
        id: user.as_str(),
        node: gateway.hub.node_id(),
    };
    if socket
        .send(Message::Text(greeting.to_text().into()))
        .await
        .is_err()
    {
        return (0, "gone");
    }
    let ping_every = config
        .ping_interval
        .min(config.idle_timeout / 2)
        .max(Duration::from_millis(10));
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut idle_deadline = Instant::now() + config.idle_timeout;
    let slow = connection.slow().clone();
    let shutdown = gateway.shutdown.clone();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return close::GOING_AWAY,
            () = slow.cancelled() => return close::SLOW_CONSUMER,
            () = sleep_until(idle_deadline) => return close::IDLE_TIMEOUT,
            outbound = connection.recv() => {
                let text = match outbound {
                    Some(Outbound::Text(text)) => text,
                    Some(Outbound::Close(code, reason)) => return (code, reason),
                    None => return close::GOING_AWAY,
                };
                // A send that blocks (the client stopped reading) must not outlive a
                // slow-consumer verdict or a shutdown.
                tokio::select! {
                    sent = socket.send(Message::Text(text)) => if sent.is_err() { return (0, "gone") },
                    () = slow.cancelled() => return close::SLOW_CONSUMER,
                    () = shutdown.cancelled() => return close::GOING_AWAY,
                }
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return (0, "gone");
                }
            }
            inbound = socket.next() => {
                idle_deadline = Instant::now() + config.idle_timeout;
                match inbound {
                    None | Some(Ok(Message::Close(_))) => return (0, "client closed"),
                    Some(Ok(Message::Text(text))) => {
                        if let Some(reply) = handle_frame(&text, gateway).await
                            && socket.send(Message::Text(reply.into())).await.is_err()
                        {
                            return (0, "gone");
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let reply = error_frame(&FrameError::Binary);
                        if socket.send(Message::Text(reply.into())).await.is_err() {
                            return (0, "gone");
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(e)) => return read_error(e),
                }
            }
        }
    }
}

/// Handles one client text frame; returns the error frame to send back, if any.
async fn handle_frame(text: &str, gateway: &Gateway) -> Option<String> {
    match ClientFrame::parse(text) {
        Ok(ClientFrame::Push { to, message }) => {
            match gateway.hub.publish(&to.channel(), message.into()).await {
                Ok(_) => None,
                Err(e) => Some(
                    ServerFrame::Error {
                        code: "broker_unavailable",
                        message: e.to_string(),
                    }
                    .to_text(),
                ),
            }
        }
        Err(e) => Some(error_frame(&e)),
    }
}

fn error_frame(e: &FrameError) -> String {
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
