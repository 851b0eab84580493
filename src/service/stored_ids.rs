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
//!
//! A filter full of the ids decided since is not rebuilt (a scan while serving would race
//! the authorizations between their id and their commit): a new, empty one twice its size
//! joins it and takes the new ids, and an id is looked up when any of them may hold it.

use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use fastbloom::AtomicBloomFilter;
use parking_lot::Mutex;

use crate::store::{id_hash, Store};

/// Room for new decisions beyond those stored, at the target false-positive rate; each
/// filter added when the one before is full has twice the room of that one.
const HEADROOM_IDS: usize = 2_000_000;
/// Most memory the filters take together (≈ 1.2 bytes per id): past it the newest keeps
/// taking ids, its false positives grow and lookups come back gradually (correct,
/// slower) until the next start. With the 2 M-id start, 2 + 4 + 8 + 16 M new ids fit.
const FILTER_BYTES_MAX: usize = 48 << 20;
/// Past this many stored decisions no filter is built (≈ 120 MB at 1 %): lookups stay.
const STORED_IDS_MAX: usize = 100_000_000;
/// Ids decided while the filter is built; past this many the build is given up.
const PENDING_IDS_MAX: usize = 2_000_000;
const PAGE_ROWS: i64 = 50_000;
const FALSE_POSITIVE_RATE: f64 = 0.01;

/// The filter and how far it is. Lock-free once built (every authorization records its
/// id): the lock is taken only while the scan runs.
pub(super) struct StoredIds {
    ready: ArcSwapOption<Filters>,
    building: AtomicBool,
    /// Ids decided while the scan runs.
    pending: Mutex<Vec<u64>>,
    /// New ids the first filter has room for ([`HEADROOM_IDS`]).
    headroom_ids: usize,
}

impl Default for StoredIds {
    fn default() -> Self {
        StoredIds::with_headroom(HEADROOM_IDS)
    }
}

/// The filters in use: those filled, still asked, and the one new ids go to.
struct Filters {
    full: Vec<Arc<AtomicBloomFilter>>,
    active: Arc<AtomicBloomFilter>,
    /// New ids the active filter takes before the next joins (below zero when ids
    /// arrive while it is made).
    room: AtomicIsize,
    active_ids: usize,
    bytes: usize,
}

impl Filters {
    fn contains(&self, hash: u64) -> bool {
        self.active.contains_hash(hash) || self.full.iter().rev().any(|f| f.contains_hash(hash))
    }

    fn count(&self) -> usize {
        self.full.len() + 1
    }
}

impl StoredIds {
    fn with_headroom(headroom_ids: usize) -> StoredIds {
        StoredIds {
            ready: ArcSwapOption::empty(),
            building: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            headroom_ids,
        }
    }

    /// Starts building from `store` on a thread of its own (ids recorded from now on
    /// are kept for it).
    pub(super) fn build_from(self: &Arc<Self>, store: Arc<Store>) {
        self.building.store(true, Ordering::SeqCst);
        let ids = self.clone();
        let started = std::time::Instant::now();
        let spawned = std::thread::Builder::new()
            .name("spendgate-stored-ids".into())
            .spawn(move || match scan(&store, ids.headroom_ids) {
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
            self.insert(f, id_hash(auth_id) as u64);
            return;
        }
        if !self.building.load(Ordering::SeqCst) {
            return;
        }
        let mut pending = self.pending.lock();
        // The build may have finished since: then the filter takes it.
        if let Some(f) = &*self.ready.load() {
            self.insert(f, id_hash(auth_id) as u64);
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
            Some(f) => f.contains(id_hash(auth_id) as u64),
            None => true,
        }
    }

    /// How many filters are in use (0 before the first is built).
    #[cfg(test)]
    fn filters(&self) -> usize {
        self.ready.load().as_ref().map_or(0, |f| f.count())
    }

    fn insert(&self, f: &Filters, hash: u64) {
        f.active.insert_hash(hash);
        // One caller sees the room run out, so one filter joins.
        if f.room.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.add_filter(f);
        }
    }

    /// The active filter is full: an empty one twice its size takes the new ids.
    fn add_filter(&self, f: &Filters) {
        let ids = f.active_ids.saturating_mul(2);
        let next = AtomicBloomFilter::with_false_pos(FALSE_POSITIVE_RATE).expected_items(ids);
        let bytes = f.bytes + next.num_bits() / 8;
        if bytes > FILTER_BYTES_MAX {
            tracing::warn!(
                filters = f.count(),
                filter_bytes = f.bytes,
                "the stored-ids filters are at their memory bound: new ids are looked up more often until the next start"
            );
            return;
        }
        let mut full = f.full.clone();
        full.push(f.active.clone());
        self.ready.store(Some(Arc::new(Filters {
            full,
            active: Arc::new(next),
            room: AtomicIsize::new(ids as isize),
            active_ids: ids,
            bytes,
        })));
    }

    /// The scan is done: the ids decided meanwhile join it, and it is used from now on.
    fn finish(&self, filter: AtomicBloomFilter) -> bool {
        let mut pending = self.pending.lock();
        if !self.building.load(Ordering::SeqCst) {
            return false;
        }
        let room = self.headroom_ids as isize - pending.len() as isize;
        for h in pending.drain(..) {
            filter.insert_hash(h);
        }
        let bytes = filter.num_bits() / 8;
        self.ready.store(Some(Arc::new(Filters {
            full: Vec::new(),
            active: Arc::new(filter),
            room: AtomicIsize::new(room.max(1)),
            active_ids: self.headroom_ids,
            bytes,
        })));
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
fn scan(
    store: &Store,
    headroom_ids: usize,
) -> Result<Option<AtomicBloomFilter>, crate::store::StoreError> {
    let stored = store.decision_seq_max()?.max(0) as usize;
    if stored > STORED_IDS_MAX {
        return Ok(None);
    }
    let filter = AtomicBloomFilter::with_false_pos(FALSE_POSITIVE_RATE)
        .expected_items(stored + headroom_ids);
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
    fn past_the_first_filters_room_new_ids_still_skip_the_store() {
        // Two thousand ids decided where the filter built at start had room for 100:
        // alone it would answer "may be stored" for nearly any id.
        let ids = StoredIds::with_headroom(100);
        ids.building.store(true, Ordering::SeqCst);
        let scanned = AtomicBloomFilter::with_false_pos(FALSE_POSITIVE_RATE).expected_items(100);
        assert!(ids.finish(scanned));
        for i in 0..2_000 {
            ids.record(&format!("decided-{i}"));
        }
        let unknown = (0..1_000)
            .filter(|i| !ids.may_be_stored(&format!("new-{i}")))
            .count();
        assert!(unknown > 900, "new ids skip the store: {unknown} of 1000");
        assert!((0..2_000).all(|i| ids.may_be_stored(&format!("decided-{i}"))));
        // 100, then 200, 400, 800 and 1 600 new ids.
        assert_eq!(ids.filters(), 5);
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
