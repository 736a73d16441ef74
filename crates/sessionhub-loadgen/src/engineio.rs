//! Just enough Engine.IO v4 / Socket.IO v5 to be a client over a WebSocket.
//!
//! Every WebSocket text frame is one Engine.IO packet: a type digit, then data.
//! `0{json}` open, `1` close, `2` ping (answer `3` pong), `4...` a message carrying one
//! Socket.IO packet: `0` connect, `1` disconnect, `2[...]` event, `4` connect error; an
//! optional `/namespace,` and ack id may come between the type and the JSON.

use serde_json::Value;

/// One Engine.IO packet received from the server.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Packet {
    /// `0{...}`: the handshake (sid, pingInterval...).
    Open(Value),
    /// `1`: the server closes.
    Close,
    /// `2`: the server pings; the client must answer [`PONG`].
    Ping,
    /// `3`: a pong.
    Pong,
    /// `4` + a Socket.IO packet.
    Message(SioPacket),
    /// `5`, `6`: upgrade and noop, unused over a plain WebSocket.
    Other,
}

/// A Socket.IO packet inside an Engine.IO message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SioPacket {
    /// `0{...}`: the namespace is connected.
    Connect,
    /// `1`: the namespace was disconnected by the server.
    Disconnect,
    /// `2["name", args...]`: an event.
    Event {
        /// The event name.
        name: String,
        /// Its arguments.
        args: Vec<Value>,
    },
    /// `4{...}`: the server refused the namespace.
    ConnectError(Value),
    /// Acks and binary packets, which the benchmarks never use.
    Other,
}

/// Why a frame could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParseError(pub(crate) String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad Engine.IO frame: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

/// The client's answer to a [`Packet::Ping`].
pub(crate) const PONG: &str = "3";

/// The client's request to join the default namespace.
pub(crate) const CONNECT: &str = "40";

/// Parses one WebSocket text frame.
pub(crate) fn parse(frame: &str) -> Result<Packet, ParseError> {
    let mut chars = frame.chars();
    let kind = chars.next().ok_or_else(|| ParseError("empty".into()))?;
    let rest = chars.as_str();
    match kind {
        '0' => serde_json::from_str(rest)
            .map(Packet::Open)
            .map_err(|e| ParseError(format!("open: {e}"))),
        '1' => Ok(Packet::Close),
        '2' => Ok(Packet::Ping),
        '3' => Ok(Packet::Pong),
        '4' => parse_sio(rest).map(Packet::Message),
        '5' | '6' => Ok(Packet::Other),
        other => Err(ParseError(format!("unknown packet type {other:?}"))),
    }
}

fn parse_sio(packet: &str) -> Result<SioPacket, ParseError> {
    let mut chars = packet.chars();
    let kind = chars
        .next()
        .ok_or_else(|| ParseError("empty message".into()))?;
    let mut rest = chars.as_str();
    // Optional namespace: "/chat," (the default namespace "/" is never written).
    if rest.starts_with('/') {
        rest = rest.split_once(',').map_or("", |(_, after)| after);
    }
    // Optional ack id.
    rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    match kind {
        '0' => Ok(SioPacket::Connect),
        '1' => Ok(SioPacket::Disconnect),
        '2' => {
            let value: Value =
                serde_json::from_str(rest).map_err(|e| ParseError(format!("event: {e}")))?;
            let Value::Array(mut items) = value else {
                return Err(ParseError("event is not an array".into()));
            };
            if items.is_empty() {
                return Err(ParseError("event without a name".into()));
            }
            let Value::String(name) = items.remove(0) else {
                return Err(ParseError("event name is not a string".into()));
            };
            Ok(SioPacket::Event { name, args: items })
        }
        '4' => Ok(SioPacket::ConnectError(
            serde_json::from_str(rest).unwrap_or(Value::Null),
        )),
        _ => Ok(SioPacket::Other),
    }
}

/// The frame that emits event `name` with `args` on the default namespace.
#[cfg(test)]
pub(crate) fn event(name: &str, args: &[Value]) -> String {
    let mut items = Vec::with_capacity(args.len() + 1);
    items.push(Value::String(name.to_owned()));
    items.extend_from_slice(args);
    format!("42{}", Value::Array(items))
}

/// If `frame` is event `name`, its first argument when that is a string. The fast path of
/// the fan-out clients.
pub(crate) fn event_text(frame: &str, name: &str) -> Option<String> {
    match parse(frame).ok()? {
        Packet::Message(SioPacket::Event { name: n, mut args })
            if n == name && !args.is_empty() =>
        {
            match args.swap_remove(0) {
                Value::String(s) => Some(s),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_handshake() {
        let p = parse(r#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#)
            .unwrap();
        let Packet::Open(v) = p else { panic!("{p:?}") };
        assert_eq!(v["sid"], "abc");
        assert_eq!(v["pingInterval"], 25000);
    }

    #[test]
    fn parses_control_packets() {
        assert_eq!(parse("2").unwrap(), Packet::Ping);
        assert_eq!(parse("3").unwrap(), Packet::Pong);
        assert_eq!(parse("1").unwrap(), Packet::Close);
        assert_eq!(parse("6").unwrap(), Packet::Other);
        assert!(parse("").is_err());
        assert!(parse("9").is_err());
    }

    #[test]
    fn parses_socketio_packets() {
        assert_eq!(
            parse(r#"40{"sid":"x"}"#).unwrap(),
            Packet::Message(SioPacket::Connect)
        );
        assert_eq!(parse("41").unwrap(), Packet::Message(SioPacket::Disconnect));
        assert_eq!(
            parse(r#"44{"message":"nope"}"#).unwrap(),
            Packet::Message(SioPacket::ConnectError(json!({"message": "nope"})))
        );
        assert_eq!(
            parse(r#"42["msg","hello",2]"#).unwrap(),
            Packet::Message(SioPacket::Event {
                name: "msg".into(),
                args: vec![json!("hello"), json!(2)],
            })
        );
    }

    #[test]
    fn skips_namespace_and_ack_id() {
        assert_eq!(
            parse(r#"42/chat,17["msg","hi"]"#).unwrap(),
            Packet::Message(SioPacket::Event {
                name: "msg".into(),
                args: vec![json!("hi")],
            })
        );
        assert_eq!(
            parse(r#"4212["msg"]"#).unwrap(),
            Packet::Message(SioPacket::Event {
                name: "msg".into(),
                args: vec![],
            })
        );
    }

    #[test]
    fn rejects_bad_events() {
        assert!(parse("42").is_err());
        assert!(parse("42[]").is_err());
        assert!(parse("42[1,2]").is_err());
        assert!(parse(r#"42{"a":1}"#).is_err());
    }

    #[test]
    fn builds_events() {
        let frame = event("push", &[json!({"to": "u1", "msg": "a \"quoted\" text"})]);
        assert!(frame.starts_with(r#"42["push",{"#), "{frame}");
        assert_eq!(
            parse(&frame).unwrap(),
            Packet::Message(SioPacket::Event {
                name: "push".into(),
                args: vec![json!({"to": "u1", "msg": "a \"quoted\" text"})],
            })
        );
    }

    #[test]
    fn extracts_event_text() {
        assert_eq!(
            event_text(r#"42["msg","lg1 0 1 2 3 "]"#, "msg").as_deref(),
            Some("lg1 0 1 2 3 ")
        );
        assert_eq!(event_text(r#"42["other","x"]"#, "msg"), None);
        assert_eq!(event_text(r#"42["msg",5]"#, "msg"), None);
        assert_eq!(event_text("2", "msg"), None);
    }
}
