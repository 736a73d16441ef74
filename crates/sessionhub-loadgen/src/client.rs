//! WebSocket clients for every kind of target: sessionhub (`/websocket/{id}`, a greeting
//! frame, then each push as a text frame), Socket.IO servers (Engine.IO v4 over a
//! WebSocket, user chosen with `?user=`, pushes as `msg` events) and Pusher Channels servers
//! (`/app/{key}`, a public channel per user, pushes as events on it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;

use crate::engineio::{self, Packet, SioPacket};
use crate::http::push_u64;
use crate::payload::Payload;
use crate::pusher;
use crate::ws::Msg;
pub(crate) use crate::ws::Ws;

/// How long opening one connection (TCP, upgrade, handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// What kind of server a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Flavor {
    /// sessionhub: `/websocket/{id}`, `POST /socket/{id}`, `{"KEY","VALUE"}` frames.
    Sessionhub,
    /// A Socket.IO server (the peers): room per user, `msg` events, `push` event.
    Socketio,
    /// A Pusher Channels server (sessionhub's `/app/{key}`, Sockudo): a public channel per
    /// user, published through the signed HTTP API (`--pusher-app`).
    Pusher,
}

impl Flavor {
    /// The request path that opens a socket for `user` (`None`: a publisher that joins
    /// no user).
    pub(crate) fn ws_path(self, user: Option<&str>) -> anyhow::Result<String> {
        Ok(match (self, user) {
            (Self::Pusher, _) => pusher::ws_path()?,
            (Self::Sessionhub, Some(user)) => format!("/websocket/{user}"),
            (Self::Sessionhub, None) => "/websocket/loadgen-publisher".into(),
            (Self::Socketio, Some(user)) => {
                format!("/socket.io/?EIO=4&transport=websocket&user={user}")
            }
            (Self::Socketio, None) => "/socket.io/?EIO=4&transport=websocket".into(),
        })
    }

    /// What a client answers to [`Incoming::Ping`].
    pub(crate) fn pong(self) -> &'static [u8] {
        match self {
            Self::Pusher => pusher::PONG.as_bytes(),
            Self::Sessionhub | Self::Socketio => engineio::PONG.as_bytes(),
        }
    }

    /// Appends the frame a publisher socket sends to push `text` (a payload: it needs no
    /// JSON escaping) to user number `user`.
    pub(crate) fn push_frame_into(self, user: u32, text: &[u8], out: &mut Vec<u8>) {
        debug_assert!(!text.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20));
        let (before_user, before_text, end): (&[u8], &[u8], &[u8]) = match self {
            Self::Sessionhub => (br#"{"KEY":""#, br#"","VALUE":""#, br#""}"#),
            Self::Socketio => (br#"42["push",{"to":""#, br#"","msg":""#, br#""}]"#),
            Self::Pusher => unreachable!("Pusher publishes over HTTP (checked at start)"),
        };
        out.extend_from_slice(before_user);
        push_user_id(out, user);
        out.extend_from_slice(before_text);
        out.extend_from_slice(text);
        out.extend_from_slice(end);
    }

    /// What a received text frame means.
    pub(crate) fn classify(self, text: &[u8]) -> Incoming {
        match self {
            Self::Pusher if pusher::is_ping(text) => Incoming::Ping,
            Self::Sessionhub | Self::Pusher => match Payload::decode(text) {
                Some(p) => Incoming::Payload(p),
                None => Incoming::Other,
            },
            Self::Socketio => {
                if text == b"2" {
                    return Incoming::Ping;
                }
                // Fast path: the payload alphabet needs no JSON escaping, so it can be read
                // straight out of `42["msg","lg1 ..."]`.
                if let Some(rest) = text.strip_prefix(br#"42["msg",""#) {
                    return match Payload::decode(rest) {
                        Some(p) => Incoming::Payload(p),
                        None => Incoming::Other,
                    };
                }
                match std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| engineio::event_text(t, "msg"))
                    .and_then(|t| Payload::decode(t.as_bytes()))
                {
                    Some(p) => Incoming::Payload(p),
                    None => Incoming::Other,
                }
            }
        }
    }
}

/// A received frame, classified.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A benchmark message.
    Payload(Payload),
    /// An Engine.IO ping: answer [`engineio::PONG`].
    Ping,
    /// Anything else (greeting, errors).
    Other,
}

/// The user id of user number `index`.
pub(crate) fn user_id(index: u32) -> String {
    let mut id = Vec::new();
    push_user_id(&mut id, index);
    String::from_utf8(id).expect("an id is ASCII")
}

/// Appends the user id of user number `index`: the one spelling of a user id for sockets,
/// push frames and push URLs alike (a mismatch would read as lost messages).
pub(crate) fn push_user_id(out: &mut Vec<u8>, index: u32) {
    out.push(b'u');
    push_u64(out, u64::from(index));
}

/// `count` loopback source addresses from 127.0.0.2 up (0: let the kernel choose). Each
/// source address has its own ~28 000 ephemeral ports.
pub(crate) fn source_ips(count: u8) -> Vec<IpAddr> {
    (0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)))
        .collect()
}

/// Opens a socket to `node` for `user` from `source`, and completes the target's
/// handshake (sessionhub's greeting; Engine.IO open and namespace connect).
pub(crate) async fn connect(
    flavor: Flavor,
    node: SocketAddr,
    user: Option<&str>,
    source: Option<IpAddr>,
) -> anyhow::Result<Ws> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(flavor, node, user, source))
        .await
        .context("connect timed out")?
}

async fn connect_inner(
    flavor: Flavor,
    node: SocketAddr,
    user: Option<&str>,
    source: Option<IpAddr>,
) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding {ip}"))?;
    }
    let stream = socket.connect(node).await.context("TCP connect")?;
    stream.set_nodelay(true)?;
    let mut ws = Ws::handshake(stream, node, &flavor.ws_path(user)?)
        .await
        .context("WebSocket upgrade")?;
    match flavor {
        Flavor::Pusher => {
            let established = next_text(&mut ws).await.context("connection_established")?;
            if !established.contains("pusher:connection_established") {
                bail!("expected pusher:connection_established, got {established:?}");
            }
            if let Some(user) = user {
                ws.send_text(pusher::subscribe_frame(user).as_bytes())
                    .await?;
                loop {
                    let text = next_text(&mut ws).await.context("subscription")?;
                    if text.contains("subscription_succeeded") {
                        break;
                    }
                    if text.contains("subscription_error") || text.contains("pusher:error") {
                        bail!("subscription refused: {text}");
                    }
                    if pusher::is_ping(text.as_bytes()) {
                        ws.send_text(pusher::PONG.as_bytes()).await?;
                    }
                }
            }
        }
        Flavor::Sessionhub => {
            // The greeting says the socket has joined its user's channel.
            next_text(&mut ws).await.context("greeting")?;
        }
        Flavor::Socketio => {
            let open = next_text(&mut ws).await.context("Engine.IO open")?;
            if !matches!(engineio::parse(&open), Ok(Packet::Open(_))) {
                bail!("expected an Engine.IO open packet, got {open:?}");
            }
            ws.send_text(engineio::CONNECT.as_bytes()).await?;
            loop {
                let text = next_text(&mut ws).await.context("Socket.IO connect")?;
                match engineio::parse(&text) {
                    Ok(Packet::Message(SioPacket::Connect)) => break,
                    Ok(Packet::Ping) => ws.send_text(engineio::PONG.as_bytes()).await?,
                    Ok(Packet::Message(SioPacket::ConnectError(e))) => {
                        bail!("namespace refused: {e}")
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await? {
            Some(Msg::Text(t)) => return Ok(String::from_utf8_lossy(t).into_owned()),
            Some(Msg::Binary(_)) => {}
            None => bail!("connection ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        assert_eq!(
            Flavor::Sessionhub.ws_path(Some("u7")).unwrap(),
            "/websocket/u7"
        );
        assert_eq!(
            Flavor::Socketio.ws_path(Some("u7")).unwrap(),
            "/socket.io/?EIO=4&transport=websocket&user=u7"
        );
    }

    #[test]
    fn push_frames_carry_the_payload() {
        let p = Payload {
            step: 1,
            user: 7,
            seq: 9,
            due_us: 11,
        };
        let text = p.encode(32);
        let mut frame = Vec::new();
        Flavor::Sessionhub.push_frame_into(7, text.as_bytes(), &mut frame);
        let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v, json!({"KEY": "u7", "VALUE": text}));
        let mut frame = Vec::new();
        Flavor::Socketio.push_frame_into(7, text.as_bytes(), &mut frame);
        let frame = String::from_utf8(frame).unwrap();
        assert_eq!(Payload::decode(frame.as_bytes()), Some(p));
        assert!(frame.starts_with("42[\"push\","));
        assert_eq!(
            engineio::parse(&frame).unwrap(),
            Packet::Message(SioPacket::Event {
                name: "push".into(),
                args: vec![json!({"to": "u7", "msg": text})],
            })
        );
    }

    #[test]
    fn classifies_frames() {
        let p = Payload {
            step: 0,
            user: 1,
            seq: 2,
            due_us: 3,
        };
        let text = p.encode(0);
        assert_eq!(
            Flavor::Sessionhub.classify(text.as_bytes()),
            Incoming::Payload(p)
        );
        assert_eq!(
            Flavor::Sessionhub.classify(br#"{"type":"connected","id":"u1"}"#),
            Incoming::Other
        );
        let frame = engineio::event("msg", &[json!(text)]);
        assert_eq!(
            Flavor::Socketio.classify(frame.as_bytes()),
            Incoming::Payload(p)
        );
        // Not the fast path: a namespace, then the slow one finds the payload.
        let frame = format!("42/,[\"msg\",\"{text}\"]");
        assert_eq!(
            Flavor::Socketio.classify(frame.as_bytes()),
            Incoming::Payload(p)
        );
        assert_eq!(Flavor::Socketio.classify(b"2"), Incoming::Ping);
        assert_eq!(Flavor::Socketio.classify(b"40"), Incoming::Other);
    }

    #[test]
    fn source_addresses() {
        assert!(source_ips(0).is_empty());
        let ips = source_ips(3);
        assert_eq!(ips.len(), 3);
        assert_eq!(ips[0].to_string(), "127.0.0.2");
        assert_eq!(ips[2].to_string(), "127.0.0.4");
    }
}
