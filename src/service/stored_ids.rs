//! Which authorization ids only the store may answer for.
//!
//! After a start from a recovery point (a restart, a takeover, a shard handed over), and
//! once answers have left memory for its bound, the answers in memory are not all of
//! them, so every new authorization id is looked up in the store before it is decided,
//! in case it is a retry of an older one: on PostgreSQL a round trip per authorization,
//! which halved a sharded cluster's throughput after a handover (4.0 k/s against 7.4 k/s
//! without the lookups, same run); on SQLite a read through the one reader connection
//! (64 connections fell from ≈ 18 k/s to ≈ 11.5 k/s when a fresh process reached its
//! 500 000 answers). A Bloom filter of every stored authorization id, built in the
//! background from the store at every start, answers "certainly not stored" for a new id,
//! which then skips the lookup. Until it is
//! built, and for an id it may hold, the store is asked as before: a false positive costs
//! one lookup, never a wrong answer. There are no false negatives: every stored id is in
//! the scan (an owner's store gets no writes but its own, by the fence), and ids decided
//! while the scan runs are remembered and added when it ends. Not built for a SQLite
//! store that still has the version-4 `decisions` table (its ids are not in the scan).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use fastbloom::AtomicBloomFilter;
use parking_lot::Mutex;

use crate::store::{id_hash, Store};

/// Room for new decisions beyond those stored, at the target false-positive rate. Past
/// it false positives grow and lookups come back gradually (correct, slower) until the
/// next start. (Rebuilding while serving would have to wait for every authorization in
/// flight when the scan starts; not done.)
const HEADROOM_IDS: usize = 2_000_000;
/// Past this many stored decisions no filter is built (≈ 120 MB at 1 %): lookups stay.
const STORED_IDS_MAX: usize = 100_000_000;
/// Ids decided while the filter is built; past this many the build is given up.
const PENDING_IDS_MAX: usize = 2_000_000;
const PAGE_ROWS: i64 = 50_000;
const FALSE_POSITIVE_RATE: f64 = 0.01;

/// The filter and how far it is. Lock-free once built (every authorization records its
/// id): the lock is taken only while the scan runs.
#[derive(Default)]
pub(super) struct StoredIds {
    ready: ArcSwapOption<AtomicBloomFilter>,
    building: AtomicBool,
    /// Ids decided while the scan runs.
    pending: Mutex<Vec<u64>>,
}

impl StoredIds {
    /// Starts building from `store` on a thread of its own (ids recorded from now on
    /// are kept for it).
    pub(super) fn build_from(self: &Arc<Self>, store: Arc<Store>) {
        self.building.store(true, Ordering::SeqCst);
        let ids = self.clone();
        let started = std::time::Instant::now();
        let spawned = std::thread::Builder::new()
            .name("spendgate-stored-ids".into())
            .spawn(move || match scan(&store) {
                Ok(Some(filter)) => {
                    let bits = filter.num_bits();
                    if ids.finish(filter) {
                        tracing::info!(
                            build_ms = started.elapsed().as_millis() as u64,
                            filter_bytes = bits / 8,
                            "stored authorization ids indexed: new ids skip the store lookup"
                        );
                    }
                }
                Ok(None) => ids.give_up(),
                Err(e) => {
                    tracing::warn!(error = %e, "indexing stored authorization ids failed; new ids are looked up");
                    ids.give_up();
                }
            });
        if spawned.is_err() {
            self.give_up();
        }
    }

    /// An authorization id about to be decided (it will be stored).
    pub(super) fn record(&self, auth_id: &str) {
        if let Some(f) = &*self.ready.load() {
            f.insert_hash(id_hash(auth_id) as u64);
            return;
        }
        if !self.building.load(Ordering::SeqCst) {
            return;
        }
        let mut pending = self.pending.lock();
        // The build may have finished since: then the filter takes it.
        if let Some(f) = &*self.ready.load() {
            f.insert_hash(id_hash(auth_id) as u64);
        } else if self.building.load(Ordering::SeqCst) {
            if pending.len() < PENDING_IDS_MAX {
                pending.push(id_hash(auth_id) as u64);
            } else {
                // Too many to keep: lookups stay (correct, slower).
                drop(pending);
                self.give_up();
            }
        }
    }

    /// Whether the filter is built and in use.
    pub(super) fn is_ready(&self) -> bool {
        self.ready.load().is_some()
    }

    /// False only when the store certainly holds no decision with this id.
    pub(super) fn may_be_stored(&self, auth_id: &str) -> bool {
        match &*self.ready.load() {
            Some(f) => f.contains_hash(id_hash(auth_id) as u64),
            None => true,
        }
    }

    /// The scan is done: the ids decided meanwhile join it, and it is used from now on.
    fn finish(&self, filter: AtomicBloomFilter) -> bool {
        let mut pending = self.pending.lock();
        if !self.building.load(Ordering::SeqCst) {
            return false;
        }
        for h in pending.drain(..) {
            filter.insert_hash(h);
        }
        self.ready.store(Some(Arc::new(filter)));
        self.building.store(false, Ordering::SeqCst);
        true
    }

    /// No filter: every miss asks the store.
    fn give_up(&self) {
        let mut pending = self.pending.lock();
        self.building.store(false, Ordering::SeqCst);
        *pending = Vec::new();
    }
}

/// Every stored authorization id: decisions, and the deadline answers (91) kept in the
/// idempotency table. `None` when there are too many to index.
fn scan(store: &Store) -> Result<Option<AtomicBloomFilter>, crate::store::StoreError> {
    let stored = store.decision_seq_max()?.max(0) as usize;
    if stored > STORED_IDS_MAX {
        return Ok(None);
    }
    let filter = AtomicBloomFilter::with_false_pos(FALSE_POSITIVE_RATE)
        .expected_items(stored + HEADROOM_IDS);
    let mut after = 0;
    loop {
        let page = store.authorization_hashes(after, PAGE_ROWS)?;
        for (seq, hash) in &page {
            filter.insert_hash(*hash as u64);
            after = *seq;
        }
        if (page.len() as i64) < PAGE_ROWS {
            break;
        }
    }
    let mut after = String::new();
    loop {
        let page = store.authorization_idempotency_keys(&after, PAGE_ROWS)?;
        for key in &page {
            if let Some((_, auth_id)) = key.split_once('/') {
                filter.insert_hash(id_hash(auth_id) as u64);
            }
        }
        match page.last() {
            Some(last) if page.len() as i64 == PAGE_ROWS => after = last.clone(),
            _ => break,
        }
    }
    Ok(Some(filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_decided_while_the_filter_is_built_are_never_missed() {
        let ids = StoredIds::default();
        assert!(ids.may_be_stored("a"), "no filter: every id may be stored");
        ids.building.store(true, Ordering::SeqCst);
        ids.record("decided-meanwhile");
        assert!(
            ids.may_be_stored("anything"),
            "still building: ask the store"
        );
        let scanned = AtomicBloomFilter::with_false_pos(0.001).expected_items(1_000);
        scanned.insert_hash(id_hash("stored-before") as u64);
        assert!(ids.finish(scanned));
        assert!(ids.may_be_stored("stored-before"));
        assert!(ids.may_be_stored("decided-meanwhile"));
        ids.record("decided-after");
        assert!(ids.may_be_stored("decided-after"));
        let unknown = (0..1_000)
            .filter(|i| !ids.may_be_stored(&format!("new-{i}")))
            .count();
        assert!(unknown > 950, "new ids skip the store: {unknown} of 1000");
    }

    #[test]
    fn a_build_given_up_leaves_every_id_to_the_store() {
        let ids = StoredIds::default();
        ids.building.store(true, Ordering::SeqCst);
        ids.record("before");
        ids.give_up();
        let f = AtomicBloomFilter::with_false_pos(0.01).expected_items(10);
        assert!(
            !ids.finish(f),
            "a filter whose build was given up is not used"
        );
        assert!(ids.may_be_stored("x"));
    }
}
