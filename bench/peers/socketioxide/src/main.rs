//! Peer for the fan-out benchmark: socketioxide + socketioxide-redis.
//! A client joins room `user` (query `?user=`); `POST /socket/{id}` and the client event
//! `push {to, msg}` emit `msg` to room `to` on every node.
//! Usage: peer-socketioxide <port> <redis-url>
use axum::{Router, body::Bytes, extract::Path, routing::post};
use serde::Deserialize;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Data, SocketRef};
use socketioxide::SocketIo;
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr};

#[derive(Deserialize)]
struct Push {
    to: String,
    msg: String,
}

async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    let query = socket.req_parts().uri.query().unwrap_or("").to_owned();
    if let Some(user) = query.split('&').find_map(|kv| kv.strip_prefix("user=")) {
        socket.join(user.to_owned());
    }
    socket.on("push", on_push);
}

async fn on_push<A: Adapter>(socket: SocketRef<A>, Data(p): Data<Push>) {
    let _ = socket.within(p.to).emit("msg", &p.msg).await;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().ok_or("port")?.parse()?;
    let url = args.next().ok_or("redis url")?;
    let client = redis::Client::open(format!("{url}?protocol=resp3"))?;
    let adapter = RedisAdapterCtr::new_with_redis(&client).await?;
    let (layer, io) = SocketIo::builder()
        .with_adapter::<RedisAdapter<_>>(adapter)
        .build_layer();
    io.ns("/", on_connect).await?;
    let push_io = io.clone();
    let app = Router::new()
        .route(
            "/socket/{id}",
            post(move |Path(id): Path<String>, body: Bytes| {
                let io = push_io.clone();
                async move {
                    let msg = String::from_utf8_lossy(&body).into_owned();
                    match io.to(id).emit("msg", &msg).await {
                        Ok(()) => "{\"ok\":true}",
                        Err(_) => "{\"ok\":false}",
                    }
                }
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
