//! Peer for the sessions benchmark: axum + tower-sessions + tower-sessions-redis-store.
//! `/login?username=` sets `username` and cycles the id; `/get-session` reads the session and
//! increments `count`; `/read-session` only reads. Usage: peer-tower-sessions <port> <redis-url>
use axum::{Json, Router, extract::Query, routing::get};
use serde::Deserialize;
use serde_json::{Map, Value};
use tower_sessions::{Expiry, Session, SessionManagerLayer};
use tower_sessions_redis_store::{RedisStore, fred::prelude::*};

type Answer = Result<Json<Map<String, Value>>, (axum::http::StatusCode, String)>;

fn fail(e: impl std::fmt::Display) -> (axum::http::StatusCode, String) {
    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn describe(session: &Session) -> Answer {
    let mut body = Map::new();
    for key in ["username", "count"] {
        if let Some(v) = session.get::<Value>(key).await.map_err(fail)? {
            body.insert(key.into(), v);
        }
    }
    body.insert("sessionId".into(), session.id().map(|i| i.to_string()).into());
    Ok(Json(body))
}

#[derive(Deserialize)]
struct Login {
    username: Option<String>,
}

async fn login(session: Session, Query(q): Query<Login>) -> Answer {
    let name = q.username.unwrap_or_else(|| "user".into());
    session.insert("username", name).await.map_err(fail)?;
    session.cycle_id().await.map_err(fail)?;
    describe(&session).await
}

async fn get_session(session: Session) -> Answer {
    let n: i64 = session.get("count").await.map_err(fail)?.unwrap_or(0);
    session.insert("count", n + 1).await.map_err(fail)?;
    describe(&session).await
}

async fn read_session(session: Session) -> Answer {
    describe(&session).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().ok_or("port")?.parse()?;
    let url = args.next().ok_or("redis url")?;
    let pool = Pool::new(Config::from_url(&url)?, None, None, None, 6)?;
    let _conn = pool.connect();
    pool.wait_for_connect().await?;
    let layer = SessionManagerLayer::new(RedisStore::new(pool))
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30)));
    let app = Router::new()
        .route("/login", get(login).post(login))
        .route("/get-session", get(get_session).post(get_session))
        .route("/read-session", get(read_session))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
