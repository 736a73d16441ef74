//! Presence API: who is on a presence channel, and how many.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Json;
use serde::Serialize;

use super::state::Gateway;
use crate::error::{ApiError, ErrorBody};
use crate::presence::{ChannelStats, Member};
use crate::protocol::{FrameError, is_public_channel_name};

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Members {
    channel: String,
    /// Every user on the channel, with their connections to it, on every node.
    users: Vec<Member>,
}

/// Who is on a presence channel, on every node, with their connections to it.
#[utoipa::path(
    get,
    path = "/api/channels/{channel}/presence",
    tag = "presence",
    params(("channel" = String, Path, description = "a channel with presence (--presence-channels)")),
    responses(
        (status = 200, description = "every user on the channel", body = Members),
        (status = 400, description = "`invalid_channel`: not a channel name", body = ErrorBody),
        (status = 404, description = "`no_presence`: the channel has no presence", body = ErrorBody),
    )
)]
pub(crate) async fn members(
    State(gateway): State<Gateway>,
    Path(channel): Path<String>,
) -> Result<Json<Members>, ApiError> {
    presence_channel(&gateway, &channel)?;
    let users = gateway.presence.members(&channel).await?;
    Ok(Json(Members { channel, users }))
}

/// How many users and connections a presence channel has: cheaper than the member list.
#[utoipa::path(
    get,
    path = "/api/channels/{channel}/presence/stats",
    tag = "presence",
    params(("channel" = String, Path, description = "a channel with presence (--presence-channels)")),
    responses(
        (status = 200, description = "users and connections on the channel", body = ChannelStats),
        (status = 400, description = "`invalid_channel`: not a channel name", body = ErrorBody),
        (status = 404, description = "`no_presence`: the channel has no presence", body = ErrorBody),
    )
)]
pub(crate) async fn stats(
    State(gateway): State<Gateway>,
    Path(channel): Path<String>,
) -> Result<Json<ChannelStats>, ApiError> {
    presence_channel(&gateway, &channel)?;
    Ok(Json(gateway.presence.stats(&channel).await?))
}

/// 400 for a name that is not a channel's, 404 for a channel without presence.
fn presence_channel(gateway: &Gateway, channel: &str) -> Result<(), ApiError> {
    let refused = |status, e: FrameError| Err(ApiError::new(status, e.code(), e.to_string()));
    if !is_public_channel_name(channel) {
        return refused(StatusCode::BAD_REQUEST, FrameError::InvalidChannel);
    }
    if !gateway.hub.has_presence(channel) {
        return refused(StatusCode::NOT_FOUND, FrameError::NoPresence);
    }
    Ok(())
}
