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

    /// `pusher:signin` as `user_data` (JSON, sent as its text) on a raw socket, signed for
    /// the app with `key` and `secret` as an app's backend signs it.
    pub async fn send_signin(
        ws: &mut Ws,
        socket_id: &str,
        (key, secret): (&str, &str),
        user_data: &Value,
    ) {
        let user_data = user_data.to_string();
        let auth = sign(key, secret, &format!("{socket_id}::user::{user_data}"));
        let frame =
            json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}});
        common::send_text(ws, &frame.to_string()).await;
    }

    /// A raw socket on `node` signed in to the app with `key` and `secret` as `user_data`
    /// (its `pusher:signin_success` read and checked); the socket and its socket id.
    pub async fn signed_in(
        node: &Node,
        (key, secret): (&str, &str),
        user_data: Value,
    ) -> (Ws, String) {
        let (mut ws, socket_id) = connect(node, key).await;
        send_signin(&mut ws, &socket_id, (key, secret), &user_data).await;
        let success = next_event(&mut ws).await;
        assert_eq!(success["event"], "pusher:signin_success", "{success}");
        let signed: Value = serde_json::from_str(success["data"]["user_data"].as_str().unwrap())
            .expect("user_data is JSON text");
        assert_eq!(signed, user_data);
        (ws, socket_id)
    }

    /// The next `pusher_internal:watchlist_events` (other frames skipped).
    pub async fn next_watchlist(ws: &mut Ws) -> Value {
        loop {
            let event = next_event(ws).await;
            if event["event"] == "pusher_internal:watchlist_events" {
                return event;
            }
        }
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

/// Unmodified pusher-js clients in one Node process (tests/pusher/driver.mjs), driven by
/// JSON lines: what tests/pusher.rs and tests/pusher_user.rs run.
pub mod js {
    use std::process::Stdio;

    use serde_json::{Value, json};
    use sessionhub_testkit::Node;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
    use tokio::process::{Child, ChildStdin, ChildStdout, Command};

    use crate::common::WAIT;

    /// The test app, `ID:KEY:SECRET`.
    pub const APP: &str = "42:app-key:app-secret";
    /// Its key.
    pub const KEY: &str = "app-key";
    /// Its secret.
    pub const SECRET: &str = "app-secret";

    /// pusher-js clients in one Node process, and everything they reported.
    pub struct Clients {
        child: Child,
        stdin: ChildStdin,
        lines: Lines<BufReader<ChildStdout>>,
        log: Vec<Value>,
    }

    impl Clients {
        pub async fn start() -> Self {
            let mut child = Command::new("node")
                .arg("driver.mjs")
                .current_dir(super::npm_fixture())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("the pusher test needs Node.js 20+ (`node` on PATH)");
            let stdin = child.stdin.take().unwrap();
            let lines = BufReader::new(child.stdout.take().unwrap()).lines();
            Self {
                child,
                stdin,
                lines,
                log: Vec::new(),
            }
        }

        /// Sends a command and waits for the driver to have run it.
        pub async fn send(&mut self, command: Value) {
            let line = format!("{command}\n");
            self.stdin.write_all(line.as_bytes()).await.unwrap();
            let client = command["client"].clone();
            let cmd = command["cmd"].clone();
            let done = self
                .wait(|e| e["client"] == client && (e["type"] == "done" || e["type"] == "failed"))
                .await;
            assert_eq!(done["type"], "done", "{command}: {done}");
            assert_eq!(done["cmd"], cmd);
            // Taken: the next command's `done` is another line.
            let at = self.log.iter().rposition(|e| *e == done).unwrap();
            self.log.remove(at);
        }

        /// The first event (seen already, or coming) that matches, within [`WAIT`].
        pub async fn wait(&mut self, matches: impl Fn(&Value) -> bool) -> Value {
            self.wait_from(0, matches).await
        }

        /// The first event from the `from`th on that matches, within [`WAIT`].
        pub async fn wait_from(&mut self, from: usize, matches: impl Fn(&Value) -> bool) -> Value {
            self.wait_from_within(from, WAIT, matches).await
        }

        /// The first event from the `from`th on that matches, within `within`.
        pub async fn wait_from_within(
            &mut self,
            from: usize,
            within: std::time::Duration,
            matches: impl Fn(&Value) -> bool,
        ) -> Value {
            if let Some(found) = self.log[from.min(self.log.len())..]
                .iter()
                .find(|e| matches(e))
            {
                return found.clone();
            }
            let deadline = tokio::time::Instant::now() + within;
            loop {
                let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("no such event within {within:?}; got {:#?}", self.log)
                    })
                    .expect("reading the driver")
                    .expect("the driver runs");
                let event: Value = serde_json::from_str(&line).expect("the driver writes JSON");
                self.log.push(event.clone());
                if matches(&event) {
                    return event;
                }
            }
        }

        /// How many events were seen so far: a mark for [`Clients::wait_from`].
        pub fn mark(&self) -> usize {
            self.log.len()
        }

        /// Every event so far that matches.
        pub fn seen(&self, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
            self.log.iter().filter(|e| matches(e)).cloned().collect()
        }

        /// Connects `client` to `node` with `secret` as the signing secret; its socket id.
        pub async fn connect_with(&mut self, client: &str, node: &Node, key: &str, secret: &str) {
            self.connect_as(client, node, key, secret, json!({"user_id": client}))
                .await;
        }

        /// Connects `client`, the presence member `user` (`{"user_id", "user_info"}`).
        pub async fn connect_as(
            &mut self,
            client: &str,
            node: &Node,
            key: &str,
            secret: &str,
            user: Value,
        ) {
            self.connect_signing_as(client, node, (key, secret), user, Value::Null)
                .await;
        }

        /// Connects `client` with `signin` as pusher-js's user authentication (driver.mjs:
        /// `{"user_data"}` signed with the app's secret, or sessionhub's `{"endpoint",
        /// "session"}`) and waits until it is connected; its socket id.
        pub async fn connect_signing(
            &mut self,
            client: &str,
            node: &Node,
            signin: Value,
        ) -> String {
            let member = json!({"user_id": client});
            self.connect_signing_as(client, node, (KEY, SECRET), member, signin)
                .await;
            let connected = self
                .wait(|e| e["client"] == client && e["type"] == "connected")
                .await;
            connected["socket_id"].as_str().unwrap().to_owned()
        }

        async fn connect_signing_as(
            &mut self,
            client: &str,
            node: &Node,
            (key, secret): (&str, &str),
            user: Value,
            signin: Value,
        ) {
            let addr = node.addr();
            let connect = json!({"cmd": "connect", "client": client, "key": key,
                "host": addr.ip().to_string(), "port": addr.port(), "secret": secret,
                "user": user, "signin": signin});
            self.send(connect).await;
        }

        /// Connects `client` as the presence member `user` and waits until it is connected.
        pub async fn connect_member(&mut self, client: &str, node: &Node, user: Value) {
            self.connect_as(client, node, KEY, SECRET, user).await;
            self.wait(|e| e["client"] == client && e["type"] == "connected")
                .await;
        }

        pub async fn connect(&mut self, client: &str, node: &Node) -> String {
            self.connect_with(client, node, KEY, SECRET).await;
            let connected = self
                .wait(|e| e["client"] == client && e["type"] == "connected")
                .await;
            connected["socket_id"].as_str().unwrap().to_owned()
        }

        pub async fn subscribe(&mut self, client: &str, channel: &str) {
            let command = json!({"cmd": "subscribe", "client": client, "channel": channel});
            self.send(command).await;
        }

        /// Subscribes and waits for this subscription's `pusher:subscription_succeeded`.
        pub async fn subscribed(&mut self, client: &str, channel: &str) {
            let from = self.log.len();
            self.subscribe(client, channel).await;
            self.wait_from(from, |e| {
                e["client"] == client
                    && e["channel"] == channel
                    && e["event"] == "pusher:subscription_succeeded"
            })
            .await;
        }

        /// The first `event` on `channel` that `client` got.
        pub async fn event(&mut self, client: &str, channel: &str, event: &str) -> Value {
            self.wait(|e| {
                e["client"] == client
                    && e["type"] == "event"
                    && e["channel"] == channel
                    && e["event"] == event
            })
            .await
        }

        /// Every `event` on `channel` that `client` got so far.
        pub fn events(&self, client: &str, channel: &str, event: &str) -> Vec<Value> {
            self.seen(|e| {
                e["client"] == client
                    && e["type"] == "event"
                    && e["channel"] == channel
                    && e["event"] == event
            })
        }

        pub async fn stop(mut self) {
            drop(self.stdin);
            let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
        }
    }
}

/// The Pusher server SDKs (Node: tests/pusher/sdk.mjs, Python: tests/pusher/sdk.py in a
/// venv under target/), one JSON line per call.
pub mod sdk {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Mutex;

    use serde_json::{Value, json};
    use sessionhub::pusher::PusherApp;
    use sessionhub_testkit::Node;

    /// The SDK to drive.
    #[derive(Clone, Copy, Debug)]
    pub enum Sdk {
        Node,
        Python,
    }

    /// The venv's python, made under target/ with requirements.txt installed, once per
    /// process; made again when requirements.txt changes.
    pub fn python_sdk() -> PathBuf {
        static READY: Mutex<bool> = Mutex::new(false);
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
        let venv = target.join("pusher-sdk-venv");
        let python = venv.join("bin/python");
        let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
        if *ready {
            return python;
        }
        let requirements = Path::new(super::FIXTURE).join("requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).unwrap();
        let stamp = venv.join("installed-requirements.txt");
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
            let _ = std::fs::remove_dir_all(&venv);
            let status = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status();
            assert!(
                status.as_ref().is_ok_and(|s| s.success()),
                "`python3 -m venv` failed ({status:?}): this test needs Python 3 with venv"
            );
            let status = Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(&requirements)
                .status();
            assert!(
                status.as_ref().is_ok_and(|s| s.success()),
                "pip install -r {} failed ({status:?})",
                requirements.display()
            );
            std::fs::write(&stamp, wanted).unwrap();
        }
        *ready = true;
        python
    }

    /// Runs `calls` through `sdk` against `node` as app `app`; one answer per call,
    /// `{"ok": …}` or `{"error": …}`.
    pub async fn sdk(sdk: Sdk, node: &Node, app: &str, calls: Value) -> Vec<Value> {
        let app: PusherApp = app.parse().unwrap();
        let app = json!({"id": app.id, "key": app.key, "secret": app.secret});
        sdk_at(sdk, node.addr().port(), app, calls).await
    }

    /// Runs `calls` through `sdk` as `app` (`{"id", "key", "secret"}`, and `masterKey` for
    /// encrypted channels) against port `port` (any port, for calls that only sign); one
    /// answer per call.
    pub async fn sdk_at(sdk: Sdk, port: u16, app: Value, calls: Value) -> Vec<Value> {
        let spec = json!({"port": port, "app": app, "calls": calls}).to_string();
        let expected = calls.as_array().unwrap().len();
        let output = tokio::task::spawn_blocking(move || {
            let mut command = match sdk {
                Sdk::Node => {
                    let mut c = Command::new("node");
                    c.current_dir(super::npm_fixture()).arg("sdk.mjs");
                    c
                }
                Sdk::Python => {
                    let mut c = Command::new(python_sdk());
                    c.current_dir(super::FIXTURE).arg("sdk.py");
                    c
                }
            };
            command.arg(spec).output().expect("the SDK driver runs")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let answers: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(
            answers.len(),
            expected,
            "{sdk:?} SDK: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        answers
    }

    /// The answer of a call that must have succeeded.
    pub fn ok(answer: &Value) -> &Value {
        answer
            .get("ok")
            .unwrap_or_else(|| panic!("the call failed: {answer}"))
    }
}
