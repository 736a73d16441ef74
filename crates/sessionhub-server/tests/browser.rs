//! The browser client (`/sessionhub.js`) in headless Chromium against a cluster of real nodes
//! on a real Redis: a node is SIGKILLed under the page, and the page must still see every
//! message exactly once and in order (recovered from history), or, when the gap is longer
//! than the history, be told so (`recoveryfailed`).
//!
//! Prerequisites: Node.js 20+, Debian's `chromium` at /usr/bin/chromium, and
//! `npm ci` in tests/browser (playwright-core only; it never downloads a browser).
//! `scripts/test.sh` installs them; this test runs `npm ci` itself if node_modules is
//! missing and fails with instructions if Chromium is. The driver is tests/browser/run.mjs
//! (see tests/common/browser.rs). Screenshots and the driver's log go to
//! `target/browser-artifacts/<case>/`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::response::Html;
use axum::routing::get;
use serde_json::{Value, json};
use sessionhub_testkit::{Node, RedisServer};

use common::browser::{BROWSER_DIR, Browser, Driver, STEP};

/// `node run.mjs`: one page, the client's test harness.
const DRIVER: Driver = Driver {
    script: "run.mjs",
    test: "browser test",
    launch_within: Duration::from_secs(40),
};
/// The client as the repository has it; the node must serve exactly this.
const CLIENT_JS: &str = include_str!("../../sessionhub/assets/sessionhub.js");
const INDEX_HTML: &str = include_str!("browser/index.html");
const PAGE_JS: &str = include_str!("browser/page.mjs");

/// `target/browser-artifacts/<case>/`, emptied.
fn artifacts(case: &str) -> PathBuf {
    common::browser::artifacts(Path::new("browser-artifacts").join(case))
}

/// The test page's origin: a static server of the test's own, serving the page and the
/// client it fetched from a node (module scripts need the same origin or CORS).
struct Site {
    listener: Option<tokio::net::TcpListener>,
    origin: String,
}

impl Site {
    /// Takes a port first: the nodes must be told the page's origin (`--allowed-origins`).
    async fn bind() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the page server");
        let origin = format!("http://{}", listener.local_addr().unwrap());
        Self {
            listener: Some(listener),
            origin,
        }
    }

    fn url(&self) -> String {
        format!("{}/", self.origin)
    }

    /// Serves the page, with `/sessionhub.js` as `node` serves it.
    async fn serve(&mut self, node: &Node) {
        let response = common::http()
            .get(format!("{}/sessionhub.js", node.http()))
            .send()
            .await
            .expect("the node serves /sessionhub.js");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(
            content_type.starts_with("text/javascript"),
            "{content_type}"
        );
        let client = response.text().await.unwrap();
        assert_eq!(
            client, CLIENT_JS,
            "the node serves crates/sessionhub/assets/sessionhub.js"
        );
        let js = || [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")];
        let app = Router::new()
            .route("/", get(|| async { Html(INDEX_HTML) }))
            .route("/page.mjs", get(move || async move { (js(), PAGE_JS) }))
            .route("/sessionhub.js", get(move || async move { (js(), client) }));
        let listener = self.listener.take().expect("served once");
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
}

/// A Redis of the test's own and `n` nodes on it (node-0, node-1, ...) that accept sockets
/// from the page's origin.
fn cluster(n: usize, origin: &str, extra: &[&str]) -> (RedisServer, Vec<Node>) {
    let redis = RedisServer::start().expect("redis-server starts (scripts/test.sh installs it)");
    let url = redis.url();
    let nodes = (0..n)
        .map(|i| {
            let name = format!("node-{i}");
            let mut args = vec![
                "--redis",
                &url,
                "--node-id",
                &name,
                "--allowed-origins",
                origin,
            ];
            args.extend_from_slice(extra);
            common::node(&args)
        })
        .collect();
    (redis, nodes)
}

/// `node-3` -> 3.
fn node_index(node: &Value) -> usize {
    node.as_str()
        .and_then(|n| n.strip_prefix("node-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected node id {node}"))
}

/// `POST /socket/{user}` with a text body (it arrives as a JSON string).
async fn push_to_user(http: &reqwest::Client, base: &str, user: &str, text: &str) {
    let (status, body) = common::push(http, base, user, text).await;
    assert_eq!(status, 200, "push to {user} via {base}: {body}");
}

/// `POST /api/channels/{channel}/publish` with a JSON `data`.
async fn publish(http: &reqwest::Client, base: &str, channel: &str, data: Value) {
    let response = http
        .post(format!("{base}/api/channels/{channel}/publish"))
        .json(&json!({ "data": data }))
        .send()
        .await
        .expect("publish answers");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "publish to {channel} via {base}: {body}");
}

impl Browser {
    async fn screenshot(&mut self, name: &str) {
        let shot = self.call("screenshot", json!({ "name": name }), STEP).await;
        eprintln!("browser test: screenshot {}", shot["path"]);
    }
}

fn events<'a>(log: &'a Value, kind: &str) -> Vec<&'a Value> {
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

fn publications<'a>(log: &'a Value, channel: &str) -> &'a Vec<Value> {
    log["publications"][channel]
        .as_array()
        .unwrap_or_else(|| panic!("no publications recorded for {channel}"))
}

fn field<'a>(items: &'a [Value], name: &str) -> Vec<&'a Value> {
    items.iter().map(|p| &p[name]).collect()
}

/// The first reconnect is scheduled 100 ms ±50% after the drop.
fn assert_first_reconnect_delay(log: &Value) {
    let reconnecting = events(log, "reconnecting");
    let first = reconnecting.first().expect("a reconnecting event");
    assert_eq!(first["attempt"], 1, "{first}");
    let delay = first["delay"].as_u64().unwrap();
    assert!((50..=150).contains(&delay), "first delay {delay} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_gets_every_message_once_and_in_order_across_a_node_kill() {
    let started = Instant::now();
    let artifacts = artifacts("recovery");
    let mut site = Site::bind().await;
    let (_redis, mut nodes) = cluster(3, &site.origin, &[]);
    site.serve(&nodes[0]).await;
    let mut browser = Browser::launch(&DRIVER, &artifacts).await;

    // The page gets every node's URL and moves to the next one on each reconnect.
    let urls: Vec<String> = nodes.iter().map(|n| format!("{}/ws", n.ws())).collect();
    let channels = ["user:alice", "room:lobby"];
    let opened = browser
        .call(
            "open",
            json!({
                "url": site.url(),
                "options": { "urls": urls, "user": "alice", "channels": channels },
            }),
            STEP,
        )
        .await;
    let first = node_index(&opened["node"]);
    let others: Vec<String> = (0..nodes.len())
        .filter(|&i| i != first)
        .map(|i| nodes[i].http())
        .collect();

    // Publish through the other nodes at a steady pace; kill the page's node a third of the
    // way in, and keep publishing while the page is away.
    let http = common::http();
    let (total, kill_at) = (60, 20);
    let mut alice = Vec::new();
    let mut lobby = Vec::new();
    let mut killed_at = None;
    for i in 0..total {
        if i == 5 {
            for channel in channels {
                let args = json!({ "channel": channel, "count": 5 });
                browser.call("waitPublications", args, STEP).await;
            }
        }
        if i == kill_at {
            nodes[first].kill();
            killed_at = Some(Instant::now());
        }
        let via = &others[i % others.len()];
        let text = format!("a-{i}");
        push_to_user(&http, via, "alice", &text).await;
        alice.push(json!(text));
        publish(&http, via, "room:lobby", json!({ "n": i })).await;
        lobby.push(json!({ "n": i }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let published_for = killed_at.unwrap().elapsed();

    for channel in channels {
        let args = json!({ "channel": channel, "count": total });
        browser.call("waitPublications", args, STEP).await;
    }
    browser
        .call("waitSubscribed", json!({ "count": 4 }), STEP)
        .await;

    let log = browser.call("log", json!({}), STEP).await;
    browser.screenshot("recovery.png").await;

    // Every message exactly once, in publish order, at consecutive offsets of one epoch.
    let mut recovered = 0;
    for (channel, expected) in [("user:alice", &alice), ("room:lobby", &lobby)] {
        let got = publications(&log, channel);
        let data: Vec<Value> = field(got, "data").into_iter().cloned().collect();
        assert_eq!(&data, expected, "{channel}: every message once, in order");
        let offsets: Vec<u64> = got.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
        let want: Vec<u64> = (1..=expected.len() as u64).collect();
        assert_eq!(offsets, want, "{channel}: consecutive offsets");
        let epochs = field(got, "epoch");
        assert!(
            epochs.iter().all(|e| *e == epochs[0]),
            "{channel}: one epoch"
        );
        recovered += got.iter().filter(|p| p["recovered"] == true).count();
    }
    assert!(
        recovered > 0,
        "some publications were missed while the node was down and came from history"
    );

    // One drop, one reconnect to another node, both channels recovered.
    let connected = events(&log, "connected");
    assert_eq!(connected.len(), 2, "{connected:?}");
    assert_eq!(node_index(&connected[0]["node"]), first);
    assert_ne!(
        node_index(&connected[1]["node"]),
        first,
        "moved to a live node"
    );
    let disconnected = events(&log, "disconnected");
    assert_eq!(disconnected.len(), 1, "{disconnected:?}");
    assert_eq!(
        disconnected[0]["code"], 1006,
        "a killed node sends no close frame"
    );
    assert_eq!(disconnected[0]["reconnect"], true);
    assert_first_reconnect_delay(&log);
    assert!(events(&log, "recoveryfailed").is_empty());
    assert_eq!(log["recoveryFailed"], json!([]));
    assert_eq!(log["errors"], json!([]));
    let subscribed = log["subscribed"].as_array().unwrap();
    let resubscribed: Vec<&Value> = subscribed
        .iter()
        .filter(|s| s["resubscribed"] == true)
        .collect();
    assert_eq!(resubscribed.len(), 2, "{subscribed:?}");
    assert!(
        resubscribed.iter().all(|s| s["recovered"] == true),
        "{resubscribed:?}"
    );

    browser.close().await;
    eprintln!(
        "browser test (recovery): {recovered} publications recovered from history, \
         publishing went on {published_for:?} after the kill; took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_longer_than_the_history_is_reported_as_recovery_failed() {
    let started = Instant::now();
    let artifacts = artifacts("recovery-failed");
    let mut site = Site::bind().await;
    let (_redis, mut nodes) = cluster(2, &site.origin, &["--history-size", "3"]);
    site.serve(&nodes[0]).await;
    let mut browser = Browser::launch(&DRIVER, &artifacts).await;

    // Gated: while held, the page's URL function does not return, so the reconnect waits
    // until the test has published more than the history keeps.
    let urls: Vec<String> = nodes.iter().map(|n| format!("{}/ws", n.ws())).collect();
    let opened = browser
        .call(
            "open",
            json!({
                "url": site.url(),
                "options": {
                    "urls": urls, "user": "alice", "gated": true,
                    "channels": ["user:alice", "room:quiet"],
                },
            }),
            STEP,
        )
        .await;
    let first = node_index(&opened["node"]);
    let other = nodes[1 - first].http();
    let http = common::http();

    for i in 0..3 {
        push_to_user(&http, &other, "alice", &format!("a-{i}")).await;
    }
    let args = json!({ "channel": "user:alice", "count": 3 });
    browser.call("waitPublications", args, STEP).await;

    browser.call("hold", json!({}), STEP).await;
    nodes[first].kill();
    let args = json!({ "type": "disconnected", "count": 1 });
    browser.call("waitEvent", args, STEP).await;
    for i in 3..13 {
        push_to_user(&http, &other, "alice", &format!("a-{i}")).await;
    }
    browser.call("release", json!({}), STEP).await;
    let args = json!({ "type": "recoveryfailed", "count": 1 });
    browser.call("waitEvent", args, STEP).await;
    browser
        .call("waitSubscribed", json!({ "count": 4 }), STEP)
        .await;

    // Live delivery goes on from the channel's new position.
    push_to_user(&http, &other, "alice", "a-13").await;
    let args = json!({ "channel": "user:alice", "count": 4 });
    browser.call("waitPublications", args, STEP).await;

    let log = browser.call("log", json!({}), STEP).await;
    browser.screenshot("recovery-failed.png").await;

    // All or nothing: none of the 10 missed publications is delivered, not even the 3 the
    // history still holds.
    let got = publications(&log, "user:alice");
    let data: Vec<&Value> = field(got, "data");
    assert_eq!(
        data,
        [&json!("a-0"), &json!("a-1"), &json!("a-2"), &json!("a-13")]
    );
    let offsets: Vec<&Value> = field(got, "offset");
    assert_eq!(offsets, [&json!(1), &json!(2), &json!(3), &json!(14)]);
    let epoch = &got[0]["epoch"];

    let failed = events(&log, "recoveryfailed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    let expected = json!({
        "channel": "user:alice", "epoch": epoch, "offset": 13,
        "since": { "epoch": epoch, "offset": 3 },
    });
    assert_eq!(log["recoveryFailed"], json!([expected]), "onRecoveryFailed");
    for key in ["channel", "epoch", "offset", "since"] {
        assert_eq!(
            failed[0][key], expected[key],
            "the recoveryfailed event's {key}"
        );
    }
    // The quiet channel missed nothing and recovered.
    let quiet: Vec<&Value> = log["subscribed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["channel"] == "room:quiet")
        .collect();
    assert_eq!(quiet.len(), 2, "{quiet:?}");
    assert_eq!(quiet[1]["resubscribed"], true);
    assert_eq!(quiet[1]["recovered"], true);
    assert!(publications(&log, "room:quiet").is_empty());
    let connected = events(&log, "connected");
    assert_eq!(connected.len(), 2, "{connected:?}");
    assert_ne!(node_index(&connected[1]["node"]), first);
    assert_first_reconnect_delay(&log);

    browser.close().await;
    eprintln!(
        "browser test (recovery failed): took {:?}",
        started.elapsed()
    );
}

/// The client's logic against a scripted fake WebSocket (duplicates, stale offsets,
/// refusals, backoff, timeouts): `node --test tests/browser/client.test.mjs`.
#[test]
fn client_logic() {
    let log = artifacts("client-logic").join("node-test.log");
    let out = std::fs::File::create(&log).expect("creating the log");
    let mut child = std::process::Command::new("node")
        .args(["--test", "client.test.mjs"])
        .current_dir(BROWSER_DIR)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("the client tests need Node.js 20+ (`node` on PATH)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "client.test.mjs failed or took over 60 s ({status:?}):\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The page publishes with `hub.publish` and receives its own publication; a refused
/// publish rejects the promise with the server's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_publishes_and_receives_its_own_publication() {
    let artifacts = artifacts("publish");
    let mut site = Site::bind().await;
    let node = common::node(&["--allowed-origins", &site.origin]);
    site.serve(&node).await;
    let mut browser = Browser::launch(&DRIVER, &artifacts).await;
    let url = format!("{}/ws", node.ws());
    let options = json!({ "urls": [url], "user": "alice", "channels": ["room:lobby"] });
    let args = json!({ "url": site.url(), "options": options });
    browser.call("open", args, STEP).await;

    let args = json!({ "channel": "room:lobby", "data": { "from": "page" } });
    let sent = browser.call("publish", args, STEP).await;
    assert_eq!(sent["ok"]["offset"], 1, "{sent}");
    assert_eq!(sent["ok"]["duplicate"], false, "{sent}");
    let args = json!({ "channel": "room:lobby", "count": 1 });
    browser.call("waitPublications", args, STEP).await;
    let log = browser.call("log", json!({}), STEP).await;
    let got = publications(&log, "room:lobby");
    assert_eq!(got[0]["data"], json!({ "from": "page" }));
    assert_eq!(got[0]["offset"], 1);

    let args = json!({ "channel": "session:x", "data": 1 });
    let refused = browser.call("publish", args, STEP).await;
    assert_eq!(refused, json!({ "error": "invalid_channel" }));
    browser.screenshot("publish.png").await;
    browser.close().await;
}

/// Where WebSockets cannot get through (here: a path that refuses the upgrade), the page's
/// client falls back to SSE by itself, receives pushes and publishes; when its node dies it
/// reopens the stream on the other node from its last positions and recovers what was
/// published meanwhile, once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_websockets_the_page_falls_back_to_sse_and_recovers_across_a_node_kill() {
    let artifacts = artifacts("sse-fallback");
    let mut site = Site::bind().await;
    let (_redis, mut nodes) = cluster(2, &site.origin, &[]);
    site.serve(&nodes[0]).await;
    let mut browser = Browser::launch(&DRIVER, &artifacts).await;
    let urls: Vec<String> = nodes.iter().map(|n| format!("{}/no-ws", n.ws())).collect();
    let options = json!({ "urls": urls, "user": "alice", "channels": ["room:sse"], "gated": true });
    let args = json!({ "url": site.url(), "options": options });
    let opened = browser.call("open", args, STEP).await;
    let on = node_index(&opened["node"]);
    let other = nodes[1 - on].http();
    let log = browser.call("log", json!({}), STEP).await;
    let connected = events(&log, "connected");
    assert_eq!(connected.len(), 1, "{log}");
    assert_eq!(connected[0]["transport"], "sse", "{log}");

    let http = common::http();
    for n in 1..=5 {
        publish(&http, &other, "room:sse", json!({ "n": n })).await;
    }
    let args = json!({ "channel": "room:sse", "count": 5 });
    browser.call("waitPublications", args, STEP).await;

    // The page's node dies; the reconnect waits until more was published.
    browser.call("hold", json!({}), STEP).await;
    nodes[on].kill();
    browser
        .call(
            "waitEvent",
            json!({ "type": "disconnected", "count": 1 }),
            STEP,
        )
        .await;
    for n in 6..=10 {
        publish(&http, &other, "room:sse", json!({ "n": n })).await;
    }
    browser.call("release", json!({}), STEP).await;
    let args = json!({ "channel": "room:sse", "count": 10 });
    browser.call("waitPublications", args, STEP).await;
    let args = json!({ "channel": "room:sse", "data": { "from": "page" } });
    let sent = browser.call("publish", args, STEP).await;
    assert_eq!(
        sent["ok"]["offset"], 11,
        "published over POST /sse/publish: {sent}"
    );
    let args = json!({ "channel": "room:sse", "count": 11 });
    browser.call("waitPublications", args, STEP).await;

    let log = browser.call("log", json!({}), STEP).await;
    let got = publications(&log, "room:sse");
    let offsets: Vec<u64> = got.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(
        offsets,
        (1..=11).collect::<Vec<_>>(),
        "once and in order: {log}"
    );
    let recovered: Vec<u64> = got
        .iter()
        .filter(|p| p["recovered"] == true)
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(recovered, [6, 7, 8, 9, 10], "from history");
    let connected = events(&log, "connected");
    assert_eq!(connected.len(), 2, "{log}");
    assert_eq!(connected[1]["transport"], "sse");
    assert_eq!(node_index(&connected[1]["node"]), 1 - on);
    browser.screenshot("sse-fallback.png").await;
    browser.close().await;
}
