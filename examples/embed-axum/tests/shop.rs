//! The embedded app over real HTTP and a real WebSocket.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn sessions_and_pushes_work_inside_an_existing_app() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = sessionhub_example_embed::app();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let client = reqwest::Client::new();
    let login = client
        .post(format!("http://{addr}/shop/login/ann"))
        .send()
        .await
        .unwrap();
    let token = login.headers()["x-auth-token"].to_str().unwrap().to_owned();

    let (mut tab, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/websocket/ann"))
        .await
        .unwrap();
    let greeting = tab.next().await.unwrap().unwrap();
    assert!(matches!(greeting, Message::Text(_)));

    for expected in 1..=2 {
        let added = with_token(
            client.post(format!("http://{addr}/shop/cart/apple")),
            &token,
        )
        .await;
        assert_eq!(added["count"], expected);
        let pushed = tokio::time::timeout(Duration::from_secs(5), tab.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let pushed: Value = serde_json::from_str(pushed.to_text().unwrap()).unwrap();
        assert_eq!(pushed, json!({"item": "apple", "count": expected}));
    }
    let cart = with_token(client.get(format!("http://{addr}/shop/cart")), &token).await;
    assert_eq!(cart, json!({"apple": 2}));
}

/// Sends `request` as the logged-in shopper (session id in `x-auth-token`); the JSON answer.
async fn with_token(request: reqwest::RequestBuilder, token: &str) -> Value {
    request
        .header("x-auth-token", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
