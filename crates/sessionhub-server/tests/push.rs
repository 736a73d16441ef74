//! WebSocket connections and the push API, black-box against a real process.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn greeting_then_every_connection_of_an_id_gets_every_push() {
    let node = node(&["--node-id", "node-a"]);
    let client = http();
    let (mut tab1, greeting) = connect(&node.ws(), "456").await;
    assert_eq!(
        greeting,
        json!({"type": "connected", "id": "456", "node": "node-a"})
    );
    let (mut tab2, _) = connect(&node.ws(), "456").await;
    let (mut phone, _) = connect(&node.ws(), "456").await;
    let (mut other, _) = connect(&node.ws(), "789").await;

    // Text body, byte for byte, including non-ASCII and JSON-looking text.
    let message = "héllo 世界 {\"not\": \"parsed\"} \n end";
    let (_, answer) = status_and_json(
        client
            .post(format!("{}/socket/456", node.http()))
            .header("content-type", "text/plain")
            .body(message),
    )
    .await;
    assert_eq!(
        (&answer["nodes"], &answer["connections"]),
        (&json!(1), &json!(3)),
        "{answer}"
    );
    assert_eq!(answer["offset"], 1);
    assert!(answer["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    for ws in [&mut tab1, &mut tab2, &mut phone] {
        assert_eq!(next_text(ws).await, message);
    }
    assert_silent(&mut other, Duration::from_millis(300)).await;

    // JSON body.
    let (_, answer) = status_and_json(
        client
            .post(format!("{}/socket/456", node.http()))
            .json(&json!({"message": "from json"})),
    )
    .await;
    assert_eq!(answer["connections"], 3);
    for ws in [&mut tab1, &mut tab2, &mut phone] {
        assert_eq!(next_text(ws).await, "from json");
    }

    // Query string.
    let response = client
        .get(format!("{}/socket/789", node.http()))
        .query(&[("message", "via get & query")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(next_text(&mut other).await, "via get & query");

    // A closed tab stops counting; the others keep receiving.
    tab1.close(None).await.unwrap();
    wait_online(&client, &node.http(), 3, WAIT).await;
    let (_, answer) = push(&client, &node.http(), "456", "after close").await;
    assert_eq!(answer["connections"], 2);
    assert_eq!(next_text(&mut tab2).await, "after close");
    assert_eq!(next_text(&mut phone).await, "after close");
}

#[tokio::test]
async fn a_push_to_nobody_says_so() {
    let node = node(&[]);
    let (_, answer) = push(&http(), &node.http(), "nobody", "x").await;
    assert_eq!(
        (&answer["nodes"], &answer["connections"]),
        (&json!(0), &json!(0)),
        "{answer}"
    );
}

#[tokio::test]
async fn bad_pushes_get_clear_json_errors() {
    let node = node(&[]);
    let client = http();
    let base = node.http();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client.post(format!("{base}/socket/a%7Bb%7D")).body("x"),
            400,
            "bad_request",
        ),
        (client.get(format!("{base}/socket/456")), 400, "bad_request"),
        (
            client
                .post(format!("{base}/socket/456"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "bad_request",
        ),
        (
            client
                .post(format!("{base}/socket/456"))
                .body(vec![0xff, 0xfe]),
            400,
            "bad_request",
        ),
        (
            client
                .post(format!("{base}/socket/456"))
                .body("x".repeat(65 * 1024)),
            413,
            "message_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let (got, body) = status_and_json(request).await;
        assert_eq!(got, status);
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
}

#[tokio::test]
async fn a_client_frame_with_key_and_value_reaches_every_connection_of_key() {
    let node = node(&[]);
    let (mut sender, _) = connect(&node.ws(), "1").await;
    let (mut a, _) = connect(&node.ws(), "456").await;
    let (mut b, _) = connect(&node.ws(), "456").await;
    send_text(&mut sender, r#"{"KEY":456,"VALUE":"aaaa"}"#).await;
    assert_eq!(next_text(&mut a).await, "aaaa");
    assert_eq!(next_text(&mut b).await, "aaaa");
    send_text(&mut sender, r#"{"KEY":"456","VALUE":"bbbb"}"#).await;
    assert_eq!(next_text(&mut a).await, "bbbb");
    assert_eq!(next_text(&mut b).await, "bbbb");
    assert_silent(&mut sender, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn malformed_frames_get_an_error_frame_and_the_connection_stays() {
    let node = node(&[]);
    let (mut ws, _) = connect(&node.ws(), "7").await;
    for (frame, code) in [
        ("not json", "invalid_json"),
        ("[1,2,3]", "invalid_frame"),
        (r#"{"KEY":7}"#, "invalid_frame"),
        (r#"{"KEY":{"x":1},"VALUE":"v"}"#, "invalid_key"),
    ] {
        send_text(&mut ws, frame).await;
        let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["code"], code, "{frame}");
    }
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(reply["code"], "binary_not_supported");
    // Still connected and still receiving.
    send_text(&mut ws, r#"{"KEY":7,"VALUE":"still here"}"#).await;
    assert_eq!(next_text(&mut ws).await, "still here");
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() {
    let node = node(&[]);
    let client = http();
    let (mut ws, _) = connect(&node.ws(), "big").await;
    let (mut bystander, _) = connect(&node.ws(), "big").await;
    ws.send(Message::Text("x".repeat(64 * 1024 + 1).into()))
        .await
        .unwrap();
    assert_closes(&mut ws, WAIT, 1009).await;
    // A frame at the limit is fine for others.
    wait_online(&client, &node.http(), 1, WAIT).await;
    let at_limit = format!(r#"{{"KEY":"big","VALUE":"{}"}}"#, "y".repeat(60 * 1024));
    send_text(&mut bystander, &at_limit).await;
    assert_eq!(next_text(&mut bystander).await.len(), 60 * 1024);
}

#[tokio::test]
async fn online_counts_connections_and_distinct_ids() {
    let node = node(&[]);
    let client = http();
    assert_eq!(
        online(&client, &node.http()).await,
        json!({"online": 0, "users": 0})
    );
    let mut sockets = Vec::new();
    for id in ["1", "1", "1", "2", "3"] {
        sockets.push(connect(&node.ws(), id).await.0);
    }
    assert_eq!(
        online(&client, &node.http()).await,
        json!({"online": 5, "users": 3})
    );
    drop(sockets);
    wait_online(&client, &node.http(), 0, WAIT).await;
    assert_eq!(online(&client, &node.http()).await["users"], 0);
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_idle_timeout_but_a_live_one_stays() {
    let node = node(&["--ws-idle-timeout", "2"]);
    let (mut live, _) = connect(&node.ws(), "live").await;
    let (mut silent, _) = connect(&node.ws(), "silent").await;
    // The live client reads (and so answers pings); the silent one reads nothing.
    let reader = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        let mut frames = 0;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, live.next()).await {
            if matches!(frame, Message::Close(_)) {
                return (frames, false);
            }
            frames += 1;
        }
        (frames, true)
    });
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_closes(&mut silent, WAIT, 4000).await;
    let (pings, still_open) = reader.await.unwrap();
    assert!(still_open, "a client that answers pings is not idle");
    assert!(
        pings >= 2,
        "the server pings at least every half idle timeout"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_memory_stays_bounded() {
    let node = node(&[]);
    let client = http();
    let (stuck, _) = connect(&node.ws(), "slow").await;
    let (mut healthy, _) = connect(&node.ws(), "fast").await;
    let rss_before = rss_kib(node.pid().unwrap());
    let chunk = "z".repeat(60 * 1024);
    // ~60 MiB pushed at a client that reads nothing.
    let mut dropped = false;
    for _ in 0..1000 {
        let (_, answer) = push(&client, &node.http(), "slow", &chunk).await;
        if answer["connections"] == 0 {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the stuck client was never disconnected");
    let rss_after = rss_kib(node.pid().unwrap());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    wait_online(&client, &node.http(), 1, WAIT).await;
    // Others are unaffected.
    let (status, _) = push(&client, &node.http(), "fast", "ok").await;
    assert_eq!(status, 200);
    assert_eq!(next_text(&mut healthy).await, "ok");
    // The stuck client, when it finally reads, learns why (if the close frame fit).
    let mut stuck = stuck;
    let close = next_close(&mut stuck, Duration::from_secs(10)).await;
    if let Some(close) = close {
        assert_eq!(u16::from(close.code), 4008);
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1012_and_exits_zero_quickly() {
    let mut node = node(&["--drain-window", "1"]);
    let (mut a, _) = connect(&node.ws(), "1").await;
    let (mut b, _) = connect(&node.ws(), "2").await;
    let started = std::time::Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let code = node.terminate(Duration::from_secs(10));
        (code.unwrap(), node)
    });
    for ws in [&mut a, &mut b] {
        assert_closes(ws, WAIT, 1012).await;
    }
    let (code, _node) = exit.await.unwrap();
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let node = node(&[]);
    let client = http();
    let health = client
        .get(format!("{}/healthz", node.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let (status, body) = status_and_json(client.get(format!("{}/readyz", node.http()))).await;
    assert_eq!(status, 200);
    assert_eq!(body["ready"], true);
}

#[tokio::test]
async fn an_invalid_id_is_refused_before_the_upgrade() {
    let node = node(&[]);
    let err = tokio_tungstenite::connect_async(format!("{}/websocket/a%7Bb%7D", node.ws()))
        .await
        .expect_err("refused");
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("expected an HTTP refusal, got {err}");
    };
    assert_eq!(response.status(), 400);
}
