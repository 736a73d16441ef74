//! Error types: typed errors per backend, and the one error users see over HTTP.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A session store failed to answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or answered with an error.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// An increment was asked of an attribute that does not hold an integer.
    #[error("attribute `{0}` is not an integer")]
    NotAnInteger(String),
    /// An increment would leave the range of a signed 64-bit integer.
    #[error("attribute `{0}` would overflow")]
    Overflow(String),
}

/// A broker failed to publish or subscribe.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backend is down or answered with an error. A publish that failed this way was
    /// most likely not published, but may have been if the link broke with it in flight:
    /// retry with an idempotency key to be sure it is published exactly once.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

impl BrokerError {
    /// The stable machine-readable code clients see for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "broker_unavailable",
        }
    }
}

/// The one error type users see: an HTTP status with a JSON body
/// `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with an explicit status and a stable machine-readable code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
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
        match err {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %err, "session store failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    err.to_string(),
                )
            }
            StoreError::NotAnInteger(_) | StoreError::Overflow(_) => {
                Self::new(StatusCode::CONFLICT, "not_an_integer", err.to_string())
            }
        }
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
        tracing::warn!(error = %err, "broker failed");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, err.code(), err.to_string())
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("sessionhub_errors_total", "code" => self.code).increment(1);
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}
