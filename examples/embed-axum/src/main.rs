//! Runs the example shop on 127.0.0.1:3000.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("shop on http://{}", listener.local_addr()?);
    let app = sessionhub_example_embed::app();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
