//! Building the service's state, serving, and the `serve` command's process concerns
//! (logging, signals, runtime).

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use super::security::{self, HookVerifier, RateLimiter};
use super::{app, AppState, Config, Shared};
use crate::clock::SystemClock;
use crate::cluster::Fence;
use crate::policy::{load_policy_dir, PolicySet};
use crate::policy_tests::run_policy_tests;
use crate::service::Engine;

/// How often recorded histogram samples are folded into their buckets. The recorder keeps
/// each sample (16 bytes, measured) until then or until a scrape, so a server nobody
/// scrapes would grow by two samples per authorization and two per commit, for ever.
pub const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The process-wide Prometheus recorder (installed once, shared by every server), with the
/// thread that keeps its histograms bounded ([`METRICS_UPKEEP_INTERVAL`]).
pub fn metrics_handle() -> PrometheusHandle {
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
                Ok(h) => {
                    start_metrics_upkeep(h.clone());
                    h
                }
                // Another recorder is installed (embedding): keep a private one, which
                // nothing records into (so it needs no upkeep).
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Drains the recorder's histogram samples into their buckets every
/// [`METRICS_UPKEEP_INTERVAL`] (`install_recorder` leaves that to its caller).
fn start_metrics_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("spendgate-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(METRICS_UPKEEP_INTERVAL);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "metrics upkeep thread did not start: histograms grow until scraped");
    }
}

/// Validates the rules and runs their embedded tests; any failure keeps the old policy.
pub fn load_and_test_policies(dir: &Path) -> Result<PolicySet, Vec<String>> {
    let set = load_policy_dir(dir).map_err(|errors| {
        errors
            .into_iter()
            .map(|mut e| {
                e.file = relative(dir, &e.file);
                hide_dir(dir, &e.to_string())
            })
            .collect::<Vec<_>>()
    })?;
    let mut failures = Vec::new();
    for p in set.policies.values() {
        for r in run_policy_tests(p) {
            if !r.passed {
                failures.push(hide_dir(
                    dir,
                    &format!(
                        "{}:{}: test `{}` failed: {}",
                        relative(dir, &p.file).display(),
                        r.line,
                        r.name,
                        r.message
                    ),
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

/// `path` as callers may see it: relative to the rules directory, never the server's own
/// absolute layout.
pub fn relative(dir: &Path, path: &Path) -> std::path::PathBuf {
    path.strip_prefix(dir)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.file_name().map(Into::into).unwrap_or_default())
}

/// Removes the rules directory's own path from a message meant for callers.
fn hide_dir(dir: &Path, message: &str) -> String {
    let shown = format!("{}/", dir.display());
    message.replace(&shown, "")
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
    build_state_on(config, None)
}

/// `build_state`; with a PostgreSQL store, as the holder of `fence`.
pub(super) fn build_state_on(config: Config, fence: Option<Fence>) -> anyhow::Result<Shared> {
    let policies = load_and_test_policies(&config.rules_dir)
        .map_err(|e| anyhow::anyhow!("policies:\n{}", e.join("\n")))?;
    let wal_bytes_max = config.wal_mib_max.max(1).saturating_mul(1024 * 1024);
    let engine = match (&config.store, fence) {
        (Some(url), Some(fence)) => Engine::open_postgres(policies, url, fence, config.engine)?,
        (Some(_), None) => anyhow::bail!("a PostgreSQL store is opened only by its lease holder"),
        (None, _) => Engine::open_dir(policies, &config.data_dir, config.engine, wal_bytes_max)?,
    }
    .with_clock(Arc::new(SystemClock));
    // Every version that goes live is kept (a restart on changed files is a new one).
    engine
        .record_policy_activations("startup")
        .map_err(|e| anyhow::anyhow!("recording policy versions: {e}"))?;
    let secrets = config
        .hook_secrets
        .iter()
        .map(|s| security::parse_secret(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    let admin = admin_key(&config)?;
    Ok(Arc::new(AppState {
        engine: Arc::new(engine),
        admin_hash: crate::service::key_hash(&admin),
        hooks: HookVerifier::new(secrets),
        rate: RateLimiter::new(config.rate_per_key_per_s),
        metrics: metrics_handle(),
        ready: std::sync::atomic::AtomicBool::new(true),
        config,
    }))
}

/// Serves until `shutdown` resolves, then drains in-flight requests and flushes the store.
pub async fn serve(
    state: Shared,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let background = Background::start(&state);
    let limits = super::ConnectionLimits::of(&state.config);
    super::serve_connections(listener, app(state.clone()), limits, shutdown).await;
    background.stop(&state).await;
    Ok(())
}

/// The work an owning instance does besides answering: hold expiry, retention sweeps,
/// recovery points, webhook delivery.
pub(super) struct Background {
    stop_tx: tokio::sync::watch::Sender<bool>,
    sweeper: tokio::task::JoinHandle<()>,
    dispatcher: tokio::task::JoinHandle<()>,
}

impl Background {
    pub(super) fn start(state: &Shared) -> Background {
        // The hold-expiry sweeper finishes its current sweep and stops before the store
        // closes: never aborted halfway through a card.
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let sweeper = {
            let state = state.clone();
            tokio::spawn(async move {
                let period = Duration::from_secs(state.config.engine.expiry_sweep_s.max(1));
                let mut tick = tokio::time::interval(period);
                let mut last_point = tokio::time::Instant::now();
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop_rx.changed() => break,
                    }
                    let engine = state.engine.clone();
                    let Ok(pending) =
                        tokio::task::spawn_blocking(move || engine.expire_holds()).await
                    else {
                        break;
                    };
                    let r = pending.durable().await;
                    if !r.expired.is_empty() {
                        tracing::info!(expired = r.expired.len(), "holds expired");
                    }
                    state.engine.sweep_retention().durable().await;
                    let cfg = &state.config.engine;
                    let since = state.engine.operations_since_point();
                    if since >= cfg.recovery_point_operations
                        || (since > 0
                            && last_point.elapsed()
                                >= Duration::from_secs(cfg.recovery_point_interval_s))
                    {
                        save_recovery_point(&state).await;
                        last_point = tokio::time::Instant::now();
                    }
                }
            })
        };
        let dispatcher = tokio::spawn(crate::delivery::run(
            state.engine.clone(),
            state.config.webhooks,
            stop_tx.subscribe(),
        ));
        Background {
            stop_tx,
            sweeper,
            dispatcher,
        }
    }

    /// After the last request: stops the background work, saves a recovery point and
    /// flushes the store.
    pub(super) async fn stop(self, state: &Shared) {
        let _ = self.stop_tx.send(true);
        let _ = self.sweeper.await;
        let _ = self.dispatcher.await;
        state
            .ready
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // The next start reads this point and replays nothing.
        save_recovery_point(state).await;
        state.engine.close();
        tracing::info!("stopped; store flushed");
    }
}

/// Saves a recovery point off the runtime's threads and waits until it is durable.
async fn save_recovery_point(state: &Shared) {
    let engine = state.engine.clone();
    if let Ok(pending) = tokio::task::spawn_blocking(move || engine.save_recovery_point()).await {
        let saved = pending.durable().await;
        tracing::info!(
            states_written = saved.states_written,
            states_unchanged = saved.states_unchanged,
            pause_us = saved.pause_us,
            "recovery point saved"
        );
    }
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
        let state = match config.store {
            Some(_) => None,
            None => Some(build_state(config.clone())?),
        };
        let listener = TcpListener::bind(&config.addr).await?;
        tracing::info!(addr = %listener.local_addr()?, data = %config.data_dir.display(), store = config.store.is_some().then_some("postgres"), rules = %config.rules_dir.display(), "spendgate listening");
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
        match state {
            Some(state) => {
                reload_on_hangup(&state);
                serve(state, listener, shutdown).await
            }
            None => super::cluster::serve_cluster(config, listener, shutdown).await,
        }
    })
}

/// SIGHUP reloads the rules (the old policies stay live if the new ones fail).
pub(super) fn reload_on_hangup(state: &Shared) {
    #[cfg(unix)]
    {
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                let s = state.clone();
                let Ok(result) = tokio::task::spawn_blocking(move || s.reload("sighup")).await
                else {
                    continue;
                };
                match result {
                    Ok(v) => tracing::info!(policies = ?v, "policies reloaded"),
                    Err(e) => {
                        tracing::error!(errors = ?e, "reload refused; the old policies stay live")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = state;
}
