//! Several instances on one PostgreSQL store: one owns the cards (by a lease with an
//! epoch, see `store::lease`) and serves; the others stand by, forward every request to
//! the owner, and take over when its lease expires.
//!
//! Every instance listens from the start. Until it owns the lease its front door forwards
//! (one hop: a forwarded request is never forwarded again) or, when no owner is known,
//! answers 503 with the owner's address for an L7 proxy. Once it owns the lease it loads
//! the store, serves the full API, and renews the lease in the background; if renewal
//! fails for a whole lease period, or finds the lease moved, it stops (fail-stop), and
//! its writes would be refused by the fence anyway.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::server::{build_state_on, Background};
use super::{app, Config, Shared};
use crate::cluster::{Holder, LeaseClient, Renewer};

/// Set on a forwarded request, so an instance that is not the owner either never
/// forwards it again.
const FORWARDED: &str = "spendgate-forwarded-by";
/// The owner's address, on answers from an instance that could not forward.
const OWNER_HEADER: &str = "spendgate-owner";
/// Largest body forwarded (the hook routes' own limit).
const FORWARD_BODY_BYTES_MAX: usize = 64 * 1024;

/// The front door every request goes through.
struct Gate {
    /// The full API, once this instance owns the lease.
    app: ArcSwapOption<Router>,
    /// The last known holder of the lease.
    holder: ArcSwap<Option<Holder>>,
    me: String,
    client: reqwest::Client,
}

impl Gate {
    async fn handle(self: Arc<Self>, req: Request) -> Response {
        if let Some(app) = self.app.load_full() {
            return match app.as_ref().clone().oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
        }
        match req.uri().path() {
            "/healthz" => return (StatusCode::OK, "standby").into_response(),
            // Each instance's own metrics (a standby's: its lease gauges), never the owner's.
            "/metrics" => return super::server::metrics_handle().render().into_response(),
            "/readyz" => return self.unavailable("this instance is a standby"),
            _ => {}
        }
        let holder = self.holder.load_full();
        let Some(h) = holder.as_ref().as_ref().filter(|h| h.live) else {
            return self.unavailable("no instance owns the cards right now; retry shortly");
        };
        if h.owner == self.me {
            return self.unavailable("this instance took the lease and is loading the store");
        }
        if req.headers().contains_key(FORWARDED) {
            return self.unavailable("forwarded to an instance that is not the owner");
        }
        match self.forward(req, &h.address).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, owner = %h.address, "forwarding failed");
                self.unavailable("the owner did not answer; retry shortly")
            }
        }
    }

    /// The request as it came, to the owner; its answer as it came back.
    async fn forward(&self, req: Request, owner: &str) -> Result<Response, String> {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, FORWARD_BODY_BYTES_MAX)
            .await
            .map_err(|e| e.to_string())?;
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut out = self
            .client
            .request(
                parts.method,
                format!("{}{path}", owner.trim_end_matches('/')),
            )
            .body(body);
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) {
                out = out.header(name, value);
            }
        }
        out = out.header(FORWARDED, &self.me);
        let answer = out.send().await.map_err(|e| e.to_string())?;
        let mut response = Response::builder().status(answer.status());
        for (name, value) in answer.headers() {
            if !is_hop_by_hop(name) {
                response = response.header(name, value);
            }
        }
        let bytes = answer.bytes().await.map_err(|e| e.to_string())?;
        response.body(Body::from(bytes)).map_err(|e| e.to_string())
    }

    fn unavailable(&self, detail: &str) -> Response {
        let holder = self.holder.load_full();
        let owner = holder
            .as_ref()
            .as_ref()
            .filter(|h| h.live)
            .map(|h| h.address.clone());
        let body = serde_json::json!({
            "type": "/problems/not_owner",
            "title": "This instance does not own the cards",
            "status": 503,
            "detail": detail,
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

/// Serves on a PostgreSQL store as one of several instances, until `shutdown`.
pub async fn serve_cluster(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let url = config
        .store
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no PostgreSQL store configured"))?;
    // The recorder first, so the lease gauges below are recorded.
    let _ = super::server::metrics_handle();
    let me = format!("spendgate-{}", uuid::Uuid::new_v4().simple());
    let address = config.advertise.clone().unwrap_or_else(|| {
        format!(
            "http://{}",
            listener
                .local_addr()
                .map_or_else(|_| config.addr.clone(), |a| a.to_string())
        )
    });
    let lease_ms = config.lease_ms as i64;
    let gate = Arc::new(Gate {
        app: ArcSwapOption::empty(),
        holder: ArcSwap::from_pointee(None),
        me: me.clone(),
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_millis(config.deadline_ms.max(1_000) * 2))
            .build()?,
    });
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let front = {
        let gate = gate.clone();
        // A standby holds each forwarded request open: as bounded as the owner's own.
        Router::new()
            .fallback(move |req: Request| gate.clone().handle(req))
            .layer(tower::limit::ConcurrencyLimitLayer::new(
                config.requests_in_flight_max,
            ))
    };
    let server = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            axum::serve(listener, front)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    };

    // Stand by until the lease is ours.
    let mut lease_client = {
        let (url, me, address) = (url.clone(), me.clone(), address.clone());
        tokio::task::spawn_blocking(move || LeaseClient::connect(&url, &me, &address, lease_ms))
            .await??
    };
    tracing::info!(instance = %me, %address, "standing by for the lease");
    metrics::gauge!("spendgate_lease_held").set(0.0);
    let fence = loop {
        let (client, (acquired, holder)) = {
            let (url, me, address) = (url.clone(), me.clone(), address.clone());
            tokio::task::spawn_blocking(move || {
                let r = lease_client.try_acquire();
                if r.0.is_err() {
                    // The database may have restarted: a fresh connection (the old one is
                    // dropped here, off the runtime: it owns a runtime of its own).
                    if let Ok(fresh) = LeaseClient::connect(&url, &me, &address, lease_ms) {
                        lease_client = fresh;
                    }
                }
                (lease_client, r)
            })
            .await?
        };
        lease_client = client;
        gate.holder.store(Arc::new(holder));
        match acquired {
            Ok(Some(fence)) => break fence,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "lease check failed; will retry"),
        }
        tokio::select! {
            // Often enough that a clean handover (the owner gives the lease up) is quick.
            _ = tokio::time::sleep(Duration::from_millis((lease_ms / 10).clamp(100, 500) as u64)) => {}
            _ = stop_rx.wait_for(|s| *s) => {
                let _ = server.await;
                // Its connection owns a runtime: dropped off this one.
                let _ = tokio::task::spawn_blocking(move || drop(lease_client)).await;
                return Ok(());
            }
        }
    };
    let taken = Instant::now();
    tracing::info!(instance = %me, epoch = fence.epoch, "lease taken; loading the store");
    let renewer = Renewer::start(lease_client, fence.clone())?;
    let state: Shared = {
        let (config, fence) = (config.clone(), fence.clone());
        tokio::task::spawn_blocking(move || build_state_on(config, Some(fence))).await??
    };
    tracing::info!(
        instance = %me,
        epoch = fence.epoch,
        load_ms = taken.elapsed().as_millis() as u64,
        "serving as the owner"
    );
    metrics::gauge!("spendgate_lease_held").set(1.0);
    metrics::gauge!("spendgate_lease_epoch").set(fence.epoch as f64);
    super::server::reload_on_hangup(&state);
    let background = Background::start(&state);
    gate.app.store(Some(Arc::new(app(state.clone()))));
    let _ = stop_rx.wait_for(|s| *s).await;
    let _ = server.await;
    background.stop(&state).await;
    // Flushed: a standby may take over now rather than after expiry.
    tokio::task::spawn_blocking(move || renewer.release()).await?;
    Ok(())
}
