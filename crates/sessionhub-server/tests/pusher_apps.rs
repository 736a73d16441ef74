//! Several Pusher apps on one cluster (two nodes sharing a real Redis), configured in the
//! config file: each app's channels are its own. Two apps' clients on a channel of the same
//! name never see each other's events, presence members or counts; each app's HTTP API
//! lists and counts its own channels only, by the names its clients give them; each app's
//! webhooks tell of its own channels only. An app given `namespace = ""` shares the hub's
//! channels, so protocol v1 clients and it meet on the same names.

mod common;

use std::time::Duration;

use common::pusher::raw::{Receiver, connect, expect_event, join_presence, next_event};
use common::{WAIT, send_text, v1};
use serde_json::{Value, json};
use sessionhub::pusher::PusherApp;

/// The apps, as `ID:KEY:SECRET`: 1 and 2 under their default namespaces (`1:`, `2:`), 3 with
/// none.
const ONE: &str = "1:key-1:secret-1";
const TWO: &str = "2:key-2:secret-2";
const THREE: &str = "3:key-3:secret-3";

fn app(spec: &str) -> PusherApp {
    spec.parse().unwrap()
}

/// A signed `GET` of the HTTP API's `path` for app `spec` (`ID:KEY:SECRET`) on `node`, which
/// must answer 200: the answer's JSON.
async fn signed_get(node: &sessionhub_testkit::Node, spec: &str, path: &str) -> Value {
    let (status, body) = common::pusher::signed_get(node, spec, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Publishes event `name` with `data` on `channel` through `app`'s HTTP API on `node`.
async fn publish(
    node: &sessionhub_testkit::Node,
    app: &str,
    name: &str,
    channel: &str,
    data: &str,
) {
    let id = app.split(':').next().unwrap();
    let body = json!({"name": name, "channel": channel, "data": data});
    let path = format!("/apps/{id}/events");
    let (status, text) = common::pusher::signed_post(node, app, &path, &body).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_app_has_its_own_channels_across_nodes() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sessionhub.toml");
    let mut toml = String::new();
    for (spec, extra) in [
        (ONE, format!("webhook_url = \"{}\"\n", receiver.url)),
        (TWO, format!("webhook_url = \"{}\"\n", receiver.url)),
        (THREE, "namespace = \"\"\n".to_owned()),
    ] {
        let app = app(spec);
        toml += &format!(
            "[[pusher.apps]]\nid = \"{}\"\nkey = \"{}\"\nsecret = \"{}\"\n{extra}",
            app.id, app.key, app.secret
        );
    }
    std::fs::write(&config, toml).unwrap();
    let (_redis, nodes) = common::cluster_with(2, &["--config", config.to_str().unwrap()]);

    // The same presence channel name in apps 1 and 2, on two nodes: each lists its own.
    let (mut ann, ann_id) = connect(&nodes[0], "key-1").await;
    let members = join_presence(
        &mut ann,
        &ann_id,
        ("key-1", "secret-1"),
        "presence-room",
        "ann",
    )
    .await;
    assert_eq!(members["ids"], json!(["ann"]));
    let (mut bob, bob_id) = connect(&nodes[1], "key-2").await;
    let members = join_presence(
        &mut bob,
        &bob_id,
        ("key-2", "secret-2"),
        "presence-room",
        "bob",
    )
    .await;
    assert_eq!(
        members["ids"],
        json!(["bob"]),
        "app 1's ann is not app 2's member"
    );

    // A public channel of the same name in apps 1 and 3, and a protocol v1 client on it.
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": "news"}}).to_string();
    send_text(&mut ann, &subscribe).await;
    expect_event(&mut ann, "pusher_internal:subscription_succeeded", "news").await;
    let (mut cleo, _) = connect(&nodes[1], "key-3").await;
    send_text(&mut cleo, &subscribe).await;
    expect_event(&mut cleo, "pusher_internal:subscription_succeeded", "news").await;
    let (mut v1_client, _) = v1::open_v1(&nodes[0].ws(), "carl").await.unwrap();
    send_text(&mut v1_client, &v1::subscribe_frame("news", None)).await;
    loop {
        match tokio::time::timeout(WAIT, v1::read_frame(&mut v1_client))
            .await
            .unwrap()
            .unwrap()
        {
            v1::Frame::Subscribed(s) if s.channel == "news" => break,
            v1::Frame::Error { code, message } => panic!("{code}: {message}"),
            _ => {}
        }
    }

    // App 3's event reaches its client and the v1 client, not app 1's ann; app 1's reaches
    // ann alone: ann's next frame is app 1's event, nothing of app 2's or 3's before it.
    publish(&nodes[0], THREE, "for-three", "news", "3").await;
    let got = expect_event(&mut cleo, "for-three", "news").await;
    assert_eq!(got["data"], 3);
    loop {
        let frame = tokio::time::timeout(WAIT, v1::read_frame(&mut v1_client)).await;
        if let v1::Frame::Publication { channel, data, .. } = frame.unwrap().unwrap() {
            assert_eq!((channel.as_str(), data), ("news", json!(3)));
            break;
        }
    }
    publish(&nodes[1], ONE, "for-one", "news", "1").await;
    let next = next_event(&mut ann).await;
    assert_eq!(
        (&next["event"], &next["channel"], &next["data"]),
        (&json!("for-one"), &json!("news"), &json!(1)),
        "{next}"
    );
    publish(&nodes[1], TWO, "for-two", "presence-room", "2").await;
    let got = expect_event(&mut bob, "for-two", "presence-room").await;
    assert_eq!(got["data"], 2);

    // Each app's API lists its own channels by its own names, and counts its own users.
    let channels = |answer: Value| {
        let mut names: Vec<String> = answer["channels"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    };
    for (spec, node, want) in [
        (ONE, &nodes[1], vec!["news", "presence-room"]),
        (TWO, &nodes[0], vec!["presence-room"]),
        (THREE, &nodes[0], vec!["news"]),
    ] {
        let app = app(spec);
        let path = format!("/apps/{}/channels", app.id);
        assert_eq!(
            channels(signed_get(node, spec, &path).await),
            want,
            "app {}",
            app.id
        );
    }
    let path = "/apps/2/channels/presence-room/users";
    let users = signed_get(&nodes[0], TWO, path).await;
    assert_eq!(users, json!({"users": [{"id": "bob"}]}));
    let info = signed_get(&nodes[0], ONE, "/apps/1/channels/news").await;
    assert_eq!(info["occupied"], true);
    let info = signed_get(&nodes[0], TWO, "/apps/2/channels/news").await;
    assert_eq!(info["occupied"], false, "app 1's news is not app 2's");

    // Each app's webhooks tell of its own channels, by its own names.
    let want_one = [
        ("channel_occupied", "presence-room", ""),
        ("member_added", "presence-room", "ann"),
        ("channel_occupied", "news", ""),
    ];
    let want_two = [
        ("channel_occupied", "presence-room", ""),
        ("member_added", "presence-room", "bob"),
    ];
    for (key, want) in [("key-1", &want_one[..]), ("key-2", &want_two[..])] {
        for &event in want {
            receiver.wait_for(key, event, WAIT).await;
        }
    }
    // Late duplicates or strays would have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = |key: &str| {
        let mut events: Vec<(String, String, String)> = receiver.events(key);
        events.sort();
        events
    };
    let owned = |want: &[(&str, &str, &str)]| {
        let mut want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        want.sort();
        want
    };
    assert_eq!(events("key-1"), owned(&want_one));
    assert_eq!(events("key-2"), owned(&want_two));
    assert!(
        receiver.posts(Some("key-3")).is_empty(),
        "app 3 has no webhook URL"
    );
}
