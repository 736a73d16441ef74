//! `GET /api/channels/{channel}/history`: a page of what a channel's history keeps.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::input;
use super::state::Gateway;
use crate::broker::{HistoryQuery, Publication, StreamPosition};
use crate::error::{ApiError, ErrorBody};
use crate::protocol;

/// Most publications one history request returns.
pub(crate) const MAX_HISTORY_LIMIT: usize = 1000;

/// Publications returned when the request names no limit.
const DEFAULT_HISTORY_LIMIT: usize = 100;

/// Which part of the history to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// Only publications after this offset; needs `epoch`.
    since: Option<u64>,
    /// The epoch `since` belongs to.
    epoch: Option<String>,
    /// At most this many publications (default 100, at most 1000; 0 for only the
    /// channel's position).
    limit: Option<usize>,
    /// Newest first (then the newest `limit`); otherwise oldest first.
    #[serde(default)]
    reverse: bool,
}

/// A page of a channel's history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct History {
    /// The history's epoch: offsets count within it ("" when the server keeps no history).
    epoch: String,
    /// The offset of the newest publication (0 if none yet).
    offset: u64,
    /// The selected publications, in the order asked for. Only what the history still
    /// keeps (`--history-size`, `--history-ttl`): the oldest may be gone.
    publications: Vec<HistoryEntry>,
}

/// One publication.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HistoryEntry {
    /// Its position in the channel's history.
    offset: u64,
    /// What was published, as the JSON value it is.
    #[schema(value_type = Object)]
    data: Box<RawValue>,
}

impl From<Publication> for HistoryEntry {
    fn from(publication: Publication) -> Self {
        let text = publication.data.to_string();
        let data = RawValue::from_string(text.clone()).unwrap_or_else(|_| {
            // Every publish path sends JSON; should anything else be kept, show it as text.
            RawValue::from_string(serde_json::to_string(&text).expect("strings serialize"))
                .expect("a JSON string is JSON")
        });
        Self {
            offset: publication.offset,
            data,
        }
    }
}

/// Reads a page of a channel's history.
#[utoipa::path(
    get,
    path = "/api/channels/{channel}/history",
    tag = "channels",
    params(("channel" = String, Path, description = "the channel"), HistoryParams),
    responses(
        (status = 200, description = "the page and the channel's position", body = History),
        (status = 400, description = "a bad channel name, `since` without `epoch`, or a \
            limit over 1000", body = ErrorBody),
        (status = 409, description = "`position_unknown`: `epoch` is not the channel's \
            current one, or `since` is past its newest offset", body = ErrorBody),
    )
)]
pub(crate) async fn history(
    State(gateway): State<Gateway>,
    Path(channel): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let params = input::query(params)?;
    if !protocol::is_public_channel_name(&channel) {
        return Err(ApiError::bad_request(protocol::INVALID_CHANNEL));
    }
    let limit = params.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if limit > MAX_HISTORY_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit: at most {MAX_HISTORY_LIMIT}"
        )));
    }
    let since = match (params.since, params.epoch) {
        (Some(offset), Some(epoch)) => Some(StreamPosition { epoch, offset }),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "`since` and `epoch` go together: an offset counts within an epoch",
            ));
        }
    };
    let query = HistoryQuery {
        since: since.clone(),
        limit,
        reverse: params.reverse,
    };
    let (page, _) = gateway.hub.history(&channel, &query).await?;
    if let Some(since) = since
        && (*since.epoch != *page.epoch || since.offset > page.offset)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "position_unknown",
            format!(
                "the channel is at epoch {:?}, offset {}: that position is from another \
                 history; start over from there",
                page.epoch, page.offset
            ),
        ));
    }
    Ok(Json(History {
        epoch: page.epoch.to_string(),
        offset: page.offset,
        publications: page.publications.into_iter().map(Into::into).collect(),
    }))
}
