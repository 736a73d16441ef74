//! `POST /pusher/auth` and `POST /pusher/user-auth` on a real server process, with a real
//! login through the HTTP session: the signatures checked against an HMAC computed here and
//! against Pusher's own Node server SDK (`pusher` 5.3.4, pinned in tests/pusher, installed
//! by the test with `npm ci`; `authorizeChannel`, `authenticateUser`) signing the same
//! input, which proves the format; then an unmodified pusher-js (8.6.0) authorizing its
//! subscriptions through the endpoint against the server's own Pusher socket; then every
//! refusal.

mod common;

use common::pusher::sdk::{Sdk, ok};
use common::{http, login, node, status_and_json};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sessionhub_testkit::RedisServer;
use sha2::Sha256;

const APP: &str = "7:app-key:app-secret";
/// Sockets of logged-in users, and the channels the rules let their clients join: the
/// built-in endpoint signs only those (in open mode it would sign any).
const RULES: [&str; 8] = [
    "--ws-auth",
    "session",
    "--api-key",
    "test-api-key",
    "--channel-rule",
    "private-chat-=subscribe",
    "--channel-rule",
    "presence-room-=subscribe",
];
const SDK_DIR: &str = common::pusher::FIXTURE;

/// A node with the Pusher app and the channel rules, and `extra` arguments.
fn pusher_node(extra: &[&str]) -> sessionhub_testkit::Node {
    let mut args = vec!["--pusher-app", APP];
    args.extend(RULES);
    args.extend(extra);
    node(&args)
}

/// HMAC-SHA256 of `message` with `secret`, hex: computed here, not by the server's code.
fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// POSTs `form` (form-encoded, as pusher-js does) to `path`, with session `cookie` if any.
async fn post_form(
    base: &str,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = http().post(format!("{base}{path}")).form(form);
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("SESSION={cookie}"));
    }
    status_and_json(request).await
}

/// What Pusher's Node server SDK answers to `calls` (`authorizeChannel`, `authenticateUser`,
/// through tests/pusher/sdk.mjs) for app `id:key:secret`; one answer per call.
async fn sdk_sign(app: &str, calls: Value) -> Vec<Value> {
    let mut parts = app.splitn(3, ':');
    let (id, key, secret) = (parts.next(), parts.next(), parts.next());
    let app = json!({"id": id, "key": key, "secret": secret});
    // Signing needs no server: no port is ever used.
    let answers = common::pusher::sdk::sdk_at(Sdk::Node, 1, app, calls).await;
    answers.iter().map(|answer| ok(answer).clone()).collect()
}

/// What a test posts, as form fields.
type Form<'a> = &'a [(&'a str, &'a str)];

/// A logged-in user gets Pusher's answers: `auth` for a private channel, `auth` and
/// `channel_data` for a presence channel (user_info: the user's name, the session holding
/// none), `auth` and `user_data` for a sign-in; each the HMAC computed here, and exactly
/// what Pusher's own SDK answers for the same input. JSON bodies are taken too, and
/// `/pusher/auth/{key}` names the app.
#[tokio::test]
async fn a_logged_in_user_gets_pushers_own_signatures() {
    let node = pusher_node(&[]);
    let base = node.http();
    let alice = login(&base, "alice").await;
    let socket = "1234.5678";

    let (status, private) = post_form(
        &base,
        "/pusher/auth",
        Some(&alice),
        &[("socket_id", socket), ("channel_name", "private-chat-1")],
    )
    .await;
    assert_eq!(status, 200, "{private}");
    let expected = format!(
        "app-key:{}",
        hmac_hex("app-secret", "1234.5678:private-chat-1")
    );
    assert_eq!(private, json!({"auth": expected}));

    let (status, presence) = post_form(
        &base,
        "/pusher/auth/app-key",
        Some(&alice),
        &[("socket_id", socket), ("channel_name", "presence-room-1")],
    )
    .await;
    assert_eq!(status, 200, "{presence}");
    let channel_data = presence["channel_data"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(channel_data).unwrap(),
        json!({"user_id": "alice", "user_info": {"name": "alice"}})
    );
    let signed = format!("1234.5678:presence-room-1:{channel_data}");
    assert_eq!(
        presence["auth"],
        format!("app-key:{}", hmac_hex("app-secret", &signed))
    );

    let (status, user) = post_form(
        &base,
        "/pusher/user-auth",
        Some(&alice),
        &[("socket_id", socket)],
    )
    .await;
    assert_eq!(status, 200, "{user}");
    let user_data = user["user_data"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(user_data).unwrap(),
        json!({"id": "alice", "user_info": {"name": "alice"}})
    );
    let signed = format!("1234.5678::user::{user_data}");
    assert_eq!(
        user["auth"],
        format!("app-key:{}", hmac_hex("app-secret", &signed))
    );

    // The same input through Pusher's SDK: byte for byte the same answers.
    let sdk = sdk_sign(
        APP,
        json!([
            {"call": "authorizeChannel", "socket_id": socket, "channel": "private-chat-1"},
            {"call": "authorizeChannel", "socket_id": socket, "channel": "presence-room-1",
             "data": serde_json::from_str::<Value>(channel_data).unwrap()},
            {"call": "authenticateUser", "socket_id": socket,
             "user_data": serde_json::from_str::<Value>(user_data).unwrap()},
        ]),
    )
    .await;
    assert_eq!(sdk, [private, presence.clone(), user]);

    // JSON, as some clients post it.
    let request = http()
        .post(format!("{base}/pusher/auth"))
        .header("cookie", format!("SESSION={alice}"))
        .json(&json!({"socket_id": socket, "channel_name": "presence-room-1"}));
    let (status, answer) = status_and_json(request).await;
    assert_eq!((status, answer), (200, presence));
}

/// Unmodified pusher-js, told to authorize at `/pusher/auth` (its own ajax transport,
/// presenting the session in `x-auth-token`), subscribes to a private channel and a
/// presence channel the rules allow: the server's Pusher socket accepts the built-in
/// endpoint's signatures, and the presence channel lists the session's user with the
/// user_info the endpoint signed. A channel the rules forbid fails with the endpoint's 403,
/// and without a session pusher-js gets 403 too.
#[tokio::test]
async fn pusher_js_subscribes_with_the_built_in_endpoint() {
    let node = pusher_node(&[]);
    let base = node.http();
    let alice = login(&base, "alice").await;
    let port = node.addr().port();
    let run = |session: String, channels: Value| {
        auth_driver(
            json!({"key": "app-key", "port": port, "session": session, "channels": channels}),
        )
    };
    let lines = run(
        alice,
        json!(["private-chat-1", "private-other", "presence-room-1"]),
    )
    .await;
    let me = json!({"id": "alice", "info": {"name": "alice"}});
    assert_eq!(
        lines,
        [
            json!({"channel": "presence-room-1", "succeeded": true, "me": me, "members": [me]}),
            json!({"channel": "private-chat-1", "succeeded": true}),
            json!({"channel": "private-other", "error": {"type": "AuthError", "status": 403}}),
        ]
    );
    let lines = run("no-session".into(), json!(["private-chat-1"])).await;
    assert_eq!(
        lines,
        [json!({"channel": "private-chat-1", "error": {"type": "AuthError", "status": 403}})]
    );
}

/// What tests/pusher/auth_driver.mjs (unmodified pusher-js) prints for `spec`, one line per
/// channel, sorted by channel.
async fn auth_driver(spec: Value) -> Vec<Value> {
    common::pusher::npm_fixture();
    let run = tokio::process::Command::new("node")
        .arg("auth_driver.mjs")
        .arg(spec.to_string())
        .current_dir(SDK_DIR)
        .output();
    let output = tokio::time::timeout(common::WAIT * 4, run)
        .await
        .expect("pusher-js finishes in time")
        .expect("node runs (Node.js 20+ on PATH)");
    let mut lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(output.status.success(), "auth_driver.mjs failed: {lines:?}");
    lines.sort_by_key(|line| line["channel"].to_string());
    lines
}

/// An app configured with an encryption master key (32 bytes, base64, as Pusher's SDKs take
/// it): the endpoint authorizes `private-encrypted-` channels with Pusher's answer, `auth`
/// and the channel's `shared_secret`, byte for byte what Pusher's Node SDK answers with the
/// same key; and end to end, an event the SDK encrypts and publishes through the server
/// reaches unmodified pusher-js decrypted with the secret the endpoint gave.
#[tokio::test]
async fn encrypted_channels_get_their_shared_secret_from_the_master_key() {
    // "01234567890123456789012345678901", Pusher's SDK examples' key.
    let master = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
    let node = pusher_node(&[
        "--pusher-encryption-master-key",
        master,
        "--channel-rule",
        "private-encrypted-=subscribe",
    ]);
    let base = node.http();
    let alice = login(&base, "alice").await;
    let channel = "private-encrypted-chat-1";
    let form = [("socket_id", "1234.5678"), ("channel_name", channel)];
    let (status, answer) = post_form(&base, "/pusher/auth", Some(&alice), &form).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["auth"],
        format!(
            "app-key:{}",
            hmac_hex("app-secret", "1234.5678:private-encrypted-chat-1")
        )
    );
    let (id, secret) = ("7", "app-secret");
    let app = json!({"id": id, "key": "app-key", "secret": secret, "masterKey": master});
    let call = json!({"call": "authorizeChannel", "socket_id": "1234.5678", "channel": channel});
    let sdk = common::pusher::sdk::sdk_at(Sdk::Node, 1, app, json!([call]));
    assert_eq!(ok(&sdk.await[0]), &answer);

    let data = json!({"text": "for alice's eyes"});
    let lines = auth_driver(json!({
        "key": "app-key", "port": node.addr().port(), "session": alice, "channels": [channel],
        "publish": {"app": {"id": id, "secret": secret, "masterKey": master},
                    "channel": channel, "event": "secret-note", "data": data}}))
    .await;
    assert_eq!(
        lines,
        [json!({"channel": channel, "event": "secret-note", "data": data})]
    );
}

/// What a presence member tells about themself comes from the shared session's
/// `user_info` attribute, as another app sharing the session (here: writing it straight
/// into the Redis session hash) would set it; a session without it gives the user's name.
#[tokio::test]
async fn user_info_is_the_sessions_user_info_attribute() {
    let redis = RedisServer::start_async().await;
    let node = pusher_node(&["--redis", &redis.url()]);
    let base = node.http();
    let bob = login(&base, "bob").await;
    let info = r#"{"name":"Bob B.","avatar":"/b.png"}"#;
    let set = format!(
        "HSET sessionhub:session:{{{bob}}} a:user_info \"{}\"",
        info.replace('"', "\\\"")
    );
    assert_eq!(redis.command(&set).unwrap().trim(), ":1");
    let socket = "1.2";
    let (status, presence) = post_form(
        &base,
        "/pusher/auth",
        Some(&bob),
        &[("socket_id", socket), ("channel_name", "presence-room-9")],
    )
    .await;
    assert_eq!(status, 200, "{presence}");
    let channel_data: Value =
        serde_json::from_str(presence["channel_data"].as_str().unwrap()).unwrap();
    assert_eq!(
        channel_data,
        json!({"user_id": "bob", "user_info": {"name": "Bob B.", "avatar": "/b.png"}})
    );
    let (_, user) = post_form(
        &base,
        "/pusher/user-auth",
        Some(&bob),
        &[("socket_id", socket)],
    )
    .await;
    let user_data: Value = serde_json::from_str(user["user_data"].as_str().unwrap()).unwrap();
    assert_eq!(user_data["user_info"], channel_data["user_info"]);
    let sdk = sdk_sign(
        APP,
        json!([{"call": "authorizeChannel", "socket_id": socket, "channel": "presence-room-9",
                 "data": channel_data}]),
    )
    .await;
    assert_eq!(sdk, [presence]);

    // Over the app's user info limit (1 KB by default): refused, not signed for a socket
    // that would refuse it.
    let big = format!("{{\\\"name\\\":\\\"{}\\\"}}", "b".repeat(1_000));
    let set = format!("HSET sessionhub:session:{{{bob}}} a:user_info \"{big}\"");
    assert_eq!(redis.command(&set).unwrap().trim(), ":0");
    let (status, answer) = post_form(
        &base,
        "/pusher/auth",
        Some(&bob),
        &[("socket_id", socket), ("channel_name", "presence-room-9")],
    )
    .await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (400, &json!("user_info_too_large"))
    );
}

/// In open mode the channel rules let anyone join anything, and the endpoint signs any
/// private channel for a logged-in user; a session is still needed.
#[tokio::test]
async fn open_mode_signs_any_channel_for_a_logged_in_user() {
    let node = node(&["--pusher-app", APP]);
    let base = node.http();
    let alice = login(&base, "alice").await;
    let form = [("socket_id", "1.2"), ("channel_name", "private-anything")];
    let (status, answer) = post_form(&base, "/pusher/auth", Some(&alice), &form).await;
    assert_eq!(status, 200, "{answer}");
    let expected = format!("app-key:{}", hmac_hex("app-secret", "1.2:private-anything"));
    assert_eq!(answer, json!({"auth": expected}));
    let (status, _) = post_form(&base, "/pusher/auth", None, &form).await;
    assert_eq!(status, 403);
}

/// Refused, each with a JSON error naming why: no logged-in session (403), a channel the
/// rules keep the user out of (403), a page of another origin (403), a bad socket id, a bad
/// or public channel name, an encrypted channel (400), an unknown app key (404).
#[tokio::test]
async fn refusals_are_clear() {
    let node = pusher_node(&[]);
    let base = node.http();
    let alice = login(&base, "alice").await;
    let good = [("socket_id", "1.2"), ("channel_name", "private-chat-1")];
    let code = |answer: &Value| {
        answer["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    for cookie in [
        None,
        Some("not-a-session-id"),
        Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ] {
        let (status, answer) = post_form(&base, "/pusher/auth", cookie, &good).await;
        assert_eq!(
            (status, code(&answer)),
            (403, "not_logged_in".into()),
            "{cookie:?}"
        );
        let (status, answer) = post_form(&base, "/pusher/user-auth", cookie, &good[..1]).await;
        assert_eq!(
            (status, code(&answer)),
            (403, "not_logged_in".into()),
            "{cookie:?}"
        );
    }
    // Logged out: the same cookie no longer signs.
    let carol = login(&base, "carol").await;
    common::get(&http(), &base, "/invalidate", Some(&carol)).await;
    let (status, _) = post_form(&base, "/pusher/auth", Some(&carol), &good).await;
    assert_eq!(status, 403);

    let cases: [(Form, u16, &str); 12] = [
        (
            &[("socket_id", "1.2"), ("channel_name", "private-other")],
            403,
            "subscribe_forbidden",
        ),
        (
            &[("socket_id", "1.2"), ("channel_name", "presence-lobby")],
            403,
            "subscribe_forbidden",
        ),
        (
            &[("socket_id", "1.2"), ("channel_name", "chat-public")],
            400,
            "public_channel",
        ),
        (
            &[
                ("socket_id", "1.2"),
                ("channel_name", "private-encrypted-chat-1"),
            ],
            400,
            "encrypted_channel_unsupported",
        ),
        (
            &[("socket_id", "1.2"), ("channel_name", "private-chat:1")],
            400,
            "invalid_channel",
        ),
        (
            &[("socket_id", "1.2"), ("channel_name", "private-chat=1")],
            400,
            "invalid_channel",
        ),
        (
            &[("socket_id", "1.2"), ("channel_name", "")],
            400,
            "invalid_channel",
        ),
        (&[("socket_id", "1.2")], 400, "missing_channel_name"),
        (
            &[("socket_id", "12"), ("channel_name", "private-chat-1")],
            400,
            "invalid_socket_id",
        ),
        (
            &[("socket_id", "1.2.3"), ("channel_name", "private-chat-1")],
            400,
            "invalid_socket_id",
        ),
        (
            &[("socket_id", "a.b"), ("channel_name", "private-chat-1")],
            400,
            "invalid_socket_id",
        ),
        (
            &[("channel_name", "private-chat-1")],
            400,
            "missing_socket_id",
        ),
    ];
    for (form, status, expected) in cases {
        let (got, answer) = post_form(&base, "/pusher/auth", Some(&alice), form).await;
        assert_eq!(
            (got, code(&answer)),
            (status, expected.into()),
            "{form:?}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let long = format!("private-chat-{}", "x".repeat(150));
    let (status, answer) = post_form(
        &base,
        "/pusher/auth",
        Some(&alice),
        &[("socket_id", "1.2"), ("channel_name", &long)],
    )
    .await;
    assert_eq!((status, code(&answer)), (400, "invalid_channel".into()));
    let (status, answer) = post_form(
        &base,
        "/pusher/user-auth",
        Some(&alice),
        &[("socket_id", "x")],
    )
    .await;
    assert_eq!((status, code(&answer)), (400, "invalid_socket_id".into()));

    let (status, answer) = post_form(&base, "/pusher/auth/other-key", Some(&alice), &good).await;
    assert_eq!((status, code(&answer)), (404, "not_found".into()));
    let request = http()
        .post(format!("{base}/pusher/auth"))
        .header("cookie", format!("SESSION={alice}"))
        .header("origin", "https://evil.example")
        .form(&good);
    let (status, answer) = status_and_json(request).await;
    assert_eq!((status, code(&answer)), (403, "origin_not_allowed".into()));
    let request = http()
        .post(format!("{base}/pusher/auth"))
        .header("cookie", format!("SESSION={alice}"))
        .header("content-type", "application/json")
        .body("{not json");
    let (status, answer) = status_and_json(request).await;
    assert_eq!((status, code(&answer)), (400, "bad_body".into()));
    // Still signing for the good request after all that.
    let (status, _) = post_form(&base, "/pusher/auth", Some(&alice), &good).await;
    assert_eq!(status, 200);
}

/// With several apps, `/pusher/auth` cannot tell which app signs and says so;
/// `/pusher/auth/{key}` signs with that app's secret. Without an app, no Pusher route.
#[tokio::test]
async fn several_apps_are_named_by_key() {
    let node = pusher_node(&["--pusher-app", "8:second-key:second-secret"]);
    let base = node.http();
    let alice = login(&base, "alice").await;
    let good = [("socket_id", "1.2"), ("channel_name", "private-chat-1")];
    let (status, answer) = post_form(&base, "/pusher/auth", Some(&alice), &good).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (400, &json!("pusher_app_ambiguous"))
    );
    for (key, secret) in [("app-key", "app-secret"), ("second-key", "second-secret")] {
        let (status, answer) =
            post_form(&base, &format!("/pusher/auth/{key}"), Some(&alice), &good).await;
        assert_eq!(status, 200);
        let expected = format!("{key}:{}", hmac_hex(secret, "1.2:private-chat-1"));
        assert_eq!(answer, json!({"auth": expected}));
        let (status, answer) = post_form(
            &base,
            &format!("/pusher/user-auth/{key}"),
            Some(&alice),
            &good[..1],
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert!(
            answer["auth"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{key}:"))
        );
    }

    let plain = node_without_pusher();
    let bob = login(&plain.http(), "bob").await;
    let (status, _) = post_form(&plain.http(), "/pusher/auth", Some(&bob), &good).await;
    assert_eq!(status, 404);
}

fn node_without_pusher() -> sessionhub_testkit::Node {
    node(&RULES)
}
