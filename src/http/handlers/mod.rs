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

/// Runs an engine call off the async workers when it `may_block` (it may read the
/// store — a round trip on PostgreSQL — and a worker blocked on it would stall every
/// other request it carries); inline otherwise (the common case: all it needs is in
/// memory).
pub async fn on_engine<T: Send + 'static>(
    s: &super::Shared,
    may_block: bool,
    f: impl FnOnce(&super::Shared) -> T + Send + 'static,
) -> T {
    if !may_block {
        return f(s);
    }
    let s = s.clone();
    match tokio::task::spawn_blocking(move || f(&s)).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Answers once the engine's writes are durable (awaited, never blocking a thread).
pub async fn respond(status: StatusCode, r: Result<Pending<Arc<str>>, Rejection>) -> ApiResult {
    Ok(json(status, r?.durable().await))
}
