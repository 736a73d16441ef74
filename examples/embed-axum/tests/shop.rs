//! The embedded app over real HTTP and a real WebSocket.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
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

/// The shop's hooks over a real protocol v1 socket: a non-admin is refused `admin:*` with
/// the hook's reason, an admin joins it, and a chat message reaches readers stamped with
/// its sender.
#[tokio::test]
async fn the_shops_hooks_refuse_admin_channels_and_stamp_chat_messages() {
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
    let open = |user: &'static str| async move {
        let url = format!("ws://{addr}/ws?user={user}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let greeting = next_json(&mut ws).await;
        assert_eq!(greeting["type"], "connected");
        ws
    };
    let subscribe =
        |channel: &str| json!({"type": "subscribe", "channel": channel, "id": 1}).to_string();

    let mut ann = open("ann").await;
    ann.send(Message::text(subscribe("admin:orders")))
        .await
        .unwrap();
    let refused = next_json(&mut ann).await;
    assert_eq!(
        refused,
        // 4403: the code of `Denial::forbidden`, the example's refusal.
        json!({"type": "error", "id": 1, "code": "denied", "message": "admins only", "app_code": 4403})
    );
    let mut root = open("root").await;
    root.send(Message::text(subscribe("admin:orders")))
        .await
        .unwrap();
    assert_eq!(next_json(&mut root).await["type"], "subscribed");

    root.send(Message::text(subscribe("chat:lobby")))
        .await
        .unwrap();
    assert_eq!(next_json(&mut root).await["type"], "subscribed");
    let says = json!({"type": "publish", "channel": "chat:lobby", "data": "hi", "id": 2});
    ann.send(Message::text(says.to_string())).await.unwrap();
    assert_eq!(next_json(&mut ann).await["type"], "published");
    let heard = next_json(&mut root).await;
    assert_eq!(
        heard["data"],
        json!({"from": "ann", "text": "hi"}),
        "{heard}"
    );
}

/// The next text frame, as JSON.
async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}
