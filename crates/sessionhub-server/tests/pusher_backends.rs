//! The Pusher endpoint on each scale-out backend: two nodes on a Redis Cluster (three
//! primaries), on Redis behind Sentinel, and on NATS (pushes) with Redis (sessions and
//! presence), each of the test's own. On each, the same scenario with raw Pusher clients on
//! both nodes: presence members listed cluster-wide and `member_added` / `member_removed`
//! across nodes, an HTTP API publish on one node reaching a subscriber on the other, a cache
//! channel's last event replayed to a subscriber of the other node, the channel queries
//! counting both nodes, and exactly one webhook per presence transition. Then user sign-in
//! on the same nodes: `sendToUser` through one node reaching a user signed in on the other,
//! and a watchlist hearing a user of the other node come online and go offline.

mod common;

use std::time::Duration;

use common::pusher::raw::{
    Receiver, connect, expect_event, join_presence, next_watchlist, signed_in,
};
use common::{WAIT, send_text};
use serde_json::{Value, json};
use sessionhub_testkit::{NatsServer, Node, RedisCluster, RedisSentinel, RedisServer};

const APP: &str = "4:backend-key:backend-secret";
const KEY: (&str, &str) = ("backend-key", "backend-secret");

/// Two nodes started with `backend`'s flags, the app and `receiver` for its webhooks.
fn two_nodes(backend: &[String], receiver: &Receiver) -> Vec<Node> {
    (0..2)
        .map(|i| {
            let name = format!("node-{i}");
            let mut args: Vec<&str> = backend.iter().map(String::as_str).collect();
            args.extend([
                "--node-id",
                &name,
                "--pusher-app",
                APP,
                "--pusher-webhook",
                &receiver.url,
            ]);
            common::node(&args)
        })
        .collect()
}

async fn publish(node: &Node, channel: &str, data: &str) {
    let body = json!({"name": "update", "channel": channel, "data": data});
    let (status, text) = common::pusher::signed_post(node, APP, "/apps/4/events", &body).await;
    assert_eq!(status, 200, "{text}");
}

/// The scenario of the module doc on `nodes`.
async fn pusher_across(nodes: &[Node], receiver: &Receiver) {
    let client = common::http();
    for node in nodes {
        common::wait_ready(&client, &node.http(), true, Duration::from_secs(15)).await;
    }
    let (mut ann, ann_id) = connect(&nodes[0], KEY.0).await;
    let members = join_presence(&mut ann, &ann_id, KEY, "presence-room", "ann").await;
    assert_eq!(members["ids"], json!(["ann"]));
    let (mut bob, bob_id) = connect(&nodes[1], KEY.0).await;
    let members = join_presence(&mut bob, &bob_id, KEY, "presence-room", "bob").await;
    let mut ids: Vec<String> = serde_json::from_value(members["ids"].clone()).unwrap();
    ids.sort();
    assert_eq!(ids, ["ann", "bob"], "ann, on the other node, is listed");
    let added = expect_event(&mut ann, "pusher_internal:member_added", "presence-room").await;
    assert_eq!(added["data"]["user_id"], "bob");

    // A publish through node 1's API reaches ann on node 0.
    let subscribe = |channel: &str| {
        json!({"event": "pusher:subscribe", "data": {"channel": channel}}).to_string()
    };
    send_text(&mut ann, &subscribe("news")).await;
    expect_event(&mut ann, "pusher_internal:subscription_succeeded", "news").await;
    publish(&nodes[1], "news", "{\"n\":1}").await;
    let got = expect_event(&mut ann, "update", "news").await;
    assert_eq!(got["data"], json!({"n": 1}));

    // A cache channel's last event, published on node 0, replayed on node 1.
    publish(&nodes[0], "cache-prices", "42").await;
    send_text(&mut bob, &subscribe("cache-prices")).await;
    let replayed = expect_event(&mut bob, "update", "cache-prices").await;
    assert_eq!(replayed["data"], 42);

    // Bob leaves: ann, on the other node, is told.
    bob.close(None).await.unwrap();
    let removed = expect_event(&mut ann, "pusher_internal:member_removed", "presence-room").await;
    assert_eq!(removed["data"]["user_id"], "bob");

    // One webhook per presence transition, cluster-wide.
    for want in [
        ("channel_occupied", "presence-room", ""),
        ("member_added", "presence-room", "ann"),
        ("member_added", "presence-room", "bob"),
        ("member_removed", "presence-room", "bob"),
    ] {
        receiver.wait_for(KEY.0, want, WAIT * 2).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for want in [
        ("channel_occupied", "presence-room", ""),
        ("member_added", "presence-room", "bob"),
        ("member_removed", "presence-room", "bob"),
    ] {
        assert_eq!(
            receiver.count(KEY.0, want),
            1,
            "{:?}",
            receiver.events(KEY.0)
        );
    }
}

/// `sendToUser` (the HTTP API, signed as the SDKs sign) through the second node reaches a
/// user signed in on the first; a watcher on the second is told who is online at once and
/// hears a user of the first come online and go offline.
async fn users_across(nodes: &[Node]) {
    let (first, second) = (&nodes[0], &nodes[1]);
    let (mut ann, _) = signed_in(first, KEY, json!({"id": "ann"})).await;
    let watch = json!({"id": "watcher", "watchlist": ["ann", "bob"]});
    let (mut watcher, _) = signed_in(second, KEY, watch).await;
    let first_look = next_watchlist(&mut watcher).await;
    assert_eq!(
        first_look["data"]["events"],
        json!([{"name": "online", "user_ids": ["ann"]}, {"name": "offline", "user_ids": ["bob"]}])
    );
    let body = json!({"name": "note", "data": "{\"n\":1}", "channels": ["#server-to-user-ann"]});
    let (status, text) = common::pusher::signed_post(second, APP, "/apps/4/events", &body).await;
    assert_eq!(status, 200, "{text}");
    let got = expect_event(&mut ann, "note", "#server-to-user-ann").await;
    assert_eq!(got["data"], json!({"n": 1}));
    let bob = signed_in(first, KEY, json!({"id": "bob"})).await;
    let online = next_watchlist(&mut watcher).await;
    drop(bob);
    let offline = next_watchlist(&mut watcher).await;
    let events = |e: &Value| e["data"]["events"].clone();
    assert_eq!(
        [events(&online), events(&offline)],
        [
            json!([{"name": "online", "user_ids": ["bob"]}]),
            json!([{"name": "offline", "user_ids": ["bob"]}])
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_on_redis_cluster() {
    let cluster = RedisCluster::start_async().await;
    let receiver = Receiver::start().await;
    let backend = vec!["--redis-cluster".to_owned(), cluster.urls().join(",")];
    let nodes = two_nodes(&backend, &receiver);
    pusher_across(&nodes, &receiver).await;
    users_across(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_on_redis_sentinel() {
    let redis = RedisSentinel::start_async().await;
    let receiver = Receiver::start().await;
    let backend = vec![
        "--redis-sentinel".to_owned(),
        redis.sentinel_addrs().join(","),
        "--redis-sentinel-master".to_owned(),
        redis.master_name().to_owned(),
    ];
    let nodes = two_nodes(&backend, &receiver);
    pusher_across(&nodes, &receiver).await;
    users_across(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_on_nats() {
    let (nats, redis) = tokio::task::spawn_blocking(|| {
        (
            NatsServer::start().expect("nats-server starts"),
            RedisServer::start().expect("redis-server starts"),
        )
    })
    .await
    .unwrap();
    let receiver = Receiver::start().await;
    let backend = vec![
        "--nats".to_owned(),
        nats.url(),
        "--redis".to_owned(),
        redis.url(),
    ];
    let nodes = two_nodes(&backend, &receiver);
    pusher_across(&nodes, &receiver).await;
    users_across(&nodes).await;
}
