//! Accepting connections. At most `connections_max` are open at once (more wait in the
//! listen backlog, not accepted), and each must deliver a request's head within
//! `read_timeout_ms` of the server waiting for it: an idle keep-alive connection closes
//! after that long, and a client that trickles its headers is cut off. `axum::serve` set
//! neither, so connections were unbounded and a silent one stayed open for ever.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What one server accepts.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub connections_max: usize,
    pub read_timeout: Duration,
    /// Small answers on a hop that waits for them (the cluster's front door): no Nagle.
    pub nodelay: bool,
}

impl ConnectionLimits {
    pub fn of(config: &super::Config) -> ConnectionLimits {
        ConnectionLimits {
            connections_max: config.connections_max.max(1),
            read_timeout: Duration::from_millis(config.read_timeout_ms.max(1)),
            nodelay: false,
        }
    }
}

/// How long accepting pauses after an error such as running out of descriptors (the
/// error would repeat at once).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` within `limits` until `shutdown` resolves; then stops
/// accepting, lets each connection finish the request it is on, and returns when all
/// have closed.
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.connections_max));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if limits.nodelay {
            let _ = stream.set_nodelay(true);
        }
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
