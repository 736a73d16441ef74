//! `sessionhub serve --nats`: nodes whose pushes go through NATS (a `nats-server -js` of
//! the test's own) while their sessions stay in Redis, as black boxes: a push through one
//! node reaches a protocol v1 socket on another, and a client that reconnects to a third
//! recovers what it missed from the JetStream history; a nats-server restart turns the
//! nodes unready until they are back.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sessionhub_testkit::{NatsServer, Node, RedisServer};

/// `n` nodes on `nats` for pushes and `redis` for sessions, named node-0, node-1, ...
fn nodes(nats: &NatsServer, redis: &RedisServer, n: usize) -> Vec<Node> {
    let (nats, redis) = (nats.url(), redis.url());
    (0..n)
        .map(|i| {
            let name = format!("node-{i}");
            node(&["--nats", &nats, "--redis", &redis, "--node-id", &name])
        })
        .collect()
}

/// Opens a protocol v1 socket for `user` and subscribes to `user:<user>`, recovering from
/// `since` if given; the `subscribed` reply.
async fn subscribe(base_ws: &str, user: &str, since: Option<&Value>) -> (Ws, Value) {
    let (mut ws, greeting) = connect_with(&format!("{base_ws}/ws?user={user}"), &[])
        .await
        .expect("the socket opens");
    assert_eq!(greeting["type"], "connected", "{greeting}");
    let mut frame = json!({"type": "subscribe", "channel": format!("user:{user}")});
    if let Some(since) = since {
        frame["recover"] = since.clone();
    }
    send_text(&mut ws, &frame.to_string()).await;
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    (ws, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_crosses_nodes_over_nats_and_a_client_recovers_on_another_node() {
    let (mut nats, redis) = tokio::task::spawn_blocking(|| {
        (
            NatsServer::start().expect("nats-server starts"),
            RedisServer::start().expect("redis-server starts"),
        )
    })
    .await
    .unwrap();
    let nodes = nodes(&nats, &redis, 3);
    let client = http();
    for node in &nodes {
        wait_ready(&client, &node.http(), true, Duration::from_secs(10)).await;
    }

    // Sessions are in Redis: one made on node 0 counts on node 1.
    let (_, id, _) = get(&client, &nodes[0].http(), "/login?username=ann", None).await;
    let (_, _, on_b) = get(&client, &nodes[1].http(), "/get-session", id.as_deref()).await;
    assert_eq!(on_b["username"], "ann", "{on_b}");

    // A push through node 0 reaches the v1 socket on node 1 with its offset and epoch.
    let (mut socket, subscribed) = subscribe(&nodes[1].ws(), "456", None).await;
    let (status, pushed) = push(&client, &nodes[0].http(), "456", "one").await;
    assert_eq!(status, 200, "{pushed}");
    assert_eq!(
        (pushed["nodes"].as_u64(), pushed["offset"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(pushed["epoch"], subscribed["epoch"]);
    let live: Value = serde_json::from_str(&next_text(&mut socket).await).unwrap();
    assert_eq!(
        (
            &live["type"],
            &live["offset"],
            &live["epoch"],
            &live["data"]
        ),
        (
            &json!("publication"),
            &json!(1),
            &pushed["epoch"],
            &json!("one")
        ),
        "{live}"
    );

    // Away, it misses two pushes through node 2 (no node holds the channel: 0 nodes).
    drop(socket);
    for text in ["two", "three"] {
        let (status, pushed) = push(&client, &nodes[2].http(), "456", text).await;
        assert_eq!(status, 200, "{pushed}");
    }
    // Back on node 2, it recovers exactly those, then takes the next push live.
    let since = json!({"epoch": live["epoch"], "offset": 1});
    let (mut socket, recovered) = subscribe(&nodes[2].ws(), "456", Some(&since)).await;
    assert_eq!(recovered["recovered"], true, "{recovered}");
    let missed: Vec<(u64, Value)> = recovered["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["data"].clone()))
        .collect();
    assert_eq!(missed, [(2, json!("two")), (3, json!("three"))]);
    let (status, _) = push(&client, &nodes[1].http(), "456", "four").await;
    assert_eq!(status, 200);
    let live: Value = serde_json::from_str(&next_text(&mut socket).await).unwrap();
    assert_eq!(
        (&live["offset"], &live["data"]),
        (&json!(4), &json!("four"))
    );

    // nats-server restarts: the nodes turn unready and refuse pushes, then serve again.
    tokio::task::block_in_place(|| nats.kill());
    wait_ready(&client, &nodes[0].http(), false, Duration::from_secs(5)).await;
    let (status, refused) = push(&client, &nodes[0].http(), "456", "lost").await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (503, &json!("broker_unavailable"))
    );
    tokio::task::block_in_place(|| nats.restart()).unwrap();
    for node in &nodes {
        wait_ready(&client, &node.http(), true, Duration::from_secs(5)).await;
    }
    // The socket's node may have missed publications while away: it tells the client to
    // reconnect and recover, and the new server process's history is a new epoch, which
    // the client is told rather than given a history with a hole.
    let disconnect: Value = serde_json::from_str(&next_text(&mut socket).await).unwrap();
    assert_eq!(
        (
            &disconnect["type"],
            &disconnect["code"],
            &disconnect["reconnect"]
        ),
        (&json!("disconnect"), &json!(4010), &json!(true)),
        "{disconnect}"
    );
    let since = json!({"epoch": live["epoch"], "offset": 4});
    let (mut socket, fresh) = subscribe(&nodes[2].ws(), "456", Some(&since)).await;
    assert_eq!(fresh["recovered"], false, "{fresh}");
    assert_ne!(fresh["epoch"], live["epoch"], "{fresh}");
    let (status, pushed) = push(&client, &nodes[0].http(), "456", "five").await;
    assert_eq!(
        (status, pushed["nodes"].as_u64()),
        (200, Some(1)),
        "{pushed}"
    );
    assert_eq!(pushed["epoch"], fresh["epoch"]);
    let live: Value = serde_json::from_str(&next_text(&mut socket).await).unwrap();
    assert_eq!(live["data"], "five", "{live}");
}

#[test]
fn a_bad_nats_url_or_prefix_stops_the_start() {
    let (code, stderr) =
        Node::run_once(binary(), &["serve", "--nats", "redis://127.0.0.1:4290"]).unwrap();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("configuring NATS"), "{stderr}");
    let (code, stderr) = Node::run_once(
        binary(),
        &[
            "serve",
            "--nats",
            "nats://127.0.0.1:4290",
            "--nats-prefix",
            "a b",
        ],
    )
    .unwrap();
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("configuring NATS") && stderr.contains("\"a b\""),
        "{stderr}"
    );
}
