//! Several instances on one PostgreSQL store. The programs are split into a fixed number
//! of shards (`domain::shard`); each shard is owned by one instance through a lease with
//! an epoch (see `store::lease`), and each owned shard runs as a full engine and API of
//! its own, on its own tables. Instances share the shards out evenly (`cluster::balance`)
//! and take over a dead one's when its leases expire.
//!
//! Every instance listens from the start. Its front door finds a request's shard — from
//! the program in the path, the shard named in a program API key, or the program id an
//! admin creates — and serves it when it owns that shard, or forwards it to the owner
//! (one hop: a forwarded request is never forwarded again), or, when no owner is known,
//! answers 503 with the owner's address for an L7 proxy. Admin calls that change the
//! policies (reload, rollback) go to every owner. An owner renews its leases in the
//! background; a lease lost, or not renewable for a whole lease period, stops the process
//! (fail-stop), and its writes would be refused by the fence anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::forward;
use super::server::{build_state_on, Background};
use super::{app, AppState, Config, Shared};
use crate::cluster::balance;
use crate::cluster::{Fence, Holder, LeaseClient, Renewer};
use crate::domain::shard::{shard_of_key, shard_of_program};

/// One shard as this instance sees it.
#[derive(Default)]
struct Slot {
    /// The shard's full API, while this instance owns it and has loaded it.
    app: ArcSwapOption<Router>,
    /// Its state (for reloads on SIGHUP).
    state: ArcSwapOption<AppState>,
    /// Requests inside `app` now: a handover waits for them to finish.
    in_flight: AtomicUsize,
    /// The shard's last known lease holder.
    holder: ArcSwap<Option<Holder>>,
}

/// Counts a request into a slot for as long as it runs (also when the caller goes away
/// mid-request and the future is dropped).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Shard(u32),
    /// To every owner: the policies are the same files on every instance.
    Everywhere,
}

/// The front door every request goes through.
struct Gate {
    slots: Vec<Slot>,
    admin_hash: String,
    me: String,
    client: reqwest::Client,
    /// How often the lease table is read.
    poll: Duration,
    /// How long a request's body may take to arrive (`read_timeout_ms`).
    read_timeout: Duration,
    /// Woken after each read of the lease table and each shard loaded.
    observed: tokio::sync::Notify,
}

impl Gate {
    fn shards(&self) -> u32 {
        self.slots.len() as u32
    }

    async fn handle(self: Arc<Self>, req: Request) -> Response {
        match req.uri().path() {
            // Each instance's own metrics (a standby's: its lease gauges), never another's.
            "/metrics" => return super::server::metrics_handle().render().into_response(),
            "/healthz" | "/readyz" => {
                // Ready once it serves a shard; otherwise up, as a standby.
                if let Some(k) = self.slots.iter().position(|s| s.app.load().is_some()) {
                    return self.dispatch(k as u32, req).await;
                }
                return if req.uri().path() == "/healthz" {
                    (StatusCode::OK, "standby").into_response()
                } else {
                    // Unsharded, it names the owner (for a proxy to route to).
                    self.unavailable(
                        (self.shards() == 1).then_some(0),
                        "this instance owns no shard",
                    )
                };
            }
            _ => {}
        }
        match self.route(req).await {
            Ok((Route::Shard(k), req)) => self.dispatch(k, req).await,
            Ok((Route::Everywhere, req)) => self.everywhere(req).await,
            Err(answer) => answer,
        }
    }

    /// The shard a request belongs to: the program in its path, else the shard its
    /// program key names, else (admin calls) the program an admin creates; everything
    /// else — the admin's reads, `/openapi.json`, unknown keys — goes to shard 0.
    async fn route(&self, req: Request) -> Result<(Route, Request), Response> {
        let shards = self.shards();
        if shards == 1 {
            return Ok((Route::Shard(0), req));
        }
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if let ["v1", "hooks" | "programs", program, ..] = segments.as_slice() {
            return Ok((Route::Shard(shard_of_program(program, shards)), req));
        }
        let key = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(key) = key else {
            return Ok((Route::Shard(0), req));
        };
        if crate::service::key_hash(key) != self.admin_hash {
            return Ok((Route::Shard(shard_of_key(key, shards).unwrap_or(0)), req));
        }
        let post = req.method() == Method::POST;
        match segments.as_slice() {
            ["v1", "policies", "reload"] | ["v1", "policies", _, "rollback"] if post => {
                Ok((Route::Everywhere, req))
            }
            ["v1", "programs"] if post => {
                let (parts, body) = req.into_parts();
                let body = forward::read_body(body, self.read_timeout).await?;
                // An unreadable body goes to shard 0, whose API says what is wrong.
                let shard = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| Some(shard_of_program(v.get("id")?.as_str()?, shards)))
                    .unwrap_or(0);
                Ok((
                    Route::Shard(shard),
                    Request::from_parts(parts, Body::from(body)),
                ))
            }
            _ => Ok((Route::Shard(0), req)),
        }
    }

    /// Serves the request when this instance has the shard loaded; forwards it to the
    /// owner otherwise.
    async fn dispatch(&self, shard: u32, req: Request) -> Response {
        self.dispatch_to(shard, req, true).await
    }

    /// `dispatch`; `reroute`: whether a request the owner never received may be routed
    /// once more after this instance's view of the lease table changes.
    async fn dispatch_to(&self, shard: u32, req: Request, reroute: bool) -> Response {
        let slot = &self.slots[shard as usize];
        // A shard between owners (its lease just taken, or being loaded) is usually
        // served again within a poll or two: wait that long rather than refuse at once.
        let patience = Instant::now() + self.poll * 3;
        let h = loop {
            let observed = self.observed.notified();
            {
                let _counted = InFlight::enter(&slot.in_flight);
                if let Some(app) = slot.app.load_full() {
                    return match app.as_ref().clone().oneshot(req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    };
                }
            }
            let holder = slot.holder.load_full();
            let live = holder.as_ref().as_ref().filter(|h| h.live);
            if let Some(h) = live.filter(|h| h.owner != self.me) {
                break h.clone();
            }
            let now = Instant::now();
            if now < patience {
                let _ = tokio::time::timeout(patience - now, observed).await;
                continue;
            }
            return match live {
                None => self.unavailable(
                    Some(shard),
                    "no instance owns this shard right now; retry shortly",
                ),
                Some(_) => self.unavailable(
                    Some(shard),
                    "this instance is taking this shard over or handing it over",
                ),
            };
        };
        if req.headers().contains_key(forward::FORWARDED) {
            return self.unavailable(
                Some(shard),
                "forwarded to an instance that does not own the shard",
            );
        }
        let (parts, body) = req.into_parts();
        let body = match forward::read_body(body, self.read_timeout).await {
            Ok(body) => body,
            Err(answer) => return answer,
        };
        match forward::forward(&self.client, &self.me, &parts, body.clone(), &h.address).await {
            Ok(r) => r,
            // Nothing reached the owner, most often because this view of the lease table
            // is a poll old: the owner died and another instance has taken the shard.
            Err(e) if !e.sent && reroute && self.holder_moved(slot, &h).await => {
                tracing::info!(error = %e.detail, owner = %h.address, shard, "owner unreachable; routing again");
                let req = Request::from_parts(parts, Body::from(body));
                Box::pin(self.dispatch_to(shard, req, false)).await
            }
            Err(e) => {
                tracing::warn!(error = %e.detail, owner = %h.address, shard, "forwarding failed");
                self.unavailable(Some(shard), "the owner did not answer; retry shortly")
            }
        }
    }

    /// Waits (up to three polls) until the shard's holder is no longer `from` as this
    /// instance last saw it, or this instance serves the shard; false when neither happens.
    async fn holder_moved(&self, slot: &Slot, from: &Holder) -> bool {
        let deadline = Instant::now() + self.poll * 3;
        loop {
            // Created before the check, so a reading finished in between still wakes it.
            let observed = self.observed.notified();
            if slot.app.load().is_some() || slot.holder.load().as_ref().as_ref() != Some(from) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left, observed).await;
        }
    }

    /// A policy change: on every shard this instance owns and (unless it was forwarded
    /// here) on every other owner; the first failure, or else the first answer.
    async fn everywhere(&self, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let body = match forward::read_body(body, self.read_timeout).await {
            Ok(body) => body,
            Err(answer) => return answer,
        };
        let copy = |body: &Bytes| Request::from_parts(parts.clone(), Body::from(body.clone()));
        let mut answers = Vec::new();
        for (k, slot) in self.slots.iter().enumerate() {
            if slot.app.load().is_some() {
                answers.push(self.dispatch(k as u32, copy(&body)).await);
            }
        }
        if !parts.headers.contains_key(forward::FORWARDED) {
            let others: BTreeSet<String> = self
                .slots
                .iter()
                .filter_map(|s| {
                    let h = s.holder.load_full();
                    h.as_ref()
                        .as_ref()
                        .filter(|h| h.live && h.owner != self.me)
                        .map(|h| h.address.clone())
                })
                .collect();
            for address in others {
                match forward::forward(&self.client, &self.me, &parts, body.clone(), &address).await
                {
                    Ok(r) => answers.push(r),
                    Err(e) => {
                        tracing::warn!(error = %e.detail, owner = %address, "forwarding a policy change failed");
                        answers.push(self.unavailable(None, "an owner did not answer; retry"));
                    }
                }
            }
        }
        if answers.is_empty() {
            return self.unavailable(None, "no instance owns a shard right now; retry shortly");
        }
        let first_failure = answers.iter().position(|r| !r.status().is_success());
        answers.swap_remove(first_failure.unwrap_or(0))
    }

    fn unavailable(&self, shard: Option<u32>, detail: &str) -> Response {
        let owner = shard.and_then(|k| {
            let h = self.slots[k as usize].holder.load_full();
            h.as_ref()
                .as_ref()
                .filter(|h| h.live)
                .map(|h| h.address.clone())
        });
        forward::not_owner(shard, owner, detail)
    }
}

/// A shard this instance owns and serves.
struct Owned {
    state: Shared,
    background: Background,
    renewer: Renewer,
}

/// What an instance needs to take a shard: where the store is, who it is, its settings.
#[derive(Clone)]
struct Me {
    config: Config,
    url: String,
    name: String,
    address: String,
    lease_ms: i64,
}

impl Me {
    fn lease_client(&self) -> anyhow::Result<LeaseClient> {
        Ok(LeaseClient::connect(
            &self.url,
            &self.name,
            &self.address,
            self.lease_ms,
            self.config.shards,
        )?)
    }

    /// After taking `fence`'s lease (blocking): keeps renewing it and loads the shard.
    /// On failure the lease is given back.
    fn load(&self, fence: Fence) -> anyhow::Result<(Shared, Renewer)> {
        let renewer = Renewer::start(self.lease_client()?, fence.clone())?;
        let mut config = self.config.clone();
        config.engine.shard = fence.shard as u32;
        config.engine.shards = self.config.shards;
        match build_state_on(config, Some(fence)) {
            Ok(state) => Ok((state, renewer)),
            Err(e) => {
                renewer.release();
                Err(e)
            }
        }
    }
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
    let admin = config
        .admin_key
        .clone()
        .ok_or_else(|| anyhow::anyhow!("a PostgreSQL store needs the admin key"))?;
    // The recorder first, so the lease gauges below are recorded.
    let _ = super::server::metrics_handle();
    let name = format!("spendgate-{}", uuid::Uuid::new_v4().simple());
    let address = config.advertise.clone().unwrap_or_else(|| {
        format!(
            "http://{}",
            listener
                .local_addr()
                .map_or_else(|_| config.addr.clone(), |a| a.to_string())
        )
    });
    let me = Me {
        url,
        name: name.clone(),
        address: address.clone(),
        lease_ms: config.lease_ms as i64,
        config: config.clone(),
    };
    // Often enough that a handover (the owner gives the lease up) is quick.
    let poll = Duration::from_millis((me.lease_ms / 10).clamp(100, 500) as u64);
    let gate = Arc::new(Gate {
        slots: (0..config.shards).map(|_| Slot::default()).collect(),
        admin_hash: crate::service::key_hash(&admin),
        me: name.clone(),
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            // An owner closes a connection idle for `read_timeout_ms`: drop ours well
            // before, so a forwarded request never goes out on one it is closing.
            .pool_idle_timeout(Duration::from_millis(config.read_timeout_ms / 2))
            .tcp_nodelay(true)
            .timeout(Duration::from_millis(config.deadline_ms.max(1_000) * 2))
            .build()?,
        poll,
        read_timeout: Duration::from_millis(config.read_timeout_ms),
        observed: tokio::sync::Notify::new(),
    });
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let front = {
        let gate = gate.clone();
        // Forwarded requests are held open here: as bounded as an owner's own.
        Router::new()
            .fallback(move |req: Request| gate.clone().handle(req))
            .layer(tower::limit::ConcurrencyLimitLayer::new(
                config.requests_in_flight_max,
            ))
    };
    // The front door stops on shutdown, and also when a shard could not be loaded.
    let (halt_tx, halt_rx) = tokio::sync::watch::channel(false);
    let server = {
        let mut stop = halt_rx;
        let limits = super::ConnectionLimits {
            // Forwarded answers are small writes on a hop that waits for them: no Nagle.
            nodelay: true,
            ..super::ConnectionLimits::of(&config)
        };
        tokio::spawn(async move {
            super::serve_connections(listener, front, limits, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        })
    };
    reload_on_hangup(gate.clone());

    let mut client = {
        let me = me.clone();
        tokio::task::spawn_blocking(move || me.lease_client()).await??
    };
    tracing::info!(instance = %name, %address, shards = config.shards, "joined; sharing out the shards");
    metrics::gauge!("spendgate_lease_held").set(0.0);
    let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
    let mut loading: BTreeSet<u32> = BTreeSet::new();
    let (loaded_tx, mut loaded_rx) =
        tokio::sync::mpsc::unbounded_channel::<(u32, i64, anyhow::Result<(Shared, Renewer)>)>();
    let mut failure = None;
    loop {
        let (back, view) = {
            let me = me.clone();
            let shards = config.shards;
            tokio::task::spawn_blocking(move || {
                let view = client.observe(shards);
                if view.is_err() {
                    // The database may have restarted: a fresh connection (the old one is
                    // dropped here, off the runtime: it owns a runtime of its own).
                    if let Ok(fresh) = me.lease_client() {
                        client = fresh;
                    }
                }
                (client, view)
            })
            .await?
        };
        client = back;
        match view {
            Ok(view) => {
                for (slot, h) in gate.slots.iter().zip(&view.holders) {
                    slot.holder.store(Arc::new(h.clone()));
                }
                gate.observed.notify_waiters();
                let moves = balance::plan(&name, &view);
                for shard in moves.take {
                    let (taken, c) = {
                        let mut c = client;
                        let r = tokio::task::spawn_blocking(move || (c.try_acquire(shard), c));
                        let (taken, back) = r.await?;
                        c = back;
                        (taken, c)
                    };
                    client = c;
                    match taken {
                        Ok(Some(fence)) => {
                            tracing::info!(instance = %name, shard, epoch = fence.epoch, "lease taken; loading the shard");
                            loading.insert(shard);
                            let (me, tx) = (me.clone(), loaded_tx.clone());
                            tokio::task::spawn_blocking(move || {
                                let epoch = fence.epoch;
                                let started = Instant::now();
                                let r = me.load(fence);
                                tracing::info!(
                                    shard,
                                    load_ms = started.elapsed().as_millis() as u64,
                                    ok = r.is_ok(),
                                    "shard loaded"
                                );
                                let _ = tx.send((shard, epoch, r));
                            });
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, shard, "taking a lease failed; will retry")
                        }
                    }
                }
                if let Some(shard) = moves.give_up {
                    if let Some(o) = owned.remove(&shard) {
                        tracing::info!(instance = %name, shard, "handing the shard over");
                        hand_over(&gate.slots[shard as usize], shard, o).await;
                        metrics::gauge!("spendgate_lease_held").set(owned.len() as f64);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "lease check failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            Some((shard, epoch, r)) = loaded_rx.recv() => {
                loading.remove(&shard);
                match r {
                    Ok((state, renewer)) => {
                        let slot = &gate.slots[shard as usize];
                        let background = Background::start(&state);
                        slot.state.store(Some(state.clone()));
                        slot.app.store(Some(Arc::new(app(state.clone()))));
                        owned.insert(shard, Owned { state, background, renewer });
                        gate.observed.notify_waiters();
                        metrics::gauge!("spendgate_lease_held").set(owned.len() as f64);
                        metrics::gauge!("spendgate_lease_epoch", "shard" => shard.to_string()).set(epoch as f64);
                        tracing::info!(instance = %name, shard, epoch, "serving the shard");
                    }
                    Err(e) => {
                        failure = Some(e.context(format!("loading shard {shard}")));
                        break;
                    }
                }
            }
            _ = stop_rx.wait_for(|s| *s) => break,
        }
    }
    // Stopping (or failed): no new requests, then every shard flushed and its lease given
    // up, so the other instances take over at once rather than after expiry.
    let _ = halt_tx.send(true);
    let _ = server.await;
    while !loading.is_empty() {
        let Some((shard, _, r)) = loaded_rx.recv().await else {
            break;
        };
        loading.remove(&shard);
        if let Ok((state, renewer)) = r {
            let background = Background::start(&state);
            owned.insert(
                shard,
                Owned {
                    state,
                    background,
                    renewer,
                },
            );
        }
    }
    for (shard, o) in std::mem::take(&mut owned) {
        hand_over(&gate.slots[shard as usize], shard, o).await;
    }
    tokio::task::spawn_blocking(move || {
        if let Err(e) = client.leave() {
            tracing::warn!(error = %e, "leaving the cluster failed; this instance will expire");
        }
        // Its connection owns a runtime: dropped off the service's.
        drop(client);
    })
    .await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Hands a shard over: no new requests into it, the ones inside finish, its background
/// work stops, a recovery point is saved and its store flushed, then the lease is given
/// up (so the next owner takes it at once and finds nothing to replay).
async fn hand_over(slot: &Slot, shard: u32, o: Owned) {
    slot.app.store(None);
    slot.state.store(None);
    while slot.in_flight.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    o.background.stop(&o.state).await;
    let renewer = o.renewer;
    let _ = tokio::task::spawn_blocking(move || renewer.release()).await;
    // No epoch for a shard this instance no longer holds.
    metrics::gauge!("spendgate_lease_epoch", "shard" => shard.to_string()).set(0.0);
}

/// SIGHUP reloads the rules on every shard this instance serves.
fn reload_on_hangup(gate: Arc<Gate>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            for (shard, slot) in gate.slots.iter().enumerate() {
                let Some(state) = slot.state.load_full() else {
                    continue;
                };
                match tokio::task::spawn_blocking(move || state.reload("sighup")).await {
                    Ok(Ok(v)) => tracing::info!(shard, policies = ?v, "policies reloaded"),
                    Ok(Err(e)) => {
                        tracing::error!(shard, errors = ?e, "reload refused; the old policies stay live")
                    }
                    Err(_) => {}
                }
            }
        }
    });
    #[cfg(not(unix))]
    drop(gate);
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
