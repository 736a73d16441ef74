//! The SSE transport (`GET /sse`, `POST /sse/publish`), black-box: real nodes (and Redis for
//! the cluster cases), a real HTTP client reading the event stream. The same delivery rules
//! as protocol v1 sockets: the same pushes in the same order, recovery from `Last-Event-ID`
//! on any node, and the same admission and limits.

mod common;

use std::time::Duration;

use common::sse::{self, Stream};
use common::v1::*;
use common::*;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, timeout};

/// Publishes `{"n": n}` to `channel` through the push API of `base`; the answer.
async fn publish_n(client: &reqwest::Client, base: &str, channel: &str, n: u64) -> Value {
    let request = client
        .post(publish_url(base, channel))
        .json(&json!({ "message": {"n": n} }));
    let (status, answer) = status_and_json(request).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// The `n` of every publication in a v1 frame (recovered or live), in order.
fn ns_of(frame: &Frame) -> Vec<u64> {
    let n = |data: &Value| data["n"].as_u64().expect("published {n}");
    match frame {
        Frame::Subscribed(s) => s.publications.iter().map(|(_, data)| n(data)).collect(),
        Frame::Publication { data, .. } => vec![n(data)],
        _ => Vec::new(),
    }
}

/// Reads events until `count` publications arrived; their (offset, data).
async fn read_publications(stream: &mut Stream, count: usize) -> Vec<(u64, Value)> {
    let mut got = Vec::new();
    while got.len() < count {
        match stream.next_frame().await.expect("a publication") {
            Frame::Publication { offset, data, .. } => got.push((offset, data)),
            other => panic!("expected a publication, got {other:?}"),
        }
    }
    got
}

/// The next event must be `subscribed`; its frame.
async fn subscribed(stream: &mut Stream) -> Subscribed {
    match stream.next_frame().await.expect("subscribed") {
        Frame::Subscribed(s) => s,
        other => panic!("expected subscribed, got {other:?}"),
    }
}

/// Reads until the stream ends; the `disconnect` event's code and `reconnect`, which must
/// be the last event.
async fn disconnect_at_end(stream: &mut Stream, within: Duration) -> (u16, bool) {
    let deadline = Instant::now() + within;
    let mut last = None;
    while let Some(event) = stream
        .next_within(deadline - Instant::now())
        .await
        .expect("the stream ends in time")
    {
        last = Some(event);
    }
    let last = last.expect("an event before the end");
    assert_eq!(last.event, "disconnect", "last event id {:?}", last.id);
    match last.frame() {
        Frame::Disconnect { code, reconnect } => (code, reconnect),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_sse_client_and_a_websocket_client_on_other_nodes_get_the_same_pushes_in_order() {
    let (_redis, nodes) = cluster(3);
    let (mut stream, node) = sse::open_as(&nodes[0].http(), "alice", "room:1,user:alice", None)
        .await
        .unwrap();
    assert_eq!(node, "node-0");
    for channel in ["room:1", "user:alice"] {
        let s = subscribed(&mut stream).await;
        assert_eq!((s.channel.as_str(), s.recovered), (channel, true));
    }
    let (mut ws, _) = open_v1(&nodes[1].ws(), "bob").await.unwrap();
    send_text(&mut ws, &subscribe_frame("room:1", None)).await;
    assert!(matches!(
        read_frame(&mut ws).await.unwrap(),
        Frame::Subscribed(_)
    ));

    let client = http();
    for n in 1..=30 {
        publish_n(&client, &nodes[2].http(), "room:1", n).await;
    }
    let over_sse = read_publications(&mut stream, 30).await;
    let mut over_ws = Vec::new();
    while over_ws.len() < 30 {
        match timeout(WAIT, read_frame(&mut ws)).await.unwrap().unwrap() {
            Frame::Publication { offset, data, .. } => over_ws.push((offset, data)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(over_sse, over_ws);
    let offsets: Vec<u64> = over_sse.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=30).collect::<Vec<_>>());
    // Each event's id carries both channels' positions.
    let id = stream.last_id.clone().unwrap();
    assert!(
        id.starts_with("room:1=") && id.contains(":30,user:alice="),
        "{id}"
    );
}

/// An SSE client reads while publications keep coming (through a node it is not on); its
/// node is SIGKILLed; it stays away 300 ms, then reconnects (through `nginx`, or straight to
/// another node) with its last event id, as EventSource would: every publication arrives
/// exactly once, in order, the missed ones recovered from history.
async fn recovers_after_its_node_is_killed(through_nginx: bool) {
    let (_redis, mut nodes) = cluster(3);
    let nginx = through_nginx.then(|| Nginx::start(&nodes.iter().collect::<Vec<_>>()));
    let entry = |i: usize| nginx.as_ref().map_or_else(|| nodes[i].http(), Nginx::http);
    let bases: Vec<String> = (0..3).map(entry).collect();
    const TOTAL: u64 = 120;
    let (mut stream, node) = sse::open_as(&bases[0], "carol", "room:k", None)
        .await
        .unwrap();
    subscribed(&mut stream).await;
    let on = node_index(&node);
    let publisher = {
        let base = nodes[(on + 1) % 3].http();
        tokio::spawn(async move {
            let client = http();
            for n in 1..=TOTAL {
                publish_n(&client, &base, "room:k", n).await;
                sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (seen.len() as u64) < TOTAL {
        assert!(
            Instant::now() < deadline,
            "only {} arrived: {seen:?}",
            seen.len()
        );
        match stream.next_within(WAIT).await {
            Ok(Some(event)) => seen.extend(ns_of(&event.frame())),
            // The node died under the stream: reconnect elsewhere, as EventSource would.
            Ok(None) | Err(_) => {
                assert!(killed, "the stream ended by itself");
                // Away for a while, so that there is something to recover.
                sleep(Duration::from_millis(300)).await;
                let last = stream.last_id.clone().expect("an id to recover from");
                let base = &bases[(on + 2) % 3];
                let reopened = sse::open_as(base, "carol", "room:k", Some(&last));
                let (next, node) = reopened.await.unwrap();
                assert_ne!(node_index(&node), on, "a live node");
                stream = next;
                let s = subscribed(&mut stream).await;
                assert!(s.recovered, "recovered after the kill");
                assert!(
                    !s.publications.is_empty(),
                    "publications were missed meanwhile"
                );
                seen.extend(ns_of(&Frame::Subscribed(s)));
            }
        }
        if !killed && seen.len() >= 30 {
            nodes[on].kill();
            killed = true;
        }
    }
    publisher.await.unwrap();
    assert!(killed);
    assert_eq!(
        seen,
        (1..=TOTAL).collect::<Vec<_>>(),
        "0 lost, 0 duplicated"
    );
}

/// `node-2` -> 2.
fn node_index(node: &str) -> usize {
    let index = node.strip_prefix("node-").and_then(|n| n.parse().ok());
    index.unwrap_or_else(|| panic!("unexpected node id {node}"))
}

#[tokio::test]
async fn an_sse_client_whose_node_is_killed_recovers_on_another_node_without_loss_or_duplicates() {
    recovers_after_its_node_is_killed(false).await;
}

#[tokio::test]
async fn an_sse_client_whose_node_is_killed_recovers_through_nginx_without_loss_or_duplicates() {
    recovers_after_its_node_is_killed(true).await;
}

#[tokio::test]
async fn last_event_id_recovers_from_history_and_says_so_when_it_cannot() {
    let node = node(&["--history-size", "3"]);
    let client = http();
    let (mut stream, _) = sse::open_as(&node.http(), "dave", "room:r", None)
        .await
        .unwrap();
    subscribed(&mut stream).await;
    publish_n(&client, &node.http(), "room:r", 1).await;
    read_publications(&mut stream, 1).await;
    let id = stream.last_id.clone().unwrap();
    drop(stream);

    // Two missed: recovered, from the query parameter (for clients that cannot set headers).
    for n in 2..=3 {
        publish_n(&client, &node.http(), "room:r", n).await;
    }
    let url = format!("{}/sse?user=dave&channels=room:r", node.http());
    let request = sse::client().get(&url).query(&[("lastEventId", &id)]);
    let mut stream = sse::open(request).await.unwrap();
    stream.next_frame().await.unwrap();
    let s = subscribed(&mut stream).await;
    assert!(s.recovered);
    assert_eq!(ns_of(&Frame::Subscribed(s)), [2, 3]);
    drop(stream);

    // Beyond the history (3 publications): told so, and live from the top.
    for n in 4..=8 {
        publish_n(&client, &node.http(), "room:r", n).await;
    }
    let (mut stream, _) = sse::open_as(&node.http(), "dave", "room:r", Some(&id))
        .await
        .unwrap();
    let s = subscribed(&mut stream).await;
    assert_eq!((s.recovered, s.offset, s.publications.len()), (false, 8, 0));
    publish_n(&client, &node.http(), "room:r", 9).await;
    assert_eq!(read_publications(&mut stream, 1).await[0].0, 9);

    // A malformed id is refused, not taken for "from nothing".
    let request = sse::client()
        .get(&url)
        .header("last-event-id", "room:r=nonsense");
    let (status, answer) = status_and_json(request).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

#[tokio::test]
async fn sse_is_admitted_and_refused_like_sockets() {
    let node = node(&[
        "--ws-auth",
        "session",
        "--api-key",
        "k",
        "--max-connections-per-user",
        "1",
        "--channel-rule",
        "chat:=publish",
    ]);
    let base = node.http();
    let client = sse::client();
    let code = |(status, answer): (u16, Value)| {
        (
            status,
            answer["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let stream_url = |channels: &str| format!("{base}/sse?channels={channels}");
    let missing = client.get(stream_url("user:erin"));
    assert_eq!(
        code(status_and_json(missing).await),
        (401, "not_logged_in".into())
    );
    let forged = client
        .get(stream_url("user:erin"))
        .header("cookie", "SESSION=forged");
    assert_eq!(
        code(status_and_json(forged).await),
        (401, "not_logged_in".into())
    );

    let session = login(&base, "erin").await;
    let cookie = format!("SESSION={session}");
    let refusals = [
        ("user:frank", 403, "forbidden"),
        ("session:x", 400, "invalid_channel"),
        ("room:1", 403, "forbidden"),
        ("", 400, "bad_request"),
    ];
    for (channels, status, error) in refusals {
        let request = client.get(stream_url(channels)).header("cookie", &cookie);
        assert_eq!(
            code(status_and_json(request).await),
            (status, error.into()),
            "{channels}"
        );
    }
    let evil = client
        .get(stream_url("user:erin"))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example");
    assert_eq!(
        code(status_and_json(evil).await),
        (403, "origin_not_allowed".into())
    );

    let request = client
        .get(stream_url("user:erin"))
        .header("cookie", &cookie);
    let mut stream = sse::open(request).await.unwrap();
    stream.next_frame().await.unwrap();
    subscribed(&mut stream).await;
    let second = client
        .get(stream_url("user:erin"))
        .header("cookie", &cookie);
    assert_eq!(
        code(status_and_json(second).await),
        (429, "too_many_connections".into())
    );

    // Publishing: the stream's credentials, a JSON body, and the channel rules.
    let publish = |body: &str| {
        client
            .post(format!("{base}/sse/publish"))
            .header("cookie", &cookie)
            .body(body.to_owned())
    };
    let frame = |channel: &str| {
        json!({"type": "publish", "channel": channel, "data": {"n": 1}, "id": 7}).to_string()
    };
    let form =
        publish(&frame("chat:1")).header("content-type", "application/x-www-form-urlencoded");
    assert_eq!(
        code(status_and_json(form).await),
        (415, "unsupported_media_type".into())
    );
    let json_type = |r: reqwest::RequestBuilder| r.header("content-type", "application/json");
    let forbidden = json_type(publish(&frame("user:erin")));
    assert_eq!(
        code(status_and_json(forbidden).await),
        (403, "forbidden".into())
    );
    let invalid = json_type(publish(r#"{"type":"ping"}"#));
    assert_eq!(
        code(status_and_json(invalid).await),
        (400, "invalid_message".into())
    );
    let evil = json_type(publish(&frame("chat:1"))).header("origin", "http://evil.example");
    assert_eq!(
        code(status_and_json(evil).await),
        (403, "origin_not_allowed".into())
    );
    // A cross-origin publish needs a preflight, granted only to allowed origins.
    let preflight = |origin: &str| {
        client
            .request(reqwest::Method::OPTIONS, format!("{base}/sse/publish"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
    };
    let granted = preflight(&base).send().await.unwrap();
    assert_eq!(granted.status(), 204);
    assert_eq!(
        granted.headers()["access-control-allow-origin"],
        base.as_str()
    );
    let evil = preflight("http://evil.example");
    assert_eq!(
        code(status_and_json(evil).await),
        (403, "origin_not_allowed".into())
    );
    let anonymous = client
        .post(format!("{base}/sse/publish"))
        .header("content-type", "application/json")
        .body(frame("chat:1"));
    assert_eq!(
        code(status_and_json(anonymous).await),
        (401, "not_logged_in".into())
    );
    let (status, published) = status_and_json(json_type(publish(&frame("chat:1")))).await;
    assert_eq!(status, 200, "{published}");
    assert_eq!(
        (
            published["type"].as_str(),
            published["id"].as_u64(),
            published["offset"].as_u64()
        ),
        (Some("published"), Some(7), Some(1))
    );

    // Logging the user out everywhere ends the stream, for good.
    let logout = client
        .post(format!("{base}/api/users/erin/logout"))
        .bearer_auth("k");
    assert_eq!(logout.send().await.unwrap().status(), 200);
    assert_eq!(disconnect_at_end(&mut stream, WAIT).await, (4002, false));
}

#[tokio::test]
async fn a_slow_sse_consumer_is_ended_with_an_event_and_counted() {
    let node = node(&[]);
    let client = http();
    let request = sse::client().get(format!("{}/sse?user=slow&channels=user:slow", node.http()));
    let mut stream = sse::open(request).await.unwrap();
    let chunk = "z".repeat(60 * 1024);
    let mut ended = false;
    for _ in 0..1000 {
        let (_, answer) = push(&client, &node.http(), "slow", &chunk).await;
        if answer["connections"] == 0 {
            ended = true;
            break;
        }
    }
    assert!(ended, "the stream was never found slow");
    assert_eq!(
        disconnect_at_end(&mut stream, Duration::from_secs(20)).await,
        (4008, true)
    );
    let text = common::metrics(&node.http()).await;
    assert!(
        text.contains("sessionhub_disconnects_total{reason=\"slow consumer\"} 1"),
        "{text}"
    );
    // Only this stream received anything: its deliveries are in the latency histogram.
    assert!(
        text.contains("sessionhub_delivery_latency_seconds_count"),
        "{text}"
    );
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_a_client_that_left_is_noticed_and_shutdown_ends_it() {
    let mut node = node(&["--sse-heartbeat", "1", "--drain-window", "0.5"]);
    let (mut stream, _) = sse::open_as(&node.http(), "gina", "room:h", None)
        .await
        .unwrap();
    subscribed(&mut stream).await;
    let header = |name: &str| stream.headers[name].to_str().unwrap().to_owned();
    assert_eq!(header("cache-control"), "no-cache");
    assert_eq!(
        header("x-accel-buffering"),
        "no",
        "nginx must not hold events back"
    );
    // Nothing to send for 2.5 s: at least two heartbeat comments, and no event.
    let quiet = stream.next_within(Duration::from_millis(2500)).await;
    assert!(quiet.is_err(), "no event: {quiet:?}");
    assert!(stream.comments >= 2, "{} heartbeats", stream.comments);
    // Streams count as connections; one whose client left is let go (no idle timeout: the
    // response is dropped when its connection closes or a heartbeat cannot be written).
    let client = http();
    let (leaving, _) = sse::open_as(&node.http(), "gina", "room:h", None)
        .await
        .unwrap();
    wait_online(&client, &node.http(), 2, WAIT).await;
    drop(leaving);
    wait_online(&client, &node.http(), 1, WAIT).await;
    let stopping = tokio::task::spawn_blocking(move || {
        node.terminate(Duration::from_secs(10)).unwrap();
    });
    assert_eq!(disconnect_at_end(&mut stream, WAIT).await, (1012, true));
    stopping.await.unwrap();
}

/// `nginx` with `examples/cluster/nginx.conf` as it is, only its addresses moved to free
/// ports: in front of `backends`, listening on `port`. Killed on drop.
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(backends: &[&sessionhub_testkit::Node]) -> Self {
        let conf = include_str!("../../../examples/cluster/nginx.conf");
        let port = sessionhub_testkit::free_port();
        let mut conf = conf.replace(
            "listen 127.0.0.1:8080;",
            &format!("listen 127.0.0.1:{port};"),
        );
        for (i, node) in backends.iter().enumerate() {
            let example = format!("server 127.0.0.1:{};", 8081 + i);
            assert!(
                conf.contains(&example),
                "the example config names {example}"
            );
            conf = conf.replace(&example, &format!("server {};", node.addr()));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .args([
                "-c",
                "nginx.conf",
                "-e",
                "nginx-error.log",
                "-g",
                "daemon off;",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx starts (apt-get install nginx)");
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Through nginx configured as in `examples/cluster` (proxy buffering left at its default,
/// on), events and heartbeats arrive at once and publishing over POST works.
#[tokio::test]
async fn sse_works_through_the_example_nginx_config_unchanged() {
    let redis = sessionhub_testkit::RedisServer::start().expect("redis-server starts");
    let nodes: Vec<_> = (0..3)
        .map(|i| {
            let id = format!("node-{i}");
            node(&[
                "--redis",
                &redis.url(),
                "--node-id",
                &id,
                "--sse-heartbeat",
                "1",
            ])
        })
        .collect();
    let nginx = Nginx::start(&nodes.iter().collect::<Vec<_>>());
    let (mut stream, _) = sse::open_as(&nginx.http(), "hana", "room:n", None)
        .await
        .unwrap();
    subscribed(&mut stream).await;
    let quiet = stream.next_within(Duration::from_millis(2500)).await;
    assert!(quiet.is_err(), "no event: {quiet:?}");
    assert!(stream.comments >= 2, "heartbeats pass: {}", stream.comments);
    let client = http();
    for n in 1..=3 {
        let frame = json!({"type": "publish", "channel": "room:n", "data": {"n": n}, "id": n});
        let request = client
            .post(format!("{}/sse/publish?user=hana", nginx.http()))
            .header("content-type", "application/json")
            .body(frame.to_string());
        let (status, published) = status_and_json(request).await;
        assert_eq!((status, published["offset"].as_u64()), (200, Some(n)));
        // Each one arrives before the next is published: nothing waits in a buffer.
        let got = timeout(Duration::from_secs(2), read_publications(&mut stream, 1)).await;
        assert_eq!(got.expect("unbuffered")[0].1, json!({"n": n}));
    }
}

/// The node's link to Redis broke (Redis restarted, empty): the stream ends with 4010, as a
/// v1 socket is closed, and the reconnect with its last id learns that nothing can be
/// recovered from the old epoch.
#[tokio::test]
async fn a_broker_resync_ends_the_stream_for_recovery() {
    let (mut redis, nodes) = cluster(2);
    let (mut stream, _) = sse::open_as(&nodes[0].http(), "ivan", "room:x", None)
        .await
        .unwrap();
    subscribed(&mut stream).await;
    publish_n(&http(), &nodes[1].http(), "room:x", 1).await;
    read_publications(&mut stream, 1).await;
    redis.restart().expect("redis restarts");
    let ended = disconnect_at_end(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(ended, (4010, true));
    let last = stream.last_id.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        // The node may still be reconnecting to Redis (503 broker_unavailable).
        match sse::open_as(&nodes[1].http(), "ivan", "room:x", Some(&last)).await {
            Ok((mut stream, _)) => break subscribed(&mut stream).await,
            Err(e) => assert!(Instant::now() < deadline, "{e:#}"),
        }
        sleep(Duration::from_millis(100)).await;
    };
    assert!(!s.recovered, "a new epoch: {s:?}");
}

/// In token mode the stream ends when the token expires.
#[tokio::test]
async fn a_token_stream_ends_when_the_token_expires() {
    let node = node(&[
        "--ws-auth",
        "token",
        "--token-secret",
        "s3cret",
        "--api-key",
        "k",
    ]);
    let url = format!("{}/sse?channels=user:judy", node.http());
    let expired = sse::client()
        .get(&url)
        .bearer_auth(token("s3cret", "judy", -10));
    let (status, answer) = status_and_json(expired).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("token_expired"))
    );
    let request = sse::client()
        .get(&url)
        .bearer_auth(token("s3cret", "judy", 2));
    let mut stream = sse::open(request).await.unwrap();
    stream.next_frame().await.unwrap();
    subscribed(&mut stream).await;
    let ended = disconnect_at_end(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(ended, (4003, true));
}

/// A session-bound stream joins its session's control channel, so a logout on any node ends
/// it, as it closes sockets.
#[tokio::test]
async fn a_logout_on_another_node_ends_a_session_stream() {
    let redis = sessionhub_testkit::RedisServer::start().expect("redis-server starts");
    let nodes: Vec<_> = (0..2)
        .map(|_| {
            node(&[
                "--redis",
                &redis.url(),
                "--ws-auth",
                "session",
                "--api-key",
                "k",
            ])
        })
        .collect();
    let session = login(&nodes[0].http(), "kate").await;
    let request = sse::client()
        .get(format!("{}/sse?channels=user:kate", nodes[0].http()))
        .header("cookie", format!("SESSION={session}"));
    let mut stream = sse::open(request).await.unwrap();
    stream.next_frame().await.unwrap();
    subscribed(&mut stream).await;
    let logout = http()
        .post(format!("{}/api/users/kate/logout", nodes[1].http()))
        .bearer_auth("k");
    assert_eq!(logout.send().await.unwrap().status(), 200);
    assert_eq!(disconnect_at_end(&mut stream, WAIT).await, (4002, false));
}

/// `--max-connections` counts sockets and streams together; past it both are refused with
/// 503 `node_full` (a load balancer then tries another node), and a closed one makes room.
#[tokio::test]
async fn a_full_node_refuses_sockets_and_streams_alike() {
    let node = node(&["--max-connections", "2"]);
    let client = http();
    let (socket, _) = open_v1(&node.ws(), "ann").await.unwrap();
    let (_stream, _) = sse::open_as(&node.http(), "bob", "room:full", None)
        .await
        .unwrap();
    wait_online(&client, &node.http(), 2, WAIT).await;
    let refused = connect_with(&format!("{}/ws?user=cat", node.ws()), &[]).await;
    assert_eq!(refused.err(), Some((503, "node_full".to_owned())));
    let refused = sse::open_as(&node.http(), "cat", "room:full", None).await;
    let message = refused.err().expect("refused").to_string();
    assert!(
        message.contains("503") && message.contains("node_full"),
        "{message}"
    );
    drop(socket);
    wait_online(&client, &node.http(), 1, WAIT).await;
    sse::open_as(&node.http(), "cat", "room:full", None)
        .await
        .expect("room again once one closed");
}
