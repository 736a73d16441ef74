//! The demo page at `/` (crates/sessionhub/assets/demo.html), end to end in headless Chromium:
//! two nodes in cluster mode on a Redis of the test's own, alice's page on node 0 and bob's on
//! node 1 (each in a browser context of its own, so each has its own cookies). Through the
//! page's own buttons: log in, count, send to another user and see it arrive with the node
//! that delivered it; lose the node under a socket and see the page reconnect and recover.
//!
//! Needs what tests/browser.rs needs (Node.js 20+, Debian's `chromium` at /usr/bin/chromium,
//! `npm ci` in tests/browser; scripts/test.sh installs them). The driver is
//! tests/browser/demo.mjs (see tests/common/browser.rs). Screenshots and the driver's log go
//! to `target/demo-artifacts/`.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Value, json};

use common::browser::{Browser, Driver, STEP};

/// `node demo.mjs`: several pages, each in a browser context of its own.
const DRIVER: Driver = Driver {
    script: "demo.mjs",
    test: "demo page test",
    launch_within: STEP,
};

/// The demo page's own controls, as the test uses them.
impl Browser {
    async fn open(&mut self, page: &str, url: &str) -> Value {
        self.call("open", json!({ "name": page, "url": url }), STEP)
            .await
    }

    async fn fill(&mut self, page: &str, selector: &str, value: &str) {
        let args = json!({ "name": page, "selector": selector, "value": value });
        self.call("fill", args, STEP).await;
    }

    async fn click(&mut self, page: &str, selector: &str) {
        let args = json!({ "name": page, "selector": selector });
        self.call("click", args, STEP).await;
    }

    /// Waits until `selector`'s text contains `text`; returns the whole text.
    async fn wait_text(&mut self, page: &str, selector: &str, text: &str) -> String {
        let args = json!({ "name": page, "selector": selector, "text": text });
        let got = self.call("waitText", args, STEP).await;
        got.as_str().unwrap_or_default().to_owned()
    }

    async fn wait_messages(&mut self, page: &str, count: usize) {
        let args = json!({ "name": page, "count": count });
        self.call("waitMessages", args, STEP).await;
    }

    /// The texts of `selectors`, the received messages (oldest first), and whether every
    /// input and button has a label.
    async fn read(&mut self, page: &str, selectors: &[&str]) -> Value {
        let args = json!({ "name": page, "selectors": selectors });
        self.call("read", args, STEP).await
    }

    async fn screenshot(&mut self, page: &str, file: &str) -> PathBuf {
        let args = json!({ "name": page, "file": file });
        let shot = self.call("screenshot", args, STEP).await;
        let path = PathBuf::from(shot["path"].as_str().expect("a screenshot path"));
        eprintln!("demo page test: screenshot {}", path.display());
        path
    }

    /// Logs in through the form and waits for the session view to show the user.
    async fn log_in(&mut self, page: &str, user: &str) {
        self.fill(page, "#username", user).await;
        self.click(page, "#login").await;
        self.wait_text(page, "#session-user", user).await;
    }

    /// Opens the page's socket and waits for the greeting from `node`.
    async fn open_socket(&mut self, page: &str, node: &str) {
        self.click(page, "#connect").await;
        self.wait_text(page, "#conn-state", "connected as").await;
        self.wait_text(page, "#conn-node", node).await;
    }

    /// Sends `text` to `to` through the page's form; waits until the server confirmed it.
    async fn send(&mut self, page: &str, to: &str, text: &str) {
        self.fill(page, "#to", to).await;
        self.fill(page, "#message", text).await;
        self.click(page, "#send").await;
        self.wait_text(page, "#send-status", &format!("Sent to {to}"))
            .await;
    }
}

/// The session view's user, count and the node that answered last.
const SESSION: [&str; 3] = [
    "#session-user",
    "#session-count",
    "#node-trail li:first-child",
];

fn texts<'a>(read: &'a Value, selectors: &[&str]) -> Vec<&'a str> {
    selectors
        .iter()
        .map(|s| read["text"][*s].as_str().unwrap_or("<absent>"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_on_two_nodes_log_in_count_and_message_each_other_through_the_page() {
    let started = Instant::now();
    let artifacts = common::browser::artifacts("demo-artifacts");
    let (_redis, mut nodes) = common::cluster(2);
    let mut browser = Browser::launch(&DRIVER, &artifacts).await;
    let launched = started.elapsed();

    // Each page is served by its node, straight from the binary.
    let a = browser
        .open("alice", &format!("{}/", nodes[0].http()))
        .await;
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(a["title"], "sessionhub demo", "{a}");
    assert_eq!(a["node"], "node-0", "{a}");
    let b = browser.open("bob", &format!("{}/", nodes[1].http())).await;
    assert_eq!(b["node"], "node-1", "{b}");
    let page = browser.read("alice", &SESSION).await;
    assert_eq!(texts(&page, &SESSION), ["not logged in", "–", "<absent>"]);
    assert_eq!(page["labelled"], true, "every input and button has a label");

    // The session: log in, then the count rises by one per click, answered by node 0.
    browser.log_in("alice", "alice").await;
    let page = browser.read("alice", &SESSION).await;
    assert_eq!(texts(&page, &SESSION), ["alice", "–", "node-0"]);
    browser.click("alice", "#get-session").await;
    browser.wait_text("alice", "#session-count", "1").await;
    browser.click("alice", "#get-session").await;
    browser.wait_text("alice", "#session-count", "2").await;
    let page = browser
        .read("alice", &[SESSION.as_slice(), &["#session-json"]].concat())
        .await;
    assert_eq!(texts(&page, &SESSION), ["alice", "2", "node-0"]);
    let attributes: Value = serde_json::from_str(page["text"]["#session-json"].as_str().unwrap())
        .expect("the attributes view is JSON");
    assert_eq!(attributes["username"], "alice", "{attributes}");
    assert_eq!(attributes["count"], 2, "{attributes}");
    let trail = browser.read("alice", &["#node-trail"]).await;
    assert_eq!(
        texts(&trail, &["#node-trail"]),
        ["node-0node-0node-0"],
        "one answer per request, each from node 0"
    );

    // Sockets: alice's on node 0, bob's on node 1. Bob sends to alice; node 0 delivers it.
    browser.open_socket("alice", "node-0").await;
    browser.log_in("bob", "bob").await;
    browser.open_socket("bob", "node-1").await;
    let sent = Instant::now();
    browser.send("bob", "alice", "hello from bob").await;
    browser.wait_messages("alice", 1).await;
    let delivered = sent.elapsed();
    let page = browser.read("alice", &[]).await;
    let first = &page["messages"][0];
    assert_eq!(first["from"], "bob", "{page}");
    assert_eq!(first["text"], ": hello from bob", "{page}");
    assert_eq!(first["node"], "node-0", "{page}");
    assert_eq!(first["deliveredBy"], "node-0", "{page}");
    assert_eq!(first["offset"], "1", "{page}");
    assert_eq!(first["recovered"], false, "{page}");

    // And back: alice's reply reaches bob through node 1.
    browser.send("alice", "bob", "hi bob").await;
    browser.wait_messages("bob", 1).await;
    let page = browser.read("bob", &[]).await;
    let reply = &page["messages"][0];
    assert_eq!(
        (&reply["from"], &reply["text"], &reply["deliveredBy"]),
        (&json!("alice"), &json!(": hi bob"), &json!("node-1")),
        "{page}"
    );

    // Node 0 dies under alice's socket. Bob writes while it is down; when node 0 is back
    // the page reconnects, recovers the message from the channel's history, and says so.
    nodes[0].kill();
    browser
        .wait_text("alice", "#conn-state", "reconnecting")
        .await;
    browser.send("bob", "alice", "while you were away").await;
    let down = Instant::now();
    nodes[0].restart().expect("node 0 restarts on its port");
    browser
        .wait_text("alice", "#conn-state", "connected as")
        .await;
    browser.wait_messages("alice", 2).await;
    let back = down.elapsed();
    let recovered = browser
        .wait_text("alice", "#conn-recovered", "1 missed message replayed")
        .await;
    assert!(recovered.starts_with("yes"), "{recovered}");
    let state = ["#conn-state", "#conn-node", "#conn-reconnected"];
    let page = browser.read("alice", &state).await;
    let [conn, node, reconnected] = texts(&page, &state)[..] else {
        unreachable!()
    };
    assert_eq!((conn, node), ("connected as alice", "node-0"), "{page}");
    assert!(
        reconnected.starts_with("at ") && reconnected.ends_with(", to node-0"),
        "{reconnected}"
    );
    let missed = &page["messages"][1];
    assert_eq!(missed["text"], ": while you were away", "{page}");
    assert_eq!(missed["deliveredBy"], "node-0", "{page}");
    assert_eq!(missed["offset"], "2", "{page}");
    assert_eq!(missed["recovered"], true, "{page}");
    assert_eq!(page["messages"].as_array().unwrap().len(), 2, "{page}");

    // The session outlived the node: it lives in Redis.
    browser.click("alice", "#get-session").await;
    browser.wait_text("alice", "#session-count", "3").await;
    let page = browser.read("alice", &SESSION).await;
    assert_eq!(texts(&page, &SESSION), ["alice", "3", "node-0"]);

    let alice_png = browser.screenshot("alice", "alice.png").await;
    let bob_png = browser.screenshot("bob", "bob.png").await;
    let args = json!({ "name": "alice", "scheme": "dark" });
    browser.call("colorScheme", args, STEP).await;
    let dark_png = browser.screenshot("alice", "alice-dark.png").await;

    // Logout ends the session; the next request starts a fresh one, without a user.
    browser.click("alice", "#logout").await;
    browser
        .wait_text("alice", "#session-status", "Log out: done")
        .await;
    let page = browser.read("alice", &SESSION).await;
    assert_eq!(texts(&page, &SESSION), ["not logged in", "–", "node-0"]);
    browser.click("alice", "#get-session").await;
    browser
        .wait_text("alice", "#session-status", "Get session: done")
        .await;
    let page = browser.read("alice", &SESSION).await;
    assert_eq!(texts(&page, &SESSION), ["not logged in", "1", "node-0"]);

    for page in ["alice", "bob"] {
        let seen = browser.read(page, &[]).await;
        assert_eq!(
            seen["errors"],
            json!([]),
            "uncaught exceptions on {page}'s page"
        );
    }
    browser.close().await;
    for png in [alice_png, bob_png, dark_png] {
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{} is {size} bytes", png.display());
    }
    eprintln!(
        "demo page test: Chromium up in {launched:?}, bob -> alice delivered in {delivered:?}, \
         node 0 back and recovered in {back:?}, whole test {:?}",
        started.elapsed()
    );
}
