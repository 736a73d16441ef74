//! Admin API: a user's sessions, and "log out everywhere".

use axum::extract::{Path, State};
use axum::response::Json;
use serde::Serialize;

use super::state::Gateway;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::protocol::UserId;

/// A user's sessions.
#[derive(Serialize, ToSchema)]
pub(crate) struct Sessions {
    /// How many live sessions the user has.
    sessions: usize,
    /// For each, in least recently used order, how long until it expires if unused. Ids are
    /// bearer credentials and are never returned.
    expires_in_ms: Vec<u64>,
}

/// How many sessions user `id` has, and when each expires.
#[utoipa::path(
    get,
    path = "/api/users/{id}/sessions",
    tag = "users",
    params(("id" = String, Path, description = "the user id")),
    responses(
        (status = 200, description = "the user's sessions", body = Sessions),
        (status = 400, description = "a bad user id", body = ErrorBody),
    )
)]
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

/// What "log out everywhere" did.
#[derive(Serialize, ToSchema)]
pub(crate) struct LoggedOut {
    /// Sessions ended.
    ended: usize,
}

/// Ends every session of user `id`; their sockets close on every node.
#[utoipa::path(
    post,
    path = "/api/users/{id}/logout",
    tag = "users",
    params(("id" = String, Path, description = "the user id")),
    responses(
        (status = 200, description = "the sessions ended", body = LoggedOut),
        (status = 400, description = "a bad user id", body = ErrorBody),
    )
)]
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
