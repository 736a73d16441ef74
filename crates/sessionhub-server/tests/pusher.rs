//! The Pusher Channels endpoint (`GET /app/{key}`, protocol 7) against unmodified pusher-js
//! 8 in Node (tests/pusher/driver.mjs) and real server processes: connect, subscribe and
//! unsubscribe, private channels with a good and a forged signature, client events,
//! publications from the push API and from protocol v1 sockets (and back), cache channels,
//! presence across three nodes, an unknown key, three nodes on one Redis, the HTTP API's
//! events (by name, `socket_id` left out). What pusher-js never sends or hides (malformed
//! frames, a silent client, a flood of client events, limits, encrypted data, a session
//! cookie, a drain, a client that stops reading) goes over a raw WebSocket from Rust.
//!
//! Over 700 lines: eighteen scenarios, each a conversation too long to share a helper with
//! the others (the pusher-js driver's Rust side is `common::pusher::js`).
//!
//! Prerequisites: Node.js 20+ and `npm ci` in tests/pusher (pusher-js, pinned in its
//! package-lock.json); the test runs `npm ci` itself if a package is missing
//! (`common::pusher`).

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sessionhub_testkit::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use common::pusher::raw::next_event;
use common::{WAIT, Ws};

use common::pusher::js::{APP, Clients, KEY, SECRET};
/// A node speaking for the test app, with `extra` flags.
fn pusher_node(extra: &[&str]) -> Node {
    let mut args = vec!["--pusher-app", APP];
    args.extend_from_slice(extra);
    common::node(&args)
}

/// Three nodes speaking for the test app, client events on, on a Redis of the test's own.
fn pusher_cluster() -> (sessionhub_testkit::RedisServer, Vec<Node>) {
    common::cluster_with(3, &["--pusher-app", APP, "--pusher-client-events"])
}

/// Publishes `message` on `channel` through the push API of `node`.
async fn publish(node: &Node, channel: &str, message: Value) {
    let url = format!("{}/api/channels/{channel}/publish", node.http());
    let response = common::http()
        .post(url)
        .json(&json!({ "message": message }))
        .send()
        .await
        .expect("the push API answers");
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_connects_subscribes_and_gets_push_api_publications() {
    let node = pusher_node(&[]);
    let mut clients = Clients::start().await;
    let socket_id = clients.connect("a", &node).await;
    let (left, right) = socket_id.split_once('.').expect("a dot");
    assert!(
        [left, right]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        "{socket_id} matches ^\\d+\\.\\d+$"
    );
    let other = clients.connect("b", &node).await;
    assert_ne!(socket_id, other);

    clients.subscribed("a", "news").await;
    publish(&node, "news", json!({"n": 1})).await;
    let got = clients.event("a", "news", "message").await;
    assert_eq!(got["data"], json!({"n": 1}), "{got}");
    publish(&node, "news", json!("plain text")).await;
    let got = clients
        .wait(|e| e["client"] == "a" && e["data"] == "plain text")
        .await;
    assert_eq!(got["event"], "message");

    // Unsubscribed: nothing more on news; subscribed again: it comes again.
    clients
        .send(json!({"cmd": "unsubscribe", "client": "a", "channel": "news"}))
        .await;
    clients.subscribed("a", "sentinel").await;
    publish(&node, "news", json!({"n": 2})).await;
    publish(&node, "sentinel", json!({"after": 2})).await;
    clients.event("a", "sentinel", "message").await;
    assert_eq!(clients.events("a", "news", "message").len(), 2);
    clients.subscribed("a", "news").await;
    publish(&node, "news", json!({"n": 3})).await;
    clients
        .wait(|e| e["client"] == "a" && e["data"] == json!({"n": 3}))
        .await;
    assert!(
        clients.seen(|e| e["data"] == json!({"n": 2})).is_empty(),
        "nothing published while unsubscribed arrived"
    );
    clients.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_channel_takes_a_correct_signature_and_refuses_a_forged_one() {
    let node = pusher_node(&[]);
    let mut clients = Clients::start().await;
    clients.connect("good", &node).await;
    clients
        .connect_with("forger", &node, KEY, "not-the-secret")
        .await;
    clients
        .wait(|e| e["client"] == "forger" && e["type"] == "connected")
        .await;
    clients.subscribed("good", "private-orders").await;
    clients.subscribe("forger", "private-orders").await;
    let refused = clients
        .event("forger", "private-orders", "pusher:subscription_error")
        .await;
    assert_eq!(refused["data"]["type"], "AuthError", "{refused}");
    assert_eq!(refused["data"]["status"], 401, "{refused}");

    publish(&node, "private-orders", json!({"order": 7})).await;
    clients.event("good", "private-orders", "message").await;
    // The forger is not on the channel: a later publication on a public channel it is on
    // arrives, the private one never did.
    clients.subscribed("forger", "news").await;
    publish(&node, "news", json!({"after": true})).await;
    clients.event("forger", "news", "message").await;
    assert!(
        clients
            .events("forger", "private-orders", "message")
            .is_empty()
    );
    clients.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_reach_the_other_subscribers_and_v1_sockets_never_the_sender() {
    let node = pusher_node(&["--pusher-client-events"]);
    let mut clients = Clients::start().await;
    clients.connect("a", &node).await;
    clients.connect("b", &node).await;
    clients.subscribed("a", "private-chat").await;
    clients.subscribed("b", "private-chat").await;
    let (mut v1, _) = common::v1::open_v1(&node.ws(), "carol").await.unwrap();
    common::send_text(&mut v1, &common::v1::subscribe_frame("private-chat", None)).await;
    let common::v1::Frame::Subscribed(_) = common::v1::read_frame(&mut v1).await.unwrap() else {
        panic!("the v1 socket subscribes");
    };

    let trigger = |client: &str, n: u32| {
        json!({"cmd": "trigger", "client": client, "channel": "private-chat",
            "event": "client-typing", "data": {"from": client, "n": n}})
    };
    clients.send(trigger("a", 1)).await;
    let got = clients.event("b", "private-chat", "client-typing").await;
    assert_eq!(got["data"], json!({"from": "a", "n": 1}));
    // The v1 socket on the same channel gets it as a publication.
    let common::v1::Frame::Publication { channel, data, .. } =
        common::v1::read_frame(&mut v1).await.unwrap()
    else {
        panic!("a publication");
    };
    assert_eq!(
        (channel.as_str(), data),
        ("private-chat", json!({"from": "a", "n": 1}))
    );
    // b answers; when a has b's event, it would have had its own (sent first) already.
    clients.send(trigger("b", 2)).await;
    clients
        .wait(|e| e["client"] == "a" && e["data"] == json!({"from": "b", "n": 2}))
        .await;
    assert!(
        clients
            .seen(|e| e["client"] == "a" && e["data"]["from"] == "a")
            .is_empty(),
        "a never gets its own client event"
    );
    assert!(
        clients
            .seen(|e| e["client"] == "b" && e["data"]["from"] == "b")
            .is_empty(),
        "b never gets its own client event"
    );

    // And a v1 publication reaches both pusher-js clients.
    let publish = json!({"type": "publish", "channel": "private-chat", "data": {"from": "v1"}});
    common::send_text(&mut v1, &publish.to_string()).await;
    for client in ["a", "b"] {
        let got = clients
            .wait(|e| e["client"] == client && e["data"] == json!({"from": "v1"}))
            .await;
        assert_eq!(got["event"], "message", "{got}");
    }
    clients.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_need_the_app_to_enable_them() {
    let node = pusher_node(&[]);
    let mut clients = Clients::start().await;
    clients.connect("a", &node).await;
    clients.connect("b", &node).await;
    clients.subscribed("a", "private-chat").await;
    clients.subscribed("b", "private-chat").await;
    let trigger = json!({"cmd": "trigger", "client": "a", "channel": "private-chat",
        "event": "client-typing", "data": {}});
    clients.send(trigger).await;
    let error = clients
        .wait(|e| e["client"] == "a" && e["type"] == "error")
        .await;
    let message = error["data"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not enabled"), "{error}");
    assert!(
        clients
            .events("b", "private-chat", "client-typing")
            .is_empty()
    );
    clients.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_channel_replays_its_last_event_or_says_it_missed() {
    let node = pusher_node(&[]);
    let mut clients = Clients::start().await;
    clients.connect("first", &node).await;
    clients.subscribed("first", "cache-prices").await;
    clients
        .event("first", "cache-prices", "pusher:cache_miss")
        .await;
    publish(&node, "cache-prices", json!({"eur": 1})).await;
    publish(&node, "cache-prices", json!({"eur": 2})).await;
    clients
        .wait(|e| e["client"] == "first" && e["data"] == json!({"eur": 2}))
        .await;

    clients.connect("later", &node).await;
    clients.subscribed("later", "cache-prices").await;
    let replayed = clients.event("later", "cache-prices", "message").await;
    assert_eq!(replayed["data"], json!({"eur": 2}), "the last one only");
    publish(&node, "cache-prices", json!({"eur": 3})).await;
    clients
        .wait(|e| e["client"] == "later" && e["data"] == json!({"eur": 3}))
        .await;
    assert_eq!(clients.events("later", "cache-prices", "message").len(), 2);
    assert!(
        clients
            .events("later", "cache-prices", "pusher:cache_miss")
            .is_empty()
    );
    clients.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_is_refused_with_4001() {
    let node = pusher_node(&[]);
    let mut clients = Clients::start().await;
    clients
        .connect_with("a", &node, "no-such-key", SECRET)
        .await;
    let error = clients
        .wait(|e| e["client"] == "a" && e["type"] == "error")
        .await;
    // The close, as pusher-js reports it: a WebSocketError holding the PusherError.
    assert_eq!(error["data"]["data"]["code"], 4001, "{error}");
    // Refused: pusher-js gives up rather than retrying.
    clients
        .wait(|e| e["client"] == "a" && e["type"] == "state" && e["current"] == "disconnected")
        .await;
    clients.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_and_a_client_event_cross_three_nodes_on_one_redis() {
    let (_redis, nodes) = pusher_cluster();
    let mut clients = Clients::start().await;
    let one = clients.connect("one", &nodes[1]).await;
    let two = clients.connect("two", &nodes[2]).await;
    assert_ne!(one, two, "socket ids differ across nodes");
    for client in ["one", "two"] {
        clients.subscribed(client, "news").await;
        clients.subscribed(client, "private-team").await;
    }
    publish(&nodes[0], "news", json!({"via": "node-0"})).await;
    for client in ["one", "two"] {
        clients
            .wait(|e| e["client"] == client && e["data"] == json!({"via": "node-0"}))
            .await;
    }
    let trigger = json!({"cmd": "trigger", "client": "one", "channel": "private-team",
        "event": "client-hi", "data": {"from": "node-1"}});
    clients.send(trigger).await;
    let got = clients.event("two", "private-team", "client-hi").await;
    assert_eq!(got["data"], json!({"from": "node-1"}));
    publish(&nodes[0], "private-team", json!({"sentinel": true})).await;
    clients
        .wait(|e| e["client"] == "one" && e["data"] == json!({"sentinel": true}))
        .await;
    assert!(
        clients
            .events("one", "private-team", "client-hi")
            .is_empty()
    );
    clients.stop().await;
}

// ---- what pusher-js never sends, over a raw WebSocket ----

/// Opens `/app/{key}?{query}` on `node` with extra headers.
async fn raw(node: &Node, key: &str, query: &str, headers: &[(&str, &str)]) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/app/{key}?{query}", node.ws());
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")
        .expect("the upgrade succeeds");
    ws
}

/// A connected raw client: the socket and its socket id.
async fn raw_connected(node: &Node, headers: &[(&str, &str)]) -> (Ws, String) {
    let mut ws = raw(node, KEY, "protocol=7&client=raw&version=0", headers).await;
    let established = next_event(&mut ws).await;
    assert_eq!(established["event"], "pusher:connection_established");
    assert!(established["data"]["activity_timeout"].as_u64().unwrap() > 0);
    let id = established["data"]["socket_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (ws, id)
}

async fn send(ws: &mut Ws, frame: Value) {
    common::send_text(ws, &frame.to_string()).await;
}

/// `auth` for `channel` on `socket_id`, as the app's backend signs it.
fn auth(socket_id: &str, channel: &str) -> String {
    sign(&format!("{socket_id}:{channel}"))
}

/// `KEY:signature` of `message`.
fn sign(message: &str) -> String {
    common::pusher::raw::sign(KEY, SECRET, message)
}

#[tokio::test]
async fn the_handshake_refuses_a_bad_key_or_protocol_with_pusher_close_codes() {
    let node = pusher_node(&[]);
    for (key, query, code) in [
        ("nope", "protocol=7", 4001),
        (KEY, "protocol=6", 4007),
        (KEY, "protocol=x", 4007),
        (KEY, "client=js", 4008),
    ] {
        let mut ws = raw(&node, key, query, &[]).await;
        let close = common::next_close(&mut ws, WAIT)
            .await
            .expect("a close frame");
        assert_eq!(u16::from(close.code), code, "{key} {query}");
    }
}

#[tokio::test]
async fn malformed_frames_get_pusher_errors_and_the_connection_stays() {
    let node = pusher_node(&["--pusher-client-events"]);
    let (mut ws, socket_id) = raw_connected(&node, &[]).await;
    for bad in [
        "{",
        "[]",
        r#"{"event":12}"#,
        r#"{"event":"pusher:subscribe","data":{}}"#,
        r#"{"event":"pusher:signin","data":{}}"#,
        r#"{"event":"client-x","data":{}}"#,
    ] {
        common::send_text(&mut ws, bad).await;
        let error = next_event(&mut ws).await;
        assert_eq!(error["event"], "pusher:error", "{bad}: {error}");
        assert!(error["data"]["message"].is_string(), "{error}");
    }
    ws.send(Message::Binary(vec![1, 2].into())).await.unwrap();
    assert_eq!(next_event(&mut ws).await["event"], "pusher:error");
    // Names Pusher allows that sessionhub cannot carry, and names Pusher does not allow.
    for channel in ["a=b", "a:b", "session:x"] {
        send(
            &mut ws,
            json!({"event": "pusher:subscribe", "data": {"channel": channel}}),
        )
        .await;
        let refused = next_event(&mut ws).await;
        assert_eq!(refused["event"], "pusher:subscription_error", "{channel}");
        assert_eq!(refused["data"]["status"], 400, "{channel}");
    }
    // A presence subscription needs channel_data, and its signature covers it.
    let unsigned = json!({"event": "pusher:subscribe",
        "data": {"channel": "presence-a", "auth": auth(&socket_id, "presence-a"),
            "channel_data": "{\"user_id\":\"1\"}"}});
    let without = json!({"event": "pusher:subscribe",
        "data": {"channel": "presence-a", "auth": auth(&socket_id, "presence-a")}});
    for refused in [unsigned, without] {
        send(&mut ws, refused).await;
        let refused = next_event(&mut ws).await;
        assert_eq!(refused["event"], "pusher:subscription_error");
        assert_eq!(refused["data"]["status"], 401, "{refused}");
    }
    // Client events: only on a private channel the sender is on, and not too big.
    let subscribe = json!({"event": "pusher:subscribe",
        "data": {"channel": "private-a", "auth": auth(&socket_id, "private-a")}});
    send(&mut ws, subscribe).await;
    assert_eq!(
        next_event(&mut ws).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let big = "x".repeat(11_000);
    for (channel, data) in [
        ("public", json!({})),
        ("private-b", json!({})),
        ("private-a", json!(big)),
    ] {
        send(
            &mut ws,
            json!({"event": "client-x", "channel": channel, "data": data}),
        )
        .await;
        let error = next_event(&mut ws).await;
        assert_eq!(error["event"], "pusher:error", "{channel}: {error}");
    }
    send(&mut ws, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(next_event(&mut ws).await["event"], "pusher:pong");
    // A WebSocket ping is answered too.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(payload))) => return payload,
                Some(Ok(_)) => {}
                other => panic!("the connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a pong in time");
    assert_eq!(&pong[..], b"are you there");
}

#[tokio::test]
async fn more_than_ten_client_events_a_second_close_with_4301() {
    let node = pusher_node(&["--pusher-client-events"]);
    let (mut ws, socket_id) = raw_connected(&node, &[]).await;
    let subscribe = json!({"event": "pusher:subscribe",
        "data": {"channel": "private-a", "auth": auth(&socket_id, "private-a")}});
    send(&mut ws, subscribe).await;
    next_event(&mut ws).await;
    for n in 0..11 {
        send(
            &mut ws,
            json!({"event": "client-x", "channel": "private-a", "data": {"n": n}}),
        )
        .await;
    }
    common::assert_closes(&mut ws, WAIT, 4301).await;
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_closed_with_4201() {
    // activity_timeout follows the idle timeout when that is shorter than 120 s.
    let node = pusher_node(&["--ws-idle-timeout", "1"]);
    let mut stream = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    let request = format!(
        "GET /app/{KEY}?protocol=7 HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        node.addr()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Never answers anything (not even WebSocket pings); reads what the server sends.
    let mut received = Vec::new();
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server closes the silent client");
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("pusher:connection_established"), "{text}");
    assert!(text.contains("\"activity_timeout\\\":1"), "{text}");
    assert!(text.contains("pusher:ping"), "pinged first: {text}");
    // The close frame: 0x88, its length, then the code.
    let close = received
        .windows(2)
        .rposition(|w| w[0] == 0x88)
        .expect("a close frame");
    let code = u16::from_be_bytes([received[close + 2], received[close + 3]]);
    assert_eq!(code, 4201);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before the grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_with_a_session_cookie_closes_when_the_session_is_logged_out_on_another_node() {
    let redis = sessionhub_testkit::RedisServer::start().expect("redis-server starts");
    let url = redis.url();
    let nodes: Vec<Node> = (0..2)
        .map(|i| pusher_node(&["--redis", &url, "--node-id", &format!("node-{i}")]))
        .collect();
    let session = common::login(&nodes[0].http(), "ann").await;
    let cookie = format!("SESSION={session}");
    let (mut ws, _) = raw_connected(&nodes[1], &[("cookie", &cookie)]).await;
    let (mut anonymous, _) = raw_connected(&nodes[1], &[]).await;
    send(
        &mut ws,
        json!({"event": "pusher:subscribe", "data": {"channel": "news"}}),
    )
    .await;
    next_event(&mut ws).await;
    let client = common::http();
    let (status, _, _) =
        common::get(&client, &nodes[0].http(), "/invalidate", Some(&session)).await;
    assert_eq!(status, 200);
    common::assert_closes(&mut ws, WAIT, 4009).await;
    // The anonymous socket is no one's session: it stays.
    send(&mut anonymous, json!({"event": "pusher:ping"})).await;
    assert_eq!(next_event(&mut anonymous).await["event"], "pusher:pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_members_are_counted_across_three_nodes_and_announced_once_per_user() {
    let (_redis, nodes) = pusher_cluster();
    let mut clients = Clients::start().await;
    let ann = json!({"user_id": "1", "user_info": {"name": "Ann"}});
    let bob = json!({"user_id": 2, "user_info": {"name": "Bob"}});
    clients.connect_member("ann", &nodes[0], ann).await;
    clients.connect_member("bob", &nodes[1], bob.clone()).await;
    clients.connect_member("bob-too", &nodes[2], bob).await;

    let bind = json!({"cmd": "subscribe", "client": "ann", "channel": "presence-room",
        "bind": ["client-wave"]});
    clients.send(bind).await;
    let alone = clients
        .event("ann", "presence-room", "pusher:subscription_succeeded")
        .await;
    assert_eq!(alone["data"]["count"], 1, "{alone}");
    assert_eq!(
        alone["data"]["me"],
        json!({"id": "1", "info": {"name": "Ann"}})
    );

    clients.subscribed("bob", "presence-room").await;
    let both = clients
        .event("bob", "presence-room", "pusher:subscription_succeeded")
        .await;
    assert_eq!(both["data"]["count"], 2, "{both}");
    assert_eq!(
        both["data"]["members"],
        json!({"1": {"name": "Ann"}, "2": {"name": "Bob"}}),
        "the members of every node, with their info"
    );
    let added = clients
        .event("ann", "presence-room", "pusher:member_added")
        .await;
    assert_eq!(
        added["data"],
        json!({"id": "2", "info": {"name": "Bob"}}),
        "{added}"
    );

    // Bob's second connection, on another node: no second member_added.
    clients.subscribed("bob-too", "presence-room").await;
    let seen = clients
        .event("bob-too", "presence-room", "pusher:subscription_succeeded")
        .await;
    assert_eq!(seen["data"]["count"], 2, "{seen}");
    // The HTTP API counts them on any node: two users, three connections.
    let path = "/apps/42/channels/presence-room";
    let info = [("info", "user_count,subscription_count")];
    let counted = signed_get(&nodes[0], path, &info).await;
    assert_eq!(
        counted,
        json!({"occupied": true, "user_count": 2, "subscription_count": 3})
    );
    let users = signed_get(&nodes[1], &format!("{path}/users"), &[]).await;
    let mut ids: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["1", "2"], "{users}");
    // A client event on a presence channel names its sender; when ann has it, a second
    // member_added (sent before it) would have arrived.
    let trigger = json!({"cmd": "trigger", "client": "bob-too", "channel": "presence-room",
        "event": "client-wave", "data": {}});
    clients.send(trigger).await;
    let wave = clients
        .wait(|e| e["client"] == "ann" && e["type"] == "metadata" && e["event"] == "client-wave")
        .await;
    assert_eq!(wave["user_id"], "2", "{wave}");
    assert_eq!(
        clients
            .events("ann", "presence-room", "pusher:member_added")
            .len(),
        1
    );

    // Bob leaves with one connection: still there. With the other: gone.
    clients
        .send(json!({"cmd": "disconnect", "client": "bob"}))
        .await;
    publish(&nodes[0], "presence-room", json!({"sentinel": 1})).await;
    clients
        .wait(|e| e["client"] == "ann" && e["data"] == json!({"sentinel": 1}))
        .await;
    assert!(
        clients
            .events("ann", "presence-room", "pusher:member_removed")
            .is_empty()
    );
    clients
        .send(json!({"cmd": "disconnect", "client": "bob-too"}))
        .await;
    let removed = clients
        .event("ann", "presence-room", "pusher:member_removed")
        .await;
    assert_eq!(removed["data"]["id"], "2", "{removed}");
    clients.stop().await;
}

#[tokio::test]
async fn presence_enforces_the_member_limit_and_the_user_info_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sessionhub.toml");
    let app = format!(
        "[[pusher.apps]]\nid = \"7\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n\
         max_presence_members = 1\nmax_user_info_bytes = 20\n"
    );
    std::fs::write(&config, app).unwrap();
    let node = common::node(&["--config", config.to_str().unwrap()]);
    let subscribe = |socket_id: &str, data: &str| {
        let signed = format!("{socket_id}:presence-room:{data}");
        json!({"event": "pusher:subscribe", "data": {"channel": "presence-room",
            "auth": sign(&signed), "channel_data": data}})
    };
    let (mut first, first_id) = raw_connected(&node, &[]).await;
    let id = first_id.clone();
    let big = r#"{"user_id":"1","user_info":{"name":"a name over twenty bytes"}}"#;
    send(&mut first, subscribe(&id, big)).await;
    let refused = next_event(&mut first).await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    assert_eq!(refused["data"]["status"], 413, "{refused}");
    send(&mut first, subscribe(&id, r#"{"user_id":"1"}"#)).await;
    let joined = next_event(&mut first).await;
    assert_eq!(joined["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(
        joined["data"],
        json!({"presence": {"ids": ["1"], "hash": {"1": null}, "count": 1}})
    );

    let (mut second, id) = raw_connected(&node, &[]).await;
    send(&mut second, subscribe(&id, r#"{"user_id":"2"}"#)).await;
    let full = next_event(&mut second).await;
    assert_eq!(full["event"], "pusher:subscription_error", "{full}");
    assert_eq!(full["data"]["status"], 403, "{full}");
    // The same user again is no new member.
    send(&mut second, subscribe(&id, r#"{"user_id":"1"}"#)).await;
    let again = next_event(&mut second).await;
    assert_eq!(again["data"]["presence"]["count"], 1, "{again}");
    // Subscribing twice answers with the members again.
    send(&mut first, subscribe(&first_id, r#"{"user_id":"1"}"#)).await;
    let twice = next_event(&mut first).await;
    assert_eq!(twice["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(twice["data"]["presence"]["ids"], json!(["1"]), "{twice}");
    assert_eq!(
        again["event"], "pusher_internal:subscription_succeeded",
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_closes_pusher_sockets_with_4200_to_reconnect_at_once() {
    let mut node = pusher_node(&["--drain-window", "0.2"]);
    let (mut ws, _) = raw_connected(&node, &[]).await;
    let stopped = tokio::task::spawn_blocking(move || {
        let code = node.terminate(Duration::from_secs(15));
        (node, code)
    });
    common::assert_closes(&mut ws, Duration::from_secs(10), 4200).await;
    let (_node, code) = stopped.await.unwrap();
    assert_eq!(
        code.unwrap(),
        Some(0),
        "the node stops cleanly after the drain"
    );
}

#[tokio::test]
async fn an_encrypted_channel_s_data_passes_through_untouched() {
    let node = pusher_node(&["--pusher-client-events"]);
    let (mut ws, socket_id) = raw_connected(&node, &[]).await;
    let channel = "private-encrypted-vault";
    send(
        &mut ws,
        json!({"event": "pusher:subscribe", "data": {"channel": channel}}),
    )
    .await;
    let refused = next_event(&mut ws).await;
    assert_eq!(
        refused["data"]["status"], 401,
        "private: it needs a signature"
    );
    let subscribe = json!({"event": "pusher:subscribe",
        "data": {"channel": channel, "auth": auth(&socket_id, channel)}});
    send(&mut ws, subscribe).await;
    let joined = next_event(&mut ws).await;
    assert_eq!(joined["event"], "pusher_internal:subscription_succeeded");
    // What Pusher's server SDKs publish on an encrypted channel: never opened here.
    let sealed = json!({"nonce": "bm9uY2U=", "ciphertext": "Y2lwaGVydGV4dA=="});
    publish(&node, channel, sealed.clone()).await;
    let event = next_event(&mut ws).await;
    assert_eq!(
        (event["event"].as_str(), &event["data"]),
        (Some("message"), &sealed)
    );
    // No client events on encrypted channels.
    send(
        &mut ws,
        json!({"event": "client-x", "channel": channel, "data": {}}),
    )
    .await;
    let refused = next_event(&mut ws).await;
    assert_eq!(refused["event"], "pusher:error");
    let message = refused["data"]["message"].as_str().unwrap();
    assert!(
        message.contains("only sent on private and presence"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let node = pusher_node(&[]);
    let client = common::http();
    let (mut stuck, _) = raw_connected(&node, &[]).await;
    send(
        &mut stuck,
        json!({"event": "pusher:subscribe", "data": {"channel": "news"}}),
    )
    .await;
    next_event(&mut stuck).await;
    // It reads nothing more; publications pile up in the kernel's buffers, then its queue.
    let chunk = "z".repeat(60 * 1024);
    let mut gone = false;
    for n in 0..1000 {
        publish(&node, "news", json!(chunk)).await;
        if n % 20 == 19 && common::online(&client, &node.http()).await["online"] == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "the stuck client was closed");
    let text = common::metrics(&node.http()).await;
    assert!(
        text.contains("sessionhub_disconnects_total{reason=\"slow consumer\"} 1"),
        "{text}"
    );
}

/// POSTs `body` to the HTTP API's `path` on `node`, signed for [`APP`]; the status and text.
async fn signed_post(node: &Node, path: &str, body: &Value) -> (u16, String) {
    common::pusher::signed_post(node, APP, path, body).await
}

/// GETs the HTTP API's `path` on `node` with `params`, signed for [`APP`]; its JSON
/// answer, which must be a 200.
async fn signed_get(node: &Node, path: &str, params: &[(&str, &str)]) -> Value {
    let app: sessionhub::pusher::PusherApp = APP.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query = sessionhub::pusher::request::sign(&app, "GET", path, params, b"", now);
    let (status, body) =
        common::status_and_json(common::http().get(format!("{}{path}?{query}", node.http()))).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_s_events_reach_pusher_js_by_name_and_skip_the_socket_id() {
    let node = pusher_node(&[]);
    let mut clients = Clients::start().await;
    let sender = clients.connect("a", &node).await;
    clients.connect("b", &node).await;
    for client in ["a", "b"] {
        clients.subscribed(client, "orders").await;
    }
    // Laravel's toOthers(): the sender's own socket is left out.
    let (status, text) = signed_post(
        &node,
        "/apps/42/events",
        &json!({"name": "order-placed", "channel": "orders", "data": "{\"id\":7}",
                "socket_id": sender}),
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "{}"));
    let got = clients.event("b", "orders", "order-placed").await;
    assert_eq!(got["data"], json!({"id": 7}), "{got}");

    let batch = json!({"batch": [
        {"name": "shipped", "channel": "orders", "data": "plain text"},
        {"name": "delivered", "channel": "orders", "data": "{\"id\":7}"},
    ]});
    let (status, text) = signed_post(&node, "/apps/42/batch_events", &batch).await;
    assert_eq!((status, text.as_str()), (200, "{}"));
    for client in ["a", "b"] {
        let got = clients.event(client, "orders", "shipped").await;
        assert_eq!(got["data"], "plain text", "{got}");
        clients.event(client, "orders", "delivered").await;
    }
    // "delivered" came after "order-placed" on the same channel: a would have had it.
    assert!(clients.events("a", "orders", "order-placed").is_empty());
    clients.stop().await;
}
