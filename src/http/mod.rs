//! The HTTP service (axum), a thin edge around the engine: `extract` authenticates the
//! caller, checks ownership and parses the body; `handlers/` (one file per resource) call
//! the engine and wait for durability; `problem` maps every engine rejection to a status
//! and a stable problem type; `openapi` holds the route table and the document;
//! `server` builds the state and runs the service.

mod cluster;
mod config;
mod connections;
mod contract;
mod dto;
mod extract;
mod forward;
mod handlers;
mod openapi;
mod problem;
pub mod security;
pub(crate) mod server;

pub use config::Config;
pub use connections::{serve_connections, ConnectionLimits};
pub use contract::{Access, Contract};
pub use openapi::{openapi, routes, ApiDoc, Route};
pub use problem::{Problem, ProblemBody};
pub use server::{
    build_state, load_and_test_policies, metrics_handle, run_server, serve, METRICS_UPKEEP_INTERVAL,
};

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::service::Engine;
use security::{HookVerifier, RateLimiter};

/// Shared by all handlers.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub config: Config,
    admin_hash: String,
    pub hooks: HookVerifier,
    pub rate: RateLimiter,
    pub metrics: PrometheusHandle,
    ready: std::sync::atomic::AtomicBool,
}

pub type Shared = Arc<AppState>;

impl AppState {
    /// Whether a key, hashed with [`crate::service::key_hash`], is the admin key (a
    /// request's key is hashed once for this and the program check).
    pub fn is_admin_hash(&self, key_hash: &str) -> bool {
        key_hash == self.admin_hash
    }

    /// Reloads the rules: validated and tested first; the old policies stay on failure.
    /// Loads and tests the rules directory and puts it live (velocity windows of added
    /// or redefined rules rebuilt from stored decisions first); records the versions as
    /// activated `by`. Blocking: call it off the async runtime.
    pub fn reload(&self, by: &str) -> Result<Vec<(String, String)>, Vec<String>> {
        let set = server::load_and_test_policies(&self.config.rules_dir)?;
        let versions = set
            .policies
            .values()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect();
        self.engine
            .swap_policies(set)
            .map_err(|e| vec![e.to_string()])?;
        self.engine
            .record_policy_activations(by)
            .map_err(|e| vec![e.to_string()])?;
        Ok(versions)
    }
}

/// Request ids: taken from `x-request-id` when sane, else generated; echoed on the
/// response and logged with method, route, status and latency (never the body).
async fn request_context(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let given = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    if given.is_some_and(crate::domain::contains_card_number) {
        return extract::card_number("x-request-id").into_response();
    }
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = req.method().clone();
    let path = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let mut req = req;
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    let latency_us = started.elapsed().as_micros() as u64;
    metrics::histogram!("http_request_duration_seconds", "route" => path.clone())
        .record(latency_us as f64 / 1e6);
    tracing::info!(request_id = %id, method = %method, route = %path, status = res.status().as_u16(), latency_us, "request");
    res
}

#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Marks a response written in a processor's format.
#[derive(Debug, Clone, Copy)]
pub struct ProcessorAnswer;

async fn fallback() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
}

/// Turns the framework's own plain-text rejections into problem+json.
async fn framework_problems(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let is_problem = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    // A processor's own answer (Marqeta's 402 decline) is not ours to rewrite.
    if is_problem || res.extensions().get::<ProcessorAnswer>().is_some() {
        return res;
    }
    match res.status() {
        StatusCode::METHOD_NOT_ALLOWED => Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
        .into_response(),
        StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than allowed",
        )
        .into_response(),
        s if s.is_client_error() => Problem::new(
            s,
            "invalid_request",
            s.canonical_reason().unwrap_or("invalid request"),
        )
        .into_response(),
        _ => res,
    }
}

/// The application router with every layer.
pub fn app(state: Shared) -> Router {
    let mut router = Router::new();
    for r in routes() {
        router = router.route(r.path, r.handler);
    }
    router
        .fallback(fallback)
        .layer(axum::middleware::from_fn(framework_problems))
        .layer(axum::middleware::from_fn(request_context))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            state.config.requests_in_flight_max,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.body_bytes_max,
        ))
        .with_state(state)
}
