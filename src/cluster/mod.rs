//! Several instances on one PostgreSQL store: the leases that make each of them the owner
//! of some shards (programs, see `domain::shard`), how the shards are shared out
//! (`balance`), and what an owner does to keep a lease (see `store::lease` for the fencing
//! itself; `http::cluster` for the front door that routes to the owners).

pub mod balance;

use std::time::{Duration, Instant};

use crate::store::lease;
pub use crate::store::lease::{Fence, Holder};
use crate::store::postgres;
use crate::store::sql::{Db, PgDb};
use crate::store::{Location, StoreError};

/// Whether a store setting names a PostgreSQL database.
pub fn is_postgres_url(s: &str) -> bool {
    matches!(Location::parse(s), Location::Postgres(_))
}

/// The connection a would-be owner asks for the lease on (and keeps renewing it with).
pub struct LeaseClient {
    db: PgDb,
    owner: String,
    address: String,
    lease_ms: i64,
}

impl LeaseClient {
    /// Connects and brings the schema up to date (blocking).
    pub fn connect(
        url: &str,
        owner: &str,
        address: &str,
        lease_ms: i64,
        shards: u32,
    ) -> Result<LeaseClient, StoreError> {
        let mut db = postgres::connect(url)?;
        postgres::migrate(&mut db, 0)?;
        postgres::agree_shards(&mut db, shards)?;
        // Behind an owner's batch in flight, give up and ask again rather than queue.
        db.batch(&format!("SET lock_timeout = {}", (lease_ms / 2).max(100)))?;
        Ok(LeaseClient {
            db,
            owner: owner.to_string(),
            address: address.to_string(),
            lease_ms,
        })
    }

    /// Takes `shard`'s lease if no live owner holds it (blocking).
    pub fn try_acquire(&mut self, shard: u32) -> Result<Option<Fence>, StoreError> {
        lease::try_acquire(
            &mut self.db,
            i64::from(shard),
            &self.owner,
            &self.address,
            self.lease_ms,
        )
    }

    /// Says this instance is alive for another lease period (blocking); and what the
    /// cluster looks like now: each shard's holder, and the live instances.
    pub fn observe(&mut self, shards: u32) -> Result<balance::View, StoreError> {
        lease::heartbeat(&mut self.db, &self.owner, &self.address, self.lease_ms)?;
        Ok(balance::View {
            holders: lease::holders(&mut self.db, shards)?,
            members: lease::members(&mut self.db)?,
        })
    }

    /// Leaves the cluster (clean shutdown), so the others share the shards out at once.
    pub fn leave(&mut self) -> Result<(), StoreError> {
        lease::leave(&mut self.db, &self.owner)
    }

    /// Extends `fence`'s lease (blocking); `false` once another instance took it.
    pub fn renew(&mut self, fence: &Fence) -> Result<bool, StoreError> {
        lease::renew(&mut self.db, fence, self.lease_ms)
    }

    /// Gives `fence`'s lease up (blocking), after its store is flushed.
    pub fn release(&mut self, fence: &Fence) -> Result<(), StoreError> {
        lease::release(&mut self.db, fence)
    }
}

/// Renews the lease on a thread of its own (never delayed by the runtime); stops the
/// process when the lease is lost or cannot be renewed for a whole lease period.
pub struct Renewer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<PgDb>,
    fence: Fence,
}

impl Renewer {
    pub fn start(client: LeaseClient, fence: Fence) -> Result<Renewer, StoreError> {
        let (mut db, lease_ms) = (client.db, client.lease_ms);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let f = fence.clone();
        let thread = std::thread::Builder::new()
            .name("spendgate-lease".into())
            .spawn(move || {
                let period = Duration::from_millis((lease_ms / 3).max(100) as u64);
                let lease = Duration::from_millis(lease_ms as u64);
                let mut renewed = Instant::now();
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(period)
                {
                    let asked = Instant::now();
                    match lease::renew(&mut db, &f, lease_ms) {
                        Ok(true) => renewed = asked,
                        Ok(false) => crate::store::fail_stop(&format!(
                            "lease of shard {} (epoch {}) taken over",
                            f.shard, f.epoch
                        )),
                        Err(e) => {
                            tracing::warn!(error = %e, "lease renewal failed");
                            if renewed.elapsed() >= lease {
                                crate::store::fail_stop(
                                    "lease not renewed for a whole lease period",
                                );
                            }
                        }
                    }
                }
                db
            })?;
        Ok(Renewer {
            stop,
            thread,
            fence,
        })
    }

    /// Gives the lease up (blocking), after the store is flushed.
    pub fn release(self) {
        drop(self.stop);
        if let Ok(mut db) = self.thread.join() {
            if let Err(e) = lease::release(&mut db, &self.fence) {
                tracing::warn!(error = %e, "giving up the lease failed; it will expire");
            }
        }
    }
}
