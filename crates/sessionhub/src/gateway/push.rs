//! The push API: `POST /socket/{id}`, `GET /socket/{id}?message=` (a user's personal
//! channel), and `POST /api/channels/{channel}/publish` (any channel).
//!
//! A message pushed as text travels as a JSON string; a JSON body's `message` (or `data`)
//! travels as the JSON value it is. Every push goes into the channel's history and carries
//! an offset. An `Idempotency-Key` header makes a retried push publish once.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::state::Gateway;
use crate::broker::PublishOptions;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::protocol::{self, MAX_IDEMPOTENCY_KEY_LEN, UserId};

/// The answer to a push.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Pushed {
    /// Nodes that took the message.
    nodes: usize,
    /// Connections that took it, when known (always on a single node).
    #[serde(skip_serializing_if = "Option::is_none")]
    connections: Option<usize>,
    /// The publication's offset in the channel's history.
    offset: u64,
    /// The history's epoch.
    epoch: String,
    /// The idempotency key was seen before; nothing was published again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

/// The message of `GET /socket/{id}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct MessageQuery {
    /// The message, sent as a JSON string.
    message: Option<String>,
}

/// A JSON push body.
#[derive(Deserialize, ToSchema)]
pub(crate) struct MessageBody {
    /// Any JSON value, sent as it is (`data` is accepted too).
    #[serde(alias = "data")]
    #[schema(value_type = Object)]
    message: Box<RawValue>,
}

/// Pushes `message` to every connection of user `id` (the seed's GET form).
#[utoipa::path(
    get,
    path = "/socket/{id}",
    tag = "push",
    params(("id" = String, Path, description = "the user id"), MessageQuery),
    responses(
        (status = 200, description = "published", body = Pushed),
        (status = 400, description = "a bad user id, no `message`, or a bad \
            `Idempotency-Key`", body = ErrorBody),
        (status = 413, description = "the message is too large", body = ErrorBody),
    )
)]
pub(crate) async fn push_query(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<MessageQuery>,
) -> Result<Json<Pushed>, ApiError> {
    let message = query
        .message
        .ok_or_else(|| ApiError::bad_request("missing query parameter `message`"))?;
    if message.len() > gateway.config.max_push_bytes {
        return Err(too_large(gateway.config.max_push_bytes));
    }
    let data = serde_json::to_string(&message).expect("strings serialize");
    publish(&gateway, &user_channel(&id)?, data, &headers).await
}

/// Pushes the body to every connection of user `id`: a text body as a JSON string, a JSON
/// body's `message` as the value it is.
#[utoipa::path(
    post,
    path = "/socket/{id}",
    tag = "push",
    params(("id" = String, Path, description = "the user id")),
    request_body(content((String = "text/plain"), (MessageBody = "application/json"))),
    responses(
        (status = 200, description = "published", body = Pushed),
        (status = 400, description = "a bad user id or body", body = ErrorBody),
        (status = 413, description = "the message is too large", body = ErrorBody),
    )
)]
pub(crate) async fn push_body(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Pushed>, ApiError> {
    let channel = user_channel(&id)?;
    let data = data_from_body(&gateway, &headers, body)?;
    publish(&gateway, &channel, data, &headers).await
}

/// Publishes the body to a channel, as `POST /socket/{id}` does to a user.
#[utoipa::path(
    post,
    path = "/api/channels/{channel}/publish",
    tag = "channels",
    params(("channel" = String, Path, description = "the channel")),
    request_body(content((String = "text/plain"), (MessageBody = "application/json"))),
    responses(
        (status = 200, description = "published", body = Pushed),
        (status = 400, description = "a bad channel name or body", body = ErrorBody),
        (status = 413, description = "the message is too large", body = ErrorBody),
    )
)]
pub(crate) async fn publish_to_channel(
    State(gateway): State<Gateway>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Pushed>, ApiError> {
    if !protocol::is_public_channel_name(&channel) {
        return Err(ApiError::bad_request(protocol::INVALID_CHANNEL));
    }
    let data = data_from_body(&gateway, &headers, body)?;
    publish(&gateway, &channel, data, &headers).await
}

fn user_channel(id: &str) -> Result<String, ApiError> {
    Ok(id.parse::<UserId>()?.channel())
}

/// The data to publish, as JSON text: a JSON body's `message` (or `data`) as it is, any
/// other body as a JSON string.
fn data_from_body(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<String, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(gateway.config.max_push_bytes),
        status => ApiError::new(status, "bad_body", rejection.body_text()),
    })?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if is_json {
        let body: MessageBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("expected {{\"message\": <JSON>}}: {e}")))?;
        Ok(body.message.get().to_owned())
    } else {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("the message must be UTF-8 text"))?;
        Ok(serde_json::to_string(text).expect("strings serialize"))
    }
}

async fn publish(
    gateway: &Gateway,
    channel: &str,
    data: String,
    headers: &HeaderMap,
) -> Result<Json<Pushed>, ApiError> {
    let idempotency_key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible characters"
                    ))
                })
        })
        .transpose()?;
    let options = PublishOptions {
        history: true,
        idempotency_key,
    };
    let receipt = gateway.hub.publish(channel, data.into(), &options).await?;
    Ok(Json(Pushed {
        nodes: receipt.nodes,
        connections: receipt.connections,
        offset: receipt.offset,
        epoch: receipt.epoch.to_string(),
        duplicate: receipt.duplicate,
    }))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "message_too_large",
        format!("a pushed message may be at most {limit} bytes"),
    )
}
