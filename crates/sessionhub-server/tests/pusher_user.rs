//! Pusher user sign-in on real sessionhub processes: unmodified pusher-js 8 (`signin()`,
//! `pusher.user.bind`, `pusher.user.watchlist.bind`) signed by an app's own signer or by
//! sessionhub's `/pusher/user-auth`, the Node server SDK's `sendToUser` and
//! `terminateUserConnections`, on one node, on three nodes sharing a Redis (a node killed
//! with a watched user on it) and with two apps, and what
//! pusher-js never sends (a forged sign-in, bad `user_data`, a second sign-in, another
//! user's `#server-to-user-` channel) over a raw WebSocket. The same on Redis Cluster,
//! Sentinel and NATS: tests/pusher_backends.rs.
//!
//! Prerequisites: Node.js 20+ and npm (`common::pusher` runs `npm ci` in tests/pusher).

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sessionhub_testkit::Node;

use common::pusher::js::{APP, Clients, KEY, SECRET};
use common::pusher::raw::{self, expect_event, next_event, sign};
use common::pusher::sdk::{Sdk, ok, sdk};
use common::{WAIT, Ws};

/// How long a killed node's signed-in users may stay online: the issue's presence bound.
const REAPED_WITHIN: Duration = Duration::from_secs(30);

fn pusher_node() -> Node {
    common::node(&["--pusher-app", APP])
}

/// `pusher:signin` as `user_data` on a raw socket, signed with `secret` as app `KEY`.
async fn send_signin(ws: &mut Ws, socket_id: &str, secret: &str, user_data: &Value) {
    raw::send_signin(ws, socket_id, (KEY, secret), user_data).await;
}

/// A raw socket on `node` signed in to the test app as `user_data`, and its socket id.
async fn signed_in(node: &Node, user_data: Value) -> (Ws, String) {
    raw::signed_in(node, (KEY, SECRET), user_data).await
}

/// Runs `calls` through the Node SDK against `node`; every answer must be a success.
async fn node_sdk(node: &Node, calls: Value) {
    for answer in sdk(Sdk::Node, node, APP, calls).await {
        ok(&answer);
    }
}

/// The user ids of the first watchlist event `name` (`online`, `offline`) that `client`
/// got from the `from`th event on, sorted.
async fn watchlist(clients: &mut Clients, from: usize, client: &str, name: &str) -> Vec<String> {
    let event = clients
        .wait_from(from, |e| {
            e["client"] == client && e["type"] == "watchlist" && e["name"] == name
        })
        .await;
    let mut ids: Vec<String> = serde_json::from_value(event["user_ids"].clone()).unwrap();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_signs_in_and_gets_send_to_user_from_the_node_sdk() {
    let node = pusher_node();
    let mut clients = Clients::start().await;
    let ann = json!({"id": "ann", "user_info": {"name": "Ann"}});
    for client in ["ann-tab-1", "ann-tab-2"] {
        clients
            .connect_signing(client, &node, json!({"user_data": ann}))
            .await;
        clients
            .send(json!({"cmd": "signin", "client": client}))
            .await;
        let signed = clients
            .wait(|e| e["client"] == client && e["type"] == "signin")
            .await;
        assert_eq!(signed["user_data"], ann);
    }
    // Signed in by sessionhub's own endpoint, for the HTTP session's user.
    let session = common::login(&node.http(), "carol").await;
    let endpoint = format!("{}/pusher/user-auth", node.http());
    clients
        .connect_signing(
            "carol",
            &node,
            json!({"endpoint": endpoint, "session": session}),
        )
        .await;
    clients
        .send(json!({"cmd": "signin", "client": "carol"}))
        .await;
    let signed = clients
        .wait(|e| e["client"] == "carol" && e["type"] == "signin")
        .await;
    assert_eq!(signed["user_data"]["id"], "carol", "{signed}");
    clients.connect("bystander", &node).await;

    node_sdk(
        &node,
        json!([
            {"call": "sendToUser", "user": "ann", "event": "hello", "data": {"n": 1}},
            {"call": "sendToUser", "user": "carol", "event": "hi", "data": "text"},
        ]),
    )
    .await;
    for client in ["ann-tab-1", "ann-tab-2"] {
        let got = clients
            .wait(|e| e["client"] == client && e["type"] == "user_event")
            .await;
        assert_eq!(
            (&got["event"], &got["data"]),
            (&json!("hello"), &json!({"n": 1}))
        );
    }
    let got = clients
        .wait(|e| e["client"] == "carol" && e["type"] == "user_event")
        .await;
    assert_eq!(
        (&got["event"], &got["data"]),
        (&json!("hi"), &json!("text"))
    );
    // A public event after them: when it arrives, the user events would have too.
    clients.subscribed("bystander", "news").await;
    node_sdk(
        &node,
        json!([{"call": "trigger", "channels": ["news"], "event": "e", "data": {}}]),
    )
    .await;
    clients.event("bystander", "news", "e").await;
    let user_events = |c: &str| clients.seen(|e| e["client"] == c && e["type"] == "user_event");
    assert!(user_events("bystander").is_empty());
    assert_eq!(user_events("ann-tab-1").len(), 1, "once, not once per tab");
    assert_eq!(user_events("carol").len(), 1);
    clients.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_malformed_sign_in_is_refused_with_4009() {
    let node = pusher_node();
    let refused = [
        (
            json!({"id": "mallory"}),
            "not-the-secret",
            "invalid signature",
        ),
        (json!({"name": "no id"}), SECRET, "user_data.id"),
        (json!({"id": ""}), SECRET, "user_data.id"),
        (json!({"id": "a", "watchlist": "b"}), SECRET, "watchlist"),
        (
            json!({"id": "a", "watchlist": (0..101).map(|n| n.to_string()).collect::<Vec<_>>()}),
            SECRET,
            "over the 100",
        ),
    ];
    for (user_data, secret, why) in refused {
        let (mut ws, socket_id) = raw::connect(&node, KEY).await;
        send_signin(&mut ws, &socket_id, secret, &user_data).await;
        let error = next_event(&mut ws).await;
        assert_eq!(error["event"], "pusher:error", "{user_data}: {error}");
        assert_eq!(error["data"]["code"], 4009, "{error}");
        let message = error["data"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{user_data}: {message}");
        common::assert_closes(&mut ws, WAIT, 4009).await;
    }
    // Signed in as another user's socket id: refused too (the signature names the socket).
    let (_other, other_id) = raw::connect(&node, KEY).await;
    let (mut ws, _) = raw::connect(&node, KEY).await;
    send_signin(&mut ws, &other_id, SECRET, &json!({"id": "ann"})).await;
    assert_eq!(next_event(&mut ws).await["data"]["code"], 4009);
    common::assert_closes(&mut ws, WAIT, 4009).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_channel_is_the_signed_in_user_s_alone() {
    let node = pusher_node();
    let subscribe = |channel: &str| {
        json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": ""}}).to_string()
    };
    // Not signed in: no one's user channel.
    let (mut anonymous, _) = raw::connect(&node, KEY).await;
    common::send_text(&mut anonymous, &subscribe("#server-to-user-ann")).await;
    let refused = expect_event(
        &mut anonymous,
        "pusher:subscription_error",
        "#server-to-user-ann",
    )
    .await;
    assert_eq!(refused["data"]["status"], 403, "{refused}");

    let (mut ann, socket_id) = signed_in(&node, json!({"id": "ann", "user_info": {"n": 1}})).await;
    common::send_text(&mut ann, &subscribe("#server-to-user-bob")).await;
    expect_event(&mut ann, "pusher:subscription_error", "#server-to-user-bob").await;
    common::send_text(&mut ann, &subscribe("#server-to-user-ann")).await;
    expect_event(
        &mut ann,
        "pusher_internal:subscription_succeeded",
        "#server-to-user-ann",
    )
    .await;
    // A second sign-in is refused, and the first stays.
    send_signin(&mut ann, &socket_id, SECRET, &json!({"id": "bob"})).await;
    let error = next_event(&mut ann).await;
    assert_eq!(error["event"], "pusher:error", "{error}");
    assert!(
        error["data"]["message"]
            .as_str()
            .unwrap()
            .contains("already signed in as ann"),
        "{error}"
    );
    // A presence channel without channel_data: the member is the signed-in user (what
    // pusher-js does when signed in), signed over socket_id:channel.
    let auth = sign(KEY, SECRET, &format!("{socket_id}:presence-room"));
    let frame =
        json!({"event": "pusher:subscribe", "data": {"channel": "presence-room", "auth": auth}});
    common::send_text(&mut ann, &frame.to_string()).await;
    let joined = expect_event(
        &mut ann,
        "pusher_internal:subscription_succeeded",
        "presence-room",
    )
    .await;
    assert_eq!(
        joined["data"]["presence"],
        json!({"ids": ["ann"], "hash": {"ann": {"n": 1}}, "count": 1})
    );
    // Events to ann arrive on her channel; anonymous never gets them.
    node_sdk(
        &node,
        json!([{"call": "sendToUser", "user": "ann", "event": "ping-me", "data": {"k": "v"}}]),
    )
    .await;
    let got = expect_event(&mut ann, "ping-me", "#server-to-user-ann").await;
    assert_eq!(got["data"], json!({"k": "v"}));
    common::assert_silent(&mut anonymous, Duration::from_millis(300)).await;
}

/// Three nodes on one Redis: `sendToUser` and `terminateUserConnections` posted to one node
/// reach a user signed in on another; watchlists hear of users signing in and out anywhere,
/// and of a killed node's users going offline within the presence bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_to_users_and_track_watchlists_cluster_wide() {
    let (_redis, mut nodes) = common::cluster_with(3, &["--pusher-app", APP]);
    // ann is online on node 2 before the watcher signs in.
    let (mut ann, _) = signed_in(&nodes[2], json!({"id": "ann"})).await;
    let mut clients = Clients::start().await;
    let watch = json!({"id": "watcher", "watchlist": ["ann", "bob", "dan"]});
    clients
        .connect_signing("watcher", &nodes[0], json!({"user_data": watch}))
        .await;
    let from = clients.mark();
    clients
        .send(json!({"cmd": "signin", "client": "watcher"}))
        .await;
    // Right after the sign-in: who is online, who is not.
    assert_eq!(
        watchlist(&mut clients, from, "watcher", "online").await,
        ["ann"]
    );
    assert_eq!(
        watchlist(&mut clients, from, "watcher", "offline").await,
        ["bob", "dan"]
    );

    // sendToUser posted to node 1 reaches the watcher on node 0 and ann on node 2.
    node_sdk(
        &nodes[1],
        json!([
            {"call": "sendToUser", "user": "watcher", "event": "note", "data": {"to": "watcher"}},
            {"call": "sendToUser", "user": "ann", "event": "note", "data": {"to": "ann"}},
        ]),
    )
    .await;
    let got = clients
        .wait(|e| e["client"] == "watcher" && e["type"] == "user_event")
        .await;
    assert_eq!(got["data"], json!({"to": "watcher"}));
    let got = expect_event(&mut ann, "note", "#server-to-user-ann").await;
    assert_eq!(got["data"], json!({"to": "ann"}));

    // bob signs in twice on node 1: online once; offline only after his last connection.
    let from = clients.mark();
    let (bob_1, _) = signed_in(&nodes[1], json!({"id": "bob"})).await;
    assert_eq!(
        watchlist(&mut clients, from, "watcher", "online").await,
        ["bob"]
    );
    let (bob_2, _) = signed_in(&nodes[2], json!({"id": "bob"})).await;
    drop(bob_1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from_offline = clients.mark();
    drop(bob_2);
    assert_eq!(
        watchlist(&mut clients, from_offline, "watcher", "offline").await,
        ["bob"]
    );
    let bob_events = clients.seen(|e| {
        e["client"] == "watcher" && e["type"] == "watchlist" && e["user_ids"] == json!(["bob"])
    });
    assert_eq!(
        bob_events.len(),
        2,
        "one online, one offline: {bob_events:?}"
    );

    // The longest watchlist Pusher allows: taken, every watched user looked up at once.
    let hundred: Vec<String> = (0..100).map(|n| format!("w{n}")).collect();
    let started = Instant::now();
    let (mut big, _) = signed_in(&nodes[1], json!({"id": "big", "watchlist": hundred})).await;
    let look = raw::next_watchlist(&mut big).await;
    eprintln!("a sign-in watching 100 users took {:?}", started.elapsed());
    let events = look["data"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{look}");
    assert_eq!(events[0]["name"], "offline");
    assert_eq!(events[0]["user_ids"].as_array().unwrap().len(), 100);

    // terminate_connections posted to node 1 closes dan's signed-in socket on node 2.
    let (mut dan, _) = signed_in(&nodes[2], json!({"id": "dan"})).await;
    node_sdk(
        &nodes[1],
        json!([{"call": "terminateUserConnections", "user": "dan"}]),
    )
    .await;
    common::assert_closes(&mut dan, WAIT, 4009).await;

    // Node 2 is killed with ann signed in on it: offline within the presence bound.
    let from = clients.mark();
    nodes[2].kill();
    let killed = Instant::now();
    let offline = clients
        .wait_from_within(from, REAPED_WITHIN, |e| {
            e["client"] == "watcher" && e["type"] == "watchlist" && e["user_ids"] == json!(["ann"])
        })
        .await;
    assert_eq!(offline["name"], "offline", "{offline}");
    eprintln!(
        "ann went offline {:?} after her node was killed",
        killed.elapsed()
    );
    drop(ann);
    clients.stop().await;
}

/// Two apps on one node (namespaces `1:` and `2:`): one user id signed in to each is two
/// users. `sendToUser`, watchlists and `terminate_connections` of one app leave the other
/// app's user alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_app_has_its_own_signed_in_users() {
    const ONE: &str = "1:key-1:secret-1";
    const TWO: &str = "2:key-2:secret-2";
    let node = common::node(&["--pusher-app", ONE, "--pusher-app", TWO]);
    let one = ("key-1", "secret-1");
    let two = ("key-2", "secret-2");
    let (mut watcher, _) =
        raw::signed_in(&node, two, json!({"id": "w", "watchlist": ["ann"]})).await;
    let first_look = raw::next_watchlist(&mut watcher).await;
    assert_eq!(
        first_look["data"]["events"],
        json!([{"name": "offline", "user_ids": ["ann"]}])
    );
    let (mut ann_1, _) = raw::signed_in(&node, one, json!({"id": "ann"})).await;
    let (mut ann_2, _) = raw::signed_in(&node, two, json!({"id": "ann"})).await;
    let online = raw::next_watchlist(&mut watcher).await;
    assert_eq!(
        online["data"]["events"],
        json!([{"name": "online", "user_ids": ["ann"]}])
    );

    let note =
        |data: &str| json!({"name": "note", "data": data, "channels": ["#server-to-user-ann"]});
    let body = note("\"to app 1\"");
    let (status, answer) = common::pusher::signed_post(&node, ONE, "/apps/1/events", &body).await;
    assert_eq!(status, 200, "{answer}");
    let got = expect_event(&mut ann_1, "note", "#server-to-user-ann").await;
    assert_eq!(got["data"], "to app 1");
    let path = "/apps/1/users/ann/terminate_connections";
    let (status, answer) = common::pusher::signed_post(&node, ONE, path, &json!({})).await;
    assert_eq!(status, 200, "{answer}");
    common::assert_closes(&mut ann_1, WAIT, 4009).await;
    // App 2's ann never got app 1's event, is still connected, and still online for w.
    let body = note("\"to app 2\"");
    let (status, answer) = common::pusher::signed_post(&node, TWO, "/apps/2/events", &body).await;
    assert_eq!(status, 200, "{answer}");
    let got = next_event(&mut ann_2).await;
    assert_eq!(
        (&got["event"], &got["data"]),
        (&json!("note"), &json!("to app 2"))
    );
    common::assert_silent(&mut watcher, Duration::from_millis(500)).await;
}

/// With Redis down, a sign-in cannot join the user's channel: `pusher:error` with 4100 and
/// the reason, and the connection stays (not signed in) for the client to try again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_the_backend_cannot_serve_is_refused_and_the_connection_stays() {
    let (mut redis, nodes) = common::cluster_with(1, &["--pusher-app", APP]);
    let (mut ws, socket_id) = raw::connect(&nodes[0], KEY).await;
    redis.stop();
    send_signin(&mut ws, &socket_id, SECRET, &json!({"id": "ann"})).await;
    let refused = tokio::time::timeout(Duration::from_secs(20), next_event(&mut ws))
        .await
        .expect("an answer while Redis is down");
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(refused["data"]["code"], 4100, "{refused}");
    assert!(
        refused["data"]["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot sign in now"),
        "{refused}"
    );
    common::send_text(&mut ws, r#"{"event":"pusher:ping","data":{}}"#).await;
    assert_eq!(
        next_event(&mut ws).await["event"],
        "pusher:pong",
        "still open"
    );
}
