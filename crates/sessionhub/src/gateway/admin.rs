//! Admin API: a user's sessions, and "log out everywhere".

use axum::extract::{Path, State};
use axum::response::Json;
use serde::Serialize;

use super::state::Gateway;
use crate::error::ApiError;
use crate::protocol::UserId;

#[derive(Serialize)]
pub(crate) struct Sessions {
    /// How many live sessions the user has.
    sessions: usize,
    /// For each, in least recently used order, how long until it expires if unused. Ids are
    /// bearer credentials and are never returned.
    expires_in_ms: Vec<u64>,
}

/// `GET /api/users/{id}/sessions`
pub(crate) async fn sessions(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
) -> Result<Json<Sessions>, ApiError> {
    let user: UserId = id.parse()?;
    let mut expires_in_ms = Vec::new();
    for session in gateway.store.index_list(user.as_str()).await? {
        if let Some(left) = gateway.store.expires_in(&session).await? {
            expires_in_ms.push(left.as_millis() as u64);
        }
    }
    Ok(Json(Sessions {
        sessions: expires_in_ms.len(),
        expires_in_ms,
    }))
}

#[derive(Serialize)]
pub(crate) struct LoggedOut {
    /// Sessions ended.
    ended: usize,
}

/// `POST /api/users/{id}/logout`: ends every session of the user; their sockets close on
/// every node.
pub(crate) async fn logout(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
) -> Result<Json<LoggedOut>, ApiError> {
    let user: UserId = id.parse()?;
    let mut ended = 0;
    for session in gateway.store.index_list(user.as_str()).await? {
        if gateway.store.delete(&session).await? {
            ended += 1;
        }
        gateway.store.index_remove(user.as_str(), &session).await?;
        gateway.hub.end_session(&session).await?;
    }
    Ok(Json(LoggedOut { ended }))
}
