//! Shared helpers for the black-box tests: real server processes, real HTTP and WebSocket
//! clients.
#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod chaos;
pub mod pusher;
pub mod sse;
pub mod v1;

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sessionhub_testkit::Node;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sessionhub"))
}

/// A node on the embedded default with `args`.
pub fn node(args: &[&str]) -> Node {
    Node::start(binary(), args).expect("sessionhub starts")
}

/// An HTTP client that opens a connection per request: tests restart and kill servers, and
/// a pooled connection to a dead process would fail the next request for the wrong reason.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

/// Sends `request`; its status and JSON answer (which must be JSON).
pub async fn status_and_json(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request succeeds");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// Sends `request`; the value of the answer's `name` header (which must be there).
pub async fn header_of(request: reqwest::RequestBuilder, name: &str) -> String {
    let response = request.send().await.expect("request succeeds");
    response.headers()[name].to_str().unwrap().to_owned()
}

/// The `SESSION` cookie value a response set, if any ("" for a removal cookie).
pub fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("SESSION="))
        .map(|rest| rest.split(';').next().unwrap_or("").to_owned())
}

/// GET `path` with the session cookie `cookie` (if any); returns status, cookie set, JSON body.
pub async fn get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    cookie: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut request = client.get(format!("{base}{path}"));
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("SESSION={cookie}"));
    }
    let response = request.send().await.expect("request succeeds");
    let status = response.status().as_u16();
    let cookie = session_cookie(&response);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, cookie, body)
}

/// `GET /login?username={user}` (with a client of its own); the session id it set.
pub async fn login(base: &str, user: &str) -> String {
    let (status, cookie, _) = get(&http(), base, &format!("/login?username={user}"), None).await;
    assert_eq!(status, 200);
    cookie.expect("login sets a cookie")
}

/// `n` concurrent `GET /get-session` with session `id`, the i-th to `bases[i % bases.len()]`;
/// asserts each answered 200 and returns the counts they answered, sorted.
pub async fn concurrent_counts(
    client: &reqwest::Client,
    bases: &[String],
    id: &str,
    n: usize,
) -> Vec<i64> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (client, base, id) = (
                client.clone(),
                bases[i % bases.len()].clone(),
                id.to_owned(),
            );
            tokio::spawn(async move { get(&client, &base, "/get-session", Some(&id)).await })
        })
        .collect();
    let mut counts = Vec::new();
    for task in tasks {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, 200);
        counts.push(body["count"].as_i64().unwrap());
    }
    counts.sort_unstable();
    counts
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `/websocket/{id}` and reads the greeting.
pub async fn connect(base_ws: &str, id: &str) -> (Ws, Value) {
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("{base_ws}/websocket/{id}")),
    )
    .await
    .expect("connect in time")
    .expect("websocket connects");
    let greeting = next_text(&mut ws).await;
    (
        ws,
        serde_json::from_str(&greeting).expect("greeting is JSON"),
    )
}

/// The next text frame (pings and pongs skipped).
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .expect("frame reads");
        match frame {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the server closes; returns its close frame.
pub async fn next_close(ws: &mut Ws, within: Duration) -> Option<CloseFrame> {
    tokio::time::timeout(within, async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Message::Close(frame)) => return frame,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the server closes in time")
}

/// Reads until the server closes, within `within`; asserts it sent a close frame with `code`.
pub async fn assert_closes(ws: &mut Ws, within: Duration, code: u16) {
    let close = next_close(ws, within).await.expect("a close frame");
    assert_eq!(u16::from(close.code), code);
}

/// Asserts nothing but pings arrive for `wait`.
pub async fn assert_silent(ws: &mut Ws, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.expect("send");
}

/// `GET /api/online`.
pub async fn online(client: &reqwest::Client, base: &str) -> Value {
    client
        .get(format!("{base}/api/online"))
        .send()
        .await
        .expect("online answers")
        .json()
        .await
        .expect("online is JSON")
}

/// Polls `/api/online` until `online` equals `want`, or panics after `within`.
pub async fn wait_online(client: &reqwest::Client, base: &str, want: u64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = online(client, base).await;
        if now["online"] == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "online stayed {now} instead of {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HS256 token for `sub` signed with `secret`, expiring `exp_from_now` seconds from now
/// (negative: already expired).
pub fn token(secret: &str, sub: &str, exp_from_now: i64) -> String {
    sessionhub_testkit::jwt::hs256(
        secret,
        &serde_json::json!({"sub": sub, "exp": sessionhub_testkit::jwt::now_plus(exp_from_now)}),
    )
}

/// `GET {base}/metrics`: the Prometheus text.
pub async fn metrics(base: &str) -> String {
    http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A Redis of the test's own and `n` nodes in cluster mode on it, named node-0, node-1, ...
pub fn cluster(n: usize) -> (sessionhub_testkit::RedisServer, Vec<Node>) {
    cluster_with(n, &[])
}

/// [`cluster`], each node also given `extra` flags.
pub fn cluster_with(n: usize, extra: &[&str]) -> (sessionhub_testkit::RedisServer, Vec<Node>) {
    let redis = sessionhub_testkit::RedisServer::start().expect("redis-server starts");
    let url = redis.url();
    let nodes = (0..n)
        .map(|i| {
            let name = format!("node-{i}");
            let mut args = vec!["--redis", &url, "--node-id", &name];
            args.extend_from_slice(extra);
            node(&args)
        })
        .collect();
    (redis, nodes)
}

/// POST `body` to `/socket/{id}`; returns the status and JSON answer.
pub async fn push(client: &reqwest::Client, base: &str, id: &str, body: &str) -> (u16, Value) {
    let response = client
        .post(format!("{base}/socket/{id}"))
        .body(body.to_owned())
        .send()
        .await
        .expect("push answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Reads text frames until `want` arrives (earlier ones are skipped), or panics.
pub async fn wait_for_text(ws: &mut Ws, want: &str, within: Duration) {
    tokio::time::timeout(within, async {
        loop {
            if next_text(ws).await == want {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{want:?} did not arrive within {within:?}"));
}

/// Opens `url` with extra request headers; the HTTP status and JSON error code if the
/// server refused.
pub async fn connect_with(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Value), (u16, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().expect("a valid ws url");
    for (name, value) in headers {
        request.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")
    {
        Ok((mut ws, _)) => {
            let greeting = next_text(&mut ws).await;
            Ok((
                ws,
                serde_json::from_str(&greeting).expect("greeting is JSON"),
            ))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: Value = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
            Err((response.status().as_u16(), code))
        }
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

/// Whether `base` answers `/readyz` with 200.
pub async fn is_ready(client: &reqwest::Client, base: &str) -> bool {
    client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Waits until `base`'s readiness is `want`, failing the test after `within`.
pub async fn wait_ready(client: &reqwest::Client, base: &str, want: bool, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while is_ready(client, base).await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{base}/readyz never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `f`, which blocks (processes start and stop), without stalling the runtime's other
/// tasks (a multi-threaded runtime's).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The seed demos across three nodes of one deployment, each node ready first: a session made
/// on node 0 counts on nodes 1 and 2; a push through node 0 reaches sockets for `456` on
/// nodes 1 and 2, and so does a KEY/VALUE frame; the online count is cluster-wide. Returns
/// the session id and the two sockets, for the fault that follows.
pub async fn seed_demos_across(nodes: &[Node]) -> (String, Ws, Ws) {
    let client = http();
    for node in nodes {
        wait_ready(&client, &node.http(), true, Duration::from_secs(10)).await;
    }
    let (_, id, _) = get(&client, &nodes[0].http(), "/login?username=ann", None).await;
    let id = id.unwrap();
    for (node, count) in [(&nodes[1], 1), (&nodes[2], 2)] {
        let (_, _, body) = get(&client, &node.http(), "/get-session", Some(&id)).await;
        assert_eq!(
            (body["username"].as_str(), body["count"].as_i64()),
            (Some("ann"), Some(count))
        );
    }
    let (mut on_b, _) = connect(&nodes[1].ws(), "456").await;
    let (mut on_c, _) = connect(&nodes[2].ws(), "456").await;
    let (status, answer) = push(&client, &nodes[0].http(), "456", "before").await;
    assert_eq!(status, 200);
    assert_eq!(answer["nodes"], 2, "{answer}");
    assert_eq!(next_text(&mut on_b).await, "before");
    assert_eq!(next_text(&mut on_c).await, "before");
    send_text(&mut on_c, r#"{"KEY":456,"VALUE":"aaaa"}"#).await;
    assert_eq!(next_text(&mut on_b).await, "aaaa");
    assert_eq!(next_text(&mut on_c).await, "aaaa");
    wait_online(&client, &nodes[0].http(), 2, Duration::from_secs(10)).await;
    (id, on_b, on_c)
}
