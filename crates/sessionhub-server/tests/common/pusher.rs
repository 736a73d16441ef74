//! The npm fixture of the Pusher tests (tests/pusher: pusher-js for tests/pusher.rs, the
//! `pusher` server SDK for tests/pusher_http.rs), installed with `npm ci` from its
//! package-lock.json when a package is missing.
// Only the Pusher tests use this, and every test file declares `mod common;`.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Mutex;

/// Where the fixture's package.json is.
pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pusher");

/// The fixture, installed (once per process) if any of its packages is missing.
pub fn npm_fixture() -> &'static Path {
    static READY: Mutex<bool> = Mutex::new(false);
    let dir = Path::new(FIXTURE);
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    let missing = ["pusher", "pusher-js"]
        .iter()
        .any(|package| !dir.join("node_modules").join(package).exists());
    if !*ready && missing {
        eprintln!("pusher tests: installing the npm fixture (npm ci in {FIXTURE})");
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "`npm ci` in {FIXTURE} failed ({status:?}); the Pusher tests need Node.js 20+ and npm"
        );
    }
    *ready = true;
    dir
}

/// POSTs `body` to the HTTP API's `path` on `node`, signed for `app` (`ID:KEY:SECRET`) as
/// the server SDKs sign; the status and the answer's text.
pub async fn signed_post(
    node: &sessionhub_testkit::Node,
    app: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, String) {
    signed(node, app, reqwest::Method::POST, path, body.to_string()).await
}

/// GETs the HTTP API's `path` on `node`, signed for `app`; the status and the answer's text.
pub async fn signed_get(node: &sessionhub_testkit::Node, app: &str, path: &str) -> (u16, String) {
    signed(node, app, reqwest::Method::GET, path, String::new()).await
}

async fn signed(
    node: &sessionhub_testkit::Node,
    app: &str,
    method: reqwest::Method,
    path: &str,
    body: String,
) -> (u16, String) {
    let app: sessionhub::pusher::PusherApp = app.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query =
        sessionhub::pusher::request::sign(&app, method.as_str(), path, &[], body.as_bytes(), now);
    let mut request = super::http().request(method, format!("{}{path}?{query}", node.http()));
    if !body.is_empty() {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await.expect("the HTTP API answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A raw Pusher client over a WebSocket: for what pusher-js hides (timing, frames, closes).
pub mod raw {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::Bytes;
    use axum::http::HeaderMap;
    use serde_json::{Value, json};
    use sessionhub_testkit::Node;

    use crate::common::{self, WAIT, Ws};

    /// Opens `/app/{key}?protocol=7` on `node` and reads the greeting: the socket and its
    /// socket id.
    pub async fn connect(node: &Node, key: &str) -> (Ws, String) {
        let url = format!("{}/app/{key}?protocol=7&client=raw&version=0", node.ws());
        let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("the upgrade succeeds");
        let established = next_event(&mut ws).await;
        assert_eq!(established["event"], "pusher:connection_established");
        let id = established["data"]["socket_id"]
            .as_str()
            .unwrap()
            .to_owned();
        (ws, id)
    }

    /// The next text frame, parsed, with its `data` string parsed too.
    pub async fn next_event(ws: &mut Ws) -> Value {
        let mut event: Value = serde_json::from_str(&common::next_text(ws).await).unwrap();
        if let Some(data) = event["data"].as_str()
            && let Ok(parsed) = serde_json::from_str::<Value>(data)
        {
            event["data"] = parsed;
        }
        event
    }

    /// Reads events until one named `name` on `channel` arrives (others are skipped),
    /// each within [`WAIT`].
    pub async fn expect_event(ws: &mut Ws, name: &str, channel: &str) -> Value {
        loop {
            let event = next_event(ws).await;
            if event["event"] == name && event["channel"] == channel {
                return event;
            }
        }
    }

    /// [`expect_event`] for an event that may take up to `within` (no bound per frame).
    pub async fn expect_event_within(
        ws: &mut Ws,
        name: &str,
        channel: &str,
        within: Duration,
    ) -> Value {
        use futures_util::StreamExt;
        let wait = async {
            while let Some(frame) = ws.next().await {
                let Ok(tokio_tungstenite::tungstenite::Message::Text(text)) = frame else {
                    continue;
                };
                let event: Value = serde_json::from_str(&text).unwrap();
                if event["event"] == name && event["channel"] == channel {
                    let mut event = event;
                    if let Some(data) = event["data"].as_str()
                        && let Ok(parsed) = serde_json::from_str::<Value>(data)
                    {
                        event["data"] = parsed;
                    }
                    return event;
                }
            }
            panic!("the connection ended before {name} on {channel}");
        };
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or_else(|_| panic!("no {name} on {channel} within {within:?}"))
    }

    /// `KEY:hex(HMAC-SHA256(secret, message))`, as an app's backend signs a subscription.
    pub fn sign(key: &str, secret: &str, message: &str) -> String {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(message.as_bytes());
        format!("{key}:{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Subscribes to presence channel `channel` as `user` (signed with the app's `key` and
    /// `secret`); the members `subscription_succeeded` lists.
    pub async fn join_presence(
        ws: &mut Ws,
        socket_id: &str,
        (key, secret): (&str, &str),
        channel: &str,
        user: &str,
    ) -> Value {
        let channel_data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
        let auth = sign(
            key,
            secret,
            &format!("{socket_id}:{channel}:{channel_data}"),
        );
        let frame = json!({"event": "pusher:subscribe",
            "data": {"channel": channel, "auth": auth, "channel_data": channel_data}});
        common::send_text(ws, &frame.to_string()).await;
        let succeeded = expect_event(ws, "pusher_internal:subscription_succeeded", channel).await;
        succeeded["data"]["presence"].clone()
    }

    /// A webhook receiver: every POST's headers and body, in order.
    pub struct Receiver {
        /// Where to send them (`--pusher-webhook`).
        pub url: String,
        posts: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    }

    impl Receiver {
        /// Listens on a free port of 127.0.0.1.
        pub async fn start() -> Self {
            let posts = Arc::new(Mutex::new(Vec::new()));
            let shared = posts.clone();
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                    let posts = shared.clone();
                    async move {
                        let body = String::from_utf8(body.to_vec()).expect("a UTF-8 body");
                        posts.lock().unwrap().push((headers, body));
                        "ok"
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/hook", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            Self { url, posts }
        }

        /// Every POST received with `X-Pusher-Key: key` (every POST with `None`): its
        /// headers and body, in order.
        pub fn posts(&self, key: Option<&str>) -> Vec<(HeaderMap, String)> {
            let posts = self.posts.lock().unwrap();
            posts
                .iter()
                .filter(|(headers, _)| {
                    key.is_none()
                        || headers.get("x-pusher-key").and_then(|v| v.to_str().ok()) == key
                })
                .cloned()
                .collect()
        }

        /// Every Pusher event received for the app with key `key`, as (name, channel,
        /// user_id).
        pub fn events(&self, key: &str) -> Vec<(String, String, String)> {
            let mut events = Vec::new();
            for (_, body) in self.posts(Some(key)) {
                let body: Value = serde_json::from_str(&body).expect("a JSON body");
                for e in body["events"].as_array().into_iter().flatten() {
                    let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                    events.push((s("name"), s("channel"), s("user_id")));
                }
            }
            events
        }

        /// How many events of the app with key `key` are `(name, channel, user_id)`.
        pub fn count(&self, key: &str, (name, channel, user): (&str, &str, &str)) -> usize {
            self.events(key)
                .iter()
                .filter(|(n, c, u)| (n.as_str(), c.as_str(), u.as_str()) == (name, channel, user))
                .count()
        }

        /// Waits (up to `within`) until `want` has arrived at least once.
        pub async fn wait_for(&self, key: &str, want: (&str, &str, &str), within: Duration) {
            let deadline = tokio::time::Instant::now() + within;
            while self.count(key, want) == 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "expected {want:?} within {within:?}, got {:?}",
                    self.events(key)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
