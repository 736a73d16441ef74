//! The push API: `POST /socket/{id}` and `GET /socket/{id}?message=`.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Gateway;
use crate::error::ApiError;
use crate::protocol::UserId;

/// The answer to a push.
#[derive(Debug, Serialize)]
pub(crate) struct Pushed {
    /// Nodes that took the message.
    nodes: usize,
    /// Connections that took it, when known (always on a single node).
    #[serde(skip_serializing_if = "Option::is_none")]
    connections: Option<usize>,
}

#[derive(Deserialize)]
pub(crate) struct MessageQuery {
    message: Option<String>,
}

#[derive(Deserialize)]
struct MessageBody {
    message: String,
}

pub(crate) async fn push_query(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    Query(query): Query<MessageQuery>,
) -> Result<Json<Pushed>, ApiError> {
    let message = query
        .message
        .ok_or_else(|| ApiError::bad_request("missing query parameter `message`"))?;
    if message.len() > gateway.config.max_push_bytes {
        return Err(too_large(gateway.config.max_push_bytes));
    }
    push(&gateway, &id, message).await
}

pub(crate) async fn push_body(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Pushed>, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(gateway.config.max_push_bytes),
        status => ApiError::new(status, "bad_body", rejection.body_text()),
    })?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let message = if is_json {
        serde_json::from_slice::<MessageBody>(&body)
            .map_err(|e| ApiError::bad_request(format!("expected {{\"message\": \"...\"}}: {e}")))?
            .message
    } else {
        String::from_utf8(body.into())
            .map_err(|_| ApiError::bad_request("the message must be UTF-8 text"))?
    };
    push(&gateway, &id, message).await
}

async fn push(gateway: &Gateway, id: &str, message: String) -> Result<Json<Pushed>, ApiError> {
    let user: UserId = id
        .parse()
        .map_err(|e: crate::protocol::InvalidUserId| ApiError::bad_request(e.to_string()))?;
    let receipt = gateway.hub.publish(&user.channel(), message.into()).await?;
    Ok(Json(Pushed {
        nodes: receipt.nodes,
        connections: receipt.connections,
    }))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "message_too_large",
        format!("a pushed message may be at most {limit} bytes"),
    )
}
