//! Tokens on live connections, on real servers with keys from the testkit's JWT fixtures:
//! a v1 `refresh` that keeps a connection open past its first token, subscribe tokens for
//! private channels (`--private-channels`), and the channels a connection token claims.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sessionhub_testkit::Node;
use sessionhub_testkit::jwt::{TestKey, now_plus};
use tokio::time::Instant;

const KEY: &str = "tokens-test-key";

/// How often the refreshing client sends a fresh 3 s token.
const REFRESH_EVERY: Duration = Duration::from_millis(1500);

/// The flags of a node in token mode, verifying RS256 tokens of the fixture key `rsa-1`,
/// with `private:` channels.
fn token_args(pem: &str) -> Vec<String> {
    [
        "--ws-auth",
        "token",
        "--token-public-key",
        pem,
        "--api-key",
        KEY,
        "--private-channels",
        "private:",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn token_node() -> Node {
    let pem = TestKey::Rsa1.public_pem_path();
    let args = token_args(pem.to_str().unwrap());
    node(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A connection token for `sub`, valid `secs` more seconds, claiming `channels`.
fn connection_token(sub: &str, secs: i64, channels: &[&str]) -> String {
    let mut claims = json!({"sub": sub, "exp": now_plus(secs)});
    if !channels.is_empty() {
        claims["channels"] = json!(channels);
    }
    TestKey::Rsa1.sign(None, &claims)
}

/// A subscribe token letting `sub` join `channel`, valid `secs` more seconds.
fn subscribe_token(sub: &str, channel: &str, secs: i64) -> String {
    let claims = json!({"sub": sub, "channel": channel, "exp": now_plus(secs)});
    TestKey::Rsa1.sign(None, &claims)
}

/// Opens `/ws` with `token`; the socket and its `connected` frame.
async fn open(node: &Node, token: &str) -> (Ws, Value) {
    connect_with(&format!("{}/ws?token={token}", node.ws()), &[])
        .await
        .expect("the token opens a socket")
}

/// The next frame, as JSON (pings skipped).
async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).expect("frames are JSON")
}

/// Sends `frame` and reads the next frame.
async fn ask(ws: &mut Ws, frame: Value) -> Value {
    send_text(ws, &frame.to_string()).await;
    next_json(ws).await
}

/// Publishes `data` to `channel` through the server API of `node`.
async fn publish(node: &Node, channel: &str, data: Value) {
    let response = http()
        .post(format!("{}/api/channels/{channel}/publish", node.http()))
        .bearer_auth(KEY)
        .json(&json!({"message": data}))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

/// Reads until a publication arrives; its data.
async fn next_publication(ws: &mut Ws) -> Value {
    loop {
        let frame = next_json(ws).await;
        if frame["type"] == "publication" {
            return frame["data"].clone();
        }
    }
}

#[tokio::test]
async fn a_refreshed_socket_outlives_its_token_and_an_unrefreshed_one_closes_with_4003() {
    let node = token_node();
    // From the signing of the first token, which its exp counts from.
    let opened = Instant::now();
    let (mut kept, greeting) = open(&node, &connection_token("ana", 3, &[])).await;
    assert!(
        greeting["expires_in"].as_u64().is_some_and(|s| s <= 3),
        "the greeting says when to refresh: {greeting}"
    );
    let signed = Instant::now();
    let (mut lapsed, _) = open(&node, &connection_token("ana", 3, &[])).await;
    let lapse = tokio::spawn(async move {
        assert_closes(&mut lapsed, Duration::from_secs(6), 4003).await;
        signed.elapsed()
    });
    let subscribed = ask(
        &mut kept,
        json!({"type": "subscribe", "channel": "user:ana"}),
    )
    .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let mut n: u32 = 0;
    // A token's exp is in whole seconds, so a "3 s" token lasts 2 to 3 s: refreshing on a
    // fixed 1.5 s beat always comes before it ends.
    while opened.elapsed() < Duration::from_millis(8500) {
        tokio::time::sleep_until(opened + REFRESH_EVERY * (n + 1)).await;
        let token = connection_token("ana", 3, &[]);
        let refreshed = ask(
            &mut kept,
            json!({"type": "refresh", "token": token, "id": n}),
        )
        .await;
        assert_eq!(
            (refreshed["type"].as_str(), refreshed["id"].as_u64()),
            (Some("refreshed"), Some(u64::from(n))),
            "{refreshed} after {:?}",
            opened.elapsed()
        );
        assert!(refreshed["expires_in"].as_u64().is_some_and(|s| s <= 3));
        n += 1;
        publish(&node, "user:ana", json!({"n": n})).await;
        assert_eq!(next_publication(&mut kept).await, json!({"n": n}));
    }
    let lapsed_after = lapse.await.unwrap();
    println!(
        "refreshed socket open after {:?} ({n} refreshes); unrefreshed one closed 4003 after {lapsed_after:?}",
        opened.elapsed()
    );
    assert!(
        lapsed_after > Duration::from_millis(1900) && lapsed_after < Duration::from_millis(3500),
        "a 3 s token closes its socket at its exp: {lapsed_after:?}"
    );
}

#[tokio::test]
async fn a_refresh_with_a_token_that_is_not_the_users_is_refused_and_changes_nothing() {
    let node = token_node();
    let (mut ws, _) = open(&node, &connection_token("ben", 2, &[])).await;
    let opened = Instant::now();
    let refusals = [
        (connection_token("eve", 60, &[]), "token_wrong_user"),
        (connection_token("ben", -10, &[]), "token_expired"),
        (subscribe_token("ben", "private:1", 60), "token_wrong_kind"),
        (
            TestKey::Rsa2.sign(None, &json!({"sub": "ben", "exp": now_plus(60)})),
            "token_invalid",
        ),
    ];
    for (id, (token, code)) in refusals.into_iter().enumerate() {
        let refused = ask(
            &mut ws,
            json!({"type": "refresh", "token": token, "id": id}),
        )
        .await;
        assert_eq!(
            (refused["type"].as_str(), refused["code"].as_str()),
            (Some("error"), Some(code)),
            "{refused}"
        );
        assert_eq!(refused["id"], id);
    }
    // None of them moved the expiry: the first token's exp still closes the socket.
    let disconnect = next_json(&mut ws).await;
    assert_eq!(disconnect["code"], 4003, "{disconnect}");
    assert_closes(&mut ws, WAIT, 4003).await;
    assert!(
        opened.elapsed() < Duration::from_secs(3),
        "{:?}",
        opened.elapsed()
    );
}

#[tokio::test]
async fn private_channels_need_a_subscribe_token_for_the_user_and_the_channel_across_nodes() {
    let redis = sessionhub_testkit::RedisServer::start().expect("redis-server starts");
    let pem = TestKey::Rsa1.public_pem_path();
    let nodes: Vec<Node> = (0..2)
        .map(|i| {
            let mut args = token_args(pem.to_str().unwrap());
            let name = format!("node-{i}");
            args.extend(["--redis".into(), redis.url(), "--node-id".into(), name]);
            node(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .collect();
    let (mut ws, _) = open(&nodes[0], &connection_token("cai", 60, &[])).await;
    let channel = "private:deal-7";
    let refusals = [
        (None, "token_required"),
        (
            Some(subscribe_token("dan", channel, 60)),
            "token_wrong_user",
        ),
        (
            Some(subscribe_token("cai", "private:other", 60)),
            "token_wrong_channel",
        ),
        (Some(subscribe_token("cai", channel, -10)), "token_expired"),
        (
            Some(connection_token("cai", 60, &[])),
            "token_wrong_channel",
        ),
        (
            Some(TestKey::Rsa2.sign(
                None,
                &json!({"sub": "cai", "channel": channel, "exp": now_plus(60)}),
            )),
            "token_invalid",
        ),
    ];
    for (id, (token, code)) in refusals.into_iter().enumerate() {
        let mut frame = json!({"type": "subscribe", "channel": channel, "id": id});
        if let Some(token) = token {
            frame["token"] = json!(token);
        }
        let refused = ask(&mut ws, frame).await;
        assert_eq!(
            (
                refused["type"].as_str(),
                refused["code"].as_str(),
                refused["id"].as_u64()
            ),
            (Some("error"), Some(code), Some(id as u64)),
            "{refused}"
        );
    }
    // Refused subscribes joined nothing: a publication there does not arrive.
    publish(&nodes[1], channel, json!("unseen")).await;
    let token = subscribe_token("cai", channel, 60);
    let frame = json!({"type": "subscribe", "channel": channel, "token": token, "id": 9});
    let joined = ask(&mut ws, frame).await;
    assert_eq!(
        (joined["type"].as_str(), joined["id"].as_u64()),
        (Some("subscribed"), Some(9)),
        "{joined}"
    );
    publish(&nodes[1], channel, json!({"from": "node-1"})).await;
    let publication = next_json(&mut ws).await;
    assert_eq!(
        (
            &publication["type"],
            &publication["channel"],
            &publication["data"]
        ),
        (
            &json!("publication"),
            &json!(channel),
            &json!({"from": "node-1"})
        ),
    );
}

#[tokio::test]
async fn a_tokens_channels_are_joined_at_connect_and_others_stay_refused() {
    let node = token_node();
    let token = connection_token("dee", 60, &["team:1", "private:board"]);
    let (mut ws, _) = open(&node, &token).await;
    let mut joined = Vec::new();
    for _ in 0..2 {
        let frame = next_json(&mut ws).await;
        assert_eq!(
            (frame["type"].as_str(), frame.get("id")),
            (Some("subscribed"), None),
            "{frame}"
        );
        joined.push(frame["channel"].as_str().unwrap().to_owned());
    }
    joined.sort();
    assert_eq!(joined, ["private:board", "team:1"]);
    publish(&node, "team:1", json!("claimed")).await;
    let seen = next_json(&mut ws).await;
    assert_eq!(seen["data"], "claimed", "{seen}");
    publish(&node, "private:board", json!("private too")).await;
    assert_eq!(next_publication(&mut ws).await, json!("private too"));
    // Outside the claim and the channel rules: refused.
    let refused = ask(
        &mut ws,
        json!({"type": "subscribe", "channel": "team:2", "id": 1}),
    )
    .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = ask(
        &mut ws,
        json!({"type": "subscribe", "channel": "private:other", "id": 2}),
    )
    .await;
    assert_eq!(refused["code"], "token_required", "{refused}");

    // A reconnecting client recovers a claimed channel by subscribing to it from where it
    // was, once; the server's own join does not make that an `already_subscribed`.
    drop(ws);
    publish(&node, "team:1", json!("missed")).await;
    let (mut ws, _) = open(&node, &token).await;
    let since = json!({"epoch": seen["epoch"], "offset": seen["offset"]});
    let frame = json!({"type": "subscribe", "channel": "team:1", "recover": since, "id": 3});
    send_text(&mut ws, &frame.to_string()).await;
    let recovered = loop {
        let frame = next_json(&mut ws).await;
        if frame["id"] == 3 {
            break frame;
        }
    };
    assert_eq!(
        (&recovered["type"], &recovered["recovered"]),
        (&json!("subscribed"), &json!(true)),
        "{recovered}"
    );
    assert_eq!(
        recovered["publications"][0]["data"], "missed",
        "{recovered}"
    );
    let again = ask(
        &mut ws,
        json!({"type": "subscribe", "channel": "team:1", "id": 4}),
    )
    .await;
    assert_eq!(again["code"], "already_subscribed", "{again}");
}

/// Two nodes in token mode on a Redis of the test's own.
fn token_cluster() -> (sessionhub_testkit::RedisServer, Vec<Node>) {
    let redis = sessionhub_testkit::RedisServer::start().expect("redis-server starts");
    let pem = TestKey::Rsa1.public_pem_path();
    let nodes = (0..2)
        .map(|i| {
            let mut args = token_args(pem.to_str().unwrap());
            let name = format!("node-{i}");
            args.extend(["--redis".into(), redis.url(), "--node-id".into(), name]);
            node(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .collect();
    (redis, nodes)
}

/// Opens `/sse` on `node` with `query`; the stream and its `connected` frame.
async fn open_stream(node: &Node, query: &str) -> (sse::Stream, Value) {
    let request = sse::client().get(format!("{}/sse?{query}", node.http()));
    let mut stream = sse::open(request).await.expect("the stream opens");
    let connected = stream.next_within(WAIT).await.unwrap().expect("an event");
    assert_eq!(connected.event, "connected");
    (stream, serde_json::from_str(&connected.data).unwrap())
}

/// `POST /sse/refresh` on `node`; the status and the error code, if any.
async fn sse_refresh(node: &Node, client: &Value, token: &str) -> (u16, String) {
    let (status, body) = status_and_json(
        http()
            .post(format!("{}/sse/refresh", node.http()))
            .json(&json!({"client": client, "token": token})),
    )
    .await;
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, code)
}

/// Reads events until one named `name`; its data as JSON.
async fn next_event(stream: &mut sse::Stream, name: &str) -> Value {
    loop {
        let event = stream
            .next_within(WAIT)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended before a {name} event"));
        if event.event == name {
            return serde_json::from_str(&event.data).unwrap();
        }
    }
}

#[tokio::test]
async fn an_sse_stream_is_refreshed_through_any_node_and_a_token_for_another_user_extends_nothing()
{
    let (_redis, nodes) = token_cluster();
    let opened = Instant::now();
    let query = |user: &str| {
        format!(
            "channels=user:{user}&token={}",
            connection_token(user, 3, &[])
        )
    };
    let (mut kept, connected) = open_stream(&nodes[0], &query("fay")).await;
    let client = connected["client"].clone();
    let (mut other, other_connected) = open_stream(&nodes[0], &query("gus")).await;
    assert_eq!(
        next_event(&mut kept, "subscribed").await["channel"],
        "user:fay"
    );
    // Another user's token, aimed at gus's stream: it reaches none of the token user's
    // streams, so gus's still ends at its own exp.
    let foreign = sse_refresh(
        &nodes[1],
        &other_connected["client"],
        &connection_token("fay", 60, &[]),
    )
    .await;
    assert_eq!(foreign.0, 202);
    let lapse = tokio::spawn(async move {
        let disconnect = next_event(&mut other, "disconnect").await;
        (disconnect["code"].clone(), opened.elapsed())
    });
    let refusals = [
        (connection_token("fay", -10, &[]), (401, "token_expired")),
        (
            subscribe_token("fay", "private:1", 60),
            (401, "token_wrong_kind"),
        ),
    ];
    for (token, (status, code)) in refusals {
        assert_eq!(
            sse_refresh(&nodes[1], &client, &token).await,
            (status, code.to_owned())
        );
    }
    let mut n: u32 = 0;
    while opened.elapsed() < Duration::from_millis(8500) {
        tokio::time::sleep_until(opened + REFRESH_EVERY * (n + 1)).await;
        let node = &nodes[n as usize % 2];
        let sent = sse_refresh(node, &client, &connection_token("fay", 3, &[])).await;
        assert_eq!(sent, (202, String::new()));
        let refreshed = next_event(&mut kept, "refreshed").await;
        assert!(
            refreshed["expires_in"].as_u64().is_some_and(|s| s <= 3),
            "{refreshed}"
        );
        n += 1;
        publish(&nodes[1], "user:fay", json!({"n": n})).await;
        assert_eq!(
            next_event(&mut kept, "publication").await["data"],
            json!({"n": n})
        );
    }
    let (code, lapsed_after) = lapse.await.unwrap();
    println!(
        "SSE: refreshed stream open after {:?} ({n} refreshes through both nodes); the other closed {code} after {lapsed_after:?}",
        opened.elapsed()
    );
    assert_eq!(code, 4003);
    assert!(
        lapsed_after < Duration::from_millis(3500),
        "{lapsed_after:?}"
    );
}

#[tokio::test]
async fn an_sse_stream_joins_a_private_channel_only_with_its_token_and_its_claimed_channels() {
    let node = token_node();
    let token = connection_token("hal", 60, &["team:9"]);
    let channel = "private:plan";
    let refused = |query: String| {
        let request = sse::client().get(format!("{}/sse?{query}", node.http()));
        async move {
            let (status, body) = status_and_json(request).await;
            (status, body["error"]["code"].as_str().unwrap().to_owned())
        }
    };
    let base = format!("channels=user:hal,{channel}&token={token}");
    assert_eq!(
        refused(base.clone()).await,
        (403, "token_required".to_owned())
    );
    let for_other = subscribe_token("ivy", channel, 60);
    assert_eq!(
        refused(format!("{base}&tokens={for_other}")).await,
        (403, "token_wrong_user".to_owned())
    );
    let good = subscribe_token("hal", channel, 60);
    let unrelated = subscribe_token("hal", "private:other", 60);
    let (mut stream, _) = open_stream(&node, &format!("{base}&tokens={unrelated},{good}")).await;
    publish(&node, channel, json!("for hal")).await;
    assert_eq!(
        next_event(&mut stream, "publication").await["data"],
        "for hal"
    );
    // The token's channels claim is joined too, without naming it in `channels`.
    publish(&node, "team:9", json!("claimed")).await;
    let claimed = next_event(&mut stream, "publication").await;
    assert_eq!(
        (&claimed["channel"], &claimed["data"]),
        (&json!("team:9"), &json!("claimed"))
    );
}
