//! Operations: liveness, readiness, metrics, the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{to_json, ApiResult};
use crate::http::problem::{Problem, ProblemBody};
use crate::http::Shared;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process is up")))]
pub async fn healthz() -> Response {
    to_json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "ready for traffic"), (status = 503, body = ProblemBody)))]
pub async fn readyz(State(s): State<Shared>) -> ApiResult {
    if s.ready.load(std::sync::atomic::Ordering::SeqCst) && s.engine.is_durable() {
        Ok(to_json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "cards": s.engine.card_count()}),
        ))
    } else {
        Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "not ready",
        ))
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics_endpoint(State(s): State<Shared>) -> Response {
    if let Some(c) = s.engine.store_counters() {
        metrics::gauge!("spendgate_store_queue_depth").set(c.queue_depth as f64);
        metrics::gauge!("spendgate_store_batches").set(c.batches as f64);
        metrics::gauge!("spendgate_store_writes").set(c.writes as f64);
        metrics::gauge!("spendgate_store_decisions_compressed").set(c.decisions_compressed as f64);
        metrics::gauge!("spendgate_store_record_dictionaries").set(c.record_dictionaries as f64);
    }
    metrics::gauge!("spendgate_cards").set(s.engine.card_count() as f64);
    let engine = s.engine.clone();
    if let Ok(m) = tokio::task::spawn_blocking(move || engine.memory_counts()).await {
        metrics::gauge!("spendgate_idempotency_entries").set(m.idempotency_entries as f64);
        metrics::gauge!("spendgate_memory_holds").set(m.holds as f64);
        metrics::gauge!("spendgate_memory_velocity_events").set(m.velocity_events as f64);
        metrics::gauge!("spendgate_memory_authorization_index").set(m.authorization_index as f64);
        metrics::gauge!("spendgate_memory_early_reversals").set(m.early_reversals as f64);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "this document")))]
pub async fn openapi_json() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        crate::http::openapi(),
    )
        .into_response()
}
