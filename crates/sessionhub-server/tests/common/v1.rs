//! Protocol v1 (`GET /ws`) on the wire, for the black-box tests: the frames a client sends
//! and reads, and the push API's publish URL. The delivery edge cases (delivery.rs) and the
//! chaos runs (chaos.rs) both speak it.

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use super::{WAIT, Ws};

/// The last publication a client saw on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// A `subscribed` reply.
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub channel: String,
    pub epoch: String,
    pub offset: u64,
    pub recovered: bool,
    pub publications: Vec<(u64, Value)>,
}

/// A server frame, as far as these tests care.
#[derive(Debug)]
pub enum Frame {
    Connected {
        node: String,
    },
    Subscribed(Subscribed),
    Publication {
        channel: String,
        epoch: String,
        offset: u64,
        data: Value,
    },
    Disconnect {
        code: u16,
        reconnect: bool,
    },
    Error {
        code: String,
        message: String,
    },
    /// A close frame (its code), or the end of the stream (`None`).
    Closed(Option<u16>),
    /// Anything else; only ever shown in a failure message.
    Other(#[allow(dead_code)] Value),
}

pub fn parse(text: &str) -> Frame {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let s = |key: &str| v[key].as_str().unwrap_or_default().to_owned();
    match v["type"].as_str() {
        Some("connected") => Frame::Connected { node: s("node") },
        Some("subscribed") => Frame::Subscribed(Subscribed {
            channel: s("channel"),
            epoch: s("epoch"),
            offset: v["offset"].as_u64().expect("subscribed has an offset"),
            recovered: v["recovered"].as_bool().expect("subscribed says recovered"),
            publications: v["publications"]
                .as_array()
                .expect("subscribed has publications")
                .iter()
                .map(|p| (p["offset"].as_u64().unwrap(), p["data"].clone()))
                .collect(),
        }),
        Some("publication") => Frame::Publication {
            channel: s("channel"),
            epoch: s("epoch"),
            offset: v["offset"].as_u64().expect("publication has an offset"),
            data: v["data"].clone(),
        },
        Some("disconnect") => Frame::Disconnect {
            code: v["code"].as_u64().expect("disconnect has a code") as u16,
            reconnect: v["reconnect"].as_bool().expect("disconnect says reconnect"),
        },
        Some("error") => Frame::Error {
            code: s("code"),
            message: s("message"),
        },
        _ => Frame::Other(v),
    }
}

pub fn subscribe_frame(channel: &str, recover: Option<&Position>) -> String {
    let mut frame = json!({"type": "subscribe", "channel": channel});
    if let Some(p) = recover {
        frame["recover"] = json!({"epoch": p.epoch, "offset": p.offset});
    }
    frame.to_string()
}

/// Reads the next frame that is not a ping or pong.
pub async fn read_frame(ws: &mut Ws) -> anyhow::Result<Frame> {
    loop {
        match ws.next().await {
            None => return Ok(Frame::Closed(None)),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => return Ok(parse(&t)),
            Some(Ok(Message::Close(frame))) => {
                return Ok(Frame::Closed(frame.map(|f| u16::from(f.code))));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => bail!("unexpected frame {other:?}"),
        }
    }
}

/// Opens `/ws?user=<user>` and reads the greeting; returns the node's name.
pub async fn open_v1(base_ws: &str, user: &str) -> anyhow::Result<(Ws, String)> {
    let url = format!("{base_ws}/ws?user={user}");
    let (mut ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .context("connecting in time")??;
    match timeout(WAIT, read_frame(&mut ws))
        .await
        .context("a greeting in time")??
    {
        Frame::Connected { node } => Ok((ws, node)),
        other => bail!("expected a greeting, got {other:?}"),
    }
}

/// The URL that publishes to `channel`: `/socket/{id}` for a personal channel, the channel
/// API otherwise.
pub fn publish_url(base: &str, channel: &str) -> String {
    match channel.strip_prefix("user:") {
        Some(user) => format!("{base}/socket/{user}"),
        None => format!("{base}/api/channels/{channel}/publish"),
    }
}
