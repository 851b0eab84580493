//! Leases and fencing on PostgreSQL: which instance owns a shard, and proof in every
//! commit that it still does.
//!
//! A lease is a row (`spendgate_leases`: shard, owner, address, epoch, expiry). An
//! instance takes a shard only when its lease has expired by the database's clock (so
//! instance clocks never matter), which bumps the epoch. Every batch the owner commits
//! first reads its lease row `FOR SHARE` and is refused unless owner and epoch are still
//! its own; a takeover's update waits for that row lock, so no batch of an old owner can
//! commit after a new owner took the shard, however long the old one was paused.
//!
//! The row lock has one hazard: an owner paused inside a transaction would hold it, and
//! so block every takeover, for as long as it is paused. Its writer's session therefore
//! runs with `idle_in_transaction_session_timeout` set to the lease: the database ends
//! such a transaction (the paused owner's batch fails, it stops when resumed) and the
//! lease can move. Takeover attempts run with a `lock_timeout`, so a standby keeps
//! checking rather than queue behind a batch.
//!
//! Each shard (a fixed share of the programs, see `domain::shard`) has its own lease, so
//! instances split the shards and take over a dead one's. Instances also say they are
//! alive (`spendgate_members`, expiring like a lease) so the shards can be shared out
//! evenly among the live ones.

use super::sql::{params, Db};
use super::StoreError;

/// What a holder proves in every commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub shard: i64,
    pub owner: String,
    pub epoch: i64,
    /// How long the lease lasts unrenewed; also how long the owner's writer may sit in
    /// an open transaction before the database ends it (see `Store::open_postgres`).
    pub lease_ms: i64,
}

/// Who holds a shard's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    /// Where the owner serves (`http://host:port`), for forwarding.
    pub address: String,
    pub epoch: i64,
    /// Whether the lease is still valid by the database's clock.
    pub live: bool,
}

impl Fence {
    /// Inside the writer's transaction: the lease is still ours, and stays so until the
    /// transaction ends (the row lock makes a takeover wait for it).
    pub(super) fn check(&self, db: &mut dyn Db) -> Result<(), StoreError> {
        let row = db.row(
            "SELECT owner, epoch FROM spendgate_leases WHERE shard = ?1 FOR SHARE",
            params![self.shard],
            |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)),
        )?;
        match row {
            Some((owner, epoch)) if owner == self.owner && epoch == self.epoch => Ok(()),
            Some((owner, epoch)) => Err(StoreError::Fenced(format!(
                "shard {} moved to {owner} (epoch {epoch}); this instance held epoch {}",
                self.shard, self.epoch
            ))),
            None => Err(StoreError::Fenced(format!(
                "shard {} has no lease",
                self.shard
            ))),
        }
    }
}

/// Takes the shard if nobody holds a live lease on it: returns the fence to commit
/// with, or `None` while another instance's lease is live.
pub fn try_acquire(
    db: &mut dyn Db,
    shard: i64,
    owner: &str,
    address: &str,
    lease_ms: i64,
) -> Result<Option<Fence>, StoreError> {
    let epoch: Option<i64> = db.row(
        "INSERT INTO spendgate_leases (shard, owner, address, epoch, expires_at)
         VALUES (?1, ?2, ?3, 1, now() + ?4::bigint * interval '1 millisecond')
         ON CONFLICT (shard) DO UPDATE SET owner = excluded.owner, address = excluded.address,
             epoch = spendgate_leases.epoch + 1, expires_at = excluded.expires_at
         WHERE spendgate_leases.expires_at < now()
         RETURNING epoch",
        params![shard, owner, address, lease_ms],
        |r| r.get(0),
    )?;
    Ok(epoch.map(|epoch| Fence {
        shard,
        owner: owner.to_string(),
        epoch,
        lease_ms,
    }))
}

/// Extends the lease; `false` when it is no longer ours (taken over).
pub fn renew(db: &mut dyn Db, fence: &Fence, lease_ms: i64) -> Result<bool, StoreError> {
    let n = db.execute(
        "UPDATE spendgate_leases SET expires_at = now() + ?4::bigint * interval '1 millisecond'
         WHERE shard = ?1 AND owner = ?2 AND epoch = ?3",
        params![fence.shard, &fence.owner, fence.epoch, lease_ms],
    )?;
    Ok(n == 1)
}

/// Gives the lease up (after the store is flushed), so a standby takes over at once
/// instead of after expiry.
pub fn release(db: &mut dyn Db, fence: &Fence) -> Result<(), StoreError> {
    db.execute(
        "UPDATE spendgate_leases SET expires_at = now() - interval '1 second'
         WHERE shard = ?1 AND owner = ?2 AND epoch = ?3",
        params![fence.shard, &fence.owner, fence.epoch],
    )?;
    Ok(())
}

/// The shard's current holder, if it ever had one.
pub fn holder(db: &mut dyn Db, shard: i64) -> Result<Option<Holder>, StoreError> {
    db.row(
        "SELECT owner, address, epoch, expires_at > now() FROM spendgate_leases WHERE shard = ?1",
        params![shard],
        |r| {
            Ok(Holder {
                owner: r.get(0)?,
                address: r.get(1)?,
                epoch: r.get(2)?,
                live: r.get(3)?,
            })
        },
    )
}

/// Every shard's holder, by shard (`None`: never held).
pub fn holders(db: &mut dyn Db, shards: u32) -> Result<Vec<Option<Holder>>, StoreError> {
    let mut out = vec![None; shards as usize];
    db.each(
        "SELECT shard, owner, address, epoch, expires_at > now() FROM spendgate_leases
         WHERE shard < ?1",
        params![i64::from(shards)],
        &mut |r| {
            let shard: i64 = r.get(0)?;
            if let Some(slot) = out.get_mut(shard as usize) {
                *slot = Some(Holder {
                    owner: r.get(1)?,
                    address: r.get(2)?,
                    epoch: r.get(3)?,
                    live: r.get(4)?,
                });
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// This instance is alive for another `lease_ms` (by the database's clock).
pub fn heartbeat(
    db: &mut dyn Db,
    owner: &str,
    address: &str,
    lease_ms: i64,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO spendgate_members (owner, address, expires_at)
         VALUES (?1, ?2, now() + ?3::bigint * interval '1 millisecond')
         ON CONFLICT (owner) DO UPDATE SET address = excluded.address,
             expires_at = excluded.expires_at",
        params![owner, address, lease_ms],
    )?;
    // Long-dead members are forgotten (bounded table).
    db.execute(
        "DELETE FROM spendgate_members WHERE expires_at < now() - interval '1 hour'",
        &[],
    )?;
    Ok(())
}

/// The live instances, by name.
pub fn members(db: &mut dyn Db) -> Result<Vec<String>, StoreError> {
    db.rows(
        "SELECT owner FROM spendgate_members WHERE expires_at > now() ORDER BY owner",
        &[],
        |r| r.get(0),
    )
}

/// This instance is gone (clean shutdown).
pub fn leave(db: &mut dyn Db, owner: &str) -> Result<(), StoreError> {
    db.execute(
        "DELETE FROM spendgate_members WHERE owner = ?1",
        params![owner],
    )?;
    Ok(())
}
