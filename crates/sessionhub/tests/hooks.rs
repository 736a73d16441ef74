//! The in-process hooks' session callbacks, through the gateway's own session demo over real
//! HTTP: a login stores a session (one `session_created`), a re-login rotates it (its old id
//! ends: one `session_destroyed`, no creation), and a logout ends it (one more
//! `session_destroyed`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sessionhub::SessionConfig;
use sessionhub::gateway::{Gateway, GatewayConfig};
use sessionhub::hooks::Hooks;
use sessionhub::hub::Hub;
use sessionhub::session::SessionId;
use sessionhub::store::MemoryStore;

/// Records every session callback, in order.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(&'static str, String)>>,
}

#[async_trait]
impl Hooks for Recorder {
    async fn session_created(&self, id: &SessionId) {
        let event = ("created", id.as_str().to_owned());
        self.events.lock().unwrap().push(event);
    }

    async fn session_destroyed(&self, id: &SessionId) {
        let event = ("destroyed", id.as_str().to_owned());
        self.events.lock().unwrap().push(event);
    }
}

#[tokio::test]
async fn session_callbacks_are_called_once_per_session_created_and_destroyed() {
    let recorder = Arc::new(Recorder::default());
    let gateway = Gateway::new(
        Hub::local("n1"),
        Arc::new(MemoryStore::new()),
        SessionConfig::default(),
        GatewayConfig::default(),
    )
    .with_hooks(recorder.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = gateway
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let call = |path: &str, id: Option<&str>| {
        let mut request = client.post(format!("{base}{path}"));
        if let Some(id) = id {
            request = request.header("x-auth-token", id);
        }
        async move {
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            let issued = response.headers().get("x-auth-token");
            issued.map(|id| id.to_str().unwrap().to_owned())
        }
    };
    let events = || recorder.events.lock().unwrap().clone();

    let first = call("/login?username=ann", None).await.expect("an id");
    assert_eq!(events(), [("created", first.clone())]);
    let rotated = call("/login?username=ann", Some(&first))
        .await
        .expect("a new id");
    assert_ne!(rotated, first);
    assert_eq!(
        events()[1..],
        [("destroyed", first.clone())],
        "rotation ends the old id only"
    );
    call("/get-session", Some(&rotated)).await;
    call("/invalidate", Some(&rotated)).await;
    assert_eq!(
        events(),
        [
            ("created", first.clone()),
            ("destroyed", first),
            ("destroyed", rotated)
        ]
    );
}
