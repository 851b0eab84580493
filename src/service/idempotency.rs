//! Idempotency keys: the same key with the same request replays the stored response;
//! with a different request it is a conflict; concurrent duplicates execute once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{Pending, Rejection};
use crate::store::Write;

/// How long a duplicate waits for the first request with its key to finish.
const IN_FLIGHT_WAIT_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Entry {
    InFlight {
        hash: String,
    },
    Done {
        hash: String,
        response: Kept,
        seq: u64,
    },
}

/// A finished answer as memory keeps it.
#[derive(Debug, Clone)]
pub enum Kept {
    /// The response as sent.
    Json(Arc<str>),
    /// An authorization's answer record (the bytes its decision row stores: 58 against
    /// 314 bytes of JSON for the README walkthrough's approval, ≈ 99 against 419 for its
    /// declined `auth_002`) and card: a replay renders the same JSON again, byte for
    /// byte, from these and the authorization id in the key (`program/authorization id`).
    Decision {
        card_id: Box<str>,
        answer: Arc<[u8]>,
    },
}

impl Kept {
    fn render(&self, key: &str) -> Arc<str> {
        match self {
            Kept::Json(j) => j.clone(),
            Kept::Decision { card_id, answer } => {
                let auth_id = key.split_once('/').map_or(key, |(_, a)| a);
                super::decision_record::response_of_answer(auth_id, card_id, answer)
                    .expect("an answer record this process encoded decodes")
                    .into()
            }
        }
    }
}

/// What `begin_or_wait` found, before a kept answer is rendered (outside the map's lock).
enum Found {
    Go,
    Replay(Kept, u64),
    Conflict,
}

pub enum Begin {
    /// First time: execute, then `finish` (or `abort` on failure).
    Go,
    /// Seen before with the same request: the response, durable at `seq`.
    Replay { response: Arc<str>, seq: u64 },
    /// Seen before with a different request.
    Conflict,
}

/// Answers by (scope, key), at most `entries_max` of them in memory: the oldest finished
/// answers give way once their writes are durable, and a key that is not in memory is
/// looked up in the store (every answer is stored with its writes) before it may run —
/// so eviction can never turn a retry into a second execution. Until the first eviction
/// nothing is looked up. (Not moka: eviction must wait for durability, and a miss must
/// consult the store.) An entry is in flight only while its operation runs (µs, under
/// the card's lock), so a duplicate's wait in `begin` is short; a failed or panicking
/// operation removes its entry (see `InFlightGuard`).
pub struct Idempotency {
    map: super::FastMap<(&'static str, String), Entry>,
    /// Finished keys, oldest first, with the store sequence that makes each durable.
    order: parking_lot::Mutex<std::collections::VecDeque<((&'static str, String), u64)>>,
    entries_max: usize,
    /// Whether an answer has ever left memory (from then on misses ask the store).
    evicted: std::sync::atomic::AtomicBool,
    /// Duplicates of an in-flight key sleep here until any key finishes or aborts.
    settled: parking_lot::Condvar,
    settled_lock: parking_lot::Mutex<()>,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Default for Idempotency {
    fn default() -> Self {
        Idempotency::with_capacity(IDEMPOTENCY_ENTRIES_DEFAULT)
    }
}

/// Default number of answers kept in memory (an authorization's as its record: README,
/// Memory per card).
pub const IDEMPOTENCY_ENTRIES_DEFAULT: usize = 500_000;

/// SHA-256 of `bytes`, as lowercase hex: how answers stored before [`RequestDigest`]
/// identify their request (the SHA-256 of its JSON), and how admin keys are compared.
pub fn request_hash(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    push_hex(&mut s, &Sha256::digest(bytes));
    s
}

// Written out by hand: a `format!` per byte was a fifth of an authorization's instructions.
fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

/// Marks a digest of the current scheme; stored digests without it are legacy SHA-256.
const DIGEST_TAG: &str = "b3:";

/// What identifies a request under its idempotency key: `b3:` and the BLAKE3 of the
/// request's canonical bytes (an authorization's compact record encoding, any other
/// request's JSON), as hex. On this project's CPUs without SHA extensions, SHA-256 of
/// the request's JSON was an eighth of an in-memory authorization's instructions.
/// Answers stored before carry the untagged SHA-256 of the request's JSON and stay
/// honoured: [`RequestDigest::matches`] computes that form only when it meets one.
pub struct RequestDigest<'a> {
    tagged: String,
    legacy: std::cell::OnceCell<String>,
    legacy_json: &'a dyn Fn() -> Vec<u8>,
}

impl<'a> RequestDigest<'a> {
    /// `canonical`: the bytes hashed now; `legacy_json`: the request's JSON, asked for
    /// only to compare with an answer stored under the old scheme.
    pub fn new(canonical: &[u8], legacy_json: &'a dyn Fn() -> Vec<u8>) -> Self {
        RequestDigest {
            tagged: digest_hex(canonical),
            legacy: std::cell::OnceCell::new(),
            legacy_json,
        }
    }

    /// The digest to store and keep in memory.
    pub fn as_str(&self) -> &str {
        &self.tagged
    }

    /// Whether `stored` (a digest kept with an answer) names this same request.
    pub fn matches(&self, stored: &str) -> bool {
        if stored.starts_with(DIGEST_TAG) {
            stored == self.tagged
        } else {
            stored
                == self
                    .legacy
                    .get_or_init(|| request_hash(&(self.legacy_json)()))
        }
    }
}

/// `b3:` and the BLAKE3 of `canonical`, as hex.
pub fn digest_hex(canonical: &[u8]) -> String {
    let mut s = String::with_capacity(DIGEST_TAG.len() + 64);
    s.push_str(DIGEST_TAG);
    push_hex(&mut s, blake3::hash(canonical).as_bytes());
    s
}

/// An authorization's digest: of its compact record encoding (the form its stored
/// decision keeps, so a retry after a restart derives the same digest).
pub fn authorization_digest(txn: &crate::decision::Authorization) -> String {
    digest_hex(&super::decision_record::request_bytes(txn))
}

impl Idempotency {
    /// How many answers memory keeps.
    pub fn capacity(&self) -> usize {
        self.entries_max
    }

    pub fn with_capacity(entries_max: usize) -> Idempotency {
        Idempotency {
            map: super::FastMap::default(),
            order: parking_lot::Mutex::new(std::collections::VecDeque::new()),
            entries_max: entries_max.max(1),
            evicted: std::sync::atomic::AtomicBool::new(false),
            settled: parking_lot::Condvar::new(),
            settled_lock: parking_lot::Mutex::new(()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Wakes duplicates waiting for an in-flight key (after the map has changed).
    fn wake_waiters(&self) {
        if self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            let _g = self.settled_lock.lock();
            self.settled.notify_all();
        }
    }

    /// Says that answers exist beyond those in memory (a restart that loaded only the
    /// newest): from now on misses ask the store.
    pub fn mark_partial(&self) {
        self.evicted
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether answers have left memory (misses ask the store).
    pub fn is_partial(&self) -> bool {
        self.evicted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `begin_with` would look `key` up in the store (answers have left memory
    /// and this one is not in it).
    pub fn would_ask_store(&self, scope: &'static str, key: &str) -> bool {
        self.evicted.load(std::sync::atomic::Ordering::Relaxed)
            && !self.map.contains_key(&(scope, key.to_string()))
    }

    /// Like `begin`; a key not in memory is first looked up with `stored` once answers
    /// have been evicted, and a stored answer is replayed (or conflicts) as if it had
    /// stayed in memory.
    pub fn begin_with(
        &self,
        scope: &'static str,
        key: &str,
        digest: &RequestDigest,
        stored: impl FnOnce() -> Option<(String, String)>,
    ) -> Begin {
        if self.evicted.load(std::sync::atomic::Ordering::Relaxed)
            && !self.map.contains_key(&(scope, key.to_string()))
        {
            if let Some((h, response)) = stored() {
                // Back in memory while it is asked for again (durable already), and in
                // line for eviction like any other answer.
                self.map
                    .entry((scope, key.to_string()))
                    .or_insert(Entry::Done {
                        hash: h,
                        response: Kept::Json(response.into()),
                        seq: 0,
                    });
                self.order.lock().push_back(((scope, key.to_string()), 0));
                self.evict(0);
            }
        }
        self.begin_matching(scope, key, digest.as_str(), &|h| digest.matches(h))
    }

    /// `begin` for a request identified by exactly `hash`.
    pub fn begin(&self, scope: &'static str, key: &str, hash: &str) -> Begin {
        self.begin_matching(scope, key, hash, &|h| h == hash)
    }

    /// Starts `key` as in flight with `hash`, or answers what a kept entry says: the
    /// same request (`same` says whether a kept digest names it) replays, another
    /// conflicts.
    fn begin_matching(
        &self,
        scope: &'static str,
        key: &str,
        hash: &str,
        same: &dyn Fn(&str) -> bool,
    ) -> Begin {
        let mut waited = false;
        let r = self.begin_or_wait(scope, key, hash, same, &mut waited);
        if waited {
            self.waiting
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        match r {
            Found::Go => Begin::Go,
            Found::Replay(kept, seq) => Begin::Replay {
                response: kept.render(key),
                seq,
            },
            Found::Conflict => Begin::Conflict,
        }
    }

    fn begin_or_wait(
        &self,
        scope: &'static str,
        key: &str,
        hash: &str,
        same: &dyn Fn(&str) -> bool,
        waited: &mut bool,
    ) -> Found {
        let deadline = Instant::now() + IN_FLIGHT_WAIT_MAX;
        // Held while the entry is looked at, so a finish between the look and the wait
        // cannot be missed (it notifies under this lock, after changing the map).
        let mut guard = None;
        loop {
            match self.map.entry((scope, key.to_string())) {
                dashmap::Entry::Vacant(v) => {
                    v.insert(Entry::InFlight {
                        hash: hash.to_string(),
                    });
                    return Found::Go;
                }
                dashmap::Entry::Occupied(o) => match o.get() {
                    Entry::Done {
                        hash: h,
                        response,
                        seq,
                    } => {
                        return if same(h) {
                            Found::Replay(response.clone(), *seq)
                        } else {
                            Found::Conflict
                        };
                    }
                    Entry::InFlight { hash: h } if !same(h) => return Found::Conflict,
                    Entry::InFlight { .. } => {}
                },
            }
            // The same request is executing right now (its operation, not its commit:
            // the key is finished before the fsync wait): wait for its answer.
            let Some(g) = guard.as_mut() else {
                self.waiting
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                *waited = true;
                guard = Some(self.settled_lock.lock());
                continue;
            };
            let now = Instant::now();
            if now > deadline {
                return Found::Conflict;
            }
            self.settled.wait_for(g, deadline - now);
        }
    }

    /// Records a finished answer, durable at `seq`, and evicts what the bound allows
    /// (answers durable by `durable_seq`), under one lock.
    pub fn finish(
        &self,
        scope: &'static str,
        key: &str,
        hash: &str,
        response: Kept,
        seq: u64,
        durable_seq: u64,
    ) {
        let k = (scope, key.to_string());
        match self.map.get_mut(&k) {
            // The in-flight entry (as a rule) becomes the answer in place, keeping its
            // digest's allocation when it is the same: no second key, no re-insert.
            Some(mut e) => {
                let hash = match &mut *e {
                    Entry::InFlight { hash: h } | Entry::Done { hash: h, .. } if h == hash => {
                        std::mem::take(h)
                    }
                    _ => hash.to_string(),
                };
                *e = Entry::Done {
                    hash,
                    response,
                    seq,
                };
            }
            None => {
                self.map.insert(
                    k.clone(),
                    Entry::Done {
                        hash: hash.to_string(),
                        response,
                        seq,
                    },
                );
            }
        }
        self.wake_waiters();
        let mut order = self.order.lock();
        order.push_back((k, seq));
        self.evict_locked(&mut order, durable_seq);
    }

    /// Drops the oldest answers beyond the bound whose writes are durable (`seq` at most
    /// `durable_seq`); they remain answerable from the store.
    pub fn evict(&self, durable_seq: u64) {
        self.evict_locked(&mut self.order.lock(), durable_seq);
    }

    fn evict_locked(
        &self,
        order: &mut std::collections::VecDeque<((&'static str, String), u64)>,
        durable_seq: u64,
    ) {
        while order.len() > self.entries_max {
            let Some((_, seq)) = order.front() else { break };
            if *seq > durable_seq {
                break;
            }
            let (k, _) = order.pop_front().expect("front exists");
            self.map
                .remove_if(&k, |_, e| matches!(e, Entry::Done { .. }));
            self.evicted
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn abort(&self, scope: &'static str, key: &str) {
        self.map.remove_if(&(scope, key.to_string()), |_, e| {
            matches!(e, Entry::InFlight { .. })
        });
        self.wake_waiters();
    }

    /// Restores a completed key from the store (newest last; the bound applies).
    pub fn restore(&self, scope: &'static str, key: String, hash: String, response: Kept) {
        self.map.insert(
            (scope, key.clone()),
            Entry::Done {
                hash,
                response,
                seq: 0,
            },
        );
        self.order.lock().push_back(((scope, key), 0));
        self.evict(0);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Idempotency keys are bounded so that a key can never carry a payload.
const KEY_LEN_MAX: usize = 128;

impl super::Engine {
    /// Runs an operation once per idempotency key. `op` returns the response, the writes
    /// and the card guard to hold until the writes are queued; the response is stored
    /// with the writes and replayed on retries.
    pub(super) fn idempotent<R: serde::Serialize>(
        &self,
        scope: &'static str,
        key: &str,
        request: &impl serde::Serialize,
        op: impl FnOnce() -> Result<(R, Vec<Write>, Option<super::CardGuard>), Rejection>,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        let json = || serde_json::to_vec(request).unwrap_or_default();
        let digest = RequestDigest::new(&json(), &json);
        self.idempotent_digest(scope, key, &digest, None, op)
    }

    /// `idempotent` for a request already digested (an authorization's compact form).
    /// With `card_id`, an answer that is a decision record stays in memory as that record
    /// (see [`Kept::Decision`]).
    pub(super) fn idempotent_digest<R: serde::Serialize>(
        &self,
        scope: &'static str,
        key: &str,
        digest: &RequestDigest,
        card_id: Option<&str>,
        op: impl FnOnce() -> Result<(R, Vec<Write>, Option<super::CardGuard>), Rejection>,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        if key.is_empty() || key.len() > KEY_LEN_MAX {
            return Err(Rejection::InvalidRequest(format!(
                "idempotency key must be 1 to {KEY_LEN_MAX} characters"
            )));
        }
        let hash = digest.as_str();
        let stored = || self.stored_answer(scope, key);
        match self.idem.begin_with(scope, key, digest, stored) {
            Begin::Replay { response, seq } => return Ok(self.pending(response, seq)),
            Begin::Conflict => return Err(Rejection::IdempotencyConflict),
            Begin::Go => {}
        }
        if scope == "authorization" {
            if let Some((_, auth_id)) = key.split_once('/') {
                self.stored_ids.record(auth_id);
            }
        }
        // Removes the in-flight entry if `op` fails or panics, so retries are not
        // turned away for a key that never finished.
        let in_flight = InFlightGuard {
            idem: &self.idem,
            scope,
            key,
        };
        // No recovery point is taken between this operation's change and its writes.
        let _quiet = self.quiet.read_recursive();
        let (response, mut writes, mut guard) = op()?;
        let json = response_json(&response);
        // What the operation reports goes out in its own commit (the outbox).
        let events = self.operation_events(scope, &json, guard.as_deref_mut(), &writes);
        writes.extend(events);
        // A decision's record holds its answer and its request (the hash is derived from
        // it): one row, not two. Every other operation gets an idempotency row.
        let record = writes.iter().find_map(|w| match w {
            Write::Decision(d) => Some(&d.answer),
            _ => None,
        });
        let kept = match (card_id, record) {
            (Some(card_id), Some(answer)) => Kept::Decision {
                card_id: card_id.into(),
                answer: answer.as_slice().into(),
            },
            _ => Kept::Json(json.clone()),
        };
        if record.is_none() {
            writes.push(Write::Idempotency {
                scope,
                key: key.to_string(),
                request_hash: hash.to_string(),
                response: json.clone(),
                at_ms: self.now().timestamp_millis(),
            });
        }
        let seq = self.persist(writes);
        self.idem
            .finish(scope, key, hash, kept, seq, self.durable_seq());
        std::mem::forget(in_flight);
        // The card's lock was held until its writes were queued: commit order for one
        // card equals the order its state changed in memory.
        drop(guard);
        Ok(self.pending(json, seq))
    }
}

/// An answer's JSON, written into 1 KiB, which holds an authorization's (314–419 bytes in
/// the README walkthrough, more with several trace lines): `serde_json::to_string`
/// starts at 128 bytes and copies as it grows.
fn response_json(response: &impl serde::Serialize) -> Arc<str> {
    let mut out = Vec::with_capacity(1024);
    if serde_json::to_writer(&mut out, response).is_err() {
        return Arc::from("");
    }
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_default().into()
}

/// Aborts an in-flight key when dropped: on an error return and on unwinding.
struct InFlightGuard<'a> {
    idem: &'a Idempotency,
    scope: &'static str,
    key: &'a str,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.idem.abort(self.scope, self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_hash_is_lowercase_hex_sha256() {
        // Stored hashes must keep matching: the format is the one they were written in.
        assert_eq!(
            request_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn answers_stored_with_the_old_sha256_hash_still_replay_and_still_conflict() {
        let idem = Idempotency::default();
        let same = br#"{"card_id":"c1","amount":"5.00"}"#.to_vec();
        let other = br#"{"card_id":"c1","amount":"6.00"}"#.to_vec();
        // As a store written before BLAKE3 digests holds it: SHA-256 of the JSON.
        idem.restore(
            "fund",
            "k".into(),
            request_hash(&same),
            Kept::Json("answer".into()),
        );
        idem.restore(
            "fund",
            "k2".into(),
            request_hash(&same),
            Kept::Json("answer".into()),
        );
        let same_json = || same.clone();
        let other_json = || other.clone();
        let retry = RequestDigest::new(&same, &same_json);
        let changed = RequestDigest::new(&other, &other_json);
        assert!(retry.as_str().starts_with("b3:") && retry.as_str().len() == 67);
        match idem.begin_with("fund", "k", &retry, || None) {
            Begin::Replay { response, .. } => assert_eq!(&*response, "answer"),
            _ => panic!("a retry of an answer stored under the old hash must replay"),
        }
        assert!(matches!(
            idem.begin_with("fund", "k2", &changed, || None),
            Begin::Conflict
        ));
        // New answers carry the new digest, and it tells requests apart too.
        assert!(retry.matches(&digest_hex(&same)) && !retry.matches(&digest_hex(&other)));
    }

    #[test]
    fn a_panicking_operation_never_leaves_its_key_in_flight() {
        let idem = Idempotency::default();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert!(matches!(idem.begin("fund", "k", "h"), Begin::Go));
            let _g = InFlightGuard {
                idem: &idem,
                scope: "fund",
                key: "k",
            };
            panic!("operation failed halfway");
        }));
        assert!(r.is_err());
        let started = Instant::now();
        assert!(matches!(idem.begin("fund", "k", "h"), Begin::Go));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "no wait for a dead key"
        );
    }

    #[test]
    fn a_duplicate_in_flight_sleeps_until_the_first_finishes_or_aborts() {
        let idem = Arc::new(Idempotency::default());
        for finish in [true, false] {
            let key = format!("k{finish}");
            assert!(matches!(idem.begin("fund", &key, "h"), Begin::Go));
            let dup = {
                let (idem, key) = (idem.clone(), key.clone());
                std::thread::spawn(move || idem.begin("fund", &key, "h"))
            };
            // The duplicate is parked on the condition variable, not spinning.
            let parked = Instant::now();
            while idem.waiting.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                assert!(
                    parked.elapsed() < Duration::from_secs(5),
                    "duplicate never waited"
                );
                std::thread::yield_now();
            }
            if finish {
                idem.finish("fund", &key, "h", Kept::Json("answer".into()), 1, 1);
            } else {
                idem.abort("fund", &key);
            }
            match (finish, dup.join().unwrap()) {
                (true, Begin::Replay { response, .. }) => assert_eq!(&*response, "answer"),
                (false, Begin::Go) => {}
                (f, other) => panic!("finish={f}: {}", matches!(other, Begin::Conflict)),
            }
            assert_eq!(idem.waiting.load(std::sync::atomic::Ordering::SeqCst), 0);
        }
    }
}
