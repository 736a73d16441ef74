//! The server API against a real process: its OpenAPI document, and each call's success,
//! bad input (a 4xx with a JSON error) and missing API key (401).

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "api-test-key-0123456789";

/// Every path of the server API, sorted as the document lists them.
const API_PATHS: &[&str] = &[
    "/api/channels",
    "/api/channels/{channel}/history",
    "/api/channels/{channel}/presence",
    "/api/channels/{channel}/presence/stats",
    "/api/channels/{channel}/publish",
    "/api/info",
    "/api/online",
    "/api/publish",
    "/api/users/{id}/disconnect",
    "/api/users/{id}/logout",
    "/api/users/{id}/sessions",
    "/api/users/{id}/subscribe",
    "/api/users/{id}/unsubscribe",
    "/socket/{id}",
];

/// A query string, as pairs.
type Params<'a> = &'a [(&'a str, &'a str)];

/// A node with an API key.
fn keyed_node(extra: &[&str]) -> sessionhub_testkit::Node {
    let mut args = vec!["--api-key", KEY];
    args.extend(extra);
    node(&args)
}

/// `method url` with the API key.
fn call(method: Method, url: String) -> reqwest::RequestBuilder {
    http().request(method, url).bearer_auth(KEY)
}

/// The error code of a JSON error answer, checking its shape.
fn error_code(body: &Value) -> &str {
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body["error"]["code"].as_str().expect("an error code")
}

#[tokio::test]
async fn the_document_is_public_current_and_every_operation_in_it_is_routed_behind_the_key() {
    // With a Pusher app, so that its routes (left out of the document) are mounted.
    let node = keyed_node(&["--pusher-app", "1:app-key:app-secret"]);
    let base = node.http();
    let (status, document) = status_and_json(http().get(format!("{base}/api/openapi.json"))).await;
    assert_eq!(status, 200, "public: tooling reads it without a key");
    assert_eq!(document["openapi"], "3.1.0");
    let checked_in: Value = serde_json::from_str(include_str!("../../../docs/openapi.json"))
        .expect("docs/openapi.json is JSON");
    assert_eq!(
        document, checked_in,
        "docs/openapi.json is what the server serves"
    );

    let paths = document["paths"].as_object().expect("paths");
    let documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    assert_eq!(
        documented, API_PATHS,
        "the document names exactly the server API"
    );
    for (path, item) in paths {
        let url = format!(
            "{base}{}",
            path.replace("{id}", "someone").replace("{channel}", "room")
        );
        for method in item.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let (status, body) = status_and_json(http().request(method.clone(), url.clone())).await;
            assert_eq!(
                (status, error_code(&body)),
                (401, "api_key_required"),
                "{method} {path}"
            );
            let (status, body) = status_and_json(
                http()
                    .request(method.clone(), url.clone())
                    .bearer_auth("nope"),
            )
            .await;
            assert_eq!((status, error_code(&body)), (401, "api_key_invalid"));
            // With the key the handler answers, whatever it thinks of an empty request: not
            // the router's fallbacks.
            let response = call(method.clone(), url.clone()).send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert!(
                status != 405 && !text.contains("no such route"),
                "{method} {path}: {status} {text}"
            );
        }
    }
    // The routes left out of the document are there too (the demo's on loopback).
    for path in sessionhub::gateway::UNDOCUMENTED_ROUTES {
        let response = http()
            .get(format!("{base}{}", path.replace("{id}", "someone")))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(!text.contains("no such route"), "{path}: {status} {text}");
    }
}

#[tokio::test]
async fn history_pages_through_a_channel_embedded() {
    history_pages_through_a_channel(&[]).await;
}

#[tokio::test]
async fn history_pages_through_a_channel_on_redis() {
    let redis = sessionhub_testkit::RedisServer::start().expect("redis-server starts");
    history_pages_through_a_channel(&["--redis", &redis.url()]).await;
}

/// History with `since`, `limit` and `reverse` on a node started with `backend`'s flags.
async fn history_pages_through_a_channel(backend: &[&str]) {
    let mut args = vec!["--history-size", "4"];
    args.extend(backend);
    let node = keyed_node(&args);
    let base = node.http();
    let history = format!("{base}/api/channels/room:h/history");
    let (status, empty) = status_and_json(call(Method::GET, history.clone())).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(
        (&empty["offset"], &empty["publications"]),
        (&json!(0), &json!([]))
    );
    for n in 1..=6 {
        let (status, _) = status_and_json(
            call(Method::POST, format!("{base}/api/channels/room:h/publish"))
                .json(&json!({"message": {"n": n}})),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (_, all) = status_and_json(call(Method::GET, history.clone())).await;
    let epoch = all["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch, empty["epoch"], "the epoch history started is kept");
    assert_eq!(all["offset"], 6);
    assert_eq!(
        all["publications"],
        json!([
            {"offset": 3, "data": {"n": 3}},
            {"offset": 4, "data": {"n": 4}},
            {"offset": 5, "data": {"n": 5}},
            {"offset": 6, "data": {"n": 6}},
        ]),
        "what the history keeps (4), oldest first, data as published"
    );
    let offsets = |page: &Value| -> Vec<u64> {
        page["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect()
    };
    let cases: [(Params, &[u64]); 5] = [
        (&[("limit", "2")], &[3, 4]),
        (&[("limit", "2"), ("reverse", "true")], &[6, 5]),
        (&[("since", "4"), ("epoch", &epoch)], &[5, 6]),
        (
            &[
                ("since", "3"),
                ("epoch", &epoch),
                ("reverse", "true"),
                ("limit", "1"),
            ],
            &[6],
        ),
        (&[("limit", "0")], &[]),
    ];
    for (query, expected) in cases {
        let (status, page) = status_and_json(call(Method::GET, history.clone()).query(query)).await;
        assert_eq!(status, 200, "{query:?}: {page}");
        assert_eq!(offsets(&page), expected, "{query:?}");
        assert_eq!(
            (&page["epoch"], &page["offset"]),
            (&json!(epoch), &json!(6))
        );
    }
}

#[tokio::test]
async fn history_refuses_bad_input_with_a_json_error() {
    let node = keyed_node(&[]);
    let base = node.http();
    let history = |channel: &str| format!("{base}/api/channels/{channel}/history");
    let cases: [(String, Params, u16, &str); 6] = [
        (history("bad%20channel"), &[], 400, "bad_request"),
        (history("session:x"), &[], 400, "bad_request"),
        (history("room"), &[("limit", "many")], 400, "bad_query"),
        (history("room"), &[("limit", "1001")], 400, "bad_request"),
        (history("room"), &[("since", "3")], 400, "bad_request"),
        (
            history("room"),
            &[("since", "0"), ("epoch", "not-it")],
            409,
            "position_unknown",
        ),
    ];
    for (url, query, want_status, want_code) in cases {
        let (status, body) = status_and_json(call(Method::GET, url.clone()).query(query)).await;
        assert_eq!(
            (status, error_code(&body)),
            (want_status, want_code),
            "{url} {query:?}"
        );
    }
}

/// Opens a protocol v1 socket as `user`; returns it and its `client` id (`<node>/<n>`).
async fn open(base_ws: &str, user: &str) -> (Ws, String) {
    let url = format!("{base_ws}/ws?user={user}");
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connects in time")
        .expect("connects");
    let greeting = next_json(&mut ws).await;
    assert_eq!(greeting["type"], "connected", "{greeting}");
    (ws, greeting["client"].as_str().unwrap().to_owned())
}

/// The next text frame as JSON, or `{"closed": code}` for a close frame.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time");
        match message {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Close(frame))) => {
                let frame = frame.expect("a close code");
                return json!({"closed": u16::from(frame.code), "reason": frame.reason.as_str()});
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// POSTs `body` as JSON to `path` on `base` (no API key: the cluster tests run open).
async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    status_and_json(http().post(format!("{base}{path}")).json(&body)).await
}

#[tokio::test]
async fn disconnect_closes_a_users_sockets_on_every_node_with_its_reason() {
    let (_redis, nodes) = cluster(2);
    let (mut a0, _) = open(&nodes[0].ws(), "dora").await;
    let (mut a1, _) = open(&nodes[1].ws(), "dora").await;
    let (mut seed, _) = connect(&nodes[1].ws(), "dora").await;
    let (mut other, _) = open(&nodes[0].ws(), "eve").await;

    let body = json!({"reason": "maintenance", "reconnect": false});
    let (status, sent) = post(&nodes[0].http(), "/api/users/dora/disconnect", body).await;
    assert_eq!((status, &sent["nodes"]), (200, &json!(2)), "{sent}");
    for ws in [&mut a0, &mut a1] {
        assert_eq!(
            next_json(ws).await,
            json!({"type": "disconnect", "code": 4021, "reason": "maintenance", "reconnect": false})
        );
        assert_eq!(
            next_json(ws).await,
            json!({"closed": 4021, "reason": "maintenance"})
        );
    }
    assert_closes(&mut seed, WAIT, 4021).await;
    assert_silent(&mut other, Duration::from_millis(300)).await;

    // One connection, by the `client` its greeting named; reconnecting allowed by default.
    let (mut keep, _) = open(&nodes[1].ws(), "dora").await;
    let (mut drop, client) = open(&nodes[1].ws(), "dora").await;
    let body = json!({"client": client});
    let (status, _) = post(&nodes[0].http(), "/api/users/dora/disconnect", body).await;
    assert_eq!(status, 200);
    let frame = next_json(&mut drop).await;
    assert_eq!(
        (&frame["code"], &frame["reconnect"]),
        (&json!(4020), &json!(true))
    );
    assert_eq!(frame["reason"], "disconnected");
    assert_eq!(next_json(&mut drop).await["closed"], 4020);
    assert_silent(&mut keep, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn server_side_subscribe_reaches_a_user_on_every_node_and_unsubscribe_undoes_it() {
    let (_redis, nodes) = cluster(2);
    let (mut s0, _) = open(&nodes[0].ws(), "dora").await;
    let (mut s1, _) = open(&nodes[1].ws(), "dora").await;
    let (status, _) = post(
        &nodes[1].http(),
        "/api/channels/news/publish",
        json!({"message": 1}),
    )
    .await;
    assert_eq!(status, 200);

    let body = json!({"channel": "news"});
    let (status, sent) = post(&nodes[0].http(), "/api/users/dora/subscribe", body).await;
    assert_eq!((status, &sent["nodes"]), (200, &json!(2)), "{sent}");
    let mut epoch = Value::Null;
    for ws in [&mut s0, &mut s1] {
        let subscribed = next_json(ws).await;
        assert_eq!(
            (
                &subscribed["type"],
                &subscribed["channel"],
                &subscribed["offset"]
            ),
            (&json!("subscribed"), &json!("news"), &json!(1)),
            "the channel's position, as if the client had asked: {subscribed}"
        );
        assert!(subscribed.get("id").is_none(), "{subscribed}");
        epoch = subscribed["epoch"].clone();
    }
    let (status, _) = post(
        &nodes[0].http(),
        "/api/channels/news/publish",
        json!({"message": 2}),
    )
    .await;
    assert_eq!(status, 200);
    for ws in [&mut s0, &mut s1] {
        assert_eq!(
            next_json(ws).await,
            json!({"type": "publication", "channel": "news", "epoch": epoch, "offset": 2, "data": 2})
        );
    }
    // Subscribing again changes nothing and says nothing.
    let body = json!({"channel": "news"});
    assert_eq!(
        post(&nodes[0].http(), "/api/users/dora/subscribe", body)
            .await
            .0,
        200
    );
    let body = json!({"channel": "news"});
    assert_eq!(
        post(&nodes[1].http(), "/api/users/dora/unsubscribe", body)
            .await
            .0,
        200
    );
    for ws in [&mut s0, &mut s1] {
        assert_eq!(
            next_json(ws).await,
            json!({"type": "unsubscribed", "channel": "news"})
        );
    }
    let (status, _) = post(
        &nodes[0].http(),
        "/api/channels/news/publish",
        json!({"message": 3}),
    )
    .await;
    assert_eq!(status, 200);
    for ws in [&mut s0, &mut s1] {
        assert_silent(ws, Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn channels_and_info_gather_every_node() {
    let (_redis, nodes) = cluster(2);
    let mut sockets = Vec::new();
    for (node, channel) in [(0, "room:a"), (0, "room:a"), (1, "room:a"), (1, "room:b")] {
        let (mut ws, _) = open(&nodes[node].ws(), "dora").await;
        send_text(
            &mut ws,
            &json!({"type": "subscribe", "channel": channel}).to_string(),
        )
        .await;
        assert_eq!(next_json(&mut ws).await["type"], "subscribed");
        sockets.push(ws);
    }
    let base = nodes[0].http();
    let (status, all) = status_and_json(http().get(format!("{base}/api/channels"))).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        all,
        json!({"nodes": 2, "channels": [
            {"channel": "room:a", "subscribers": 3},
            {"channel": "room:b", "subscribers": 1},
        ]})
    );
    let (_, some) = status_and_json(
        http()
            .get(format!("{base}/api/channels"))
            .query(&[("prefix", "room:b")]),
    )
    .await;
    assert_eq!(
        some["channels"],
        json!([{"channel": "room:b", "subscribers": 1}])
    );

    let (status, info) = status_and_json(http().get(format!("{base}/api/info"))).await;
    assert_eq!(status, 200, "{info}");
    // Each node names its build as `--version` does, commit included.
    let version = std::process::Command::new(binary())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    let build = version
        .trim()
        .strip_prefix("sessionhub ")
        .unwrap()
        .to_owned();
    assert!(
        build.starts_with(&format!("{} (commit ", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    let described: Vec<(String, u64, u64)> = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["version"], build.as_str());
            assert!(n["uptime_secs"].as_u64().is_some());
            let count = |k: &str| n[k].as_u64().unwrap();
            (
                n["node"].as_str().unwrap().to_owned(),
                count("connections"),
                count("users"),
            )
        })
        .collect();
    assert_eq!(
        described,
        [("node-0".to_owned(), 2, 1), ("node-1".to_owned(), 2, 1)]
    );
}

#[tokio::test]
async fn the_cluster_calls_refuse_bad_input_with_a_json_error() {
    let node = keyed_node(&[]);
    let base = node.http();
    let long = "x".repeat(101);
    let cases: [(&str, Value, u16, &str); 9] = [
        (
            "/api/users/bad%20id/disconnect",
            json!({}),
            400,
            "bad_request",
        ),
        (
            "/api/users/dora/disconnect",
            json!({"reason": long}),
            400,
            "bad_request",
        ),
        (
            "/api/users/dora/disconnect",
            json!({"client": "no-number"}),
            400,
            "bad_request",
        ),
        (
            "/api/users/dora/disconnect",
            json!({"reconnect": "yes"}),
            422,
            "bad_body",
        ),
        (
            "/api/users/dora/disconnect",
            json!({"what": 1}),
            422,
            "bad_body",
        ),
        (
            "/api/users/dora/subscribe",
            json!({"channel": "session:x"}),
            400,
            "bad_request",
        ),
        ("/api/users/dora/subscribe", json!({}), 422, "bad_body"),
        (
            "/api/users/bad%20id/unsubscribe",
            json!({"channel": "news"}),
            400,
            "bad_request",
        ),
        (
            "/api/users/dora/unsubscribe",
            json!({"channel": ""}),
            400,
            "bad_request",
        ),
    ];
    for (path, body, want_status, want_code) in cases {
        let (status, answer) =
            status_and_json(call(Method::POST, format!("{base}{path}")).json(&body)).await;
        assert_eq!(
            (status, error_code(&answer)),
            (want_status, want_code),
            "{path} {body}"
        );
    }
    for path in ["/api/users/dora/disconnect", "/api/users/dora/subscribe"] {
        let (status, answer) =
            status_and_json(call(Method::POST, format!("{base}{path}")).body("{}")).await;
        assert_eq!((status, error_code(&answer)), (415, "bad_body"), "{path}");
        let (status, answer) = status_and_json(
            call(Method::POST, format!("{base}{path}"))
                .header("content-type", "application/json")
                .body("{"),
        )
        .await;
        assert_eq!((status, error_code(&answer)), (400, "bad_body"), "{path}");
    }
    // On one node, the cluster is that node.
    let (status, info) = status_and_json(call(Method::GET, format!("{base}/api/info"))).await;
    assert_eq!(status, 200);
    assert_eq!(info["nodes"].as_array().map(Vec::len), Some(1), "{info}");
    let (_, channels) = status_and_json(call(Method::GET, format!("{base}/api/channels"))).await;
    assert_eq!(channels, json!({"nodes": 1, "channels": []}));
}

#[tokio::test]
async fn a_batch_publishes_in_order_and_answers_each_item() {
    let (_redis, nodes) = cluster(2);
    let (mut ws, _) = open(&nodes[1].ws(), "dora").await;
    send_text(
        &mut ws,
        &json!({"type": "subscribe", "channel": "room:b"}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let batch = json!({"publications": [
        {"channel": "room:a", "data": {"n": 1}},
        {"channel": "room:b", "data": "two", "idempotency_key": "k2"},
        {"channel": "session:nope", "data": 3},
        {"channel": "room:a", "data": [4]},
        {"channel": "room:b", "data": "again", "idempotency_key": "k2"},
    ]});
    let (status, answer) = post(&nodes[0].http(), "/api/publish", batch).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    let epoch = |i: usize| results[i]["epoch"].clone();
    assert_eq!(
        answer,
        json!({"results": [
            {"offset": 1, "epoch": epoch(0), "nodes": 0},
            {"offset": 1, "epoch": epoch(1), "nodes": 1},
            {"error": {"code": "bad_request", "message": results[2]["error"]["message"]}},
            {"offset": 2, "epoch": epoch(0), "nodes": 0},
            {"offset": 1, "epoch": epoch(1), "nodes": 0, "duplicate": true},
        ]}),
        "in order; the bad one fails alone; a repeated key publishes once"
    );
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "publication", "channel": "room:b", "epoch": epoch(1), "offset": 1, "data": "two"})
    );
    assert_silent(&mut ws, Duration::from_millis(300)).await;
    let history = format!("{}/api/channels/room:a/history", nodes[1].http());
    let (_, page) = status_and_json(http().get(history)).await;
    assert_eq!(
        page["publications"],
        json!([{"offset": 1, "data": {"n": 1}}, {"offset": 2, "data": [4]}])
    );
}

#[tokio::test]
async fn a_batch_refuses_bad_input_with_a_json_error() {
    let node = keyed_node(&[]);
    let url = format!("{}/api/publish", node.http());
    let item = json!({"channel": "room", "data": 1});
    let cases = [
        (json!({"publications": []}), 400, "bad_request"),
        (
            json!({"publications": vec![item.clone(); 101]}),
            400,
            "bad_request",
        ),
        (json!({"publications": item}), 422, "bad_body"),
        (
            json!({"publications": [{"channel": "room"}]}),
            422,
            "bad_body",
        ),
        (json!([item]), 422, "bad_body"),
    ];
    for (body, want_status, want_code) in cases {
        let (status, answer) = status_and_json(call(Method::POST, url.clone()).json(&body)).await;
        assert_eq!(
            (status, error_code(&answer)),
            (want_status, want_code),
            "{body}"
        );
    }
    let (status, answer) = status_and_json(call(Method::POST, url.clone()).json(
        &json!({"publications": [
            {"channel": "room", "data": 1, "idempotency_key": ""},
            {"channel": "room", "data": 2},
        ]}),
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["results"][0]["error"]["code"], "bad_request",
        "{answer}"
    );
    assert_eq!(answer["results"][1]["offset"], 1, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_calls_work_over_nats_too() {
    let nats = tokio::task::spawn_blocking(|| {
        sessionhub_testkit::NatsServer::start().expect("nats-server starts")
    })
    .await
    .unwrap();
    let url = nats.url();
    let nodes: Vec<_> = (0..2)
        .map(|i| node(&["--nats", &url, "--node-id", &format!("node-{i}")]))
        .collect();
    for node in &nodes {
        wait_ready(&http(), &node.http(), true, Duration::from_secs(10)).await;
    }
    let (mut ws, _) = open(&nodes[1].ws(), "dora").await;

    let (status, info) = status_and_json(http().get(format!("{}/api/info", nodes[0].http()))).await;
    assert_eq!(status, 200, "{info}");
    let named: Vec<&str> = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(named, ["node-0", "node-1"]);

    let body = json!({"channel": "news"});
    let (status, _) = post(&nodes[0].http(), "/api/users/dora/subscribe", body).await;
    assert_eq!(status, 200);
    let subscribed = next_json(&mut ws).await;
    assert_eq!(
        (&subscribed["type"], &subscribed["channel"]),
        (&json!("subscribed"), &json!("news"))
    );
    let (status, channels) =
        status_and_json(http().get(format!("{}/api/channels", nodes[0].http()))).await;
    assert_eq!(status, 200);
    assert_eq!(
        channels["channels"],
        json!([{"channel": "news", "subscribers": 1}])
    );

    let (status, _) = post(&nodes[0].http(), "/api/users/dora/disconnect", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(next_json(&mut ws).await["code"], 4020);
    assert_eq!(next_json(&mut ws).await["closed"], 4020);
}
