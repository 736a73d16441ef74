//! Per-channel presence on real servers (`--presence-channels room:`): protocol v1 clients
//! get `join` and `leave` once per user across nodes sharing a real Redis, the member list
//! on subscribe and on request, the HTTP presence API, and a killed node's users leave
//! within 30 s.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sessionhub_testkit::Node;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The presence a killed node's users may take to leave, as promised (docs/cluster.md).
const LEAVE_AFTER_KILL: Duration = Duration::from_secs(30);

/// A Redis of the test's own and `n` nodes with presence on `room:*`, named node-0, ...
fn presence_cluster(n: usize) -> (sessionhub_testkit::RedisServer, Vec<Node>) {
    let redis = sessionhub_testkit::RedisServer::start().expect("redis-server starts");
    let url = redis.url();
    let nodes = (0..n)
        .map(|i| {
            let name = format!("node-{i}");
            let args = [
                "--redis",
                &url,
                "--node-id",
                &name,
                "--presence-channels",
                "room:",
                // Every client here is 127.0.0.1: the cluster-wide connect rate would count
                // the racing rounds' sockets on both nodes as one address's.
                "--max-connections-per-ip",
                "100000",
            ];
            node(&args)
        })
        .collect();
    (redis, nodes)
}

/// The next frame as JSON (pings skipped), a join's or leave's version left out.
async fn next_json(ws: &mut Ws) -> Value {
    without_version(serde_json::from_str(&next_text(ws).await).expect("frames are JSON"))
}

/// `frame` without the version of a join or leave, which must be there.
fn without_version(mut frame: Value) -> Value {
    if matches!(frame["type"].as_str(), Some("join" | "leave")) {
        let version = frame.as_object_mut().unwrap().remove("version");
        assert!(version.is_some_and(|v| v.as_u64().is_some()), "{frame}");
    }
    frame
}

/// The next frame as [`next_json`] reads it, if one arrives `within`.
async fn next_json_within(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(text)))) => {
                return Some(without_version(serde_json::from_str(&text).expect("JSON")));
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Every frame that arrives until nothing has for `quiet`.
async fn frames_until_quiet(ws: &mut Ws, quiet: Duration) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Some(frame) = next_json_within(ws, quiet).await {
        frames.push(frame);
    }
    frames
}

/// A v1 connection of `user` on `base_ws`, subscribed to `channel`; the `subscribed` reply.
async fn subscribed(base_ws: &str, user: &str, channel: &str) -> (Ws, Value) {
    let (mut ws, _) = v1::open_v1(base_ws, user).await.expect("connects");
    send_text(&mut ws, &v1::subscribe_frame(channel, None)).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    (ws, reply)
}

/// A `presence` list as sorted (user, connections).
fn members(list: &Value) -> Vec<(String, u64)> {
    let mut members: Vec<(String, u64)> = list
        .as_array()
        .unwrap_or_else(|| panic!("a member list: {list}"))
        .iter()
        .map(|m| {
            let user = m["user"].as_str().expect("a user").to_owned();
            (user, m["connections"].as_u64().expect("connections"))
        })
        .collect();
    members.sort();
    members
}

fn pairs(expected: &[(&str, u64)]) -> Vec<(String, u64)> {
    expected
        .iter()
        .map(|(u, n)| ((*u).to_owned(), *n))
        .collect()
}

fn event(kind: &str, user: &str) -> Value {
    json!({"type": kind, "channel": "room:1", "user": user})
}

/// Waits (up to [`WAIT`]) until `GET .../presence/stats` on `base` answers `users` and
/// `connections`.
async fn stats_settle(base: &str, users: u64, connections: u64) {
    let client = http();
    let url = format!("{base}/api/channels/room:1/presence/stats");
    let want = json!({"users": users, "connections": connections});
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, stats) = status_and_json(client.get(&url)).await;
        if status == 200 && stats == want {
            return;
        }
        assert!(Instant::now() < deadline, "stats {stats}, expected {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A user's first connection anywhere joins, their last anywhere leaves; connections in
/// between, on the same node or another, say nothing. The subscribed reply, a `presence`
/// request and the HTTP API all list the users with their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_are_announced_once_per_user_across_nodes() {
    let (_redis, nodes) = presence_cluster(3);
    let (mut watcher, reply) = subscribed(&nodes[0].ws(), "watcher", "room:1").await;
    assert_eq!(members(&reply["presence"]), pairs(&[("watcher", 1)]));
    assert_eq!(next_json(&mut watcher).await, event("join", "watcher"));

    let (mut a1, reply) = subscribed(&nodes[1].ws(), "alice", "room:1").await;
    assert_eq!(
        members(&reply["presence"]),
        pairs(&[("alice", 1), ("watcher", 1)])
    );
    assert_eq!(next_json(&mut watcher).await, event("join", "alice"));
    let (a2, _) = subscribed(&nodes[2].ws(), "alice", "room:1").await;
    let (a3, _) = subscribed(&nodes[1].ws(), "alice", "room:1").await;
    // Not on the channel: neither counted nor told.
    let (mut elsewhere, _) = subscribed(&nodes[2].ws(), "bob", "room:2").await;
    let (mut plain, _) = subscribed(&nodes[0].ws(), "carol", "lobby").await;
    stats_settle(&nodes[2].http(), 2, 4).await;

    send_text(
        &mut watcher,
        r#"{"type":"presence","channel":"room:1","id":7}"#,
    )
    .await;
    let listed = next_json(&mut watcher).await;
    assert_eq!(
        (listed["type"].as_str(), listed["id"].as_u64()),
        (Some("presence"), Some(7))
    );
    assert_eq!(
        members(&listed["presence"]),
        pairs(&[("alice", 3), ("watcher", 1)])
    );
    let (status, listed) =
        status_and_json(http().get(format!("{}/api/channels/room:1/presence", nodes[1].http())))
            .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        members(&listed["users"]),
        pairs(&[("alice", 3), ("watcher", 1)])
    );

    // The same node twice, then the other node: only the very last one leaves.
    drop(a3);
    send_text(&mut a1, r#"{"type":"unsubscribe","channel":"room:1"}"#).await;
    stats_settle(&nodes[0].http(), 2, 2).await;
    let early = frames_until_quiet(&mut watcher, Duration::from_millis(500)).await;
    assert!(early.is_empty(), "alice is still on node-2: {early:?}");
    drop(a2);
    stats_settle(&nodes[0].http(), 1, 1).await;
    let seen = frames_until_quiet(&mut watcher, Duration::from_secs(1)).await;
    assert_eq!(
        seen,
        [event("leave", "alice")],
        "one join and one leave for alice's three connections on two nodes"
    );
    let quiet = Duration::from_millis(200);
    let bob_joined = json!({"type": "join", "channel": "room:2", "user": "bob"});
    assert_eq!(
        frames_until_quiet(&mut elsewhere, quiet).await,
        [bob_joined]
    );
    assert!(frames_until_quiet(&mut plain, quiet).await.is_empty());
}

/// A presence request is refused, with the request's id, for a channel without presence
/// and for a presence channel the connection is not in.
#[tokio::test]
async fn a_presence_request_needs_a_subscribed_presence_channel() {
    let node = node(&["--presence-channels", "room:"]);
    let (mut ws, _) = subscribed(&node.ws(), "alice", "lobby").await;
    for (channel, code) in [
        ("lobby", "no_presence"),
        ("room:1", "not_subscribed"),
        ("a b", "invalid_channel"),
    ] {
        let frame = json!({"type": "presence", "channel": channel, "id": 3});
        send_text(&mut ws, &frame.to_string()).await;
        let reply = next_json(&mut ws).await;
        assert_eq!(
            (
                reply["type"].as_str(),
                reply["code"].as_str(),
                reply["id"].as_u64()
            ),
            (Some("error"), Some(code), Some(3)),
            "{channel}: {reply}"
        );
    }
    // On one node, presence is the node's own: the subscribed reply lists it too.
    let (_on, reply) = subscribed(&node.ws(), "alice", "room:1").await;
    assert_eq!(members(&reply["presence"]), pairs(&[("alice", 1)]));
    assert_eq!(reply.get("publications").map(Value::is_array), Some(true));
}

/// The HTTP presence API: success, a bad channel name (400), a channel without presence
/// (404), and a missing or wrong API key (401), each as JSON.
#[tokio::test]
async fn the_presence_api_answers_and_refuses_clearly() {
    const KEY: &str = "test-api-key-0123456789";
    let node = node(&["--presence-channels", "room:", "--api-key", KEY]);
    let client = http();
    let base = node.http();
    let (_alice, _) = subscribed(&node.ws(), "alice", "room:1").await;
    let (_alice2, _) = subscribed(&node.ws(), "alice", "room:1").await;
    let get = |path: &str| client.get(format!("{base}{path}")).bearer_auth(KEY);

    let (status, body) = status_and_json(get("/api/channels/room:1/presence")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channel"], "room:1");
    assert_eq!(members(&body["users"]), pairs(&[("alice", 2)]));
    let (status, body) = status_and_json(get("/api/channels/room:1/presence/stats")).await;
    assert_eq!((status, body), (200, json!({"users": 1, "connections": 2})));
    let (status, body) = status_and_json(get("/api/channels/room:empty/presence/stats")).await;
    assert_eq!((status, body), (200, json!({"users": 0, "connections": 0})));

    for path in [
        "/api/channels/a%20b/presence",
        "/api/channels/session:x/presence/stats",
    ] {
        let (status, body) = status_and_json(get(path)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_channel")),
            "{path}"
        );
    }
    for path in [
        "/api/channels/lobby/presence",
        "/api/channels/lobby/presence/stats",
    ] {
        let (status, body) = status_and_json(get(path)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("no_presence")),
            "{path}"
        );
    }
    for path in [
        "/api/channels/room:1/presence",
        "/api/channels/room:1/presence/stats",
    ] {
        let (status, body) = status_and_json(client.get(format!("{base}{path}"))).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("api_key_required"))
        );
        let wrong = client.get(format!("{base}{path}")).bearer_auth("nope");
        let (status, body) = status_and_json(wrong).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("api_key_invalid"))
        );
    }
}

/// A node killed with SIGKILL says nothing; a survivor announces its users' leaves within
/// 30 s (13 s by design: a 10 s liveness TTL, looked at every 3 s), and the online count
/// drops them too. A user also connected to a survivor does not leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_users_leave_within_30_seconds() {
    let (_redis, mut nodes) = presence_cluster(3);
    let (mut watcher, _) = subscribed(&nodes[0].ws(), "watcher", "room:1").await;
    let (_bob, _) = subscribed(&nodes[1].ws(), "bob", "room:1").await;
    let (_alice_doomed, _) = subscribed(&nodes[1].ws(), "alice", "room:1").await;
    let (_alice, _) = subscribed(&nodes[2].ws(), "alice", "room:1").await;
    stats_settle(&nodes[0].http(), 3, 4).await;
    for user in ["watcher", "bob", "alice"] {
        assert_eq!(next_json(&mut watcher).await, event("join", user));
    }

    nodes[1].kill();
    let killed = Instant::now();
    let left = next_json_within(&mut watcher, LEAVE_AFTER_KILL).await;
    let left = left.expect("bob's leave within 30 s");
    assert_eq!(left, event("leave", "bob"), "after {:?}", killed.elapsed());
    stats_settle(&nodes[2].http(), 2, 2).await;
    let online = online(&http(), &nodes[0].http()).await;
    assert_eq!(
        online,
        json!({"online": 2, "users": 2}),
        "watcher and alice"
    );
    assert_eq!(
        frames_until_quiet(&mut watcher, Duration::from_secs(1)).await,
        Vec::<Value>::new(),
        "alice stays: she is still on node-2; bob left once, though two survivors looked"
    );
}

/// One user's connections opening and closing at once on two nodes, round after round:
/// the watcher sees joins and leaves strictly alternate, the last a leave, and nothing is
/// left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_racing_on_two_nodes_leaves_no_ghost_and_misses_no_join() {
    let (_redis, nodes) = presence_cluster(2);
    let (mut watcher, _) = subscribed(&nodes[0].ws(), "watcher", "room:1").await;
    assert_eq!(next_json(&mut watcher).await, event("join", "watcher"));
    let (on_a, on_b) = (nodes[0].ws(), nodes[1].ws());
    for _ in 0..30 {
        let (a, b) = tokio::join!(
            subscribed(&on_a, "alice", "room:1"),
            subscribed(&on_b, "alice", "room:1")
        );
        drop((a, b));
    }
    stats_settle(&nodes[1].http(), 1, 1).await;
    let seen = frames_until_quiet(&mut watcher, Duration::from_secs(1)).await;
    assert!(!seen.is_empty(), "alice joined at least once");
    for (i, frame) in seen.iter().enumerate() {
        let kind = if i % 2 == 0 { "join" } else { "leave" };
        assert_eq!(*frame, event(kind, "alice"), "frame {i} of {seen:?}");
    }
    assert_eq!(seen.len() % 2, 0, "the last is a leave: {seen:?}");
}

/// A node stopped gracefully (SIGTERM) withdraws at once: each of its users leaves once, and
/// nothing of theirs is left behind, however its sockets' closes and the withdrawal
/// interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_nodes_users_leave_at_once_and_leave_nothing_behind() {
    let (_redis, mut nodes) = presence_cluster(2);
    let (mut watcher, _) = subscribed(&nodes[0].ws(), "watcher", "room:1").await;
    let mut on_b = Vec::new();
    for user in ["alice", "alice", "alice", "bob"] {
        on_b.push(subscribed(&nodes[1].ws(), user, "room:1").await);
    }
    for user in ["watcher", "alice", "bob"] {
        assert_eq!(next_json(&mut watcher).await, event("join", user));
    }
    let stopped = blocking(|| nodes[1].terminate(Duration::from_secs(10)));
    assert_eq!(stopped.expect("node-1 stops"), Some(0));
    let mut seen = frames_until_quiet(&mut watcher, Duration::from_secs(2)).await;
    seen.sort_by_key(|frame| frame["user"].as_str().map(str::to_owned));
    assert_eq!(seen, [event("leave", "alice"), event("leave", "bob")]);
    stats_settle(&nodes[0].http(), 1, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stats_settle(&nodes[0].http(), 1, 1).await;
    let online = online(&http(), &nodes[0].http()).await;
    assert_eq!(online, json!({"online": 1, "users": 1}));
}

/// On a Redis Cluster (three primaries): each presence channel's keys share the channel's
/// slot and the online counts share `{presence}`, so every script runs; joins, leaves and the
/// HTTP presence work across nodes as on one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_works_on_a_redis_cluster() {
    let cluster = sessionhub_testkit::RedisCluster::start_async().await;
    let seeds = cluster.urls().join(",");
    let nodes: Vec<Node> = (0..2)
        .map(|i| {
            let name = format!("node-{i}");
            let args = [
                "--redis-cluster",
                &seeds,
                "--node-id",
                &name,
                "--presence-channels",
                "room:",
                // Every client here is 127.0.0.1: the cluster-wide connect rate would count
                // the racing rounds' sockets on both nodes as one address's.
                "--max-connections-per-ip",
                "100000",
            ];
            node(&args)
        })
        .collect();
    let (mut watcher, _) = subscribed(&nodes[0].ws(), "watcher", "room:1").await;
    assert_eq!(next_json(&mut watcher).await, event("join", "watcher"));
    let (alice, reply) = subscribed(&nodes[1].ws(), "alice", "room:1").await;
    assert_eq!(
        members(&reply["presence"]),
        pairs(&[("alice", 1), ("watcher", 1)])
    );
    assert_eq!(next_json(&mut watcher).await, event("join", "alice"));
    stats_settle(&nodes[0].http(), 2, 2).await;
    drop(alice);
    assert_eq!(next_json(&mut watcher).await, event("leave", "alice"));
    stats_settle(&nodes[1].http(), 1, 1).await;
}
