//! Error types: typed errors per backend, and the one error users see over HTTP.

use std::borrow::Cow;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A backend's own error, kept as the source of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a backend was doing when it failed, and its own error: the message reads
/// `<context>: <error>`, and the error stays reachable through
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct BackendError {
    context: Cow<'static, str>,
    source: BoxError,
}

impl BackendError {
    /// `source`, which happened while doing `context` (e.g. `"redis"`, `"session journal"`).
    pub fn new(context: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Self {
        Self {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// A session store failed to answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not be reached or answered with an error.
    #[error("session store unavailable: {0}")]
    Unavailable(#[source] BackendError),
    /// An increment was asked of an attribute that does not hold an integer.
    #[error("attribute `{0}` is not an integer")]
    NotAnInteger(String),
    /// An increment would leave the range of a signed 64-bit integer.
    #[error("attribute `{0}` would overflow")]
    Overflow(String),
    /// [`rotate`](crate::store::SessionStore::rotate)'s new id holds a live session. Ids
    /// are 256 random bits, so this means a bug, not bad luck; nothing was changed.
    #[error("the id to rotate the session to is taken")]
    RotationTargetTaken,
    /// An attribute could not be encoded for the backend.
    #[error("cannot encode a session attribute: {0}")]
    Encode(#[source] serde_json::Error),
}

impl StoreError {
    /// [`StoreError::Unavailable`] for `source`, met while doing `context`.
    pub fn unavailable(context: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable(BackendError::new(context, source))
    }

    /// The stable machine-readable code clients see for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "store_unavailable",
            Self::NotAnInteger(_) | Self::Overflow(_) => "not_an_integer",
            Self::RotationTargetTaken => "rotation_target_taken",
            Self::Encode(_) => "encode_failed",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotAnInteger(_) | Self::Overflow(_) => StatusCode::CONFLICT,
            Self::RotationTargetTaken | Self::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The code of a broker that cannot be reached, and of presence, which needs it.
const BROKER_UNAVAILABLE: &str = "broker_unavailable";

/// A broker failed to publish or subscribe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The backend is down or answered with an error. A publish that failed this way was
    /// most likely not published, but may have been if the link broke with it in flight:
    /// retry with an idempotency key to be sure it is published exactly once.
    #[error("broker unavailable: {0}")]
    Unavailable(#[source] BackendError),
}

impl BrokerError {
    /// [`BrokerError::Unavailable`] for `source`, met while doing `context`.
    pub fn unavailable(context: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable(BackendError::new(context, source))
    }

    /// The stable machine-readable code clients see for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => BROKER_UNAVAILABLE,
        }
    }
}

/// Presence could not count who is online.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The backend is down or answered with an error.
    #[error("presence unavailable: {0}")]
    Unavailable(#[source] BackendError),
}

impl PresenceError {
    /// [`PresenceError::Unavailable`] for `source`, met while doing `context`.
    pub fn unavailable(context: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable(BackendError::new(context, source))
    }

    /// The stable machine-readable code clients see for this error: presence shares the
    /// broker's, since it is the cluster view that is missing (clients already handle it).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => BROKER_UNAVAILABLE,
        }
    }
}

/// A rate limiter could not take from a bucket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// The backend is down or answered with an error.
    #[error("rate limits unavailable: {0}")]
    Unavailable(#[source] BackendError),
}

impl LimitError {
    /// [`LimitError::Unavailable`] for `source`, met while doing `context`.
    pub fn unavailable(context: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable(BackendError::new(context, source))
    }
}

/// The one error type users see: an HTTP status with a JSON body
/// `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up): when a 429 or 503 may pass.
    retry_after: Option<std::time::Duration>,
}

impl ApiError {
    /// An error with an explicit status and a stable machine-readable code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, telling the client to wait `after` before trying again.
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404: there is nothing here.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The HTTP status this error maps to.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        Self::new(err.status(), err.code(), err.to_string())
    }
}

/// A path or query names a user id that is not one: 400.
impl From<crate::protocol::InvalidUserId> for ApiError {
    fn from(err: crate::protocol::InvalidUserId) -> Self {
        Self::bad_request(err.to_string())
    }
}

impl From<BrokerError> for ApiError {
    fn from(err: BrokerError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, err.code(), err.to_string())
    }
}

impl From<PresenceError> for ApiError {
    fn from(err: PresenceError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, err.code(), err.to_string())
    }
}

/// The JSON body of every API error.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

/// What went wrong.
#[derive(Serialize, utoipa::ToSchema)]
struct ErrorDetail<'a> {
    /// Stable and machine-readable, e.g. `bad_request`, `api_key_required`.
    #[schema(example = "bad_request")]
    code: &'a str,
    /// For people.
    message: &'a str,
}

impl IntoResponse for ApiError {
    /// Logs a server-side failure here, where it becomes the answer, once per request.
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, error = %self.message, "request failed");
        }
        metrics::counter!("sessionhub_errors_total", "code" => self.code).increment(1);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.max(1).into());
        }
        response
    }
}
