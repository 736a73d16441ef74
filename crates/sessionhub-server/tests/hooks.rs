//! The HTTP hooks (`--proxy-*-url`), black-box: real nodes calling a real backend started
//! here ([`proxy::Backend`]) that allows, denies, stalls past `--proxy-timeout` and fails
//! with 500, for connect, subscribe and publish, over WebSocket and SSE; the failure policy
//! and its counts in `/metrics`; a publish transformed on its way to another node; a
//! connection kept past its first end by the refresh hook and closed when it refuses.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::v1::*;
use common::*;
use proxy::Backend;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Hook calls here time out after this.
const TIMEOUT: &str = "0.3";

fn node_with(backend: &Backend, hooks: &[&str], more: &[&str]) -> sessionhub_testkit::Node {
    let mut args = backend.flags(hooks);
    args.extend(["--proxy-timeout", TIMEOUT].map(str::to_owned));
    args.extend(more.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    node(&args)
}

/// Opens `/ws?user=<user>` with `headers`; the socket, not read yet.
async fn open_with(base_ws: &str, user: &str, headers: &[(&str, &str)]) -> Ws {
    let mut request = format!("{base_ws}/ws?user={user}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connects in time")
        .expect("upgraded");
    ws
}

/// Reads a refused socket to its end: the `disconnect` frame's code, then the close code.
async fn refused(ws: &mut Ws) -> (u16, Option<u16>) {
    let said = match tokio::time::timeout(WAIT, read_frame(ws))
        .await
        .unwrap()
        .unwrap()
    {
        Frame::Disconnect { code, .. } => code,
        other => panic!("expected disconnect, got {other:?}"),
    };
    match tokio::time::timeout(WAIT, read_frame(ws))
        .await
        .unwrap()
        .unwrap()
    {
        Frame::Closed(code) => (said, code),
        other => panic!("expected the close, got {other:?}"),
    }
}

async fn next(ws: &mut Ws) -> Frame {
    tokio::time::timeout(WAIT, read_frame(ws))
        .await
        .expect("a frame in time")
        .unwrap()
}

/// The JSON of the next text frame.
async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// `sessionhub_proxy_requests_total{hook,outcome}`, 0 when absent.
fn proxy_count(metrics: &str, hook: &str, outcome: &str) -> u64 {
    let labels = [format!("hook=\"{hook}\""), format!("outcome=\"{outcome}\"")];
    metrics
        .lines()
        .filter(|l| l.starts_with("sessionhub_proxy_requests_total{"))
        .filter(|l| labels.iter().all(|label| l.contains(label.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn the_connect_hook_allows_renames_joins_and_refuses_sockets_and_streams() {
    let backend = Backend::start().await;
    let server = node_with(
        &backend,
        &["connect"],
        &["--proxy-forward-headers", "Cookie"],
    );
    let ws = server.ws();
    let headers = [("cookie", "app=42"), ("x-secret", "not for the app")];

    // Allowed, under the name the app gave; the app saw only the forwarded header.
    let mut renamed = open_with(&ws, "rename-ann", &headers).await;
    let greeting = next_json(&mut renamed).await;
    assert_eq!(
        (greeting["type"].as_str(), greeting["user"].as_str()),
        (Some("connected"), Some("app-rename-ann"))
    );
    let call = backend.calls("connect").pop().unwrap();
    assert_eq!(call.body["user"], "rename-ann");
    assert_eq!(call.body["transport"], "websocket");
    assert_eq!(call.body["headers"], json!({"cookie": "app=42"}));
    assert_eq!(
        call.headers["cookie"], "app=42",
        "forwarded as a header too"
    );
    assert!(
        call.headers.get("x-secret").is_none(),
        "only the named headers"
    );

    // Joined to the channels the app named, before anything else.
    let mut joiner = open_with(&ws, "joiner", &[]).await;
    assert!(matches!(next(&mut joiner).await, Frame::Connected { .. }));
    match next(&mut joiner).await {
        Frame::Subscribed(s) => assert_eq!(s.channel, "news"),
        other => panic!("expected subscribed, got {other:?}"),
    }

    // Refused with the app's code; a stalled or failing app is a refusal too (deny policy).
    let started = Instant::now();
    for (user, code) in [
        ("deny", 4101),
        ("kick", 4105),
        ("stall", 4503),
        ("fail", 4503),
    ] {
        let mut socket = open_with(&ws, user, &[]).await;
        assert_eq!(refused(&mut socket).await, (code, Some(code)), "{user}");
    }
    let mut kicked = open_with(&ws, "kick-2", &[]).await;
    let said = next_json(&mut kicked).await;
    assert_eq!(
        (
            said["type"].as_str(),
            said["code"].as_u64(),
            said["reason"].as_str()
        ),
        (Some("disconnect"), Some(4105), Some("kicked by the app")),
        "the reason of the disconnect form"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the stall was cut at the timeout"
    );

    // SSE: the same answers as HTTP statuses.
    let client = common::sse::client();
    let sse = |user: &str| client.get(format!("{}/sse?user={user}&channels=room:1", server.http()));
    let (status, body) = status_and_json(sse("deny")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("denied")),
        "{body}"
    );
    assert_eq!(body["error"]["message"], "connect refused by the app");
    let (status, body) = status_and_json(sse("stall")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("hook_unavailable"))
    );
    let (mut stream, _) = common::sse::open_as(&server.http(), "joiner-2", "", None)
        .await
        .unwrap();
    match stream.next_frame().await.unwrap() {
        Frame::Subscribed(s) => assert_eq!(s.channel, "news", "the app's channel, none named"),
        other => panic!("expected subscribed, got {other:?}"),
    }
    assert_eq!(
        backend.calls("connect").last().unwrap().body["transport"],
        "sse"
    );

    let counts = metrics(&server.http()).await;
    assert_eq!(proxy_count(&counts, "connect", "timeout"), 2, "{counts}");
    assert_eq!(proxy_count(&counts, "connect", "error"), 1);
    assert_eq!(proxy_count(&counts, "connect", "deny"), 4);
    assert_eq!(proxy_count(&counts, "connect", "allow"), 3);
    assert!(counts.contains("sessionhub_proxy_duration_seconds_bucket{hook=\"connect\""));
}

#[tokio::test]
async fn the_subscribe_hook_refuses_channels_with_their_reason_and_the_policy_on_failure() {
    let backend = Backend::start().await;
    let deny = node_with(&backend, &["subscribe"], &[]);
    let allow = node_with(&backend, &["subscribe"], &["--proxy-on-failure", "allow"]);

    let (mut ws, _) = open_v1(&deny.ws(), "ann").await.unwrap();
    let answers = [
        ("room:ok", None),
        ("deny:1", Some("subscribe refused by the app")),
        (
            "stall:1",
            Some("the application could not be asked; try again later"),
        ),
        (
            "fail:1",
            Some("the application could not be asked; try again later"),
        ),
    ];
    for (channel, refusal) in answers {
        send_text(&mut ws, &subscribe_frame(channel, None)).await;
        match (next(&mut ws).await, refusal) {
            (Frame::Subscribed(s), None) => assert_eq!(s.channel, channel),
            (Frame::Error { code, message }, Some(reason)) => {
                assert_eq!(
                    (code.as_str(), message.as_str()),
                    ("denied", reason),
                    "{channel}"
                )
            }
            (other, _) => panic!("{channel}: {other:?}"),
        }
    }
    let call = backend
        .calls("subscribe")
        .into_iter()
        .find(|c| c.body["channel"] == "deny:1")
        .unwrap();
    assert_eq!(call.body["user"], "ann");
    assert!(
        call.body["client"].as_str().unwrap().contains('/'),
        "the connection's id"
    );

    // Over SSE a refused channel refuses the stream.
    let request = common::sse::client().get(format!(
        "{}/sse?user=ann&channels=room:ok,deny:2",
        deny.http()
    ));
    let (status, body) = status_and_json(request).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("denied"))
    );

    // --proxy-on-failure allow: a stalled or failing app lets the client in; a refusal
    // still refuses.
    let (mut ws, _) = open_v1(&allow.ws(), "bob").await.unwrap();
    for (channel, joins) in [("stall:2", true), ("fail:2", true), ("deny:3", false)] {
        send_text(&mut ws, &subscribe_frame(channel, None)).await;
        let frame = next(&mut ws).await;
        assert_eq!(
            matches!(frame, Frame::Subscribed(_)),
            joins,
            "{channel}: {frame:?}"
        );
    }
    let counts = metrics(&allow.http()).await;
    assert_eq!(proxy_count(&counts, "subscribe", "timeout"), 1, "{counts}");
    assert_eq!(proxy_count(&counts, "subscribe", "error"), 1);
    assert_eq!(proxy_count(&counts, "subscribe", "deny"), 1);
}

#[tokio::test]
async fn the_publish_hook_transforms_for_every_node_and_refuses() {
    let backend = Backend::start().await;
    let redis = sessionhub_testkit::RedisServer::start().expect("redis-server starts");
    let url = redis.url();
    let a = node_with(&backend, &["publish"], &["--redis", &url, "--node-id", "a"]);
    let b = node_with(&backend, &["publish"], &["--redis", &url, "--node-id", "b"]);

    let (mut reader, _) = open_v1(&b.ws(), "reader").await.unwrap();
    send_text(&mut reader, &subscribe_frame("wrap:1", None)).await;
    assert!(matches!(next(&mut reader).await, Frame::Subscribed(_)));

    let (mut writer, _) = open_v1(&a.ws(), "writer").await.unwrap();
    send_text(
        &mut writer,
        r#"{"type":"publish","channel":"wrap:1","data":{"n":1},"id":1}"#,
    )
    .await;
    let published = next_json(&mut writer).await;
    assert_eq!(
        (published["type"].as_str(), published["offset"].as_u64()),
        (Some("published"), Some(1)),
        "{published}"
    );
    match next(&mut reader).await {
        Frame::Publication { data, .. } => assert_eq!(data, json!({"wrapped": {"n": 1}})),
        other => panic!("expected the publication, got {other:?}"),
    }
    let call = backend.calls("publish").pop().unwrap();
    assert_eq!(
        (call.body["channel"].as_str(), &call.body["data"]),
        (Some("wrap:1"), &json!({"n": 1}))
    );

    // The application's own code comes along (4102 from the backend; 4503 when it could not
    // be asked).
    let refusals = [("deny:1", 4102), ("stall:1", 4503), ("fail:1", 4503)];
    for (n, (channel, app_code)) in refusals.into_iter().enumerate() {
        let frame = json!({"type": "publish", "channel": channel, "data": 1, "id": n});
        send_text(&mut writer, &frame.to_string()).await;
        let reply = next_json(&mut writer).await;
        assert_eq!(
            (
                reply["type"].as_str(),
                reply["code"].as_str(),
                reply["id"].as_u64(),
                reply["app_code"].as_u64()
            ),
            (
                Some("error"),
                Some("denied"),
                Some(n as u64),
                Some(app_code)
            ),
            "{reply}"
        );
    }

    // POST /sse/publish: the same hook.
    let post = |channel: &str| {
        http()
            .post(format!("{}/sse/publish?user=writer", a.http()))
            .json(&json!({"type": "publish", "channel": channel, "data": {"n": 2}}))
    };
    let (status, answer) = status_and_json(post("wrap:1")).await;
    assert_eq!(
        (status, answer["offset"].as_u64()),
        (200, Some(2)),
        "{answer}"
    );
    match next(&mut reader).await {
        Frame::Publication { data, .. } => assert_eq!(data, json!({"wrapped": {"n": 2}})),
        other => panic!("expected the publication, got {other:?}"),
    }
    let (status, answer) = status_and_json(post("deny:2")).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("denied"))
    );
    assert_eq!(
        backend.calls("publish").last().unwrap().body["transport"],
        "sse"
    );
    let counts = metrics(&a.http()).await;
    assert_eq!(proxy_count(&counts, "publish", "allow"), 2, "{counts}");
    assert_eq!(proxy_count(&counts, "publish", "deny"), 2);
}

fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn the_refresh_hook_extends_a_connection_past_its_first_end_then_its_refusal_closes_it() {
    let backend = Backend::start().await;
    let server = node_with(&backend, &["connect", "refresh"], &[]);
    let (mut ws, _) = open_v1(&server.ws(), "short").await.unwrap();
    let first_end = backend.calls("connect")[0].granted.unwrap() as f64;

    // Past the end the connect hook set, the socket is still open: the refresh extended it.
    let wait = first_end + 0.5 - unix_secs();
    assert_silent(&mut ws, Duration::from_secs_f64(wait.max(0.0))).await;
    let refreshes = backend.calls("refresh");
    assert_eq!(refreshes.len(), 1, "asked once before the first end");
    assert!(refreshes[0].body["client"].as_str().is_some());
    let second_end = refreshes[0].granted.unwrap() as f64;

    // The second refresh is refused: closed at the second end with 4430.
    match next(&mut ws).await {
        Frame::Disconnect { code, reconnect } => assert_eq!((code, reconnect), (4430, true)),
        other => panic!("expected disconnect, got {other:?}"),
    }
    assert!(unix_secs() >= second_end - 0.1, "not before its end");
    assert!(matches!(next(&mut ws).await, Frame::Closed(Some(4430))));
    assert_eq!(backend.calls("refresh").len(), 2);
}

#[tokio::test]
async fn an_sse_stream_is_refreshed_too_and_ends_with_the_refusals_code() {
    let backend = Backend::start().await;
    let server = node_with(&backend, &["connect", "refresh"], &[]);
    let (mut stream, _) = common::sse::open_as(&server.http(), "short-sse", "room:1", None)
        .await
        .unwrap();
    assert!(matches!(
        stream.next_frame().await.unwrap(),
        Frame::Subscribed(_)
    ));
    let first_end = backend.calls("connect")[0].granted.unwrap() as f64;
    // Nothing but the end: at the second end, after one extension.
    match stream
        .next_within(Duration::from_secs(8))
        .await
        .unwrap()
        .map(|e| e.frame())
    {
        Some(Frame::Disconnect { code, .. }) => assert_eq!(code, 4430),
        other => panic!("expected disconnect, got {other:?}"),
    }
    assert!(unix_secs() > first_end, "kept past the first end");
    let refreshes = backend.calls("refresh");
    assert_eq!(refreshes.len(), 2);
    assert_eq!(refreshes[0].body["transport"], "sse");
}

/// Not a check, a measurement (`cargo test --test hooks -- --ignored --nocapture`): what the
/// connect hook adds to opening a socket, with the backend on loopback.
#[tokio::test]
#[ignore]
async fn measure_what_the_connect_hook_costs_a_connect() {
    let backend = Backend::start().await;
    let unlimited = ["--max-connections-per-ip", "100000"];
    let plain = node(&unlimited);
    let hooked = node_with(&backend, &["connect"], &unlimited);
    let rounds = 300;
    for (name, server) in [
        ("without hooks", &plain),
        ("with the connect hook", &hooked),
    ] {
        // Warm up the pools on both sides first.
        for _ in 0..20 {
            open_v1(&server.ws(), "warm").await.unwrap();
        }
        let started = Instant::now();
        for _ in 0..rounds {
            let (ws, _) = open_v1(&server.ws(), "ann").await.unwrap();
            drop(ws);
        }
        let each = started.elapsed() / rounds;
        println!("{name}: {each:?} per connect (upgrade and greeting)");
    }
    let counts = metrics(&hooked.http()).await;
    let value = |name: &str| -> f64 {
        let line = counts.lines().find(|l| l.starts_with(name)).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let sum = value("sessionhub_proxy_duration_seconds_sum{hook=\"connect\"}");
    let count = value("sessionhub_proxy_duration_seconds_count{hook=\"connect\"}");
    println!(
        "connect hook call: {:.3} ms on average",
        sum / count * 1000.0
    );
}
