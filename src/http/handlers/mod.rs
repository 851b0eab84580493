//! Handlers grouped by resource. Each one reads as parse → engine → respond: the
//! extractors have already authenticated the caller, checked ownership and parsed the
//! body; the engine decides; `respond` waits for durability and answers.

pub mod authorizations;
pub mod cards;
pub mod funding;
pub mod hooks;
pub mod ops;
pub mod policies;
pub mod programs;
pub mod webhooks;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::problem::Problem;
use crate::service::{Pending, Rejection};

pub type ApiResult = Result<Response, Problem>;

pub fn json(status: StatusCode, body: Arc<str>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub fn to_json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    json(status, serde_json::to_string(v).unwrap_or_default().into())
}

/// Answers once the engine's writes are durable (awaited, never blocking a thread).
pub async fn respond(status: StatusCode, r: Result<Pending<Arc<str>>, Rejection>) -> ApiResult {
    Ok(json(status, r?.durable().await))
}
