//! The session layer embedded in an axum app, over real HTTP, on every store backend:
//! lost updates, resurrection after invalidate, and store calls per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use serde_json::{Map, Value};
use sessionhub::error::StoreError;
use sessionhub::session::{SessionEvents, SessionId};
use sessionhub::store::{Change, MemoryStore, Record, RedisStore, SessionStore, Updated};
use sessionhub::{ApiError, Session, SessionConfig, SessionLayer};
use sessionhub_testkit::RedisServer;

/// Counts calls on the way to a real store.
struct Counting<S> {
    inner: S,
    calls: Arc<AtomicUsize>,
}

#[async_trait]
impl<S: SessionStore> SessionStore for Counting<S> {
    async fn load(&self, id: &SessionId, ttl: Duration) -> Result<Option<Record>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.load(id, ttl).await
    }
    async fn create(&self, id: &SessionId, r: &Record, ttl: Duration) -> Result<bool, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.create(id, r, ttl).await
    }
    async fn update(
        &self,
        id: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.update(id, changes, ttl).await
    }
    async fn update_and_load(
        &self,
        id: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
        lifetime: Option<Duration>,
    ) -> Result<Option<(Record, Vec<i64>)>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.update_and_load(id, changes, ttl, lifetime).await
    }
    async fn rotate(
        &self,
        old: &SessionId,
        new: &SessionId,
        changes: &[(String, Change)],
        ttl: Duration,
    ) -> Result<Updated, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.rotate(old, new, changes, ttl).await
    }
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(id).await
    }
    async fn expires_in(&self, id: &SessionId) -> Result<Option<Duration>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.expires_in(id).await
    }
    async fn index_add(&self, p: &str, id: &SessionId, keep: Duration) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.index_add(p, id, keep).await
    }
    async fn index_remove(&self, p: &str, id: &SessionId) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.index_remove(p, id).await
    }
    async fn index_list(&self, p: &str) -> Result<Vec<SessionId>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.index_list(p).await
    }
}

async fn set(session: Session, Path((k, v)): Path<(String, String)>) -> Result<(), ApiError> {
    session.insert(&k, v).await?;
    Ok(())
}

/// Loads the session, waits, then writes: the write lands after a concurrent invalidate.
async fn slow_set(session: Session, Path((k, v)): Path<(String, String)>) -> Result<(), ApiError> {
    session.attributes().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.insert(&k, v).await?;
    Ok(())
}

async fn slow_incr(session: Session) -> Result<String, ApiError> {
    session.attributes().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(session.incr("n", 1).await?.to_string())
}

/// Writes before it reads anything: never loads first.
async fn slow_blind_set(
    session: Session,
    Path((k, v)): Path<(String, String)>,
) -> Result<(), ApiError> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.insert(&k, v).await?;
    Ok(())
}

async fn slow_blind_incr(session: Session) -> Result<String, ApiError> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(session.incr("n", 1).await?.to_string())
}

/// Increments, then answers every attribute (what the demo's `/get-session` does).
async fn incr_all(session: Session) -> Result<axum::Json<Map<String, Value>>, ApiError> {
    session.incr("n", 1).await?;
    Ok(axum::Json(session.attributes().await?))
}

/// Reads, then writes.
async fn read_set(
    session: Session,
    Path((k, v)): Path<(String, String)>,
) -> Result<axum::Json<Map<String, Value>>, ApiError> {
    let before = session.attributes().await?;
    session.insert(&k, v).await?;
    Ok(axum::Json(before))
}

async fn all(session: Session) -> Result<axum::Json<Map<String, Value>>, ApiError> {
    Ok(axum::Json(session.attributes().await?))
}

/// The session as `Debug` prints it, once loaded.
async fn debug(session: Session) -> Result<String, ApiError> {
    session.attributes().await?;
    Ok(format!("{session:?}"))
}

async fn invalidate(session: Session) -> Result<(), ApiError> {
    Ok(session.invalidate().await?)
}

struct App {
    base: String,
    calls: Arc<AtomicUsize>,
    client: reqwest::Client,
    _redis: Option<RedisServer>,
}

async fn app(store: impl SessionStore, redis: Option<RedisServer>) -> App {
    let calls = Arc::new(AtomicUsize::new(0));
    let store = Counting {
        inner: store,
        calls: calls.clone(),
    };
    let router = Router::new()
        .route("/set/{k}/{v}", get(set))
        .route("/slow-set/{k}/{v}", get(slow_set))
        .route("/slow-incr", get(slow_incr))
        .route("/slow-blind-set/{k}/{v}", get(slow_blind_set))
        .route("/slow-blind-incr", get(slow_blind_incr))
        .route("/incr-all", get(incr_all))
        .route("/read-set/{k}/{v}", get(read_set))
        .route("/all", get(all))
        .route("/invalidate", get(invalidate))
        .route("/debug", get(debug))
        .route("/untouched", get(|| async { "no session here" }))
        .layer(SessionLayer::new(store, SessionConfig::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    App {
        base: format!("http://{addr}"),
        calls,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        _redis: redis,
    }
}

impl App {
    /// GET with the id in X-Auth-Token; returns the id the response issued (if any).
    async fn get(&self, path: &str, id: Option<&str>) -> (Option<String>, String) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(id) = id {
            request = request.header("x-auth-token", id);
        }
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let issued = response
            .headers()
            .get("x-auth-token")
            .map(|v| v.to_str().unwrap().to_owned());
        (issued, response.text().await.unwrap())
    }

    async fn attributes(&self, id: &str) -> Map<String, Value> {
        serde_json::from_str(&self.get("/all", Some(id)).await.1).unwrap()
    }

    fn calls(&self) -> usize {
        self.calls.swap(0, Ordering::SeqCst)
    }
}

/// Sets `k{i}` to `v{i}` for `i` in `0..count` on session `id`, all at once, through the
/// `writers` in turn; then checks through `reader` that every one of them was kept.
async fn every_concurrent_write_is_kept(
    writers: &[Arc<App>],
    reader: &App,
    id: &str,
    count: usize,
) {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (node, id) = (writers[i % writers.len()].clone(), id.to_owned());
            tokio::spawn(async move { node.get(&format!("/set/k{i}/v{i}"), Some(&id)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let attributes = reader.attributes(id).await;
    for i in 0..count {
        assert_eq!(
            attributes[&format!("k{i}")],
            format!("v{i}"),
            "k{i} was lost"
        );
    }
}

async fn concurrent_writes_to_different_attributes_are_all_kept(app: App) {
    let (id, _) = app.get("/set/seed/1", None).await;
    let id = id.unwrap();
    let app = Arc::new(app);
    every_concurrent_write_is_kept(std::slice::from_ref(&app), &app, &id, 50).await;
}

type Answer = (Option<String>, String);

/// Starts a session, sends the slow `write` and `incr` requests on it, and invalidates it
/// while they wait. Returns the ended id and the two requests, still running.
async fn invalidate_under(
    app: &Arc<App>,
    write: &'static str,
    incr: &'static str,
) -> (
    String,
    tokio::task::JoinHandle<Answer>,
    tokio::task::JoinHandle<Answer>,
) {
    let (id, _) = app.get("/set/user/alice", None).await;
    let id = id.unwrap();
    let spawn = |path: &'static str| {
        let (app, id) = (app.clone(), id.clone());
        tokio::spawn(async move { app.get(path, Some(&id)).await })
    };
    let (writer, incr) = (spawn(write), spawn(incr));
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.get("/invalidate", Some(&id)).await;
    (id, writer, incr)
}

/// The increment that raced the invalidate of `id` went into a brand-new session, not the
/// ended one, and the ended one stays ended.
async fn incr_started_afresh(app: &App, id: &str, incr: tokio::task::JoinHandle<Answer>) {
    let (issued, n) = incr.await.unwrap();
    assert_eq!(n, "1");
    assert_ne!(issued.as_deref(), Some(id));
    assert!(
        app.attributes(id).await.is_empty(),
        "the ended session came back"
    );
}

async fn a_write_that_started_before_invalidate_does_not_resurrect(app: App) {
    let app = Arc::new(app);
    let (id, writer, incr) = invalidate_under(&app, "/slow-set/cart/full", "/slow-incr").await;
    let (issued, _) = writer.await.unwrap();
    assert_eq!(
        issued.as_deref(),
        Some(""),
        "the late writer is told the session ended"
    );
    incr_started_afresh(&app, &id, incr).await;
}

/// The same race for a request whose first use of the session is a write, sent together
/// with the load: the write lands after the invalidate, and starts a new session.
async fn a_blind_write_after_invalidate_does_not_resurrect(app: App) {
    let app = Arc::new(app);
    let (id, writer, incr) =
        invalidate_under(&app, "/slow-blind-set/cart/full", "/slow-blind-incr").await;
    let (issued, _) = writer.await.unwrap();
    let issued = issued.expect("the write went into a new session");
    assert_ne!(issued, id);
    assert_eq!(
        app.attributes(&issued).await,
        serde_json::from_str::<Map<String, Value>>(r#"{"cart":"full"}"#).unwrap(),
        "the new session has only what this request wrote"
    );
    incr_started_afresh(&app, &id, incr).await;
}

async fn store_calls_per_request_are_minimal(app: App) {
    app.get("/untouched", None).await;
    assert_eq!(
        app.calls(),
        0,
        "a request that does not use the session costs nothing"
    );
    let (id, _) = app.get("/set/a/1", None).await;
    assert_eq!(app.calls(), 1, "a new session is one create");
    let id = id.unwrap();
    app.get("/all", Some(&id)).await;
    assert_eq!(app.calls(), 1, "a read is one load");
    app.get("/set/b/2", Some(&id)).await;
    assert_eq!(
        app.calls(),
        1,
        "a write that nothing read before is one update_and_load"
    );
    let (_, body) = app.get("/incr-all", Some(&id)).await;
    assert_eq!(app.calls(), 1, "an increment loads the session with it");
    assert_eq!(body, r#"{"a":"1","b":"2","n":1}"#);
    app.get("/read-set/c/3", Some(&id)).await;
    assert_eq!(
        app.calls(),
        2,
        "a read then a write are a load and an update"
    );
    assert_eq!(app.attributes(&id).await["c"], "3");
    app.calls();
    let (issued, body) = app.get("/incr-all", Some("AAAAAAAAAAAAAAAAAAAAAQ")).await;
    assert_eq!(
        app.calls(),
        2,
        "a write to an unknown id finds nothing, then creates a new session"
    );
    assert_eq!(body, r#"{"n":1}"#);
    assert_ne!(issued.as_deref(), Some("AAAAAAAAAAAAAAAAAAAAAQ"));
    let (issued, _) = app.get("/all", Some("AAAAAAAAAAAAAAAAAAAAAA")).await;
    assert_eq!(app.calls(), 1);
    assert_eq!(
        issued.as_deref(),
        Some(""),
        "an unknown id is cleared, not adopted"
    );
}

macro_rules! on_every_store {
    ($($check:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(#[tokio::test] async fn $check() {
                super::$check(app(MemoryStore::new(), None).await).await;
            })*
        }
        mod redis_store {
            use super::*;
            $(#[tokio::test] async fn $check() {
                let redis = RedisServer::start().unwrap();
                let store = RedisStore::connect(&redis.url(), "test:").await.unwrap();
                super::$check(app(store, Some(redis)).await).await;
            })*
        }
    };
}

on_every_store!(
    concurrent_writes_to_different_attributes_are_all_kept,
    a_write_that_started_before_invalidate_does_not_resurrect,
    a_blind_write_after_invalidate_does_not_resurrect,
    store_calls_per_request_are_minimal,
);

/// Two apps ("nodes") on one Redis: concurrent writes of different attributes through both
/// are all kept, and a slow write on one cannot undo a logout on the other.
#[tokio::test]
async fn two_nodes_on_one_redis_keep_every_write_and_every_logout() {
    let redis = RedisServer::start().unwrap();
    let a = app(RedisStore::connect(&redis.url(), "t:").await.unwrap(), None).await;
    let b = Arc::new(app(RedisStore::connect(&redis.url(), "t:").await.unwrap(), None).await);
    let a = Arc::new(a);
    let (id, _) = a.get("/set/seed/1", None).await;
    let id = id.unwrap();
    every_concurrent_write_is_kept(&[a.clone(), b.clone()], &b, &id, 60).await;

    let slow = {
        let (a, id) = (a.clone(), id.clone());
        tokio::spawn(async move { a.get("/slow-set/cart/full", Some(&id)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.get("/invalidate", Some(&id)).await;
    slow.await.unwrap();
    assert!(b.attributes(&id).await.is_empty(), "the logout was undone");
}

/// Records the sessions announced as ended.
#[derive(Default)]
struct Ended(std::sync::Mutex<Vec<String>>);

#[async_trait]
impl SessionEvents for Ended {
    async fn ended(&self, id: &SessionId) {
        self.0.lock().unwrap().push(id.as_str().to_owned());
    }
}

/// A session found past its absolute lifetime is deleted and announced as ended, so that
/// whatever is bound to it (sockets on every node) ends too, with a read and with a write.
#[tokio::test]
async fn an_outlived_session_is_announced_as_ended() {
    let ended = Arc::new(Ended::default());
    let config = SessionConfig {
        max_lifetime: Some(Duration::from_millis(400)),
        ..SessionConfig::default()
    };
    let router = Router::new()
        .route("/set/{k}/{v}", get(set))
        .route("/all", get(all))
        .route("/incr-all", get(incr_all))
        .layer(SessionLayer::new(MemoryStore::new(), config).with_events(ended.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let login = |path: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let response = client.get(format!("{base}{path}")).send().await.unwrap();
            response.headers()["x-auth-token"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    let use_it = |path: &'static str, id: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let response = client
                .get(format!("{base}{path}"))
                .header("x-auth-token", id)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
        }
    };
    let read = login("/set/a/1").await;
    let written = login("/set/b/2").await;
    // Used while young: a read slides the record's expiry a whole idle timeout, past the
    // lifetime, so only the layer's lifetime check can end it (a session left alone expires
    // in the store at its lifetime, unannounced, like any idle expiry).
    tokio::time::sleep(Duration::from_millis(150)).await;
    use_it("/all", read.clone()).await;
    use_it("/all", written.clone()).await;
    assert!(ended.0.lock().unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    use_it("/all", read.clone()).await;
    use_it("/incr-all", written.clone()).await;
    assert_eq!(*ended.0.lock().unwrap(), [read, written]);
}

/// Logs and panics print `Debug`: a session's shows neither its id (a credential) nor its
/// attributes.
#[tokio::test]
async fn a_sessions_debug_output_reveals_nothing() {
    let app = app(MemoryStore::new(), None).await;
    let (issued, _) = app.get("/set/card/4111-secret", None).await;
    let id = issued.expect("a new session's id");
    let (_, printed) = app.get("/debug", Some(&id)).await;
    assert!(printed.starts_with("Session"), "{printed}");
    assert!(!printed.contains(&id), "{printed}");
    assert!(!printed.contains("4111-secret"), "{printed}");
}
