//! Running a node: `/metrics` on an address of its own or behind a key; the config file
//! reloaded on SIGHUP without dropping a connection, a bad file refused.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use sessionhub_testkit::{Node, free_port};

/// Status and error code of `GET url` with `key` as bearer, if any.
async fn status_and_code(url: &str, key: Option<&str>) -> (u16, String) {
    let mut request = http().get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn metrics_listen_serves_metrics_there_and_only_there() {
    let port = free_port();
    let node = node(&["--metrics-listen", &format!("127.0.0.1:{port}")]);
    let scraped = http()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped
            .text()
            .await
            .unwrap()
            .contains("sessionhub_connections")
    );
    // The main port has no /metrics; the metrics port has nothing else.
    assert_eq!(
        status_and_code(&format!("{}/metrics", node.http()), None).await,
        (404, "not_found".to_owned())
    );
    let other = status_and_code(&format!("http://127.0.0.1:{port}/api/online"), None).await;
    assert_eq!(other.0, 404);
    assert!(
        node.stderr()
            .contains(&format!("metrics on http://127.0.0.1:{port}/metrics"))
    );
}

#[tokio::test]
async fn a_metrics_key_guards_metrics_with_401_json() {
    let node = node(&["--metrics-key", "scrape-me"]);
    let url = format!("{}/metrics", node.http());
    assert_eq!(
        status_and_code(&url, None).await,
        (401, "metrics_key_required".to_owned())
    );
    assert_eq!(
        status_and_code(&url, Some("guess")).await,
        (401, "metrics_key_invalid".to_owned())
    );
    let scraped = http()
        .get(&url)
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped
            .text()
            .await
            .unwrap()
            .contains("sessionhub_connections")
    );
    // The rest of the node does not ask for it.
    assert_eq!(
        status_and_code(&format!("{}/healthz", node.http()), None)
            .await
            .0,
        200
    );
}

fn hang_up(node: &Node) {
    let pid = node.pid().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until the node's log has `text` `times` times.
async fn wait_for_log(node: &Node, text: &str, times: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.stderr().matches(text).count() < times {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {text:?} (x{times}) in the log:\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /api/online` with `key`: its status.
async fn api_status(node: &Node, key: &str) -> u16 {
    status_and_code(&format!("{}/api/online", node.http()), Some(key))
        .await
        .0
}

/// Opens a seed socket for `user` from a page on `origin`: the status if refused.
async fn open_from(node: &Node, user: &str, origin: &str) -> Result<Ws, u16> {
    connect_with(
        &format!("{}/websocket/{user}", node.ws()),
        &[("origin", origin)],
    )
    .await
    .map(|(ws, _)| ws)
    .map_err(|(status, _)| status)
}

/// Pushes `text` to `user` with `key`, then reads it on `ws`: the socket is open and
/// delivering.
async fn still_delivers(node: &Node, key: &str, user: &str, ws: &mut Ws, text: &str) {
    let response = http()
        .post(format!("{}/socket/{user}", node.http()))
        .bearer_auth(key)
        .body(text.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(next_text(ws).await, text);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn sighup_reloads_keys_origins_and_log_level_and_keeps_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessionhub.toml");
    write(
        &file,
        "api-key = [\"old-key\"]\nallowed-origins = [\"https://a.example\"]\nhistory-size = 100\n",
    );
    let node = node(&["--config", file.to_str().unwrap()]);
    let mut before = open_from(&node, "alice", "https://a.example")
        .await
        .unwrap();
    assert_eq!(
        open_from(&node, "bob", "https://b.example").await.err(),
        Some(403)
    );
    assert_eq!(api_status(&node, "old-key").await, 200);
    assert_eq!(api_status(&node, "new-key").await, 401);

    // New key and origin, and a setting that cannot change live.
    write(
        &file,
        "api-key = [\"new-key\"]\nallowed-origins = [\"https://b.example\"]\nhistory-size = 7\n",
    );
    hang_up(&node);
    wait_for_log(&node, "config reloaded", 1).await;
    assert_eq!(api_status(&node, "new-key").await, 200);
    assert_eq!(api_status(&node, "old-key").await, 401);
    let mut after = open_from(&node, "bob", "https://b.example").await.unwrap();
    assert_eq!(
        open_from(&node, "carol", "https://a.example").await.err(),
        Some(403)
    );
    let log = node.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("need a restart") && l.contains("history-size")),
        "{log}"
    );
    // The socket opened before the reload, from the origin now refused, is still there.
    still_delivers(&node, "new-key", "alice", &mut before, "kept").await;
    still_delivers(&node, "new-key", "bob", &mut after, "new").await;

    // A file that does not parse, then one with a bad value: refused, nothing changes.
    write(&file, "api-key = [\"broken-key\"\n");
    hang_up(&node);
    wait_for_log(&node, "config reload failed", 1).await;
    write(
        &file,
        "api-key = [\"broken-key\"]\nmax-connections = \"lots\"\n",
    );
    hang_up(&node);
    wait_for_log(&node, "config reload failed", 2).await;
    let log = node.stderr();
    assert!(log.contains("parsing the config file"), "{log}");
    assert!(log.contains("max-connections"), "{log}");
    assert_eq!(api_status(&node, "new-key").await, 200);
    assert_eq!(api_status(&node, "broken-key").await, 401);
    still_delivers(&node, "new-key", "alice", &mut before, "still").await;

    // The log level: at warn, a socket opening is no longer logged.
    write(
        &file,
        "api-key = [\"last-key\"]\nallowed-origins = [\"https://b.example\"]\nlog-level = \"warn\"\n",
    );
    hang_up(&node);
    let deadline = tokio::time::Instant::now() + WAIT;
    while api_status(&node, "last-key").await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the last reload did not apply"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened = node.stderr().matches("socket open").count();
    let _quiet = open_from(&node, "dave", "https://b.example").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(node.stderr().matches("socket open").count(), opened);
    still_delivers(&node, "last-key", "alice", &mut before, "last").await;
}
