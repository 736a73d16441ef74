//! Security: who may connect as whom, who may push, and what bad input gets. Real nodes,
//! real Redis, real clients.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use sessionhub_testkit::Node;
use sessionhub_testkit::jwt::{self, TestKey};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "test-api-key-0123456789";

/// Two cluster nodes with `--ws-auth session` and an API key, plus `extra` flags.
fn session_cluster(extra: &[&str]) -> (sessionhub_testkit::RedisServer, Vec<Node>) {
    session_cluster_each(&[extra, extra])
}

/// One node per entry of `extras`, each with its own extra flags, on one Redis.
fn session_cluster_each(extras: &[&[&str]]) -> (sessionhub_testkit::RedisServer, Vec<Node>) {
    let redis = sessionhub_testkit::RedisServer::start().unwrap();
    let url = redis.url();
    let nodes = extras
        .iter()
        .enumerate()
        .map(|(i, extra)| {
            let name = format!("node-{i}");
            let mut args = vec!["--redis", &url, "--node-id", &name, "--ws-auth", "session"];
            args.extend(["--api-key", KEY]);
            args.extend(*extra);
            node(&args)
        })
        .collect();
    (redis, nodes)
}

fn cookie(id: &str) -> String {
    format!("SESSION={id}")
}

/// Opens a socket at `url` with session `id` in the cookie.
async fn connect_as(url: &str, id: &str) -> Result<(Ws, Value), (u16, String)> {
    connect_with(url, &[("cookie", &cookie(id))]).await
}

/// `method path` on `base` with the API key; the status and JSON answer.
async fn admin(base: &str, method: reqwest::Method, path: &str) -> (u16, Value) {
    status_and_json(
        http()
            .request(method, format!("{base}{path}"))
            .bearer_auth(KEY),
    )
    .await
}

#[tokio::test]
async fn a_session_socket_is_only_for_the_logged_in_user() {
    let (_redis, nodes) = session_cluster(&[]);
    let alice = login(&nodes[0].http(), "alice").await;
    // Logged in on node 0, connects on node 1.
    let url = format!("{}/websocket/alice", nodes[1].ws());
    let (_ws, greeting) = connect_as(&url, &alice).await.unwrap();
    assert_eq!(greeting["node"], "node-1");
    // The header works for clients without cookies.
    connect_with(&url, &[("x-auth-token", &alice)])
        .await
        .unwrap();

    let bob = format!("{}/websocket/bob", nodes[1].ws());
    let refused = connect_as(&bob, &alice).await.err();
    assert_eq!(
        refused,
        Some((403, "forbidden".into())),
        "alice may not read bob's messages"
    );
    for headers in [
        vec![],
        vec![("cookie", "SESSION=AAAAAAAAAAAAAAAAAAAAAA")],
        vec![("cookie", "SESSION=garbage")],
    ] {
        let refused = connect_with(&url, &headers).await.err();
        assert_eq!(refused, Some((401, "not_logged_in".into())), "{headers:?}");
    }
    // A session without a login is no credential either.
    let (_, anonymous, _) = get(&http(), &nodes[0].http(), "/get-session", None).await;
    let anonymous = cookie(&anonymous.unwrap());
    let refused = connect_with(&url, &[("cookie", &anonymous)]).await.err();
    assert_eq!(refused, Some((401, "not_logged_in".into())));
}

#[tokio::test]
async fn logout_closes_the_users_sockets_on_every_node_within_a_second() {
    let (_redis, nodes) = session_cluster(&[]);
    let alice = login(&nodes[0].http(), "alice").await;
    let mut sockets = Vec::new();
    for node in &nodes {
        let url = format!("{}/websocket/alice", node.ws());
        sockets.push(connect_as(&url, &alice).await.unwrap().0);
    }
    let started = Instant::now();
    get(&http(), &nodes[1].http(), "/invalidate", Some(&alice)).await;
    for ws in &mut sockets {
        assert_closes(ws, Duration::from_secs(1), 4002).await;
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    let url = format!("{}/websocket/alice", nodes[0].ws());
    let refused = connect_as(&url, &alice).await.err();
    assert_eq!(refused, Some((401, "not_logged_in".into())));
}

#[tokio::test]
async fn session_expiry_closes_its_sockets() {
    let (_redis, nodes) = session_cluster(&["--session-timeout", "2"]);
    let alice = login(&nodes[0].http(), "alice").await;
    let url = format!("{}/websocket/alice", nodes[1].ws());
    let (mut ws, _) = connect_as(&url, &alice).await.unwrap();
    let started = Instant::now();
    assert_closes(&mut ws, Duration::from_secs(5), 4002).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(3000),
        "closed {elapsed:?} after connect"
    );
}

/// The absolute lifetime (`--session-max-lifetime`) ends a session however busy it is, and
/// its sockets with it: HTTP use slides the idle timeout, never the lifetime.
#[tokio::test]
async fn the_absolute_lifetime_closes_sockets_of_a_busy_session() {
    let (_redis, nodes) = session_cluster(&["--session-max-lifetime", "2"]);
    let alice = login(&nodes[0].http(), "alice").await;
    let logged_in = Instant::now();
    let url = format!("{}/websocket/alice", nodes[1].ws());
    let (mut ws, _) = connect_as(&url, &alice).await.unwrap();
    // Keep it busy over HTTP meanwhile (on the other node), as a user clicking around would.
    let busy = {
        let base = nodes[0].http();
        let alice = alice.clone();
        tokio::spawn(async move {
            for _ in 0..12 {
                get(&http(), &base, "/get-session", Some(&alice)).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let close = next_close(&mut ws, Duration::from_secs(4))
        .await
        .expect("closed when the lifetime ends");
    assert_eq!(u16::from(close.code), 4002);
    let elapsed = logged_in.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(3000),
        "closed {elapsed:?} after login, lifetime 2 s"
    );
    busy.abort();
    // And no new socket on the outlived session (by then Redis has expired it: every write
    // caps the expiry at the lifetime).
    let refused = connect_as(&url, &alice).await.err();
    assert_eq!(refused, Some((401, "not_logged_in".into())));
}

/// A session that outlived the lifetime admits no socket even while its record still lives:
/// here a node without a lifetime wrote it (as during a rolling change of the setting), so
/// only the admitting node's own check stands in the way.
#[tokio::test]
async fn no_socket_opens_on_an_outlived_session_whose_record_lives_on() {
    let (_redis, nodes) = session_cluster_each(&[&[], &["--session-max-lifetime", "1"]]);
    let alice = login(&nodes[0].http(), "alice").await;
    let url = format!("{}/websocket/alice", nodes[1].ws());
    // Within the lifetime it opens.
    connect_as(&url, &alice).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let refused = connect_as(&url, &alice).await.err();
    assert_eq!(refused, Some((401, "not_logged_in".into())));
    // The record lives on for the node that has no lifetime.
    let (status, _, body) = get(&http(), &nodes[0].http(), "/read-session", Some(&alice)).await;
    assert_eq!(
        (status, &body["username"]),
        (200, &json!("alice")),
        "{body}"
    );
}

/// Admitting a session socket reads the session once (the load that also slides its expiry)
/// and asks nothing more: when it ends is known from that load.
#[tokio::test]
async fn a_session_socket_costs_one_session_read_to_open() {
    let (redis, nodes) = session_cluster(&[]);
    let alice = login(&nodes[0].http(), "alice").await;
    let url = format!("{}/websocket/alice", nodes[1].ws());
    // Warm up: the first call of each script may load it.
    connect_as(&url, &alice).await.unwrap();
    let (calls, (_ws, greeting)) = redis
        .calls_during(async {
            let opened = connect_as(&url, &alice).await.unwrap();
            // The greeting goes out first; anything asked after it has had time to be asked.
            tokio::time::sleep(Duration::from_millis(300)).await;
            opened
        })
        .await
        .unwrap();
    assert_eq!(greeting["node"], "node-1");
    let delta = |name: &str| calls.get(name).copied().unwrap_or(0);
    assert_eq!(delta("hgetall"), 1, "the session is loaded once");
    assert_eq!(delta("pttl"), 0, "and its expiry is not asked for");
    // Nothing else of the session's (SUBSCRIBE for the socket's channels and the presence
    // heartbeat go on around it): one script, the load, besides the heartbeat's scripts
    // (presence_beat.lua, one ZADD each) and the connect rate limit's take (limits_take.lua,
    // one TIME each).
    assert_eq!(delta("time"), 1, "one rate limit take: {calls:?}");
    assert_eq!(delta("evalsha"), 1 + delta("zadd") + 1, "{calls:?}");
    for command in ["exists", "hget", "hmget", "hset", "ttl", "eval"] {
        assert_eq!(delta(command), 0, "{command}: {calls:?}");
    }
}

/// A socket whose client talks uses its session as HTTP requests would: the session does not
/// idle out under it, and logging the user out everywhere still finds it (its entry in the
/// per-user index is kept fresh too). A silent socket does not: see the test above.
#[tokio::test]
async fn a_talking_socket_keeps_its_session_alive() {
    let (redis, nodes) = session_cluster(&["--session-timeout", "2"]);
    let alice = login(&nodes[0].http(), "alice").await;
    let url = format!("{}/websocket/alice", nodes[1].ws());
    let (mut ws, _) = connect_as(&url, &alice).await.unwrap();
    // Twice the idle timeout and then some, talking over the socket only (the index entry
    // is kept 1.5 idle timeouts after its last refresh, so it would have lapsed too).
    for n in 0..14 {
        send_text(&mut ws, &format!("{{\"alice\":\"still here {n}\"}}")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Asked of Redis, not over HTTP: a request would refresh the index entry itself.
    let alive = redis
        .command(&format!("EXISTS sessionhub:session:{{{alice}}}"))
        .unwrap();
    assert_eq!(alive.trim_end(), ":1", "the session idled out");
    let (_, ended) = admin(
        &nodes[0].http(),
        reqwest::Method::POST,
        "/api/users/alice/logout",
    )
    .await;
    assert_eq!(ended, json!({"ended": 1}));
    assert_closes(&mut ws, Duration::from_secs(1), 4002).await;
}

/// WebSocket pings are not use: a socket that only pings lets its session idle out.
#[tokio::test]
async fn a_pinging_socket_does_not_keep_its_session_alive() {
    let (_redis, nodes) = session_cluster(&["--session-timeout", "2"]);
    let alice = login(&nodes[0].http(), "alice").await;
    let url = format!("{}/websocket/alice", nodes[1].ws());
    let (mut ws, _) = connect_as(&url, &alice).await.unwrap();
    let started = Instant::now();
    let pinging = async {
        loop {
            if ws.send(Message::Ping(Default::default())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    // The pings go out until the server closes the socket (or the bound runs out).
    let _ = tokio::time::timeout(Duration::from_millis(2600), pinging).await;
    assert_closes(&mut ws, Duration::from_secs(2), 4002).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed only {:?} after connect",
        started.elapsed()
    );
}

#[tokio::test]
async fn logging_in_again_rotates_and_closes_sockets_bound_to_the_old_id() {
    let (_redis, nodes) = session_cluster(&[]);
    let alice = login(&nodes[0].http(), "alice").await;
    let url = format!("{}/websocket/alice", nodes[1].ws());
    let (mut ws, _) = connect_as(&url, &alice).await.unwrap();
    let (_, rotated, _) = get(
        &http(),
        &nodes[0].http(),
        "/login?username=alice",
        Some(&alice),
    )
    .await;
    assert_ne!(
        rotated.as_deref(),
        Some(alice.as_str()),
        "login rotates the id"
    );
    assert_closes(&mut ws, Duration::from_secs(1), 4002).await;
}

#[tokio::test]
async fn logout_everywhere_ends_every_session_of_a_user() {
    let (_redis, nodes) = session_cluster(&[]);
    let client = http();
    let laptop = login(&nodes[0].http(), "carol").await;
    let phone = login(&nodes[1].http(), "carol").await;
    let other = login(&nodes[1].http(), "dave").await;
    let mut sockets = Vec::new();
    for (node, id) in [(&nodes[0], &laptop), (&nodes[1], &phone)] {
        let url = format!("{}/websocket/carol", node.ws());
        sockets.push(connect_as(&url, id).await.unwrap().0);
    }
    let base = nodes[0].http();
    let (_, listed) = admin(&base, reqwest::Method::GET, "/api/users/carol/sessions").await;
    assert_eq!(listed["sessions"], 2, "{listed}");
    let (_, ended) = admin(&base, reqwest::Method::POST, "/api/users/carol/logout").await;
    assert_eq!(ended, json!({"ended": 2}));
    for ws in &mut sockets {
        assert_closes(ws, Duration::from_secs(1), 4002).await;
    }
    for id in [&laptop, &phone] {
        let (_, _, body) = get(&client, &nodes[1].http(), "/get-session", Some(id)).await;
        assert_eq!(body.get("username"), None);
    }
    let (_, _, body) = get(&client, &nodes[0].http(), "/get-session", Some(&other)).await;
    assert_eq!(body["username"], "dave", "other users keep their sessions");
}

#[tokio::test]
async fn a_per_user_session_limit_evicts_the_least_recently_used() {
    let (_redis, nodes) = session_cluster(&["--max-sessions-per-user", "2"]);
    let client = http();
    let first = login(&nodes[0].http(), "erin").await;
    let url = format!("{}/websocket/erin", nodes[1].ws());
    let (mut ws, _) = connect_as(&url, &first).await.unwrap();
    let second = login(&nodes[1].http(), "erin").await;
    let third = login(&nodes[0].http(), "erin").await;
    let (_, _, body) = get(&client, &nodes[0].http(), "/get-session", Some(&first)).await;
    assert_eq!(body.get("username"), None, "the oldest session was evicted");
    assert_closes(&mut ws, Duration::from_secs(1), 4002).await;
    for id in [&second, &third] {
        let (_, _, body) = get(&client, &nodes[1].http(), "/get-session", Some(id)).await;
        assert_eq!(body["username"], "erin");
    }
}

#[tokio::test]
async fn the_push_and_admin_apis_need_a_valid_api_key() {
    let (_redis, nodes) = session_cluster(&[]);
    let client = http();
    let base = nodes[0].http();
    let routes = [
        (reqwest::Method::POST, "/socket/alice"),
        (reqwest::Method::GET, "/socket/alice?message=x"),
        (reqwest::Method::GET, "/api/online"),
        (reqwest::Method::GET, "/api/users/alice/sessions"),
        (reqwest::Method::POST, "/api/users/alice/logout"),
        (reqwest::Method::POST, "/api/channels/room:1/publish"),
    ];
    for (method, path) in routes {
        let request = || {
            client
                .request(method.clone(), format!("{base}{path}"))
                .body("x")
        };
        let (status, body) = status_and_json(request()).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "api_key_required");
        let (status, body) = status_and_json(request().bearer_auth("wrong-key")).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "api_key_invalid");
    }
    let response = client
        .post(format!("{base}/socket/alice"))
        .bearer_auth(KEY)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Never in the logs: keys, session ids.
    let id = login(&base, "frank").await;
    get(&client, &base, "/get-session", Some(&id)).await;
    for node in &nodes {
        let logs = node.stderr();
        assert!(!logs.contains(KEY), "an API key reached the log");
        assert!(
            !logs.contains("wrong-key"),
            "a presented key reached the log"
        );
        assert!(!logs.contains(&id), "a session id reached the log");
    }
}

#[tokio::test]
async fn a_foreign_origin_cannot_open_a_socket_with_the_users_cookie() {
    let (_redis, nodes) = session_cluster(&[]);
    let alice = login(&nodes[0].http(), "alice").await;
    let url = format!("{}/websocket/alice", nodes[0].ws());
    let host = nodes[0].addr().to_string();
    let same = format!("http://{host}");
    let refused = connect_with(
        &url,
        &[
            ("cookie", &cookie(&alice)),
            ("origin", "https://evil.example"),
        ],
    )
    .await
    .err();
    assert_eq!(refused, Some((403, "origin_not_allowed".into())));
    connect_with(&url, &[("cookie", &cookie(&alice)), ("origin", &same)])
        .await
        .unwrap();

    let listed = node(&["--allowed-origins", "https://app.example"]);
    let url = format!("{}/websocket/x", listed.ws());
    connect_with(&url, &[("origin", "https://app.example")])
        .await
        .unwrap();
    let refused = connect_with(&url, &[("origin", "https://app.example.evil")])
        .await
        .err();
    assert_eq!(refused, Some((403, "origin_not_allowed".into())));
}

#[tokio::test]
async fn client_publishes_are_off_unless_a_channel_rule_allows_them() {
    for (extra, allowed) in [
        (vec![], false),
        (vec!["--channel-rule", "user:=publish"], true),
    ] {
        let (_redis, nodes) = session_cluster(&extra);
        let alice = login(&nodes[0].http(), "alice").await;
        let bob = login(&nodes[0].http(), "bob").await;
        let (mut from, _) = connect_with(
            &format!("{}/websocket/alice", nodes[0].ws()),
            &[("cookie", &cookie(&alice))],
        )
        .await
        .unwrap();
        let (mut to, _) = connect_with(
            &format!("{}/websocket/bob", nodes[1].ws()),
            &[("cookie", &cookie(&bob))],
        )
        .await
        .unwrap();
        send_text(&mut from, r#"{"KEY":"bob","VALUE":"hi bob"}"#).await;
        if allowed {
            assert_eq!(next_text(&mut to).await, "hi bob");
        } else {
            let reply: Value = serde_json::from_str(&next_text(&mut from).await).unwrap();
            assert_eq!(reply["code"], "forbidden");
            assert_silent(&mut to, Duration::from_millis(300)).await;
        }
    }
}

#[tokio::test]
async fn tokens_are_verified_with_rotation_and_expiry() {
    let node = node(&[
        "--ws-auth",
        "token",
        "--token-secret",
        "old-secret",
        "--token-secret",
        "new-secret",
        "--api-key",
        KEY,
    ]);
    let url = |user: &str, token: &str| format!("{}/websocket/{user}?token={token}", node.ws());
    // Both secrets work during a rotation; so does the Authorization header.
    connect_with(&url("gail", &token("old-secret", "gail", 60)), &[])
        .await
        .unwrap();
    connect_with(&url("gail", &token("new-secret", "gail", 60)), &[])
        .await
        .unwrap();
    let bearer = format!("Bearer {}", token("new-secret", "gail", 60));
    connect_with(
        &format!("{}/websocket/gail", node.ws()),
        &[("authorization", &bearer)],
    )
    .await
    .unwrap();
    let cases = [
        (
            url("gail", &token("new-secret", "hank", 60)),
            (403, "forbidden"),
        ),
        (
            url("gail", &token("new-secret", "gail", -10)),
            (401, "token_expired"),
        ),
        (
            url("gail", &token("forged-secret", "gail", 60)),
            (401, "token_invalid"),
        ),
        (url("gail", "not.a.jwt"), (401, "token_invalid")),
        (
            format!("{}/websocket/gail", node.ws()),
            (401, "token_missing"),
        ),
        // alg "none" with the claims of a valid token
        (
            url(
                "gail",
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJnYWlsIiwiZXhwIjo5OTk5OTk5OTk5fQ.",
            ),
            (401, "token_invalid"),
        ),
    ];
    for (url, (status, code)) in cases {
        let refused = connect_with(&url, &[]).await.err();
        assert_eq!(refused, Some((status, code.to_owned())), "{url}");
    }
    // A token that expires while connected closes the socket.
    let short = token("new-secret", "gail", 2);
    let (mut ws, _) = connect_with(&url("gail", &short), &[]).await.unwrap();
    assert_closes(&mut ws, Duration::from_secs(5), 4003).await;
    // Tokens and secrets never reach the log, not even in a logged request line.
    let logs = node.stderr();
    let signature = short.rsplit('.').next().unwrap();
    for secret in [signature, "new-secret", "old-secret"] {
        assert!(!logs.contains(secret), "{secret} reached the log");
    }
}

/// Tokens from an identity provider: keys from a JWK Set (rotated while the node runs) and a
/// PEM file, with the issuer and audience checked, each refusal with its own code.
#[tokio::test]
async fn provider_tokens_are_checked_against_a_jwks_that_rotates_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, jwt::jwks(&[TestKey::Rsa1]).to_string()).unwrap();
    let ed = TestKey::Ed1.public_pem_path();
    let node = node(&[
        "--ws-auth",
        "token",
        "--token-jwks",
        jwks.to_str().unwrap(),
        "--token-jwks-min-refetch",
        "0",
        "--token-public-key",
        ed.to_str().unwrap(),
        "--token-issuer",
        "https://id.example",
        "--token-audience",
        "chat",
        "--api-key",
        KEY,
    ]);
    let claims = |iss: &str, aud: &str| json!({"sub": "ivy", "exp": jwt::now_plus(60), "iss": iss, "aud": aud});
    let good = claims("https://id.example", "chat");
    let url = |token: &str| format!("{}/ws?token={token}", node.ws());
    connect_with(&url(&TestKey::Rsa1.sign(Some("rsa-1"), &good)), &[])
        .await
        .expect("RS256 from the JWKS");
    connect_with(&url(&TestKey::Ed1.sign(None, &good)), &[])
        .await
        .expect("EdDSA from the PEM file");
    let rotated = TestKey::Rsa2.sign(Some("rsa-2"), &good);
    assert_eq!(
        connect_with(&url(&rotated), &[]).await.err(),
        Some((401, "token_unknown_key".to_owned()))
    );
    std::fs::write(
        &jwks,
        jwt::jwks(&[TestKey::Rsa1, TestKey::Rsa2]).to_string(),
    )
    .unwrap();
    connect_with(&url(&rotated), &[])
        .await
        .expect("the rotated-in key, without a restart");
    let refused = [
        (claims("https://evil.example", "chat"), "token_wrong_issuer"),
        (
            claims("https://id.example", "billing"),
            "token_wrong_audience",
        ),
    ];
    for (claims, code) in refused {
        let token = TestKey::Rsa1.sign(Some("rsa-1"), &claims);
        assert_eq!(
            connect_with(&url(&token), &[]).await.err(),
            Some((401, code.to_owned()))
        );
    }
    // An HS256 token "signed" with the public key text is not an RSA token.
    let confused = jwt::hs256(&TestKey::Rsa1.public_pem(), &good);
    assert_eq!(
        connect_with(&url(&confused), &[]).await.err(),
        Some((401, "token_invalid".to_owned()))
    );
}

#[tokio::test]
async fn abuse_limits_answer_429_or_4029_and_nothing_crashes() {
    let node = node(&[
        "--max-connections-per-ip",
        "3",
        "--max-messages-per-sec",
        "5",
        "--max-connections-per-user",
        "2",
    ]);
    let url = format!("{}/websocket/ivan", node.ws());
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(connect_with(&url, &[]).await.unwrap().0);
    }
    let refused = connect_with(&url, &[]).await.err();
    assert_eq!(refused, Some((429, "too_many_connections".into())));
    let refused = connect_with(&format!("{}/websocket/judy", node.ws()), &[])
        .await
        .err();
    assert_eq!(
        refused,
        Some((429, "rate_limited".into())),
        "4th connection in a second"
    );

    let ws = &mut open[0];
    for _ in 0..20 {
        if ws
            .send(Message::Text(r#"{"KEY":"x","VALUE":"spam"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_closes(ws, WAIT, 4029).await;
    // The server is fine.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    connect_with(&format!("{}/websocket/kim", node.ws()), &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn the_host_prefix_option_makes_a_secure_host_only_cookie() {
    let node = node(&["--cookie-host-prefix"]);
    let set = header_of(http().get(format!("{}/login", node.http())), "set-cookie").await;
    assert!(set.starts_with("__Host-SESSION="), "{set}");
    assert!(
        set.contains("Secure") && set.contains("Path=/") && !set.contains("Domain"),
        "{set}"
    );
}

#[test]
fn unsafe_deployments_refuse_to_start_and_say_why() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--listen", "0.0.0.0:0", "--ws-auth", "open"],
            "--insecure",
        ),
        (&["--listen", "0.0.0.0:0"], "--api-key"),
        (&["--ws-auth", "session"], "--api-key"),
        (&["--ws-auth", "token", "--api-key", "k"], "--token-secret"),
        // Private channels whose subscribe tokens nothing could verify.
        (
            &["--private-channels", "private:"],
            "--private-channels needs a key",
        ),
    ];
    for (args, hint) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec!["serve", "--data-dir", dir.path().to_str().unwrap()];
        all.extend(args);
        let (code, stderr) = Node::run_once(binary(), &all).unwrap();
        assert_ne!(code, Some(0), "{args:?} started");
        assert!(stderr.contains(hint), "{args:?}: {stderr}");
    }
}
