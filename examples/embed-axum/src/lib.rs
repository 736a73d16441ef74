//! An existing axum app (a tiny shop) that embeds sessionhub: the session layer gives its
//! handlers shared sessions, and the hub pushes to a user's sockets on whichever node holds
//! them. Swap `MemoryStore` / `Hub::local` for `RedisStore` / the Redis broker to run it
//! on many nodes.
//!
//! It also shows the application deciding through [`Hooks`]: only admins join `admin:*`
//! channels, and a chat message is stamped with its sender before it is published.
#![forbid(unsafe_code)]

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sessionhub::broker::PublishOptions;
use sessionhub::gateway::{Gateway, GatewayConfig};
use sessionhub::hooks::{Caller, Denial, Hooks, Publish};
use sessionhub::hub::Hub;
use sessionhub::protocol::UserId;
use sessionhub::store::{MemoryStore, SessionStore};
use sessionhub::{ApiError, Session, SessionConfig, SessionLayer};

/// The app's own state, plus the hub it pushes through.
#[derive(Clone)]
pub struct Shop {
    hub: Hub,
}

/// The shop's say in what socket clients do.
#[derive(Debug)]
pub struct ShopHooks {
    /// Users who may join `admin:*` channels.
    pub admins: Vec<String>,
}

#[async_trait]
impl Hooks for ShopHooks {
    async fn subscribe(&self, caller: &Caller, channel: &str) -> Result<(), Denial> {
        let admin = self.admins.iter().any(|a| a == caller.user.as_str());
        if channel.starts_with("admin:") && !admin {
            return Err(Denial::forbidden("admins only"));
        }
        Ok(())
    }

    async fn publish(
        &self,
        caller: &Caller,
        channel: &str,
        data: &RawValue,
    ) -> Result<Publish, Denial> {
        if !channel.starts_with("chat:") {
            return Ok(Publish::Allow);
        }
        // Readers learn who wrote from the server, not from what the client claims.
        let stamped = json!({ "from": caller.user.as_str(), "text": data });
        let stamped = RawValue::from_string(stamped.to_string()).expect("JSON is JSON");
        Ok(Publish::Replace(stamped))
    }
}

/// The whole app: the shop's routes with sessions, and sessionhub's socket routes.
pub fn app() -> Router {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let hub = Hub::local("shop-1");
    let sessions = SessionConfig::default();
    // sessionhub's own routes: /websocket/{id}, /ws, /sessionhub.js, /socket/{id}, ...
    let gateway = Gateway::new(
        hub.clone(),
        store.clone(),
        sessions.clone(),
        GatewayConfig {
            demo: false,
            ..GatewayConfig::default()
        },
    )
    .with_hooks(Arc::new(ShopHooks {
        admins: vec!["root".into()],
    }));
    let shop = Router::new()
        .route("/shop/login/{user}", post(login))
        .route("/shop/cart/{item}", post(add_to_cart))
        .route("/shop/cart", get(cart))
        .with_state(Shop { hub: hub.clone() })
        .layer(SessionLayer::from_arc(store, sessions).with_events(gateway.session_events()));
    shop.merge(gateway.router())
}

async fn login(session: Session, Path(user): Path<String>) -> Result<Json<Value>, ApiError> {
    let user: UserId = user
        .parse()
        .map_err(|_| ApiError::bad_request("invalid user name"))?;
    session.login(user.as_str()).await?;
    Ok(Json(json!({ "user": user.as_str() })))
}

/// Adds to the cart (an atomic increment, safe under concurrent requests) and tells every
/// open tab of the user.
async fn add_to_cart(
    State(shop): State<Shop>,
    session: Session,
    Path(item): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user: String = session
        .principal()
        .await?
        .ok_or_else(|| ApiError::bad_request("log in first"))?;
    let count = session.incr(&format!("cart.{item}"), 1).await?;
    let note = json!({ "item": item, "count": count }).to_string();
    let channel = user
        .parse::<UserId>()
        .expect("logged-in users are valid")
        .channel();
    shop.hub
        .publish(&channel, note.into(), &PublishOptions::with_history())
        .await?;
    Ok(Json(json!({ "item": item, "count": count })))
}

async fn cart(session: Session) -> Result<Json<Value>, ApiError> {
    let attributes = session.attributes().await?;
    let cart: serde_json::Map<String, Value> = attributes
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("cart.")?.to_owned(), v)))
        .collect();
    Ok(Json(Value::Object(cart)))
}
