//! Forwarding a request to the instance that owns its shard, and the answers an instance
//! gives when it cannot (see `cluster`).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Set on a forwarded request, so an instance that is not the owner either never
/// forwards it again.
pub(super) const FORWARDED: &str = "spendgate-forwarded-by";
/// The owner's address, on answers from an instance that could not forward.
pub(super) const OWNER_HEADER: &str = "spendgate-owner";
/// Largest body forwarded (the hook routes' own limit).
pub(super) const FORWARD_BODY_BYTES_MAX: usize = 64 * 1024;

/// Why a forwarded request got no answer.
pub(super) struct Unanswered {
    pub(super) detail: String,
    /// False when it never reached the owner (nothing was done there).
    pub(super) sent: bool,
}

/// The request as it came, to the owner; its answer as it came back.
pub(super) async fn forward(
    client: &reqwest::Client,
    me: &str,
    parts: &Parts,
    body: Bytes,
    owner: &str,
) -> Result<Response, Unanswered> {
    let failed = |e: &dyn std::fmt::Display| Unanswered {
        detail: e.to_string(),
        sent: true,
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut out = client
        .request(
            parts.method.clone(),
            format!("{}{path}", owner.trim_end_matches('/')),
        )
        .body(body);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) {
            out = out.header(name, value);
        }
    }
    out = out.header(FORWARDED, me);
    let answer = out.send().await.map_err(|e| Unanswered {
        detail: e.to_string(),
        // A connection never made carried nothing.
        sent: !e.is_connect(),
    })?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !is_hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.map_err(|e| failed(&e))?;
    response.body(Body::from(bytes)).map_err(|e| failed(&e))
}

/// 503 from an instance that could not serve or forward: the shard and, when known, its
/// owner's address (also as a header, for an L7 proxy to route by).
pub(super) fn not_owner(shard: Option<u32>, owner: Option<String>, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "/problems/not_owner",
        "title": "This instance does not own the shard",
        "status": 503,
        "detail": detail,
        "shard": shard,
        "owner": owner,
    });
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, body.to_string()).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("1"),
    );
    if let Some(v) = owner.and_then(|o| HeaderValue::from_str(&o).ok()) {
        r.headers_mut()
            .insert(HeaderName::from_static(OWNER_HEADER), v);
    }
    r
}

/// A request's body, whole, within `timeout` of starting to read it: the front door holds
/// a request slot while it reads, so a client trickling its body must not keep it.
pub(super) async fn read_body(body: Body, timeout: Duration) -> Result<Bytes, Response> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, FORWARD_BODY_BYTES_MAX)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(super::problem::Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        )
        .into_response()),
    }
}

fn too_large() -> Response {
    super::problem::Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the request body is larger than allowed",
    )
    .into_response()
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
            | "content-length"
    )
}
