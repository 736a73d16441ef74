//! Operability: metrics, logs, the config file and its precedence, documentation of every
//! setting.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use sessionhub_testkit::Node;

/// The value of the first sample line starting with `name` (labels included in `name`).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_connections_messages_sessions_and_errors() {
    let node = node(&[]);
    let client = http();
    let base = node.http();
    let (mut a, _) = connect(&node.ws(), "7").await;
    let (_b, _) = connect(&node.ws(), "8").await;
    for i in 0..3 {
        push(&client, &base, "7", &format!("m{i}")).await;
        next_text(&mut a).await;
    }
    let (_, id, _) = get(&client, &base, "/login?username=ops", None).await;
    get(&client, &base, "/get-session", id.as_deref()).await;
    get(&client, &base, "/invalidate", id.as_deref()).await;
    client.get(format!("{base}/nope")).send().await.unwrap();

    let text = metrics(&base).await;
    assert_eq!(sample(&text, "sessionhub_connections"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "sessionhub_users"), Some(2.0));
    assert_eq!(
        sample(&text, "sessionhub_messages_in_total{outcome=\"ok\"}"),
        Some(3.0)
    );
    assert_eq!(sample(&text, "sessionhub_messages_out_total"), Some(3.0));
    assert_eq!(
        sample(&text, "sessionhub_delivery_latency_seconds_count"),
        Some(3.0)
    );
    assert!(sample(&text, "sessionhub_session_reads_total").is_some_and(|n| n >= 1.0));
    assert_eq!(sample(&text, "sessionhub_session_creates_total"), Some(1.0));
    assert!(sample(&text, "sessionhub_session_writes_total").is_some_and(|n| n >= 1.0));
    assert_eq!(
        sample(&text, "sessionhub_session_invalidations_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "sessionhub_errors_total{code=\"not_found\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "sessionhub_broker_up"), Some(1.0));
    // /get-session writes before it reads: one update_and_load (/login loads, then updates).
    assert!(text.contains("sessionhub_store_duration_seconds_bucket{op=\"update_and_load\""));
}

#[tokio::test]
async fn a_slow_consumer_shows_in_the_metrics() {
    let node = node(&[]);
    let client = http();
    let (_stuck, _) = connect(&node.ws(), "slow").await;
    let chunk = "z".repeat(60 * 1024);
    for _ in 0..1000 {
        let (_, answer) = push(&client, &node.http(), "slow", &chunk).await;
        if answer["connections"] == 0 {
            break;
        }
    }
    wait_online(&client, &node.http(), 0, WAIT).await;
    let text = metrics(&node.http()).await;
    assert_eq!(
        sample(&text, "sessionhub_slow_consumers_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "sessionhub_disconnects_total{reason=\"slow consumer\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn threads_sets_the_worker_threads_and_zero_is_refused() {
    for threads in ["1", "3"] {
        let node = node(&["--threads", threads, "--log-format", "json"]);
        let (mut socket, _) = connect(&node.ws(), "alice").await;
        let (status, _) = push(&http(), &node.http(), "alice", "hello").await;
        assert_eq!(status, 200);
        wait_for_text(&mut socket, "hello", Duration::from_secs(5)).await;
        let stderr = node.stderr();
        assert!(
            stderr.contains(&format!("\"threads\":{threads},")),
            "--threads {threads}: {stderr}"
        );
    }
    let (code, stderr) = Node::run_once(binary(), &["serve", "--threads", "0"]).unwrap();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--threads"), "{stderr}");
}

#[tokio::test]
async fn json_logs_have_one_line_per_connection_open_and_close() {
    let node = node(&["--log-format", "json", "--node-id", "log-node"]);
    let (ws, _) = connect(&node.ws(), "42").await;
    drop(ws);
    wait_online(&http(), &node.http(), 0, WAIT).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lines: Vec<Value> = node
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let find = |message: &str| {
        lines
            .iter()
            .filter(|l| l["message"] == message)
            .cloned()
            .collect::<Vec<_>>()
    };
    let opened = find("socket open");
    let closed = find("socket closed");
    assert_eq!((opened.len(), closed.len()), (1, 1), "{lines:?}");
    for line in [&opened[0], &closed[0]] {
        assert_eq!(line["node"], "log-node");
        assert_eq!(line["user"], "42");
    }
    assert!(closed[0]["reason"].is_string());
}

#[tokio::test]
async fn the_config_file_sets_anything_flags_and_environment_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sessionhub.toml");
    std::fs::write(
        &config,
        "node-id = \"from-file\"\nsession_timeout = 77\nno-demo = true\nhistory-size = 5\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    // File only.
    let from_file = node(&["--config", &config]);
    let response = http()
        .get(format!("{}/login", from_file.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "no-demo from the file");
    assert_eq!(response.headers()["x-sessionhub-node"], "from-file");
    // A flag beats the file.
    let flagged = node(&["--config", &config, "--node-id", "from-flag"]);
    let response = http()
        .get(format!("{}/healthz", flagged.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-sessionhub-node"], "from-flag");
}

#[test]
fn the_environment_beats_the_file_and_unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:1\"\n").unwrap();
    // The environment's (unbindable) address wins over the file's.
    let out = std::process::Command::new(binary())
        .args(["serve", "--config", config.to_str().unwrap()])
        .arg("--data-dir")
        .arg(dir.path())
        .env("SESSIONHUB_LISTEN", "10.1.2.3:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("10.1.2.3:9"), "{stderr}");

    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nsesion-timeout = 5\n").unwrap();
    let (code, stderr) =
        Node::run_once(binary(), &["serve", "--config", config.to_str().unwrap()]).unwrap();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("unknown key `sesion-timeout`"), "{stderr}");
}

#[test]
fn pusher_apps_in_the_config_file_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let refused = |toml: &str, flags: &[&str], expected: &str| {
        std::fs::write(&config, toml).unwrap();
        let mut args = vec!["serve", "--config", config.to_str().unwrap()];
        args.extend(flags);
        let (code, stderr) = Node::run_once(binary(), &args).unwrap();
        assert_ne!(code, Some(0), "{toml}");
        assert!(stderr.contains(expected), "{toml}: {stderr}");
    };
    let app = "[[pusher.apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
    refused(
        &format!("listen = \"127.0.0.1:0\"\n{app}client_event = true\n"),
        &[],
        "unknown field `client_event`",
    );
    refused(
        "[[pusher.apps]]\nid = \"1 2\"\nkey = \"k\"\nsecret = \"s\"\n",
        &[],
        "ID:KEY:SECRET",
    );
    refused(
        app,
        &["--pusher-app", "2:k:t"],
        "two Pusher apps share the key \"k\"",
    );
    refused(
        &format!("{app}encryption_master_key_base64 = \"MDEy\"\n"),
        &[],
        "an encryption master key is 32 bytes in base64",
    );
    refused(
        app,
        &["--pusher-encryption-master-key", "not base64"],
        "an encryption master key is 32 bytes in base64",
    );
}

#[test]
fn docs_configuration_lists_every_setting() {
    let out = std::process::Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .unwrap();
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches([',', '.', ')']))
        .map(|w| w.split('=').next().unwrap())
        .filter(|w| !matches!(*w, "--help" | "--version"))
        .collect();
    assert!(flags.len() > 20, "{flags:?}");
    for flag in flags {
        assert!(
            doc.contains(&format!("`{flag}`")),
            "docs/configuration.md misses {flag}"
        );
    }
}

/// The Grafana dashboard in `deploy/` queries only what `/metrics` exports, and a fresh node
/// exports every metric it has (at zero) before anything happened.
#[tokio::test]
async fn the_dashboard_queries_only_exported_metrics() {
    let node = node(&[]);
    let exported: std::collections::HashSet<String> = metrics(&node.http())
        .await
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect();
    for (name, kind, _) in sessionhub::telemetry::METRICS {
        let shown = match kind {
            sessionhub::telemetry::Kind::Histogram => format!("{name}_bucket"),
            _ => name.to_string(),
        };
        assert!(
            exported.contains(&shown),
            "{shown} not exported: {exported:?}"
        );
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/sessionhub.json"
        ))
        .unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            queried.extend(
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("sessionhub_"))
                    .map(str::to_owned),
            );
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for name in queried {
        assert!(
            exported.contains(&name),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = std::process::Command::new(binary())
        .arg("--version")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    assert!(!head.is_empty(), "tests run in a git checkout");
    assert_eq!(
        printed.trim(),
        format!("sessionhub {} (commit {head})", env!("CARGO_PKG_VERSION"))
    );
}
