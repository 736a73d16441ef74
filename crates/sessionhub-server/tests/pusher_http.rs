//! Pusher's HTTP API against real sessionhub processes, called by the Pusher server SDKs no
//! one here wrote: the `pusher` Node SDK (npm, tests/pusher/package.json) and the `pusher`
//! Python SDK (PyPI, tests/pusher/requirements.txt, in a venv this test makes under
//! target/). What an SDK publishes must reach a real subscriber: a protocol v1 client
//! (`/ws`) of the same channel, since a publication reaches every client of a channel
//! whatever its protocol. Refused requests are made by hand, signed by
//! `sessionhub::pusher::request::sign` and then broken one part at a time.
//!
//! Webhooks in Pusher's format go to a receiver of the test's own, and every body it gets
//! must pass both SDKs' webhook validators.
//!
//! Prerequisites: Node.js 20+ and npm, Python 3 with venv; the test runs `npm ci` in
//! tests/pusher (`common::pusher`) and `pip install` in its venv itself when they are
//! missing. The drivers are
//! tests/pusher/sdk.mjs and tests/pusher/sdk.py: one JSON line per SDK call.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;

use common::pusher::raw::Receiver;
use common::pusher::sdk::{Sdk, ok, sdk};
use common::{WAIT, Ws, send_text, v1};
use serde_json::{Value, json};
use sessionhub::pusher::PusherApp;
use sessionhub::pusher::request::sign;
use sessionhub_testkit::{Node, RedisServer};

const APP: &str = "1:app-key:app-secret";
const OTHER_APP: &str = "2:other-key:other-secret";
const APP_KEY: &str = "app-key";
/// Where APP's channels live among the hub's: with two apps, each has its own namespace,
/// `{id}:` by default.
const NAMESPACE: &str = "1:";

fn app() -> PusherApp {
    APP.parse().unwrap()
}

/// What every node here speaks for: both apps (`presence-` channels have presence with
/// them), and room for many connections from loopback.
const PUSHER_FLAGS: [&str; 6] = [
    "--pusher-app",
    APP,
    "--pusher-app",
    OTHER_APP,
    "--max-connections-per-ip",
    "100000",
];

/// A node speaking for the Pusher apps, with `extra` flags.
fn pusher_node(extra: &[&str]) -> Node {
    let mut args = PUSHER_FLAGS.to_vec();
    args.extend_from_slice(extra);
    common::node(&args)
}

/// `n` nodes speaking for the apps, sharing one Redis of their own, with `extra` flags.
fn pusher_cluster(n: usize, extra: &[&str]) -> (RedisServer, Vec<Node>) {
    let mut args = PUSHER_FLAGS.to_vec();
    args.extend_from_slice(extra);
    common::cluster_with(n, &args)
}

/// A protocol v1 connection of `user` on `node`, subscribed to APP's channel `channel`
/// (the hub's `1:{channel}`).
async fn subscriber(node: &Node, user: &str, channel: &str) -> Ws {
    let channel = format!("{NAMESPACE}{channel}");
    let (mut ws, _) = v1::open_v1(&node.ws(), user).await.expect("connects");
    send_text(&mut ws, &v1::subscribe_frame(&channel, None)).await;
    loop {
        match tokio::time::timeout(WAIT, v1::read_frame(&mut ws))
            .await
            .expect("subscribed in time")
            .unwrap()
        {
            v1::Frame::Subscribed(s) if s.channel == channel => return ws,
            v1::Frame::Error { code, message } => panic!("{code}: {message}"),
            _ => {}
        }
    }
}

/// The next publication `ws` gets: its channel, as APP names it, and data.
async fn next_publication(ws: &mut Ws) -> (String, Value) {
    loop {
        match tokio::time::timeout(WAIT, v1::read_frame(ws))
            .await
            .expect("a publication in time")
            .unwrap()
        {
            v1::Frame::Publication { channel, data, .. } => {
                let name = channel.strip_prefix(NAMESPACE);
                let name = name.unwrap_or_else(|| panic!("{channel} is not APP's"));
                return (name.to_owned(), data);
            }
            v1::Frame::Closed(code) => panic!("closed ({code:?}) instead of a publication"),
            _ => {}
        }
    }
}

/// Runs `calls` until the last answer is `want` (presence and counts settle shortly after
/// a subscription), at most [`WAIT`]; the last answers.
async fn settle(sdk_: Sdk, node: &Node, calls: Value, want: &Value) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answers = sdk(sdk_, node, APP, calls.clone()).await;
        if answers.last().and_then(|a| a.get("ok")) == Some(want)
            || tokio::time::Instant::now() > deadline
        {
            return answers;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads until the connection ends; panics if it does not within [`WAIT`].
async fn closes(ws: &mut Ws) {
    loop {
        match tokio::time::timeout(WAIT, v1::read_frame(ws))
            .await
            .expect("closed in time")
        {
            Ok(v1::Frame::Closed(_)) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn node_sdk_triggers_reach_a_subscriber_and_queries_count_it() {
    let node = pusher_node(&[]);
    let mut bob = subscriber(&node, "bob", "my-channel").await;
    let mut cached = subscriber(&node, "bob", "cache-news").await;

    let answers = sdk(
        Sdk::Node,
        &node,
        APP,
        json!([
            {"call": "trigger", "channels": "my-channel", "event": "my-event", "data": {"some": "data"}},
            {"call": "trigger", "channels": ["my-channel"], "event": "to-others", "data": "hello",
             "params": {"socket_id": "123.456"}},
            {"call": "trigger", "channels": "my-channel", "event": "counted", "data": "\"quoted\"",
             "params": {"info": "subscription_count"}},
            {"call": "triggerBatch", "batch": [
                {"channel": "my-channel", "name": "first", "data": "1"},
                {"channel": "cache-news", "name": "second", "data": "{\"n\":2}"},
            ]},
            {"call": "triggerBatch", "batch": [
                {"channel": "my-channel", "name": "third", "data": "3", "info": "subscription_count"},
                {"channel": "cache-news", "name": "fourth", "data": "4"},
            ]},
        ]),
    )
    .await;
    assert_eq!(ok(&answers[0]), &json!({}));
    assert_eq!(ok(&answers[1]), &json!({}));
    assert_eq!(
        ok(&answers[2]),
        &json!({"channels": {"my-channel": {"subscription_count": 1}}})
    );
    assert_eq!(ok(&answers[3]), &json!({}));
    assert_eq!(
        ok(&answers[4]),
        &json!({"batch": [{"subscription_count": 1}, {}]})
    );

    // Data that is JSON reaches v1 clients as that JSON, any other string as a string.
    let channel = || "my-channel".to_owned();
    assert_eq!(
        next_publication(&mut bob).await,
        (channel(), json!({"some": "data"}))
    );
    // socket_id excludes a Pusher socket; a v1 client has none and gets it.
    assert_eq!(
        next_publication(&mut bob).await,
        (channel(), json!("hello"))
    );
    assert_eq!(
        next_publication(&mut bob).await,
        (channel(), json!("\"quoted\""))
    );
    assert_eq!(next_publication(&mut bob).await, (channel(), json!(1)));
    assert_eq!(next_publication(&mut bob).await, (channel(), json!(3)));
    assert_eq!(
        next_publication(&mut cached).await,
        ("cache-news".to_owned(), json!({"n": 2}))
    );

    // Presence: alice on a presence channel, counted by the channel queries.
    let _alice = subscriber(&node, "alice", "presence-room").await;
    let users = settle(
        Sdk::Node,
        &node,
        json!([{"call": "get", "path": "/channels/presence-room/users"}]),
        &json!({"users": [{"id": "alice"}]}),
    )
    .await;
    assert_eq!(ok(&users[0]), &json!({"users": [{"id": "alice"}]}));
    let answers = sdk(
        Sdk::Node,
        &node,
        APP,
        json!([
            {"call": "get", "path": "/channels"},
            {"call": "get", "path": "/channels", "params": {"filter_by_prefix": "presence-", "info": "user_count"}},
            {"call": "get", "path": "/channels/my-channel", "params": {"info": "subscription_count"}},
            {"call": "get", "path": "/channels/presence-room", "params": {"info": "user_count,subscription_count"}},
            {"call": "get", "path": "/channels/empty-channel"},
            {"call": "get", "path": "/channels", "params": {"info": "user_count"}},
            {"call": "get", "path": "/channels/my-channel/users"},
            {"call": "get", "path": "/channels/cache-news", "params": {"info": "cache,subscription_count"}},
            {"call": "get", "path": "/channels/cache-empty", "params": {"info": "cache"}},
            {"call": "get", "path": "/channels/my-channel", "params": {"info": "cache"}},
        ]),
    )
    .await;
    // The kept event as a subscriber gets it, with what is left of the history's 300 s.
    let news = ok(&answers[7]);
    assert_eq!(news["occupied"], true, "{news}");
    assert_eq!(news["subscription_count"], 1, "{news}");
    assert_eq!(
        news["cache"]["data"], r#"{"event":"fourth","channel":"cache-news","data":"4"}"#,
        "{news}"
    );
    let left = news["cache"]["ttl"].as_u64().expect("a ttl in seconds");
    assert!((290..=300).contains(&left), "{news}");
    // Nothing kept, or not a cache channel: no `cache`.
    assert_eq!(ok(&answers[8]), &json!({"occupied": false}));
    assert_eq!(ok(&answers[9]), &json!({"occupied": true}));
    let all = ok(&answers[0])["channels"].as_object().unwrap();
    for channel in ["my-channel", "cache-news", "presence-room"] {
        assert_eq!(all.get(channel), Some(&json!({})), "{all:?}");
    }
    assert_eq!(
        ok(&answers[1]),
        &json!({"channels": {"presence-room": {"user_count": 1}}})
    );
    assert_eq!(
        ok(&answers[2]),
        &json!({"occupied": true, "subscription_count": 1})
    );
    assert_eq!(
        ok(&answers[3]),
        &json!({"occupied": true, "user_count": 1, "subscription_count": 1})
    );
    assert_eq!(ok(&answers[4]), &json!({"occupied": false}));
    // user_count without a presence- prefix, users of a channel without presence: 400.
    assert_eq!(answers[5]["error"]["status"], 400, "{}", answers[5]);
    assert_eq!(answers[6]["error"]["status"], 400, "{}", answers[6]);

    let answers = sdk(
        Sdk::Node,
        &node,
        APP,
        json!([{"call": "terminateUserConnections", "user": "bob"}]),
    )
    .await;
    assert_eq!(ok(&answers[0]), &json!({}));
    closes(&mut bob).await;
    closes(&mut cached).await;
}

#[tokio::test]
async fn python_sdk_triggers_reach_a_subscriber_and_queries_count_it() {
    let node = pusher_node(&[]);
    let mut bob = subscriber(&node, "bob", "py-channel").await;
    let _alice = subscriber(&node, "alice", "presence-py").await;
    let _carol = subscriber(&node, "carol", "presence-py").await;

    let answers = sdk(
        Sdk::Python,
        &node,
        APP,
        json!([
            {"call": "trigger", "channels": ["py-channel"], "event": "my-event", "data": {"some": "data"}},
            {"call": "trigger", "channels": "py-channel", "event": "to-others", "data": "hi",
             "socket_id": "1.2"},
            {"call": "trigger_batch", "batch": [
                {"channel": "py-channel", "name": "a", "data": "x"},
                {"channel": "py-channel", "name": "b", "data": "y"},
            ]},
            {"call": "channel_info", "channel": "py-channel", "attributes": ["subscription_count"]},
        ]),
    )
    .await;
    assert_eq!(ok(&answers[0]), &json!({}));
    assert_eq!(ok(&answers[1]), &json!({}));
    assert_eq!(ok(&answers[2]), &json!({}));
    assert_eq!(
        ok(&answers[3]),
        &json!({"occupied": true, "subscription_count": 1})
    );
    let channel = || "py-channel".to_owned();
    assert_eq!(
        next_publication(&mut bob).await,
        (channel(), json!({"some": "data"}))
    );
    assert_eq!(next_publication(&mut bob).await, (channel(), json!("hi")));
    assert_eq!(next_publication(&mut bob).await, (channel(), json!("x")));
    assert_eq!(next_publication(&mut bob).await, (channel(), json!("y")));

    let want = json!({"channels": {"presence-py": {"user_count": 2}}});
    let answers = settle(
        Sdk::Python,
        &node,
        json!([{"call": "channels_info", "prefix": "presence-", "attributes": ["user_count"]}]),
        &want,
    )
    .await;
    assert_eq!(ok(&answers[0]), &want);
    let answers = sdk(
        Sdk::Python,
        &node,
        APP,
        json!([
            {"call": "users_info", "channel": "presence-py"},
            {"call": "channels_info", "attributes": ["user_count"]},
            {"call": "terminate_user_connections", "user": "bob"},
        ]),
    )
    .await;
    let mut users: Vec<&str> = ok(&answers[0])["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "carol"]);
    assert_eq!(
        answers[1]["error"]["type"], "PusherBadRequest",
        "{}",
        answers[1]
    );
    assert_eq!(ok(&answers[2]), &json!({}));
    closes(&mut bob).await;
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// POSTs `body` to `path`, with the query `query`; the status and the answer's text.
async fn post(node: &Node, path: &str, query: &str, body: &str) -> (u16, String) {
    let response = common::http()
        .post(format!("{}{path}?{query}", node.http()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn refused_requests_get_pusher_s_statuses() {
    let node = pusher_node(&[]);
    let app = app();
    let path = "/apps/1/events";
    let event = |channels: Vec<String>, data: String| {
        json!({"name": "e", "channels": channels, "data": data}).to_string()
    };
    let body = event(vec!["c".into()], "{}".into());
    let signed = |body: &str, at: u64| sign(&app, "POST", path, &[], body.as_bytes(), at);

    let (status, text) = post(&node, path, &signed(&body, now()), &body).await;
    assert_eq!((status, text.as_str()), (200, "{}"));

    let forged = signed(&body, now()).replace("auth_signature=", "auth_signature=00");
    let (status, text) = post(&node, path, &forged, &body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("invalid signature"), "{text}");

    let (status, text) = post(&node, path, &signed(&body, now() - 601), &body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("timestamp expired"), "{text}");

    // The signature covers body_md5, body_md5 covers the body: another body fails.
    let other = event(vec!["d".into()], "{}".into());
    let (status, text) = post(&node, path, &signed(&body, now()), &other).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("body_md5"), "{text}");

    let (status, text) = post(&node, "/apps/9/events", &signed(&body, now()), &body).await;
    assert_eq!(status, 404, "{text}");

    // Without the app in the path (the Python SDK's terminate_connections), the key names
    // it: an unknown one is unauthorized.
    let stranger = PusherApp::new("9", "stranger", "secret");
    let users = "/users/bob/terminate_connections";
    let query = sign(&stranger, "POST", users, &[], b"{}", now());
    let (status, text) = post(&node, users, &query, "{}").await;
    assert_eq!(status, 401, "{text}");

    // The other app's key on this app's path: forbidden.
    let other_app: PusherApp = OTHER_APP.parse().unwrap();
    let query = sign(&other_app, "POST", path, &[], body.as_bytes(), now());
    let (status, text) = post(&node, path, &query, &body).await;
    assert_eq!(status, 403, "{text}");

    let many = event((0..101).map(|i| format!("c{i}")).collect(), "{}".into());
    let (status, text) = post(&node, path, &signed(&many, now()), &many).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("1 to 100 channels"), "{text}");
    let hundred = event((0..100).map(|i| format!("c{i}")).collect(), "{}".into());
    let (status, text) = post(&node, path, &signed(&hundred, now()), &hundred).await;
    assert_eq!(status, 200, "{text}");

    // Pusher's 10 KB of event data: one byte more is 413.
    let big = event(vec!["c".into()], "x".repeat(10_241));
    let (status, text) = post(&node, path, &signed(&big, now()), &big).await;
    assert_eq!(status, 413, "{text}");
    let most = event(vec!["c".into()], "x".repeat(10_240));
    let (status, text) = post(&node, path, &signed(&most, now()), &most).await;
    assert_eq!(status, 200, "{text}");

    for (bad, why) in [
        ("{}", "a `name`"),
        (r#"{"name":"e","data":"x"}"#, "`channels` or `channel`"),
        (
            r#"{"name":"e","channel":"bad channel","data":"x"}"#,
            "channel",
        ),
        (
            r#"{"name":"e","channel":"c","data":"x","socket_id":"x"}"#,
            "socket_id",
        ),
        ("not json", "not a valid event"),
    ] {
        let (status, text) = post(&node, path, &signed(bad, now()), bad).await;
        assert_eq!(status, 400, "{bad}: {text}");
        assert!(text.contains(why), "{bad}: {text}");
    }
    // A full batch of the largest events is over the server API's 64 KB body limit, and
    // taken all the same, as Pusher takes it.
    let full = json!({"batch": (0..10).map(|_| json!({"name":"e","channel":"c","data":"x".repeat(10_240)})).collect::<Vec<_>>()}).to_string();
    assert!(full.len() > 64 * 1024);
    let query = sign(
        &app,
        "POST",
        "/apps/1/batch_events",
        &[],
        full.as_bytes(),
        now(),
    );
    let (status, text) = post(&node, "/apps/1/batch_events", &query, &full).await;
    assert_eq!(status, 200, "{text}");
    let eleven = json!({"batch": (0..11).map(|_| json!({"name":"e","channel":"c","data":"x"})).collect::<Vec<_>>()}).to_string();
    let batch_path = "/apps/1/batch_events";
    let query = sign(&app, "POST", batch_path, &[], eleven.as_bytes(), now());
    let (status, text) = post(&node, batch_path, &query, &eleven).await;
    assert_eq!(status, 400, "{text}");

    // What an SDK user sees with a wrong secret.
    let answers = sdk(
        Sdk::Node,
        &node,
        "1:app-key:wrong-secret",
        json!([{"call": "trigger", "channels": "c", "event": "e", "data": "x"}]),
    )
    .await;
    assert_eq!(answers[0]["error"]["status"], 401, "{}", answers[0]);
    let answers = sdk(
        Sdk::Python,
        &node,
        "1:app-key:wrong-secret",
        json!([{"call": "channels_info"}]),
    )
    .await;
    assert_eq!(
        answers[0]["error"]["type"], "PusherBadAuth",
        "{}",
        answers[0]
    );
}

#[tokio::test]
async fn three_nodes_sharing_redis_publish_and_count_cluster_wide() {
    let (redis, nodes) = pusher_cluster(3, &[]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    let mut bob = subscriber(c, "bob", "news").await;
    let _carol = subscriber(b, "carol", "presence-team").await;
    let _dave = subscriber(c, "dave", "presence-team").await;
    let _erin = subscriber(b, "erin", "news").await;

    let answers = sdk(
        Sdk::Node,
        a,
        APP,
        json!([{"call": "trigger", "channels": "news", "event": "headline", "data": "{\"n\":1}"}]),
    )
    .await;
    assert_eq!(ok(&answers[0]), &json!({}));
    assert_eq!(
        next_publication(&mut bob).await,
        ("news".to_owned(), json!({"n": 1}))
    );

    // Counted on A, which holds none of them.
    let want = json!({"occupied": true, "user_count": 2, "subscription_count": 2});
    let answers = settle(
        Sdk::Node,
        a,
        json!([{"call": "get", "path": "/channels/presence-team",
                "params": {"info": "user_count,subscription_count"}}]),
        &want,
    )
    .await;
    assert_eq!(ok(&answers[0]), &want);
    let answers = sdk(
        Sdk::Python,
        a,
        APP,
        json!([
            {"call": "channel_info", "channel": "news", "attributes": ["subscription_count"]},
            {"call": "users_info", "channel": "presence-team"},
            {"call": "channels_info", "prefix": "presence-", "attributes": ["user_count"]},
        ]),
    )
    .await;
    assert_eq!(
        ok(&answers[0]),
        &json!({"occupied": true, "subscription_count": 2})
    );
    let mut users: Vec<&str> = ok(&answers[1])["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["carol", "dave"]);
    assert_eq!(
        ok(&answers[2]),
        &json!({"channels": {"presence-team": {"user_count": 2}}})
    );

    // Terminated from A, closed on C.
    let answers = sdk(
        Sdk::Node,
        a,
        APP,
        json!([{"call": "terminateUserConnections", "user": "bob"}]),
    )
    .await;
    assert_eq!(ok(&answers[0]), &json!({}));
    closes(&mut bob).await;

    // Redis gone: an event is refused with 503 and says what was not published.
    let mut redis = redis;
    redis.stop();
    let body = json!({"name": "e", "channels": ["news", "other"], "data": "x"}).to_string();
    let path = "/apps/1/events";
    let query = sign(&app(), "POST", path, &[], body.as_bytes(), now());
    let started = std::time::Instant::now();
    let (status, text) = post(a, path, &query, &body).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("0 of 2 channels published"), "{text}");
    assert!(started.elapsed() < WAIT, "{:?}", started.elapsed());
}

/// Waits until `want` (name, channel, user_id) have all arrived for [`APP`], then for a
/// quiet second (so that a duplicate would have arrived); [`APP`]'s events.
async fn webhooks_settle(
    receiver: &Receiver,
    want: &[(&str, &str, &str)],
) -> Vec<(String, String, String)> {
    for &want in want {
        receiver.wait_for(APP_KEY, want, WAIT).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    receiver.events(APP_KEY)
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Runs every post through the Node SDK's `webhook().isValid()` and the Python SDK's
/// `validate_webhook`, plus one forged copy of the first through each; asserts the SDKs
/// accept every real one, with its events, and refuse the forgery.
async fn sdks_validate(node: &Node, posts: &[(HeaderMap, String)]) {
    assert!(!posts.is_empty());
    let mut forged = posts[0].clone();
    forged.1 = forged.1.replacen("\"events\"", "\"events\" ", 1);
    let all: Vec<_> = posts.iter().chain([&forged]).collect();
    let node_calls: Vec<Value> = all
        .iter()
        .map(|(headers, body)| {
            json!({"call": "webhook", "body": body, "headers": {
                "x-pusher-key": header(headers, "x-pusher-key"),
                "x-pusher-signature": header(headers, "x-pusher-signature"),
                "content-type": header(headers, "content-type"),
            }})
        })
        .collect();
    let python_calls: Vec<Value> = all
        .iter()
        .map(|(headers, body)| {
            json!({"call": "validate_webhook", "body": body,
                   "key": header(headers, "x-pusher-key"),
                   "signature": header(headers, "x-pusher-signature")})
        })
        .collect();
    let by_node = sdk(Sdk::Node, node, APP, Value::Array(node_calls)).await;
    let by_python = sdk(Sdk::Python, node, APP, Value::Array(python_calls)).await;
    for (i, (_, body)) in posts.iter().enumerate() {
        let sent: Value = serde_json::from_str(body).unwrap();
        let checked = ok(&by_node[i]);
        assert_eq!(checked["valid"], true, "{body}");
        assert_eq!(checked["events"], sent["events"]);
        assert_eq!(checked["time"], sent["time_ms"]);
        assert_eq!(ok(&by_python[i]), &sent, "{body}");
    }
    assert_eq!(ok(by_node.last().unwrap()), &json!({"valid": false}));
    assert_eq!(ok(by_python.last().unwrap()), &Value::Null);
}

#[tokio::test]
async fn webhooks_in_pusher_s_format_pass_both_sdk_validators() {
    let pusher = Receiver::start().await;
    let own = Receiver::start().await;
    // Pusher's webhooks and sessionhub's own, side by side, each to its receiver.
    let node = pusher_node(&[
        "--pusher-webhook",
        &pusher.url,
        "--webhook-url",
        &own.url,
        "--webhook-secret",
        "own-secret",
    ]);
    let mut alice = subscriber(&node, "alice", "presence-room").await;
    let events = webhooks_settle(
        &pusher,
        &[
            ("channel_occupied", "presence-room", ""),
            ("member_added", "presence-room", "alice"),
        ],
    )
    .await;
    // v1's personal channels (user:alice) have names Pusher cannot give: not sent.
    assert_eq!(events.len(), 2, "{events:?}");
    alice.close(None).await.unwrap();
    let events = webhooks_settle(
        &pusher,
        &[
            ("member_removed", "presence-room", "alice"),
            ("channel_vacated", "presence-room", ""),
        ],
    )
    .await;
    assert_eq!(events.len(), 4, "{events:?}");

    let posts = pusher.posts(Some(APP_KEY));
    for (headers, _) in &posts {
        assert_eq!(header(headers, "content-type"), "application/json");
    }
    sdks_validate(&node, &posts).await;
    // The other app of the command line has channels of its own: it hears nothing of APP's.
    assert_eq!(pusher.posts(Some("other-key")).len(), 0);
    assert_eq!(pusher.posts(None).len(), 4, "no post under another key");

    // sessionhub's own format still goes to its own URL, signed its own way.
    let own = own.posts(None);
    let (headers, body) = own.first().cloned().expect("sessionhub's webhooks too");
    assert!(header(&headers, "sessionhub-signature").starts_with("t="));
    assert!(body.contains("\"type\""), "{body}");
    assert!(header(&headers, "x-pusher-key").is_empty());
}

#[tokio::test]
async fn three_nodes_send_one_pusher_webhook_per_transition() {
    let receiver = Receiver::start().await;
    let (_redis, nodes) = pusher_cluster(3, &["--pusher-webhook", &receiver.url]);
    let mut subscribers = Vec::new();
    for (node, user) in [
        (&nodes[1], "carol"),
        (&nodes[2], "dave"),
        (&nodes[2], "carol"),
    ] {
        subscribers.push(subscriber(node, user, "presence-hall").await);
    }
    let events = webhooks_settle(
        &receiver,
        &[
            ("channel_occupied", "presence-hall", ""),
            ("member_added", "presence-hall", "carol"),
            ("member_added", "presence-hall", "dave"),
        ],
    )
    .await;
    assert_eq!(events.len(), 3, "one per transition: {events:?}");
    for mut ws in subscribers {
        ws.close(None).await.unwrap();
    }
    let events = webhooks_settle(
        &receiver,
        &[
            ("member_removed", "presence-hall", "carol"),
            ("member_removed", "presence-hall", "dave"),
            ("channel_vacated", "presence-hall", ""),
        ],
    )
    .await;
    assert_eq!(events.len(), 6, "one per transition: {events:?}");
    sdks_validate(&nodes[0], &receiver.posts(Some(APP_KEY))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_event_is_one_client_event_webhook_from_the_sender_s_node() {
    let receiver = Receiver::start().await;
    let flags = ["--pusher-webhook", &receiver.url, "--pusher-client-events"];
    let (_redis, nodes) = pusher_cluster(2, &flags);
    let keys = (APP_KEY, "app-secret");
    let channel = "presence-desk";
    let (mut ann, ann_id) = common::pusher::raw::connect(&nodes[0], APP_KEY).await;
    common::pusher::raw::join_presence(&mut ann, &ann_id, keys, channel, "ann").await;
    let (mut bob, bob_id) = common::pusher::raw::connect(&nodes[1], APP_KEY).await;
    common::pusher::raw::join_presence(&mut bob, &bob_id, keys, channel, "bob").await;
    let typing = json!({"event": "client-typing", "channel": channel, "data": {"who": "ann"}});
    send_text(&mut ann, &typing.to_string()).await;
    let got = common::pusher::raw::expect_event(&mut bob, "client-typing", channel).await;
    assert_eq!(got["user_id"], "ann", "{got}");

    let want = ("client_event", channel, "ann");
    receiver.wait_for(APP_KEY, want, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.count(APP_KEY, want),
        1,
        "{:?}",
        receiver.events(APP_KEY)
    );
    let body = receiver
        .posts(Some(APP_KEY))
        .into_iter()
        .map(|(_, body)| serde_json::from_str::<Value>(&body).unwrap())
        .find(|body| body["events"][0]["name"] == "client_event")
        .unwrap();
    assert_eq!(
        body["events"][0],
        json!({"name": "client_event", "channel": channel, "event": "client-typing",
            "data": "{\"who\":\"ann\"}", "socket_id": ann_id, "user_id": "ann"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_cache_channel_sends_cache_miss_once_per_subscription() {
    let receiver = Receiver::start().await;
    let node = pusher_node(&["--pusher-webhook", &receiver.url]);
    let channel = "cache-prices";
    let (mut ws, _) = common::pusher::raw::connect(&node, APP_KEY).await;
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    send_text(&mut ws, &subscribe.to_string()).await;
    common::pusher::raw::expect_event(&mut ws, "pusher:cache_miss", channel).await;
    let want = ("cache_miss", channel, "");
    receiver.wait_for(APP_KEY, want, WAIT).await;
    // Once the channel has an event, a subscriber gets it replayed and no webhook is sent.
    let body = json!({"name": "price", "channel": channel, "data": "1"});
    let (status, text) = common::pusher::signed_post(&node, APP, "/apps/1/events", &body).await;
    assert_eq!(status, 200, "{text}");
    let (mut late, _) = common::pusher::raw::connect(&node, APP_KEY).await;
    send_text(&mut late, &subscribe.to_string()).await;
    common::pusher::raw::expect_event(&mut late, "price", channel).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.count(APP_KEY, want),
        1,
        "{:?}",
        receiver.events(APP_KEY)
    );
}
