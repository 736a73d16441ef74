//! Reading a request's query and body (JSON or form-encoded) into the API's error shape: axum's own
//! rejections are plain text, and the API answers every bad input as `ApiError` JSON.

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{Form, Json, Query};

use crate::error::ApiError;

/// The query string, or a 400 that says what is wrong with it.
pub(crate) fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|rejection| ApiError::new(rejection.status(), "bad_query", rejection.body_text()))
}

/// The JSON body, or a 4xx that says what is wrong with it (400 for bad JSON, 415 without
/// `Content-Type: application/json`, 413 when too large).
pub(crate) fn json<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|rejection| ApiError::new(rejection.status(), "bad_body", rejection.body_text()))
}

/// The form-encoded body, or a 4xx that says what is wrong with it (400 for a bad body, 415
/// without `Content-Type: application/x-www-form-urlencoded`, 413 when too large).
pub(crate) fn form<T>(body: Result<Form<T>, FormRejection>) -> Result<T, ApiError> {
    body.map(|Form(b)| b)
        .map_err(|rejection| ApiError::new(rejection.status(), "bad_body", rejection.body_text()))
}
