//! An application backend for the HTTP hooks, started by the test: real axum on a free
//! port. What it answers is chosen by the names in the request (users, channels), so one
//! backend serves every case of a test:
//!
//! - connect: user `deny*` refused with 4101 (`kick*`: the `disconnect` form, 4105); `stall*` answers after 3 s; `fail*` answers
//!   500; `rename*` becomes `app-<user>`; `joiner*` joins `news`; `short*` gets an
//!   `expire_at` 2 s away; anyone else is allowed as is.
//! - subscribe and publish: channel `deny:*` refused with 4102; `stall:*`, `fail:*` as above;
//!   publish to `wrap:*` replaces the data with `{"wrapped": data}`.
//! - refresh: the first refresh of a user extends by 3 s, the next is refused without a code.
#![allow(unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One call the backend received.
#[derive(Debug, Clone)]
pub struct Call {
    pub hook: String,
    pub body: Value,
    pub headers: HeaderMap,
    /// The `expire_at` it granted, if it granted one.
    pub granted: Option<u64>,
}

/// The running backend.
pub struct Backend {
    pub base: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Backend {
    pub async fn start() -> Self {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let app = axum::Router::new()
            .route("/hook/{name}", post(answer))
            .with_state(calls.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, calls }
    }

    /// The flags that point a node's hooks here.
    pub fn flags(&self, hooks: &[&str]) -> Vec<String> {
        hooks
            .iter()
            .flat_map(|hook| {
                [
                    format!("--proxy-{hook}-url"),
                    format!("{}/hook/{hook}", self.base),
                ]
            })
            .collect()
    }

    /// Every call so far of `hook`.
    pub fn calls(&self, hook: &str) -> Vec<Call> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.hook == hook).cloned().collect()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn answer(
    State(calls): State<Arc<Mutex<Vec<Call>>>>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let user = body["user"].as_str().unwrap_or_default().to_owned();
    let channel = body["channel"].as_str().unwrap_or_default().to_owned();
    let name = if hook == "connect" || hook == "refresh" {
        user.clone()
    } else {
        channel.replace(':', "")
    };
    let mut granted = None;
    let reply = if name.starts_with("stall") {
        tokio::time::sleep(Duration::from_secs(3)).await;
        json!({"result": {}})
    } else if name.starts_with("fail") {
        record(&calls, &hook, &body, &headers, None);
        return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    } else if name.starts_with("kick") {
        json!({"disconnect": {"code": 4105, "reason": "kicked by the app"}})
    } else if name.starts_with("deny") {
        let code = if hook == "connect" { 4101 } else { 4102 };
        json!({"error": {"code": code, "message": format!("{hook} refused by the app")}})
    } else {
        match hook.as_str() {
            "connect" if user.starts_with("rename") => {
                json!({"result": {"user": format!("app-{user}")}})
            }
            "connect" if user.starts_with("joiner") => json!({"result": {"channels": ["news"]}}),
            "connect" if user.starts_with("short") => {
                granted = Some(unix_now() + 2);
                json!({"result": {"expire_at": granted}})
            }
            "publish" if channel.starts_with("wrap:") => {
                json!({"result": {"data": {"wrapped": body["data"]}}})
            }
            "refresh" => {
                let earlier = calls
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|c| c.hook == "refresh" && c.body["user"] == user.as_str())
                    .count();
                if earlier == 0 {
                    granted = Some(unix_now() + 3);
                    json!({"result": {"expire_at": granted}})
                } else {
                    json!({"error": {"message": "no longer"}})
                }
            }
            _ => json!({"result": {}}),
        }
    };
    record(&calls, &hook, &body, &headers, granted);
    Json(reply).into_response()
}

fn record(
    calls: &Mutex<Vec<Call>>,
    hook: &str,
    body: &Value,
    headers: &HeaderMap,
    granted: Option<u64>,
) {
    calls.lock().unwrap().push(Call {
        hook: hook.to_owned(),
        body: body.clone(),
        headers: headers.clone(),
        granted,
    });
}
