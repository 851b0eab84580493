//! The HTTP service (axum): authorization hooks, card management, policies, operations.
//!
//! Every handler reads the raw body (bounded), authenticates the caller, checks the tenant,
//! and calls the engine; errors are problem+json. Processor-facing endpoints verify hook
//! signatures when secrets are configured.

mod config;
mod problem;
mod routes;
pub mod security;

pub use config::Config;
pub use problem::{Problem, ProblemBody};
pub use routes::{openapi, routes, ApiDoc};

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::policy::{load_policy_dir, PolicySet};
use crate::policy_tests::run_policy_tests;
use crate::service::{Engine, EngineConfig};
use crate::store::{Durability, Store};
use security::{HookVerifier, RateLimiter};

/// Shared by all handlers.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub config: Config,
    admin_hash: String,
    pub hooks: HookVerifier,
    pub rate: RateLimiter,
    pub metrics: PrometheusHandle,
    /// A read-only connection for listings, separate from the writer.
    reader: parking_lot::Mutex<Option<rusqlite::Connection>>,
    ready: std::sync::atomic::AtomicBool,
}

pub type Shared = Arc<AppState>;

/// The process-wide Prometheus recorder (installed once, shared by every server).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 0.5, 1.0, 2.0,
                ])
                .expect("static buckets");
            match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is installed (embedding): keep a private one.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Validates the rules and runs their embedded tests; any failure keeps the old policy.
pub fn load_and_test_policies(dir: &Path) -> Result<PolicySet, Vec<String>> {
    let set =
        load_policy_dir(dir).map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let mut failures = Vec::new();
    for p in set.policies.values() {
        for r in run_policy_tests(p) {
            if !r.passed {
                failures.push(format!(
                    "{}:{}: test `{}` failed: {}",
                    p.file.display(),
                    r.line,
                    r.name,
                    r.message
                ));
            }
        }
    }
    if failures.is_empty() {
        Ok(set)
    } else {
        Err(failures)
    }
}

fn admin_key(config: &Config) -> anyhow::Result<String> {
    if let Some(k) = &config.admin_key {
        return Ok(k.clone());
    }
    // No key configured: keep a generated one beside the data, readable by the owner only.
    let path = config.data_dir.join("admin.key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return Ok(k.trim().to_string());
    }
    std::fs::create_dir_all(&config.data_dir)?;
    let key = format!(
        "adm_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&path, &key)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    tracing::info!(path = %path.display(), "generated an admin key");
    Ok(key)
}

/// Opens the store, rebuilds the engine and builds the application state.
pub fn build_state(config: Config) -> anyhow::Result<Shared> {
    let policies = load_and_test_policies(&config.rules_dir)
        .map_err(|e| anyhow::anyhow!("policies:\n{}", e.join("\n")))?;
    let (store, snapshot) = Store::open(&config.data_dir, Durability::Full)?;
    let store = Arc::new(store);
    let engine = Engine::open(
        policies,
        store.clone(),
        snapshot,
        EngineConfig {
            hold_expiry_days: config.hold_expiry_days,
            over_capture_bps: config.over_capture_bps,
        },
    )?;
    let secrets = config
        .hook_secrets
        .iter()
        .map(|s| security::parse_secret(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    let admin = admin_key(&config)?;
    let reader = rusqlite::Connection::open_with_flags(
        store.path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    Ok(Arc::new(AppState {
        engine: Arc::new(engine),
        admin_hash: crate::service::request_hash(admin.as_bytes()),
        hooks: HookVerifier::new(secrets),
        rate: RateLimiter::new(config.rate_per_key_per_s),
        metrics: metrics_handle(),
        reader: parking_lot::Mutex::new(Some(reader)),
        ready: std::sync::atomic::AtomicBool::new(true),
        config,
    }))
}

impl AppState {
    pub fn is_admin(&self, key: &str) -> bool {
        crate::service::request_hash(key.as_bytes()) == self.admin_hash
    }

    pub fn with_reader<R>(&self, f: impl FnOnce(&rusqlite::Connection) -> R) -> Option<R> {
        self.reader.lock().as_ref().map(f)
    }

    /// Reloads the rules: validated and tested first; the old policies stay on failure.
    pub fn reload(&self) -> Result<Vec<(String, String)>, Vec<String>> {
        let set = load_and_test_policies(&self.config.rules_dir)?;
        let versions = set
            .policies
            .values()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect();
        self.engine.replace_policies(set);
        Ok(versions)
    }
}

/// Request ids: taken from `x-request-id` when sane, else generated; echoed on the
/// response and logged with method, route, status and latency (never the body).
async fn request_context(req: Request, next: Next) -> Response {
    let started = Instant::now();
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
    if is_problem {
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
    for (_, path, route) in routes() {
        router = router.route(path, route);
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

/// Serves until `shutdown` resolves, then drains in-flight requests and flushes the store.
pub async fn serve(
    state: Shared,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs(state.config.expiry_sweep_s.max(1)));
            loop {
                tick.tick().await;
                let engine = state.engine.clone();
                let r =
                    tokio::task::spawn_blocking(move || engine.expire_holds(chrono::Utc::now()))
                        .await;
                if let Ok(r) = r {
                    if !r.expired.is_empty() {
                        tracing::info!(expired = r.expired.len(), "holds expired");
                    }
                }
            }
        })
    };
    let app = app(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    sweeper.abort();
    state
        .ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    state.reader.lock().take();
    if let Some(store) = state.engine.store() {
        store.close();
    }
    tracing::info!("stopped; store flushed");
    Ok(())
}

/// `spendgate serve`: logs as JSON lines, SIGHUP reloads the rules, SIGTERM/Ctrl-C stop.
pub fn run_server(config: Config) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPENDGATE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.workers > 0 {
        rt.worker_threads(config.workers);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let state = build_state(config.clone())?;
        let listener = TcpListener::bind(&config.addr).await?;
        tracing::info!(addr = %listener.local_addr()?, data = %config.data_dir.display(), rules = %config.rules_dir.display(), "spendgate listening");
        #[cfg(unix)]
        {
            let state = state.clone();
            tokio::spawn(async move {
                let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
                while hup.recv().await.is_some() {
                    match state.reload() {
                        Ok(v) => tracing::info!(policies = ?v, "policies reloaded"),
                        Err(e) => tracing::error!(errors = ?e, "reload refused; the old policies stay live"),
                    }
                }
            });
        }
        let shutdown = async {
            #[cfg(unix)]
            {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
            tracing::info!("shutting down: draining requests");
        };
        serve(state, listener, shutdown).await
    })
}
