//! Laravel Echo (2.x, `broadcaster: 'pusher'`) on pusher-js (8.x), the browser builds from
//! npm, unmodified, in headless Chromium against real sessionhub nodes: what a Laravel app's
//! front end does, with sessionhub's built-in `/pusher/auth` signing for the user of the
//! shared HTTP session instead of Laravel's `/broadcasting/auth`.
//!
//! alice's page and bob's page each log in (a browser context each, so a cookie each) and
//! run Echo: a public channel's event arrives with Laravel's namespaced event name; a
//! `toOthers()` publish (the HTTP API's `socket_id`) reaches alice and not bob; a whisper on
//! a private channel reaches the other page and not its sender; a presence channel's
//! `here`, `joining` and `leaving` name the users with their session's info. Once on one node,
//! once with the pages on two nodes sharing a Redis.
//!
//! Needs what tests/browser.rs needs (Node.js 20+, Debian's `chromium`, `npm ci` in
//! tests/browser); the driver is tests/browser/echo.mjs. Artifacts go to
//! `target/echo-artifacts/`.

mod common;

use serde_json::{Value, json};
use sessionhub::pusher::{PusherApp, request};
use sessionhub_testkit::Node;

use common::browser::{Browser, Driver, STEP, artifacts};

const DRIVER: Driver = Driver {
    script: "echo.mjs",
    test: "Laravel Echo test",
    launch_within: STEP,
};
const APP: &str = "7:echo-key:echo-secret";

impl Browser {
    async fn run(&mut self, page: &str, code: &str) -> Value {
        self.call("run", json!({ "name": page, "code": code }), STEP)
            .await
    }

    async fn until(&mut self, page: &str, expr: &str) {
        self.call("until", json!({ "name": page, "expr": expr }), STEP)
            .await;
    }

    /// Opens `page` on `node`, logs in as `user` and starts Echo there as `window.echo`,
    /// with `broadcaster` ("pusher", or "reverb", Laravel 11's name for the same protocol).
    async fn echo_as(&mut self, page: &str, node: &Node, user: &str, broadcaster: &str) {
        let opened = self
            .call(
                "open",
                json!({ "name": page, "url": format!("{}/healthz", node.http()) }),
                STEP,
            )
            .await;
        assert_eq!(
            opened["echo"], "function",
            "laravel-echo's browser build loaded"
        );
        let port = node.http().rsplit(':').next().unwrap().to_owned();
        let code = format!(
            r#"(async () => {{
                const login = await fetch("/login", {{
                    method: "POST",
                    headers: {{ "content-type": "application/x-www-form-urlencoded" }},
                    body: "username={user}",
                }});
                if (!login.ok) throw new Error("login: " + login.status);
                // pusher-js's own log goes to the driver's log (target/echo-artifacts).
                window.Pusher.logToConsole = true;
                const Echo = window.Echo.default ?? window.Echo;
                window.echo = new Echo({{
                    broadcaster: "{broadcaster}",
                    key: "echo-key",
                    cluster: "mt1",
                    wsHost: "127.0.0.1",
                    wsPort: {port},
                    forceTLS: false,
                    enabledTransports: ["ws"],
                    authEndpoint: "/pusher/auth",
                }});
                return true;
            }})()"#
        );
        self.run(page, &code).await;
        self.until(
            page,
            "window.echo.socketId() !== undefined && window.echo.socketId() !== null",
        )
        .await;
    }
}

/// Publishes through the HTTP API as Laravel's Pusher broadcaster does: the event's class
/// name, JSON data, and the sender's socket id with `toOthers()`.
async fn broadcast(node: &Node, channel: &str, event: &str, data: Value, except: Option<&str>) {
    let app: PusherApp = APP.parse().unwrap();
    let mut body = json!({ "name": event, "channels": [channel], "data": data.to_string() });
    if let Some(socket) = except {
        body["socket_id"] = json!(socket);
    }
    let body = body.to_string();
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let path = format!("/apps/{}/events", app.id);
    let query = format!(
        "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={}",
        app.key,
        request::body_md5(body.as_bytes())
    );
    let signature = app.sign(&format!("POST\n{path}\n{query}"));
    let response = common::http()
        .post(format!(
            "{}{path}?{query}&auth_signature={signature}",
            node.http()
        ))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

async fn laravel_echo_works_unchanged(nodes: &[Node], broadcaster: &str, artifacts_dir: &str) {
    let dir = artifacts(artifacts_dir);
    let mut browser = Browser::launch(&DRIVER, &dir).await;
    let (a, b) = (&nodes[0], &nodes[nodes.len() - 1]);
    browser.echo_as("alice", a, "alice", broadcaster).await;
    browser.echo_as("bob", b, "bob", broadcaster).await;

    // Listeners as a Laravel front end writes them: class names under App\Events.
    let listen = r#"(() => {
        window.echo.channel("orders").listen("OrderShipped", (e) => window.log.push(["shipped", e]));
        window.echo.private("chat.1").listenForWhisper("typing", (e) => window.log.push(["typing", e]));
        window.echo.join("room.1")
            .here((users) => window.log.push(["here", users]))
            .joining((user) => window.log.push(["joining", user]))
            .leaving((user) => window.log.push(["leaving", user]));
        return true;
    })()"#;
    let subscribed = r#"["orders", "private-chat.1", "presence-room.1"].every(
        (name) => window.echo.connector.pusher.channel(name)?.subscribed)"#;
    browser.run("alice", listen).await;
    browser.until("alice", subscribed).await;
    browser.run("bob", listen).await;
    browser.until("bob", subscribed).await;

    // Presence: bob sees both in `here`; alice sees bob join, with his session's info.
    let here = browser
        .run(
            "bob",
            r#"window.log.find(([kind]) => kind === "here")[1].map((u) => u.name ?? u.id ?? u).sort()"#,
        )
        .await;
    assert_eq!(here, json!(["alice", "bob"]), "here lists both users");
    browser
        .until(
            "alice",
            r#"window.log.some(([kind]) => kind === "joining")"#,
        )
        .await;
    let joining = browser
        .run(
            "alice",
            r#"window.log.find(([kind]) => kind === "joining")[1]"#,
        )
        .await;
    assert_eq!(joining["name"], "bob", "{joining}");

    // A broadcast reaches both pages under Laravel's event name.
    let data = json!({ "order": { "id": 42 } });
    broadcast(a, "orders", "App\\Events\\OrderShipped", data.clone(), None).await;
    let shipped = r#"window.log.filter(([kind]) => kind === "shipped").length"#;
    for page in ["alice", "bob"] {
        browser.until(page, &format!("{shipped} >= 1")).await;
        let got = browser
            .run(
                page,
                r#"window.log.find(([kind]) => kind === "shipped")[1]"#,
            )
            .await;
        assert_eq!(got, data, "{page}: the data arrives parsed, as sent");
    }

    // toOthers(): Laravel sends the sender's socket id (X-Socket-ID); that socket is skipped.
    let bob_socket = browser.run("bob", "window.echo.socketId()").await;
    let bob_socket = bob_socket.as_str().unwrap().to_owned();
    broadcast(
        b,
        "orders",
        "App\\Events\\OrderShipped",
        json!({"n": 2}),
        Some(&bob_socket),
    )
    .await;
    browser.until("alice", &format!("{shipped} >= 2")).await;
    // The next broadcast reaches bob, so had the excluded one come it would be there by now.
    broadcast(
        a,
        "orders",
        "App\\Events\\OrderShipped",
        json!({"n": 3}),
        None,
    )
    .await;
    browser.until("bob", &format!("{shipped} >= 2")).await;
    let bob_got = browser
        .run(
            "bob",
            r#"window.log.filter(([kind]) => kind === "shipped").map(([, e]) => e.n ?? 1)"#,
        )
        .await;
    assert_eq!(
        bob_got,
        json!([1, 3]),
        "toOthers() skipped bob's own socket"
    );

    // A whisper reaches the other page, never its sender.
    browser
        .run(
            "alice",
            r#"(window.echo.private("chat.1").whisper("typing", { name: "alice" }), true)"#,
        )
        .await;
    browser
        .until("bob", r#"window.log.some(([kind]) => kind === "typing")"#)
        .await;
    let typing = browser
        .run(
            "bob",
            r#"window.log.find(([kind]) => kind === "typing")[1]"#,
        )
        .await;
    assert_eq!(typing, json!({ "name": "alice" }));
    let echoed = browser
        .run("alice", r#"window.log.some(([kind]) => kind === "typing")"#)
        .await;
    assert_eq!(
        echoed,
        json!(false),
        "a whisper is not echoed to its sender"
    );

    // bob leaves the presence channel: alice is told, with who left.
    browser
        .run("bob", r#"(window.echo.leave("room.1"), true)"#)
        .await;
    browser
        .until(
            "alice",
            r#"window.log.some(([kind]) => kind === "leaving")"#,
        )
        .await;
    let leaving = browser
        .run(
            "alice",
            r#"window.log.find(([kind]) => kind === "leaving")[1]"#,
        )
        .await;
    assert_eq!(leaving["name"], "bob", "{leaving}");
    browser.close().await;
}

fn pusher_args() -> Vec<&'static str> {
    vec!["--pusher-app", APP, "--pusher-client-events"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn laravel_echo_on_one_node() {
    let node = common::node(&pusher_args());
    let nodes = std::slice::from_ref(&node);
    laravel_echo_works_unchanged(nodes, "pusher", "echo-artifacts/one-node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn laravel_echo_as_reverb_across_two_nodes_on_redis() {
    let (_redis, nodes) = common::cluster_with(2, &pusher_args());
    laravel_echo_works_unchanged(&nodes, "reverb", "echo-artifacts/two-nodes").await;
}
