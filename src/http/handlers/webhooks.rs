//! Events out: a program's webhook endpoints (the secret shown once), their deliveries
//! and retries, and the program's alert thresholds.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{to_json, ApiResult};
use crate::http::dto::CallerIds;
use crate::http::extract::{checked_id, Body, PathId, Tenant};
use crate::http::problem::ProblemBody;
use crate::http::Shared;
use crate::service::events::{Alerts, EVENT_TYPES};
use crate::service::webhooks::EndpointInput;

impl CallerIds for EndpointInput {}
impl CallerIds for Alerts {}

/// Deliveries listed at once.
const DELIVERIES_LISTED_MAX: usize = 100;

#[utoipa::path(post, path = "/v1/webhook_endpoints", tag = "events", request_body = EndpointInput,
    responses((status = 201, description = "the endpoint, with its signing `secret` (shown only now)", body = Object),
        (status = 422, body = ProblemBody)))]
pub async fn create_endpoint(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    Body(b): Body<EndpointInput>,
) -> ApiResult {
    let (e, secret) = s
        .engine
        .create_webhook_endpoint(&program, b)?
        .durable()
        .await;
    let mut v = e.view();
    v["secret"] = serde_json::json!(secret);
    Ok(to_json(StatusCode::CREATED, &v))
}

#[utoipa::path(get, path = "/v1/webhook_endpoints", tag = "events",
    responses((status = 200, description = "the program's endpoints and every event type", body = Object)))]
pub async fn list_endpoints(State(s): State<Shared>, Tenant(program): Tenant) -> ApiResult {
    let endpoints: Vec<_> = s
        .engine
        .webhook_endpoints(&program)
        .iter()
        .map(|e| e.view())
        .collect();
    Ok(to_json(
        StatusCode::OK,
        &serde_json::json!({"endpoints": endpoints, "event_types": EVENT_TYPES}),
    ))
}

#[utoipa::path(get, path = "/v1/webhook_endpoints/{id}", tag = "events", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ProblemBody)))]
pub async fn get_endpoint(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    PathId(id): PathId,
) -> ApiResult {
    Ok(to_json(
        StatusCode::OK,
        &s.engine.webhook_endpoint(&program, &id)?.view(),
    ))
}

#[utoipa::path(patch, path = "/v1/webhook_endpoints/{id}", tag = "events", params(("id" = String, Path)), request_body = EndpointInput,
    responses((status = 200, description = "url, event types, description, enabled", body = Object), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
pub async fn update_endpoint(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    PathId(id): PathId,
    Body(b): Body<EndpointInput>,
) -> ApiResult {
    let e = s
        .engine
        .update_webhook_endpoint(&program, &id, b)?
        .durable()
        .await;
    Ok(to_json(StatusCode::OK, &e.view()))
}

#[utoipa::path(delete, path = "/v1/webhook_endpoints/{id}", tag = "events", params(("id" = String, Path)),
    responses((status = 204, description = "removed; its pending deliveries are dropped"), (status = 404, body = ProblemBody)))]
pub async fn delete_endpoint(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    PathId(id): PathId,
) -> ApiResult {
    s.engine
        .delete_webhook_endpoint(&program, &id)?
        .durable()
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}/rotate_secret", tag = "events", params(("id" = String, Path)),
    responses((status = 200, description = "the new `secret` (shown only now); the previous one signs too for 24 h", body = Object), (status = 404, body = ProblemBody)))]
pub async fn rotate_secret(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    PathId(id): PathId,
) -> ApiResult {
    let (e, secret) = s
        .engine
        .rotate_webhook_secret(&program, &id)?
        .durable()
        .await;
    let mut v = e.view();
    v["secret"] = serde_json::json!(secret);
    Ok(to_json(StatusCode::OK, &v))
}

#[utoipa::path(get, path = "/v1/webhook_endpoints/{id}/deliveries", tag = "events", params(("id" = String, Path)),
    responses((status = 200, description = "newest first: status, attempts, the receiver's last status code and latency", body = Object), (status = 404, body = ProblemBody)))]
pub async fn deliveries(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    PathId(id): PathId,
) -> ApiResult {
    let engine = s.engine.clone();
    let rows = tokio::task::spawn_blocking(move || {
        engine.deliveries(&program, &id, DELIVERIES_LISTED_MAX)
    })
    .await
    .map_err(|_| crate::service::Rejection::HistoryUnavailable)??;
    Ok(to_json(
        StatusCode::OK,
        &serde_json::json!({ "deliveries": rows }),
    ))
}

#[derive(Deserialize)]
pub struct RetryPath {
    id: String,
    event_id: String,
}

#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}/deliveries/{event_id}/retry", tag = "events",
    params(("id" = String, Path), ("event_id" = String, Path)),
    responses((status = 202, description = "queued again now (also a dead delivery)", body = Object), (status = 404, body = ProblemBody)))]
pub async fn retry_delivery(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    Path(p): Path<RetryPath>,
) -> ApiResult {
    checked_id("the path id", &p.id)?;
    checked_id("the event id", &p.event_id)?;
    let engine = s.engine.clone();
    let (id, event) = (p.id.clone(), p.event_id.clone());
    let pending = tokio::task::spawn_blocking(move || engine.retry_delivery(&program, &id, &event))
        .await
        .map_err(|_| crate::service::Rejection::HistoryUnavailable)??;
    pending.durable().await;
    Ok(to_json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"endpoint": p.id, "event_id": p.event_id, "status": "pending"}),
    ))
}

#[utoipa::path(put, path = "/v1/alerts", tag = "events", request_body = Alerts,
    responses((status = 200, body = Alerts), (status = 422, body = ProblemBody)))]
pub async fn set_alerts(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    Body(b): Body<Alerts>,
) -> ApiResult {
    let a = s.engine.set_alerts(&program, b)?.durable().await;
    Ok(to_json(StatusCode::OK, &*a))
}

#[utoipa::path(get, path = "/v1/alerts", tag = "events", responses((status = 200, body = Alerts)))]
pub async fn get_alerts(State(s): State<Shared>, Tenant(program): Tenant) -> ApiResult {
    Ok(to_json(StatusCode::OK, &*s.engine.alerts(&program)))
}
