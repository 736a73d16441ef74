//! `POST /api/publish`: many publications, on any channels, in one request, sent to the
//! broker together (on Redis one pipeline per server), each answered on its own.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Json, State};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::input;
use super::state::Gateway;
use crate::broker::{BatchItem, Receipt};
use crate::error::{ApiError, ErrorBody};
use crate::protocol::{self, MAX_IDEMPOTENCY_KEY_LEN};

/// Most publications one batch may hold.
pub(crate) const MAX_BATCH: usize = 100;

/// A batch of publications.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Batch {
    /// 1 to 100 publications, published in this order (per channel, offsets follow it).
    publications: Vec<BatchEntry>,
}

/// One publication of a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchEntry {
    /// The channel.
    channel: String,
    /// Any JSON value, published as it is.
    #[schema(value_type = Object)]
    data: Box<RawValue>,
    /// A retried publication with the same key (on the same channel) is published once.
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// One result per publication, in the batch's order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchResults {
    /// Each is either a publication's `offset`, `epoch` and `nodes`, or an `error`.
    results: Vec<BatchResult>,
}

/// The result of one publication.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum BatchResult {
    /// It was published.
    Published {
        /// Its offset in the channel's history.
        offset: u64,
        /// The history's epoch.
        epoch: String,
        /// Nodes that took it.
        nodes: usize,
        /// The idempotency key was seen before: nothing was published again.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    /// It was not (or, for `broker_unavailable`, maybe not: retry with an idempotency key).
    Failed {
        /// As in every API error.
        error: ItemError,
    },
}

/// Why one publication failed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ItemError {
    /// `bad_request` or `broker_unavailable`.
    code: &'static str,
    /// For people.
    message: String,
}

impl From<Receipt> for BatchResult {
    fn from(receipt: Receipt) -> Self {
        Self::Published {
            offset: receipt.offset,
            epoch: receipt.epoch.to_string(),
            nodes: receipt.nodes,
            duplicate: receipt.duplicate,
        }
    }
}

impl BatchResult {
    fn failed(code: &'static str, message: impl Into<String>) -> Self {
        Self::Failed {
            error: ItemError {
                code,
                message: message.into(),
            },
        }
    }
}

/// Publishes many publications at once; a bad one fails alone.
#[utoipa::path(
    post,
    path = "/api/publish",
    tag = "channels",
    request_body = Batch,
    responses(
        (status = 200, description = "one result per publication, in order", body = BatchResults),
        (status = 400, description = "not a batch, or more than 100 publications", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 415, description = "not `application/json`", body = ErrorBody),
    )
)]
pub(crate) async fn publish(
    State(gateway): State<Gateway>,
    body: Result<Json<Batch>, JsonRejection>,
) -> Result<Json<BatchResults>, ApiError> {
    let batch = input::json(body)?;
    let count = batch.publications.len();
    if !(1..=MAX_BATCH).contains(&count) {
        return Err(ApiError::bad_request(format!(
            "publications: 1 to {MAX_BATCH}, not {count}"
        )));
    }
    // Refused items keep their place; the others go to the broker together.
    let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(count);
    let mut items = Vec::with_capacity(count);
    for entry in batch.publications {
        match check(&entry) {
            Ok(()) => {
                results.push(None);
                items.push(BatchItem {
                    channel: entry.channel,
                    data: entry.data.get().to_owned().into(),
                    idempotency_key: entry.idempotency_key,
                });
            }
            Err(message) => results.push(Some(BatchResult::failed("bad_request", message))),
        }
    }
    let mut published = gateway.hub.publish_batch(&items).await.into_iter();
    let results = results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| match published.next().expect("one per item") {
                Ok(receipt) => receipt.into(),
                Err(e) => BatchResult::failed(e.code(), e.to_string()),
            })
        })
        .collect();
    Ok(Json(BatchResults { results }))
}

fn check(entry: &BatchEntry) -> Result<(), String> {
    if !protocol::is_public_channel_name(&entry.channel) {
        return Err(protocol::INVALID_CHANNEL.to_owned());
    }
    if entry
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN)
    {
        return Err(format!(
            "idempotency_key: 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
        ));
    }
    Ok(())
}
