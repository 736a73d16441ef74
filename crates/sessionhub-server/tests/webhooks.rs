//! Signed webhooks on real servers, delivered to a receiver the test runs (an axum server on
//! a free port) that checks each signature with its own implementation of the documented
//! check (docs/hooks.md, "Webhooks") and records the events: the signature, once per event
//! across three nodes, retries with backoff counted in /metrics, no loss when a node holding
//! claimed events is killed, a single node's redb queue across a restart, and the bound.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use hmac::{KeyInit, Mac};
use serde_json::Value;
use sessionhub_testkit::{Node, RedisServer};
use tokio::time::Instant;

const SECRET: &str = "whsec_test";
/// The replay window the receiver allows.
const TOLERANCE: u64 = 300;

/// The receiver's check, written from docs/hooks.md without the server's code: the header
/// is `t=<unix>,v1=<hex>[,v1=...]`, each `v1` HMAC-SHA256(secret, "{t}.{body}").
fn receiver_accepts(header: &str, body: &[u8], secret: &str, now: u64) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1.push(value.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if now.abs_diff(t) > TOLERANCE {
        return false;
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // A real receiver compares in constant time (docs/hooks.md); a test needs no more.
    v1.contains(&expected)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// How the receiver answers.
const ACCEPT: u8 = 0;
const FAIL: u8 = 1;
/// Holds the request longer than any timeout the tests set.
const STALL: u8 = 2;

#[derive(Default)]
struct Received {
    /// Every verified request's event, in arrival order, with when it arrived and how it
    /// was answered.
    events: Mutex<Vec<(Instant, Value, u8)>>,
    /// Requests whose signature did not verify.
    refused: AtomicUsize,
    mode: AtomicU8,
}

struct Receiver {
    addr: SocketAddr,
    state: Arc<Received>,
}

impl Receiver {
    async fn start(mode: u8) -> Self {
        let state = Arc::new(Received::default());
        state.mode.store(mode, Ordering::SeqCst);
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = shared.clone();
                async move {
                    let header = headers
                        .get("sessionhub-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    if !receiver_accepts(header, &body, SECRET, unix_now()) {
                        state.refused.fetch_add(1, Ordering::SeqCst);
                        return StatusCode::BAD_REQUEST;
                    }
                    let event: Value = serde_json::from_slice(&body).expect("the body is JSON");
                    let mode = state.mode.load(Ordering::SeqCst);
                    state
                        .events
                        .lock()
                        .unwrap()
                        .push((Instant::now(), event, mode));
                    match mode {
                        ACCEPT => StatusCode::OK,
                        FAIL => StatusCode::INTERNAL_SERVER_ERROR,
                        _ => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            StatusCode::OK
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn set(&self, mode: u8) {
        self.state.mode.store(mode, Ordering::SeqCst);
    }

    /// Every request received so far (retries included), as `(type, user)` with the event id.
    fn requests(&self) -> Vec<(String, String, String)> {
        self.state
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e, _)| {
                (
                    e["type"].as_str().unwrap_or_default().to_owned(),
                    e["data"]["user"].as_str().unwrap_or_default().to_owned(),
                    e["id"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The requests answered 2xx, as [`Receiver::requests`].
    fn accepted(&self) -> Vec<(String, String, String)> {
        let requests = self.requests();
        let events = self.state.events.lock().unwrap();
        requests
            .into_iter()
            .zip(events.iter())
            .filter(|(_, (_, _, mode))| *mode == ACCEPT)
            .map(|(r, _)| r)
            .collect()
    }

    async fn wait_for(&self, what: impl Fn(&[(String, String, String)]) -> bool, within: Duration) {
        let deadline = Instant::now() + within;
        while !what(&self.requests()) {
            assert!(
                Instant::now() < deadline,
                "receiver did not get what was expected within {within:?}: {:?}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Webhook flags for `receiver`, plus `extra`.
fn hook_args<'a>(receiver: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--webhook-url", receiver, "--webhook-secret", SECRET];
    args.extend_from_slice(extra);
    args
}

/// The value of `name` (with its labels, as rendered) in `node`'s /metrics, 0 if absent.
async fn metric(node: &Node, name: &str) -> f64 {
    let text = http()
        .get(format!("{}/metrics", node.http()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

#[test]
fn the_documented_check_refuses_a_tampered_body_and_an_old_timestamp() {
    use sessionhub::webhook::signature;
    let body = br#"{"id":"1","type":"user.online","data":{"user":"alice"}}"#;
    let now = unix_now();
    let header = signature::sign(&[SECRET], now, body);
    assert!(receiver_accepts(&header, body, SECRET, now));
    let tampered = br#"{"id":"1","type":"user.online","data":{"user":"mallory"}}"#;
    assert!(!receiver_accepts(&header, tampered, SECRET, now));
    assert!(!receiver_accepts(&header, body, "another secret", now));
    let old = signature::sign(&[SECRET], now - TOLERANCE - 1, body);
    assert!(
        !receiver_accepts(&old, body, SECRET, now),
        "outside the replay window"
    );
    // The server's own verify helper agrees.
    assert!(signature::verify(&header, body, &[SECRET], now, TOLERANCE).is_ok());
    assert!(signature::verify(&header, tampered, &[SECRET], now, TOLERANCE).is_err());
    assert!(signature::verify(&old, body, &[SECRET], now, TOLERANCE).is_err());
    // Rotation: signed with the new and the old secret, either verifies.
    let both = signature::sign(&["new", SECRET], now, body);
    assert!(receiver_accepts(&both, body, SECRET, now));
    assert!(receiver_accepts(&both, body, "new", now));
}

/// Counts `(type, user)` over distinct event ids.
fn distinct(requests: &[(String, String, String)]) -> HashMap<(String, String), usize> {
    let mut ids = std::collections::HashSet::new();
    let mut counts = HashMap::new();
    for (kind, user, id) in requests {
        if ids.insert(id.clone()) {
            *counts.entry((kind.clone(), user.clone())).or_default() += 1;
        }
    }
    counts
}

/// Three nodes on one Redis: alice's first connection on node A, a second on node C, the
/// one on A closed, then the last on C: exactly one online and one offline event, each
/// delivered once, signed, wherever it was decided.
#[tokio::test]
async fn first_and_last_connection_across_three_nodes_give_one_online_and_one_offline() {
    let receiver = Receiver::start(ACCEPT).await;
    let url = receiver.url();
    let redis = RedisServer::start_async().await;
    let redis_url = redis.url();
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let name = format!("node-{i}");
            let args = hook_args(&url, &["--redis", &redis_url, "--node-id", &name]);
            node(&args)
        })
        .collect();
    let (a, c) = (&nodes[0], &nodes[2]);
    // Beats every 250 ms: each step waits for two, so Redis sees every step.
    let settle = || tokio::time::sleep(Duration::from_millis(700));
    let (mut on_a, _) = v1::open_v1(&a.ws(), "alice").await.unwrap();
    settle().await;
    let (mut on_c, _) = v1::open_v1(&c.ws(), "alice").await.unwrap();
    settle().await;
    on_a.close(None).await.unwrap();
    settle().await;
    on_c.close(None).await.unwrap();
    let offline = |r: &[(String, String, String)]| r.iter().any(|(k, _, _)| k == "user.offline");
    receiver.wait_for(offline, WAIT).await;
    // Bounded wait for any duplicate from another node.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = receiver.requests();
    let kinds: Vec<(&str, &str)> = requests
        .iter()
        .map(|(k, u, _)| (k.as_str(), u.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![("user.online", "alice"), ("user.offline", "alice")],
        "one online, one offline, each POSTed once"
    );
    assert_eq!(
        receiver.state.refused.load(Ordering::SeqCst),
        0,
        "every signature verified"
    );
    drop(nodes);
}

/// 5xx and timeouts are retried with growing delays and counted in /metrics; the event is
/// delivered once the receiver takes it, with the same id every time.
#[tokio::test]
async fn failed_deliveries_are_retried_with_backoff_and_counted() {
    let receiver = Receiver::start(FAIL).await;
    let url = receiver.url();
    let args = hook_args(
        &url,
        &[
            "--webhook-events",
            "online",
            "--webhook-timeout",
            "0.5",
            "--webhook-backoff",
            "0.2",
            "--webhook-max-backoff",
            "5",
        ],
    );
    let node = node(&args);
    let (_ws, _) = v1::open_v1(&node.ws(), "bob").await.unwrap();
    // Two 500s, then a stall past the timeout, then accepted.
    receiver.wait_for(|r| r.len() >= 2, WAIT).await;
    receiver.set(STALL);
    receiver.wait_for(|r| r.len() >= 3, WAIT).await;
    receiver.set(ACCEPT);
    receiver.wait_for(|r| r.len() >= 4, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = receiver.state.events.lock().unwrap().clone();
    assert_eq!(
        events.len(),
        4,
        "three failures, one success, nothing after: {events:?}"
    );
    let ids: std::collections::HashSet<&str> = events
        .iter()
        .map(|(_, e, _)| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "the same event, by id, each time");
    // Waits after each failure: 0.1-0.2 s, 0.2-0.4 s, then (after the 0.5 s timeout)
    // 0.4-0.8 s: each at least as long as the one before, given the jitter ranges.
    let gaps: Vec<Duration> = events.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(200), "{gaps:?}");
    assert!(
        gaps[2] >= Duration::from_millis(400) + Duration::from_millis(500),
        "{gaps:?}"
    );
    assert_eq!(
        metric(&node, "sessionhub_webhooks_retried_total").await,
        3.0
    );
    assert_eq!(
        metric(&node, "sessionhub_webhooks_delivered_total").await,
        1.0
    );
    assert_eq!(
        metric(&node, "sessionhub_webhook_delivery_seconds_count").await,
        1.0
    );
    assert_eq!(receiver.state.refused.load(Ordering::SeqCst), 0);
}

/// `users` each connect to `node` and leave again, slowly enough for presence to see both.
async fn come_and_go(node: &Node, users: &[String]) {
    let mut sockets = Vec::new();
    for user in users {
        sockets.push(v1::open_v1(&node.ws(), user).await.unwrap().0);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    for mut ws in sockets {
        ws.close(None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
}

/// Whether `accepted` holds an online and an offline event of every one of `users`.
fn all_arrived(accepted: &[(String, String, String)], users: &[String]) -> bool {
    let counts = distinct(accepted);
    users.iter().all(|u| {
        ["user.online", "user.offline"]
            .iter()
            .all(|k| counts.contains_key(&(k.to_string(), u.clone())))
    })
}

/// A node killed (SIGKILL) in the middle of delivering: the receiver stalls, so the node
/// holds claimed events; another node takes them over once their lease runs out, and every
/// event arrives. At least once: duplicates (same id) are counted and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_none_of_its_queued_webhooks() {
    let receiver = Receiver::start(STALL).await;
    let url = receiver.url();
    let redis = RedisServer::start_async().await;
    let redis_url = redis.url();
    let flags = |name: &'static str| -> Vec<String> {
        [
            "--redis",
            &redis_url,
            "--node-id",
            name,
            "--webhook-url",
            &url,
            "--webhook-secret",
            SECRET,
            "--webhook-timeout",
            "1",
            "--webhook-backoff",
            "0.2",
            "--webhook-max-backoff",
            "1",
            "--webhook-max-attempts",
            "1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a_flags = flags("node-a");
    let mut a = node(&a_flags.iter().map(String::as_str).collect::<Vec<_>>());
    let users: Vec<String> = (0..5).map(|i| format!("user-{i}")).collect();
    come_and_go(&a, &users).await;
    // Node A is stuck on stalled POSTs of the events it claimed.
    receiver.wait_for(|r| !r.is_empty(), WAIT).await;
    // Killed while it holds claims (entries pending in the consumer group), not between two.
    let stream = format!(
        "{}webhooks:{{webhooks}}:stream",
        sessionhub::redis::DEFAULT_PREFIX
    );
    let count =
        format!(r#"EVAL "return redis.call('XPENDING', KEYS[1], 'deliver')[1]" 1 {stream}"#);
    let deadline = Instant::now() + WAIT;
    let pending = loop {
        let reply = blocking(|| redis.command(&count)).unwrap();
        let pending: u64 = reply.trim().trim_start_matches(':').parse().unwrap_or(0);
        if pending > 0 {
            break pending;
        }
        assert!(
            Instant::now() < deadline,
            "node A never held a claim: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    a.kill();
    eprintln!("node A killed holding {pending} claimed events");
    receiver.set(ACCEPT);
    let killed_at = Instant::now();
    let b_flags = flags("node-b");
    let b = node(&b_flags.iter().map(String::as_str).collect::<Vec<_>>());
    // A's claims lapse after their lease (2 x timeout + 5 s = 7 s), then B takes them.
    receiver
        .wait_for(
            |_| all_arrived(&receiver.accepted(), &users),
            Duration::from_secs(30),
        )
        .await;
    let took = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let accepted = receiver.accepted();
    let duplicates = accepted.len() - distinct(&accepted).values().sum::<usize>();
    eprintln!(
        "all {} events arrived {took:?} after the kill; {duplicates} duplicate deliveries; {} requests in all",
        users.len() * 2,
        receiver.requests().len()
    );
    assert_eq!(
        distinct(&accepted).values().sum::<usize>(),
        users.len() * 2,
        "no extra events"
    );
    assert_eq!(receiver.state.refused.load(Ordering::SeqCst), 0);
    drop(b);
}

/// A single node with the embedded (redb) queue, killed while its receiver fails: after a
/// restart it delivers what was queued.
#[tokio::test]
async fn the_embedded_queue_survives_a_restart() {
    let receiver = Receiver::start(FAIL).await;
    let url = receiver.url();
    let args = hook_args(
        &url,
        &["--webhook-backoff", "0.2", "--webhook-max-backoff", "0.5"],
    );
    let mut node = node(&args);
    let users = vec!["carol".to_owned()];
    come_and_go(&node, &users).await;
    receiver
        .wait_for(|r| r.iter().any(|(k, _, _)| k == "user.offline"), WAIT)
        .await;
    node.kill();
    assert!(receiver.accepted().is_empty());
    receiver.set(ACCEPT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = receiver.requests().len();
    node.restart().unwrap();
    receiver
        .wait_for(|_| all_arrived(&receiver.accepted(), &users), WAIT)
        .await;
    assert!(
        receiver.requests().len() > before,
        "delivered by the restarted node"
    );
}

/// Past the queue's bound, events are dropped, counted and logged; the node carries on.
#[tokio::test]
async fn past_the_bound_events_are_dropped_and_counted() {
    let receiver = Receiver::start(FAIL).await;
    let url = receiver.url();
    let args = hook_args(
        &url,
        &[
            "--webhook-events",
            "online",
            "--webhook-queue-size",
            "2",
            "--webhook-backoff",
            "60",
        ],
    );
    let node = node(&args);
    let mut sockets = Vec::new();
    for i in 0..5 {
        sockets.push(v1::open_v1(&node.ws(), &format!("u{i}")).await.unwrap().0);
    }
    let dropped = r#"sessionhub_webhooks_dropped_total{reason="queue_full"}"#;
    let deadline = Instant::now() + WAIT;
    while metric(&node, dropped).await < 3.0 {
        assert!(
            Instant::now() < deadline,
            "drops not counted: {}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric(&node, dropped).await,
        3.0,
        "two queued, three dropped"
    );
    assert!(node.stderr().contains("webhook queue full"), "logged");
    assert_eq!(
        distinct(&receiver.requests()).len(),
        2,
        "the two queued were tried"
    );
}

/// Logging out sends one `session.destroyed` with the session and its user; the id rotation
/// at login ends a session id too, but destroys no session, and sends nothing.
#[tokio::test]
async fn a_logout_sends_session_destroyed_and_a_login_rotation_does_not() {
    let receiver = Receiver::start(ACCEPT).await;
    let url = receiver.url();
    let node = node(&hook_args(&url, &["--webhook-events", "destroyed"]));
    let (_, anonymous, _) = get(&http(), &node.http(), "/get-session", None).await;
    let anonymous = anonymous.expect("a session");
    let (status, logged_in, _) = get(
        &http(),
        &node.http(),
        "/login?username=dave",
        Some(&anonymous),
    )
    .await;
    assert_eq!(status, 200);
    let logged_in = logged_in.expect("login rotates the id");
    assert_ne!(logged_in, anonymous);
    let (status, _, _) = get(&http(), &node.http(), "/invalidate", Some(&logged_in)).await;
    assert_eq!(status, 200);
    receiver.wait_for(|r| !r.is_empty(), WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events: Vec<Value> = receiver
        .state
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|(_, e, _)| e.clone())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "session.destroyed");
    assert_eq!(events[0]["data"]["user"], "dave");
    assert_eq!(events[0]["data"]["session"], logged_in.as_str());
}

/// A v1 client on a presence channel: its subscribe sends `presence.join`, its publish
/// `client.message` with the data, its close `presence.leave`; one of each.
#[tokio::test]
async fn presence_and_client_messages_are_sent() {
    let receiver = Receiver::start(ACCEPT).await;
    let url = receiver.url();
    let node = node(&hook_args(
        &url,
        &[
            "--presence-channels",
            "room:",
            "--webhook-events",
            "join,leave,message",
        ],
    ));
    let (mut ws, _) = v1::open_v1(&node.ws(), "erin").await.unwrap();
    send_text(&mut ws, &v1::subscribe_frame("room:1", None)).await;
    receiver.wait_for(|r| r.len() == 1, WAIT).await;
    let publish =
        serde_json::json!({"type": "publish", "channel": "room:1", "data": {"n": 1}, "id": 2});
    send_text(&mut ws, &publish.to_string()).await;
    receiver.wait_for(|r| r.len() == 2, WAIT).await;
    ws.close(None).await.unwrap();
    receiver.wait_for(|r| r.len() == 3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let events: Vec<Value> = receiver
        .state
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|(_, e, _)| serde_json::json!({"type": e["type"], "data": e["data"]}))
        .collect();
    assert_eq!(
        events,
        vec![
            serde_json::json!({"type": "presence.join", "data": {"channel": "room:1", "user": "erin"}}),
            serde_json::json!({"type": "client.message", "data": {"channel": "room:1", "data": {"n": 1}}}),
            serde_json::json!({"type": "presence.leave", "data": {"channel": "room:1", "user": "erin"}}),
        ]
    );
}

/// With `--webhook-grace`, sessionhub's own format holds `presence.leave` and
/// `channel.vacated` too: a reconnect within it sends nothing (both pairs cancelled,
/// counted), a real leave sends each once, after the grace.
#[tokio::test]
async fn a_reconnect_within_the_webhook_grace_sends_nothing() {
    let receiver = Receiver::start(ACCEPT).await;
    let url = receiver.url();
    let extra = [
        "--presence-channels",
        "room:",
        "--webhook-events",
        "join,leave,occupied,vacated",
        "--webhook-grace",
        "1",
    ];
    let node = node(&hook_args(&url, &extra));
    let join = || async {
        let (mut ws, _) = v1::open_v1(&node.ws(), "erin").await.unwrap();
        send_text(&mut ws, &v1::subscribe_frame("room:1", None)).await;
        let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(reply["type"], "subscribed", "{reply}");
        ws
    };
    let mut ws = join().await;
    receiver.wait_for(|r| r.len() == 2, WAIT).await;
    ws.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ws = join().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.requests().len(), 2, "{:?}", receiver.requests());
    assert_eq!(
        metric(&node, "sessionhub_webhooks_cancelled_total").await,
        4.0
    );

    let left = Instant::now();
    ws.close(None).await.unwrap();
    receiver.wait_for(|r| r.len() == 4, WAIT).await;
    let arrived = receiver.state.events.lock().unwrap()[2].0;
    assert!(
        arrived - left >= Duration::from_millis(900),
        "{:?}",
        arrived - left
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut kinds: Vec<String> = receiver.requests().into_iter().map(|r| r.0).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "channel.occupied",
            "channel.vacated",
            "presence.join",
            "presence.leave"
        ]
    );
}

/// The `(type, channel)` of every `channel.*` event received, in order.
fn occupancy_events(receiver: &Receiver) -> Vec<(String, String)> {
    let events = receiver.state.events.lock().unwrap();
    events
        .iter()
        .filter(|(_, e, _)| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("channel."))
        })
        .map(|(_, e, _)| {
            let field = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (field(&e["type"]), field(&e["data"]["channel"]))
        })
        .collect()
}

/// A channel's first subscriber anywhere in the cluster sends one `channel.occupied` and its
/// last one gone one `channel.vacated`, however many nodes have subscribers in between; a
/// node killed while it held the last subscriber is reaped and the channel vacated once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_is_occupied_and_vacated_once_across_three_nodes() {
    let receiver = Receiver::start(ACCEPT).await;
    let url = receiver.url();
    let redis = RedisServer::start_async().await;
    let redis_url = redis.url();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let name = format!("node-{i}");
            let extra = [
                "--redis",
                &redis_url,
                "--node-id",
                &name,
                "--webhook-events",
                "occupied,vacated",
            ];
            node(&hook_args(&url, &extra))
        })
        .collect();
    let subscribe = |ws: String, user: &'static str| async move {
        let (mut ws, _) = v1::open_v1(&ws, user).await.unwrap();
        send_text(&mut ws, &v1::subscribe_frame("room:9", None)).await;
        let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(reply["type"], "subscribed", "{reply}");
        ws
    };
    let occupied = || ("channel.occupied".to_owned(), "room:9".to_owned());
    let vacated = || ("channel.vacated".to_owned(), "room:9".to_owned());
    let settle = || tokio::time::sleep(Duration::from_millis(700));

    let mut on_a = subscribe(nodes[0].ws(), "ann").await;
    settle().await;
    let mut on_b = subscribe(nodes[1].ws(), "bob").await;
    settle().await;
    on_a.close(None).await.unwrap();
    settle().await;
    on_b.close(None).await.unwrap();
    receiver
        .wait_for(|_| occupancy_events(&receiver).len() >= 2, WAIT)
        .await;
    settle().await;
    assert_eq!(occupancy_events(&receiver), vec![occupied(), vacated()]);

    // The last subscriber's node dies: a survivor reaps it and the channel is vacated.
    let _on_c = subscribe(nodes[2].ws(), "cid").await;
    receiver
        .wait_for(|_| occupancy_events(&receiver).len() >= 3, WAIT)
        .await;
    nodes[2].kill();
    let killed = Instant::now();
    receiver
        .wait_for(
            |_| occupancy_events(&receiver).len() >= 4,
            Duration::from_secs(30),
        )
        .await;
    println!("vacated {:?} after the kill", killed.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        occupancy_events(&receiver),
        vec![occupied(), vacated(), occupied(), vacated()]
    );
}

/// An event whose every POST fails is dropped after `--webhook-max-attempts` of them,
/// counted, and not tried again.
#[tokio::test]
async fn an_event_is_given_up_after_the_last_attempt() {
    let receiver = Receiver::start(FAIL).await;
    let url = receiver.url();
    let args = hook_args(
        &url,
        &[
            "--webhook-events",
            "online",
            "--webhook-max-attempts",
            "2",
            "--webhook-backoff",
            "0.1",
        ],
    );
    let node = node(&args);
    let (_ws, _) = v1::open_v1(&node.ws(), "gus").await.unwrap();
    let given_up = r#"sessionhub_webhooks_dropped_total{reason="attempts"}"#;
    let deadline = Instant::now() + WAIT;
    while metric(&node, given_up).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "not given up: {:?}",
            receiver.requests()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.requests().len(), 2, "two attempts, no third");
    assert_eq!(
        metric(&node, "sessionhub_webhooks_retried_total").await,
        1.0
    );
    assert!(node.stderr().contains("giving up"), "logged");
}

/// Bad webhook settings stop the server at start with an error that names them.
#[test]
fn bad_webhook_settings_are_refused_at_start() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--webhook-url", "http://127.0.0.1:9/hook"],
            "--webhook-secret",
        ),
        (
            &[
                "--webhook-url",
                "ftp://example.com/",
                "--webhook-secret",
                "s",
            ],
            "http:// or https://",
        ),
        (
            &[
                "--webhook-url",
                "http://127.0.0.1:9/",
                "--webhook-secret",
                "s",
                "--webhook-events",
                "online,bogus",
            ],
            "unknown webhook event \"bogus\"",
        ),
    ];
    for (args, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", data];
        all.extend_from_slice(args);
        let (code, stderr) = run_bounded(&all);
        assert_ne!(code, Some(0), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// Runs the binary with `args` to completion, killed (and the test failed) if it is still
/// running after 10 s: a setting that is not refused would leave it serving.
fn run_bounded(args: &[&str]) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(binary())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running with {args:?}: the setting was not refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}
