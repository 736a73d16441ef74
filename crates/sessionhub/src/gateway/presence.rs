//! Presence API: who is on a presence channel, and how many.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Json;
use serde::Serialize;

use super::state::Gateway;
use crate::error::ApiError;
use crate::presence::{ChannelStats, Member};
use crate::protocol::{FrameError, is_public_channel_name};

#[derive(Serialize)]
pub(crate) struct Members {
    channel: String,
    /// Every user on the channel, with their connections to it, on every node.
    users: Vec<Member>,
}

/// `GET /api/channels/{channel}/presence`
pub(crate) async fn members(
    State(gateway): State<Gateway>,
    Path(channel): Path<String>,
) -> Result<Json<Members>, ApiError> {
    presence_channel(&gateway, &channel)?;
    let users = gateway.presence.members(&channel).await?;
    Ok(Json(Members { channel, users }))
}

/// `GET /api/channels/{channel}/presence/stats`
pub(crate) async fn stats(
    State(gateway): State<Gateway>,
    Path(channel): Path<String>,
) -> Result<Json<ChannelStats>, ApiError> {
    presence_channel(&gateway, &channel)?;
    Ok(Json(gateway.presence.stats(&channel).await?))
}

/// 400 for a name that is not a channel's, 404 for a channel without presence.
fn presence_channel(gateway: &Gateway, channel: &str) -> Result<(), ApiError> {
    if !is_public_channel_name(channel) {
        let e = FrameError::InvalidChannel;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            e.code(),
            e.to_string(),
        ));
    }
    if !gateway.hub.has_presence(channel) {
        let e = FrameError::NoPresence;
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            e.code(),
            e.to_string(),
        ));
    }
    Ok(())
}
