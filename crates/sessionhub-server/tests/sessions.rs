//! The session demo and the session layer, black-box over HTTP against a real process.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn login_rotates_the_id_and_get_session_counts() {
    let node = node(&[]);
    let client = http();
    let base = node.http();

    // A session that exists before login must not keep its id (fixation).
    let (_, before, body) = get(&client, &base, "/get-session", None).await;
    let before = before.expect("a new session gets a cookie");
    assert_eq!(body["count"], 1);
    assert_eq!(body["sessionId"], before.as_str());

    let (status, after, body) = get(&client, &base, "/login?username=alice", Some(&before)).await;
    assert_eq!(status, 200);
    let after = after.expect("login issues a new id");
    assert_ne!(after, before, "login must rotate the session id");
    assert_eq!(body["username"], "alice");
    assert_eq!(body["count"], 1, "rotation keeps the data");
    assert_eq!(body["sessionId"], after.as_str());

    // The old id is dead; the new one carries the data.
    let (_, _, old) = get(&client, &base, "/get-session", Some(&before)).await;
    assert_eq!(old.get("username"), None);
    let (_, set, body) = get(&client, &base, "/get-session", Some(&after)).await;
    assert_eq!(set, None, "an unchanged id is not re-sent");
    assert_eq!(body["count"], 2);
    assert!(body["count"].is_number());
    assert_eq!(body["username"], "alice");
}

#[tokio::test]
async fn read_session_answers_every_attribute_and_changes_nothing() {
    let node = node(&[]);
    let client = http();
    let base = node.http();
    let id = login(&base, "rita").await;
    get(&client, &base, "/get-session", Some(&id)).await;
    let (_, _, written) = get(&client, &base, "/get-session", Some(&id)).await;
    assert_eq!(written["count"], 2);

    for _ in 0..3 {
        let (status, set, body) = get(&client, &base, "/read-session", Some(&id)).await;
        assert_eq!(status, 200);
        assert_eq!(set, None, "nothing for the client to change");
        assert_eq!(
            body, written,
            "the same answer as /get-session, without the increment"
        );
    }
    let (_, _, body) = get(&client, &base, "/get-session", Some(&id)).await;
    assert_eq!(body["count"], 3);

    // Without a session: nothing to answer, and nothing created.
    let (status, set, body) = get(&client, &base, "/read-session", None).await;
    assert_eq!((status, set, body), (200, None, json!({})));
    // With an id that names no session: the client is told to drop it.
    let unknown = "AAAAAAAAAAAAAAAAAAAAAA";
    let (status, set, body) = get(&client, &base, "/read-session", Some(unknown)).await;
    assert_eq!((status, set.as_deref(), body), (200, Some(""), json!({})));
    // POST is for the routes that write.
    let response = client
        .post(format!("{base}/read-session"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn reading_the_session_slides_its_expiry() {
    let body = use_then_idle("/read-session", "sam").await;
    assert_eq!(body, json!({}), "idle past the timeout: expired");
}

/// On a node with a 2 s idle timeout, logs `user` in and uses the session through `path`
/// every second for 3 s (never idle for 2 s: it is still `user`'s each time), then idles for
/// 2.5 s; returns what `path` answers then.
async fn use_then_idle(path: &str, user: &str) -> serde_json::Value {
    let node = node(&["--session-timeout", "2"]);
    let client = http();
    let base = node.http();
    let id = login(&base, user).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (_, _, body) = get(&client, &base, path, Some(&id)).await;
        assert_eq!(body["username"], user);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, _, body) = get(&client, &base, path, Some(&id)).await;
    body
}

#[tokio::test]
async fn login_defaults_the_username_and_accepts_a_form_post() {
    let node = node(&[]);
    let client = http();
    let (_, _, body) = get(&client, &node.http(), "/login", None).await;
    let name = body["username"].as_str().unwrap();
    assert!(
        name.starts_with("user") && name[4..].parse::<u64>().is_ok(),
        "{name}"
    );

    let response = client
        .post(format!("{}/login", node.http()))
        .form(&[("username", "bob")])
        .send()
        .await
        .unwrap();
    assert!(session_cookie(&response).is_some());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["username"], "bob");
}

#[tokio::test]
async fn the_session_cookie_has_safe_attributes() {
    let node = node(&["--trusted-proxies", "127.0.0.1"]);
    let client = http();
    let cookie = header_of(client.get(format!("{}/login", node.http())), "set-cookie").await;
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    assert!(cookie.contains("Path=/"), "{cookie}");
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP must not get Secure: {cookie}"
    );

    // Behind a trusted TLS-terminating proxy the cookie is Secure.
    let cookie = header_of(
        client
            .get(format!("{}/login", node.http()))
            .header("x-forwarded-proto", "https"),
        "set-cookie",
    )
    .await;
    assert!(cookie.contains("Secure"), "{cookie}");
}

#[tokio::test]
async fn x_forwarded_proto_from_an_untrusted_peer_is_ignored() {
    let node = node(&[]);
    let cookie = header_of(
        http()
            .get(format!("{}/login", node.http()))
            .header("x-forwarded-proto", "https"),
        "set-cookie",
    )
    .await;
    assert!(!cookie.contains("Secure"), "{cookie}");
}

#[tokio::test]
async fn the_id_travels_in_x_auth_token_for_clients_without_cookies() {
    let node = node(&[]);
    let client = http();
    let request = client.get(format!("{}/login?username=api", node.http()));
    let token = header_of(request, "x-auth-token").await;
    for expected in [1, 2] {
        let (_, body) = status_and_json(
            client
                .get(format!("{}/get-session", node.http()))
                .header("x-auth-token", &token),
        )
        .await;
        assert_eq!(body["username"], "api");
        assert_eq!(body["count"], expected);
    }
}

#[tokio::test]
async fn invalidate_ends_the_session_and_clears_the_cookie() {
    let node = node(&[]);
    let client = http();
    let base = node.http();
    let id = login(&base, "carol").await;
    let (status, cleared, body) = get(&client, &base, "/invalidate", Some(&id)).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!(1));
    assert_eq!(cleared.as_deref(), Some(""), "a removal cookie is sent");

    let (_, fresh, body) = get(&client, &base, "/get-session", Some(&id)).await;
    let fresh = fresh.expect("a new session");
    assert_ne!(fresh, id, "an ended id is never adopted again");
    assert_eq!(body["count"], 1);
    assert_eq!(body.get("username"), None);
}

#[tokio::test]
async fn forged_garbage_and_unknown_ids_get_a_fresh_session_never_a_500() {
    let node = node(&[]);
    let client = http();
    let base = node.http();
    let unknown = "AAAAAAAAAAAAAAAAAAAAAA"; // well-formed, never issued
    for cookie in [
        unknown,
        "garbage",
        "",
        "../../etc/passwd",
        "%00%ff",
        &"A".repeat(4000),
        "AAAAAAAAAAAAAAAAAAAAA=",
    ] {
        let response = client
            .get(format!("{base}/get-session"))
            .header("cookie", format!("other=1; SESSION={cookie}; x=\"y\""))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "cookie {cookie:?}");
        let issued = session_cookie(&response).expect("a new id is issued");
        assert_ne!(issued, cookie, "a client-chosen id is never adopted");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["count"], 1);
    }
    // A non-UTF-8 cookie header.
    let response = client
        .get(format!("{base}/get-session"))
        .header(
            "cookie",
            reqwest::header::HeaderValue::from_bytes(b"SESSION=\xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn concurrent_get_session_never_loses_an_increment() {
    let node = node(&[]);
    let client = http();
    let base = node.http();
    let (_, id, _) = get(&client, &base, "/login", None).await;
    let id = id.unwrap();
    let seen = concurrent_counts(&client, std::slice::from_ref(&base), &id, 200).await;
    assert_eq!(
        seen,
        (1..=200).collect::<Vec<_>>(),
        "every increment is distinct"
    );
    let (_, _, body) = get(&client, &base, "/get-session", Some(&id)).await;
    assert_eq!(body["count"], 201);
}

#[tokio::test]
async fn session_idle_timeout_expires_and_use_slides_it() {
    let body = use_then_idle("/get-session", "dora").await;
    assert_eq!(body.get("username"), None, "idle past the timeout: expired");
}

#[tokio::test]
async fn the_absolute_lifetime_ends_a_busy_session() {
    let node = node(&["--session-max-lifetime", "2"]);
    let client = http();
    let base = node.http();
    let id = login(&base, "eve").await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        get(&client, &base, "/get-session", Some(&id)).await;
    }
    let (_, _, body) = get(&client, &base, "/get-session", Some(&id)).await;
    assert_eq!(body.get("username"), None);
}

#[tokio::test]
async fn sessions_survive_a_graceful_restart() {
    let mut node = node(&[]);
    let client = http();
    let id = login(&node.http(), "frank").await;
    // Changed right before the stop: only the graceful path can have persisted this.
    get(&client, &node.http(), "/get-session", Some(&id)).await;
    assert_eq!(node.terminate(Duration::from_secs(10)).unwrap(), Some(0));
    node.restart().unwrap();
    let (_, _, body) = get(&client, &node.http(), "/get-session", Some(&id)).await;
    assert_eq!(body["username"], "frank");
    assert_eq!(body["count"], 2);
}

#[tokio::test]
async fn sessions_survive_sigkill_up_to_about_a_second() {
    let mut node = node(&[]);
    let client = http();
    let id = login(&node.http(), "gina").await;
    get(&client, &node.http(), "/get-session", Some(&id)).await;
    // The journal flushes every second.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    node.kill();
    node.restart().unwrap();
    let (_, _, body) = get(&client, &node.http(), "/get-session", Some(&id)).await;
    assert_eq!(body["username"], "gina");
    assert_eq!(body["count"], 2);
}

#[tokio::test]
async fn no_demo_removes_the_demo_routes() {
    let node = node(&["--no-demo"]);
    for path in ["/login", "/get-session", "/read-session", "/invalidate"] {
        let (status, _, body) = get(&http(), &node.http(), path, None).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
}

#[tokio::test]
async fn boolean_environment_variables_accept_1_and_yes() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary())
        .args(["serve", "--listen", "10.1.2.3:9", "--ws-auth", "open"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("SESSIONHUB_NO_DEMO", "1")
        .env("SESSIONHUB_INSECURE", "yes")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Accepted as true: it gets as far as binding the (unroutable here) address.
    assert!(!stderr.contains("invalid value"), "{stderr}");
    assert!(stderr.contains("binding 10.1.2.3:9"), "{stderr}");
}

#[tokio::test]
async fn every_error_is_json_even_for_unknown_routes_and_methods() {
    let node = node(&[]);
    let client = http();
    let cases = [
        (
            client.get(format!("{}/nope", node.http())),
            404,
            "not_found",
        ),
        (
            client.delete(format!("{}/socket/1", node.http())),
            405,
            "method_not_allowed",
        ),
        (
            client.get(format!("{}/websocket/1", node.http())),
            426,
            "upgrade_required",
        ),
        (
            client.get(format!("{}/ws?user=1", node.http())),
            426,
            "upgrade_required",
        ),
    ];
    for (request, status, code) in cases {
        let (got, body) = status_and_json(request).await;
        assert_eq!(got, status);
        assert_eq!(body["error"]["code"], code);
    }
}

#[tokio::test]
async fn a_non_loopback_bind_is_refused_without_insecure() {
    let (code, stderr) = sessionhub_testkit::Node::run_once(
        binary(),
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            "/tmp/sessionhub-refused",
        ],
    )
    .unwrap();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--insecure"), "{stderr}");
    assert!(stderr.contains("0.0.0.0"), "{stderr}");
    // With --insecure it starts, on that address. (Not through `node`, which always listens
    // on 127.0.0.1: that would not be the bind the refusal was about.)
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(binary())
        .args(["serve", "--listen", "0.0.0.0:0", "--insecure", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let listening = tokio::task::spawn_blocking(move || {
        std::io::BufRead::lines(std::io::BufReader::new(stdout))
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("listening on ").map(str::to_owned))
    });
    let listening = tokio::time::timeout(Duration::from_secs(20), listening).await;
    let _ = child.kill();
    child.wait().unwrap();
    let addr: std::net::SocketAddr = listening
        .expect("it starts in time")
        .unwrap()
        .expect("it starts with --insecure")
        .trim()
        .parse()
        .unwrap();
    assert!(addr.ip().is_unspecified(), "{addr}");
}

#[tokio::test]
async fn every_flag_is_in_help_with_its_environment_variable() {
    let out = std::process::Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--listen", "SESSIONHUB_LISTEN"),
        ("--data-dir", "SESSIONHUB_DATA_DIR"),
        ("--session-timeout", "SESSIONHUB_SESSION_TIMEOUT"),
        ("--ws-idle-timeout", "SESSIONHUB_WS_IDLE_TIMEOUT"),
        ("--node-id", "SESSIONHUB_NODE_ID"),
        ("--no-demo", "SESSIONHUB_NO_DEMO"),
        ("--insecure", "SESSIONHUB_INSECURE"),
        ("--session-max-lifetime", "SESSIONHUB_SESSION_MAX_LIFETIME"),
        ("--redis", "SESSIONHUB_REDIS_URL"),
        ("--redis-prefix", "SESSIONHUB_REDIS_PREFIX"),
        ("--trusted-proxies", "SESSIONHUB_TRUSTED_PROXIES"),
        ("--ws-auth", "SESSIONHUB_WS_AUTH"),
        ("--api-key", "SESSIONHUB_API_KEY"),
        ("--api-key-file", "SESSIONHUB_API_KEY_FILE"),
        ("--token-secret", "SESSIONHUB_TOKEN_SECRET"),
        ("--token-secret-file", "SESSIONHUB_TOKEN_SECRET_FILE"),
        ("--allowed-origins", "SESSIONHUB_ALLOWED_ORIGINS"),
        ("--channel-rule", "SESSIONHUB_CHANNEL_RULES"),
        (
            "--max-sessions-per-user",
            "SESSIONHUB_MAX_SESSIONS_PER_USER",
        ),
        ("--cookie-host-prefix", "SESSIONHUB_COOKIE_HOST_PREFIX"),
        (
            "--max-connections-per-ip",
            "SESSIONHUB_MAX_CONNECTIONS_PER_IP",
        ),
        ("--max-messages-per-sec", "SESSIONHUB_MAX_MESSAGES_PER_SEC"),
        (
            "--max-connections-per-user",
            "SESSIONHUB_MAX_CONNECTIONS_PER_USER",
        ),
        ("--max-message-size", "SESSIONHUB_MAX_MESSAGE_SIZE"),
        ("--history-size", "SESSIONHUB_HISTORY_SIZE"),
        ("--history-ttl", "SESSIONHUB_HISTORY_TTL"),
        ("--threads", "SESSIONHUB_THREADS"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(help.contains(env), "{env} missing from --help");
    }
}

#[tokio::test]
async fn flags_read_their_environment_variable() {
    let out = std::process::Command::new(binary())
        .args(["serve", "--data-dir", "/tmp/sessionhub-env"])
        .env("SESSIONHUB_LISTEN", "10.1.2.3:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("10.1.2.3:9"),
        "SESSIONHUB_LISTEN was not read: {stderr}"
    );
}
