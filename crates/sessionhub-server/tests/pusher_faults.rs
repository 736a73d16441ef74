//! The Pusher endpoint through faults, on three nodes sharing a Redis of the test's own:
//! a node killed with its members' sockets (presence cleared cluster-wide within 30 s, one
//! `member_removed` webhook, not one per surviving node), and Redis restarted under open
//! Pusher sockets (what their clients see: a publish during the outage is refused, never
//! dropped silently; once its node has resubscribed a socket is closed with 4200, "reconnect
//! now", since it may have missed publications it cannot recover; the new socket gets
//! publications again). Raw WebSocket clients (tests/common/pusher.rs), so every frame and its time
//! is seen.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use sessionhub_testkit::{Node, RedisServer};

use common::pusher::raw::{self, Receiver};
use common::{WAIT, blocking};

const APP: &str = "5:fault-key:fault-secret";
const KEY: &str = "fault-key";
const SECRET: &str = "fault-secret";
/// How long a killed node's members may linger: the bound.
const CLEARED_WITHIN: Duration = Duration::from_secs(30);

/// Three nodes on a Redis of the test's own, speaking for the test app, its webhooks to
/// `webhook`.
fn nodes(webhook: &str) -> (RedisServer, Vec<Node>) {
    common::cluster_with(3, &["--pusher-app", APP, "--pusher-webhook", webhook])
}

/// Subscribes `ws` to public channel `channel`, until it is subscribed.
async fn subscribe(ws: &mut common::Ws, channel: &str) {
    let frame = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    common::send_text(ws, &frame.to_string()).await;
    raw::expect_event(ws, "pusher_internal:subscription_succeeded", channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_members_are_removed_within_30_s_with_one_webhook() {
    let receiver = Receiver::start().await;
    let (_redis, mut nodes) = nodes(&receiver.url);
    let channel = "presence-room";

    let (mut watcher, watcher_id) = raw::connect(&nodes[0], KEY).await;
    raw::join_presence(&mut watcher, &watcher_id, (KEY, SECRET), channel, "watcher").await;
    let (mut victim, victim_id) = raw::connect(&nodes[2], KEY).await;
    let members =
        raw::join_presence(&mut victim, &victim_id, (KEY, SECRET), channel, "victim").await;
    assert_eq!(members["count"], 2, "{members}");
    let added = raw::expect_event(&mut watcher, "pusher_internal:member_added", channel).await;
    assert_eq!(added["data"]["user_id"], "victim", "{added}");
    let added = ("member_added", channel, "victim");
    receiver.wait_for(KEY, added, WAIT).await;

    // SIGKILL: the node says nothing; the survivors must notice and clean up.
    nodes[2].kill();
    let killed = Instant::now();
    let removed = raw::expect_event_within(
        &mut watcher,
        "pusher_internal:member_removed",
        channel,
        CLEARED_WITHIN,
    )
    .await;
    let after = killed.elapsed();
    assert_eq!(removed["data"]["user_id"], "victim", "{removed}");
    eprintln!("member_removed reached the watcher {after:?} after the kill");

    let removed = ("member_removed", channel, "victim");
    receiver.wait_for(KEY, removed, CLEARED_WITHIN).await;
    // Both survivors reap; a second webhook would come within a few more beats.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.count(KEY, removed),
        1,
        "{:?}",
        receiver.events(KEY)
    );
    assert_eq!(receiver.count(KEY, added), 1, "{:?}", receiver.events(KEY));

    // The channel still has its watcher: not vacated; the list has the watcher alone.
    let vacated = ("channel_vacated", channel, "");
    assert_eq!(
        receiver.count(KEY, vacated),
        0,
        "{:?}",
        receiver.events(KEY)
    );
    let (mut late, late_id) = raw::connect(&nodes[1], KEY).await;
    let members = raw::join_presence(&mut late, &late_id, (KEY, SECRET), channel, "late").await;
    let ids: Vec<&str> = members["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut ids = ids;
    ids.sort_unstable();
    assert_eq!(ids, ["late", "watcher"], "{members}");
}

/// POSTs an event through the HTTP API of `node`; the status (0: no answer).
async fn trigger(node: &Node, channel: &str, data: &str) -> u16 {
    let body = json!({"name": "news", "channel": channel, "data": data});
    common::pusher::signed_post(node, APP, "/apps/5/events", &body)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_pusher_sockets_are_told_to_reconnect_and_publications_resume() {
    let receiver = Receiver::start().await;
    let (mut redis, nodes) = nodes(&receiver.url);
    let channel = "news";
    let (mut reader, _) = raw::connect(&nodes[2], KEY).await;
    subscribe(&mut reader, channel).await;
    assert_eq!(trigger(&nodes[0], channel, "before").await, 200);
    let before = raw::expect_event(&mut reader, "news", channel).await;
    assert_eq!(before["data"], "before");

    redis.stop();
    // With Redis down a publish is refused with a server error: the caller knows.
    let status = trigger(&nodes[0], channel, "during").await;
    assert!(status >= 500, "a publish with Redis down answers {status}");
    blocking(|| redis.restart()).expect("redis restarts");

    // Once its node has resubscribed it may have missed publications, and a Pusher client
    // cannot recover them: the socket is closed with 4200, on which pusher-js reconnects at
    // once and subscribes again.
    let closed = common::next_close(&mut reader, Duration::from_secs(20)).await;
    let code = closed.map(|frame| u16::from(frame.code));
    assert_eq!(code, Some(4200), "closed with {code:?}");
    let (mut reader, _) = raw::connect(&nodes[2], KEY).await;
    subscribe(&mut reader, channel).await;
    assert_eq!(trigger(&nodes[0], channel, "after").await, 200);
    let after = raw::expect_event(&mut reader, "news", channel).await;
    assert_eq!(
        after["data"], "after",
        "the refused publish was not delivered"
    );
}
