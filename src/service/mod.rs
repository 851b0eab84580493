//! Orchestration: per-card locks around the pure core, the ledger, and the store.
//!
//! Lock order is always card → cardholder velocity → program velocity → house accounts,
//! so operations never deadlock, and a card's decision, its hold and its effects happen in
//! one critical section of the card's lock. The shared velocity scopes are read while
//! deciding and locked exclusively only to record (`shared_velocity`). Writes are
//! submitted to the store inside that section (so commit order matches memory order);
//! every operation returns a [`Pending`] answer that the caller releases only once its
//! writes are durable.
//!
//! One file per capability: `cards` (programs, cardholders, cards, lifecycle, controls,
//! API keys), `funds` (deposit, top-up, withdrawal), `authorize` (decide, abandon,
//! simulate), `holds` (capture, reversal, refund, advice, expiry), `recovery`,
//! `idempotency`, `effects` (the stored effects codec), `shared_velocity` (cardholder and
//! program windows) and `errors`.

mod authorize;
mod card;
mod cards;
pub mod decision_record;
mod effects;
mod errors;
pub mod events;
mod funds;
mod holds;
mod idempotency;
mod limits;
mod policies;
mod processors;
mod rebuild;
mod recovery;
mod recovery_point;
pub mod responses;
mod shared_velocity;
mod stored_ids;
pub mod webhooks;

pub use crate::store::{
    CardHistory, DecisionHistory, PolicyActivation, StoreCounters, TransferHistory,
};
pub use authorize::{AuthContext, Authorized};
pub use card::CardState;
pub use cards::{key_hash, NewCard};
pub use effects::{CodecError, EffectsRecord};
pub use errors::Rejection;
pub use idempotency::{request_hash, Begin, Idempotency};
pub use limits::CardLimit;
pub use recovery::RecoveryError;
pub use recovery_point::{PointError, PointSaved};

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, TimeZone, Utc};
use dashmap::DashMap;
use parking_lot::Mutex;
use rust_decimal::Decimal;

use crate::clock::{Clock, Ids, RandomIds, SystemClock};
use crate::domain::CardStatus;
use crate::issuing::{CardRecord, Cardholder, Program};
use crate::ledger::{AccountId, Transfer};
use crate::policy::PolicySet;
use crate::store::{Snapshot, Store, Write};
use shared_velocity::SharedVelocity;

/// The engine's settings (the `engine:` section of the service's config file).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// An authorization's hold expires this many days after it was placed.
    pub hold_expiry_days: u32,
    /// Captures may exceed the authorized amount by this much (basis points).
    pub over_capture_bps: u32,
    /// Seconds between hold-expiry sweeps.
    pub expiry_sweep_s: u64,
    /// Idempotent answers kept in memory; older ones are answered from the store.
    pub idempotency_entries_max: usize,
    /// Authorizations whose card is remembered in memory (≈ 100 B each); older ones are
    /// looked up in the store.
    pub authorization_index_entries_max: usize,
    /// Days an idempotency key is honoured (its stored answer replayed) for operations
    /// other than authorizations, whose decisions are kept as history and replay for ever.
    pub idempotency_retention_days: u32,
    /// A recovery point is saved after this many state-changing operations (and at
    /// shutdown), so a restart replays at most about this many.
    pub recovery_point_operations: u64,
    /// …or after this many seconds when anything changed.
    pub recovery_point_interval_s: u64,
    /// Webhook endpoints may point at loopback, private or link-local addresses (off: a
    /// tenant must not make the server call into its own network).
    pub webhook_private_urls: bool,
    /// With several instances on PostgreSQL: the shard this engine serves, of `shards`
    /// (programs are split between shards; see `domain::shard`). 0 of 1 unsharded.
    pub shard: u32,
    pub shards: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            hold_expiry_days: crate::ledger::HOLD_EXPIRY_DAYS_DEFAULT,
            over_capture_bps: crate::ledger::OVER_CAPTURE_BPS_DEFAULT,
            expiry_sweep_s: 60,
            idempotency_entries_max: idempotency::IDEMPOTENCY_ENTRIES_DEFAULT,
            idempotency_retention_days: 7,
            authorization_index_entries_max: 1_000_000,
            recovery_point_operations: 250_000,
            recovery_point_interval_s: 600,
            webhook_private_urls: false,
            shard: 0,
            shards: 1,
        }
    }
}

/// Entries held in memory, by kind (see [`Engine::memory_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryCounts {
    /// Holds in card accounts (pending, and captured within the refund window).
    pub holds: usize,
    /// Velocity events and activity entries across cards, cardholders and programs.
    pub velocity_events: usize,
    pub authorization_index: usize,
    pub early_reversals: usize,
    pub idempotency_entries: usize,
}

/// An answer whose writes are queued but maybe not yet durable. Release it to a caller
/// only through [`Pending::durable`] (async) or [`Pending::wait`] (a plain thread).
#[must_use = "an answer must wait for its writes to be durable"]
pub struct Pending<T> {
    value: T,
    seq: u64,
    store: Option<Arc<Store>>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("value", &self.value)
            .field("seq", &self.seq)
            .finish()
    }
}

impl<T> Pending<T> {
    fn new(value: T, seq: u64, store: Option<&Arc<Store>>) -> Pending<T> {
        Pending {
            value,
            seq,
            store: store.filter(|_| seq > 0).cloned(),
        }
    }

    /// The answer, once durable; the wait does not block a thread.
    pub async fn durable(self) -> T {
        if let Some(s) = &self.store {
            s.wait_async(self.seq).await;
        }
        self.value
    }

    /// The answer, once durable, blocking this thread (never call it on a runtime thread).
    pub fn wait(self) -> T {
        if let Some(s) = &self.store {
            s.wait(self.seq);
        }
        self.value
    }

    /// The same wait, for another answer made from this one.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Pending<U> {
        Pending {
            value: f(self.value),
            seq: self.seq,
            store: self.store,
        }
    }

    /// The answer before it is durable: for callers that decide what to do if the
    /// commit is late (the deadline path), and that must not send it before `durable`.
    pub fn peek(&self) -> &T {
        &self.value
    }
}

type Shared<T> = Arc<Mutex<T>>;

/// The engine's maps, hashed with aHash: SipHash (the default) was ≈ 1.5 k instructions
/// of every authorization. aHash's keys are random per process (`runtime-rng`), so keys a
/// client chooses still cannot be aimed at one bucket.
pub(crate) type FastMap<K, V> = DashMap<K, V, ahash::RandomState>;
type CardGuard = parking_lot::ArcMutexGuard<parking_lot::RawMutex, CardState>;

/// Live state: cards, holders, programs, house accounts, idempotency, policies, store.
pub struct Engine {
    cards: FastMap<String, Shared<CardState>>,
    records: FastMap<String, CardRecord>,
    holder_velocity: FastMap<String, Arc<SharedVelocity>>,
    program_velocity: FastMap<String, Arc<SharedVelocity>>,
    programs: FastMap<String, Program>,
    cardholders: FastMap<String, Cardholder>,
    /// `program/authorization id` → card id, for captures and reversals; at most
    /// `authorization_index_entries_max`, oldest first out (the store answers the rest).
    auth_index: FastMap<String, String>,
    /// Which authorization ids only the store may answer for (after a start from a
    /// recovery point), so new ones skip the lookup.
    stored_ids: Arc<stored_ids::StoredIds>,
    auth_order: Mutex<std::collections::VecDeque<String>>,
    /// SHA-256 of each API key → its program.
    api_keys: FastMap<String, String>,
    /// `program/processor card token` → card id; one entry per card that has a token.
    card_tokens: FastMap<String, String>,
    /// `program/processor` → that program's hook configuration (at most four per program).
    hook_configs: FastMap<String, Arc<crate::processors::HookConfig>>,
    /// Webhook endpoints by id (at most `ENDPOINTS_PER_PROGRAM_MAX` per program).
    webhook_endpoints: FastMap<String, Arc<webhooks::WebhookEndpoint>>,
    /// Alert thresholds by program.
    alerts: FastMap<String, Arc<events::Alerts>>,
    /// Funding accounts below their program's threshold (at most one per program and
    /// currency).
    funding_low: FastMap<String, ()>,
    /// The last event's number in the outbox (all programs: its delivery order).
    event_sequence: std::sync::atomic::AtomicI64,
    /// Each program's last event sequence (what its receivers see; one per program).
    program_sequences: FastMap<String, i64>,
    /// How many endpoints `webhook_endpoints` holds (the fast path of every operation).
    endpoint_count: std::sync::atomic::AtomicUsize,
    /// Authorizations reversed before they arrived (out-of-order messages), as
    /// `program/authorization id`; at most [`EARLY_REVERSALS_MAX`], oldest dropped first
    /// (a dropped one only means a late authorization keeps its hold until it expires).
    early_reversals: FastMap<String, ()>,
    early_reversal_order: Mutex<std::collections::VecDeque<String>>,
    /// Balances of every non-card account.
    house: Mutex<BTreeMap<AccountId, Decimal>>,
    idem: Idempotency,
    policies: ArcSwap<PolicySet>,
    store: Option<Arc<Store>>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn Ids>,
    pub config: EngineConfig,
    /// Held for reading by every operation that changes derived state, from before it
    /// locks a card until its writes are queued; a recovery point holds it for writing.
    quiet: parking_lot::RwLock<()>,
    /// Digests of the cardholder, program and house states in the last recovery point.
    point_digests: Mutex<std::collections::HashMap<String, [u8; 16]>>,
    operations_since_point: std::sync::atomic::AtomicU64,
}

impl Engine {
    /// A memory-only engine (no store): for tests of the decision path and benches.
    pub fn new(policies: PolicySet) -> Engine {
        Engine {
            cards: FastMap::default(),
            records: FastMap::default(),
            holder_velocity: FastMap::default(),
            program_velocity: FastMap::default(),
            programs: FastMap::default(),
            cardholders: FastMap::default(),
            auth_index: FastMap::default(),
            stored_ids: Arc::default(),
            auth_order: Mutex::new(std::collections::VecDeque::new()),
            api_keys: FastMap::default(),
            card_tokens: FastMap::default(),
            hook_configs: FastMap::default(),
            webhook_endpoints: FastMap::default(),
            alerts: FastMap::default(),
            funding_low: FastMap::default(),
            event_sequence: std::sync::atomic::AtomicI64::new(0),
            program_sequences: FastMap::default(),
            endpoint_count: std::sync::atomic::AtomicUsize::new(0),
            early_reversals: FastMap::default(),
            early_reversal_order: Mutex::new(std::collections::VecDeque::new()),
            house: Mutex::new(BTreeMap::new()),
            idem: Idempotency::default(),
            policies: ArcSwap::from_pointee(policies),
            store: None,
            clock: Arc::new(SystemClock),
            ids: Arc::new(RandomIds),
            config: EngineConfig::default(),
            quiet: parking_lot::RwLock::new(()),
            point_digests: Mutex::new(std::collections::HashMap::new()),
            operations_since_point: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// An engine on a store, with all state rebuilt from the store's snapshot.
    pub fn open(
        policies: PolicySet,
        store: Arc<Store>,
        snapshot: Snapshot,
        config: EngineConfig,
    ) -> Result<Engine, RecoveryError> {
        let mut e = Engine::new(policies);
        e.config = config;
        e.idem = Idempotency::with_capacity(config.idempotency_entries_max);
        let tail = snapshot.decisions.len()
            + snapshot.velocity_releases.len()
            + snapshot.ledger.transfers.len();
        let first = snapshot.point.is_none() && !snapshot.cards.is_empty();
        // Answers before the point, or beyond the newest loaded, are in the store only.
        if snapshot.point.is_some()
            || snapshot.idempotency.len() as i64 >= crate::store::IDEMPOTENCY_ROWS_AT_START_MAX
        {
            e.idem.mark_partial();
        }
        e.recover(snapshot)?;
        // Built at every start, before anything is decided (so no id can slip between the
        // scan and the ids recorded while it runs): answers in memory now may leave it
        // later, and from then on every new id would be looked up.
        if store.authorization_ids_indexable().unwrap_or(false) {
            e.stored_ids.build_from(store.clone());
        }
        e.store = Some(store);
        // The next start reads this point instead of replaying the same log again.
        if tail > 0 || first {
            let _ = e.save_recovery_point().wait();
        }
        Ok(e)
    }

    /// Uses `clock` for every time the engine reads (tests pass a manual clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Engine {
        self.clock = clock;
        self
    }

    /// Uses `ids` for new card tokens and API keys.
    pub fn with_ids(mut self, ids: Arc<dyn Ids>) -> Engine {
        self.ids = ids;
        self
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    /// Swaps in new policies; decisions in flight finish on the snapshot they took.
    pub fn replace_policies(&self, p: PolicySet) {
        self.policies.store(Arc::new(p));
    }

    /// The engine's time, for operations that touch no card.
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The engine's time for a card, read under its lock: never earlier than the last
    /// time this card saw, so a clock step backwards cannot reorder a card's history.
    fn now_for(&self, c: &mut CardState) -> DateTime<Utc> {
        let now = self.clock.now();
        let ms = now.timestamp_millis();
        if ms < c.clock_ms {
            return Utc.timestamp_millis_opt(c.clock_ms).single().unwrap_or(now);
        }
        c.clock_ms = ms;
        now
    }

    fn persist(&self, writes: Vec<Write>) -> u64 {
        self.operations_since_point
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.store {
            Some(s) if !writes.is_empty() => s.submit(writes),
            _ => 0,
        }
    }

    fn pending<T>(&self, value: T, seq: u64) -> Pending<T> {
        Pending::new(value, seq, self.store.as_ref())
    }

    pub fn card(&self, card_id: &str) -> Option<Shared<CardState>> {
        self.cards.get(card_id).map(|c| c.clone())
    }

    /// Every card id, sorted.
    pub fn card_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.cards.iter().map(|c| c.key().clone()).collect();
        v.sort();
        v
    }

    pub fn card_count(&self) -> usize {
        self.cards.len()
    }

    /// What memory holds beyond the cards themselves, for the metrics endpoint (walks every
    /// card under its lock, one at a time).
    pub fn memory_counts(&self) -> MemoryCounts {
        let mut m = MemoryCounts {
            authorization_index: self.auth_index.len(),
            early_reversals: self.early_reversals.len(),
            idempotency_entries: self.idem.len(),
            ..MemoryCounts::default()
        };
        for card in self.cards.iter() {
            let c = card.value().lock();
            m.holds += c.account.holds.len();
            m.velocity_events += c.velocity.event_count() + c.activity.len();
        }
        for v in self
            .holder_velocity
            .iter()
            .chain(self.program_velocity.iter())
        {
            m.velocity_events += v.value().read().0.event_count();
        }
        m
    }

    /// Adds a card state directly (memory-only engines, tests and benches).
    pub fn add_card(&self, card: CardState) -> Result<(), Rejection> {
        if self.policies.load().get(&card.policy).is_none() {
            return Err(Rejection::UnknownPolicy(card.policy));
        }
        match self.cards.entry(card.card_id.clone()) {
            dashmap::Entry::Occupied(_) => Err(Rejection::AlreadyExists {
                what: "card",
                id: card.card_id,
            }),
            dashmap::Entry::Vacant(v) => {
                v.insert(Arc::new(Mutex::new(card)));
                Ok(())
            }
        }
    }

    /// Runs `f` on the card under its lock.
    pub fn with_card<R>(
        &self,
        card_id: &str,
        f: impl FnOnce(&mut CardState) -> R,
    ) -> Result<R, Rejection> {
        let c = self
            .card(card_id)
            .ok_or_else(|| Rejection::UnknownCard(card_id.to_string()))?;
        let mut g = c.lock();
        Ok(f(&mut g))
    }

    /// A card of `tenant` (any card when `tenant` is None): another program's card is as
    /// absent as one that does not exist.
    fn card_for(
        &self,
        tenant: Option<&str>,
        card_id: &str,
    ) -> Result<Shared<CardState>, Rejection> {
        let visible = tenant.is_none_or(|t| self.card_program(card_id).as_deref() == Some(t));
        self.card(card_id)
            .filter(|_| visible)
            .ok_or_else(|| Rejection::UnknownCard(card_id.to_string()))
    }

    fn shared(map: &FastMap<String, Arc<SharedVelocity>>, key: &str) -> Arc<SharedVelocity> {
        if let Some(s) = map.get(key) {
            return s.clone();
        }
        map.entry(key.to_string()).or_default().clone()
    }

    /// A card's latest decisions and transfers, read from the store (blocking: call it
    /// off the async runtime). A memory-only engine has no history.
    pub fn card_history(&self, card_id: &str) -> Result<CardHistory, Rejection> {
        let Some(store) = &self.store else {
            return Ok(CardHistory::default());
        };
        let (stored, transfers) = store
            .card_history(card_id)
            .map_err(|_| Rejection::HistoryUnavailable)?;
        let mut decisions = Vec::with_capacity(stored.len());
        for d in &stored {
            let d = decision_record::decode(d).map_err(|e| {
                tracing::error!(card_id, error = %e, "a stored decision cannot be read");
                Rejection::HistoryUnavailable
            })?;
            // The store finds them by a hash of the card id.
            if d.card_id == card_id {
                decisions.push(d.history());
            }
        }
        Ok(CardHistory {
            decisions,
            transfers,
        })
    }

    /// An answer the idempotency cache gave up, from the store. A store that cannot be
    /// read stops the process: answering as if the key were new could execute it twice.
    fn stored_answer(&self, scope: &str, key: &str) -> Option<(String, String)> {
        let store = self.store.as_ref()?;
        let fail = |e: &dyn std::fmt::Display| -> ! {
            crate::store::fail_stop(&format!("idempotency lookup: {e}"))
        };
        if scope == "authorization" {
            // A new id (the common case) is certainly not stored: no round trip.
            if let Some((_, auth_id)) = key.split_once('/') {
                if !self.stored_ids.may_be_stored(auth_id) {
                    return None;
                }
            }
        }
        let answer = store.stored_answer(scope, key).unwrap_or_else(|e| fail(&e));
        if answer.is_some() || scope != "authorization" {
            return answer;
        }
        // An authorization's answer is its decision's: keys are `program/authorization id`.
        let (program, auth_id) = key.split_once('/')?;
        let stored = store
            .decisions_of_authorization(auth_id)
            .unwrap_or_else(|e| fail(&e));
        for d in &stored {
            let d = decision_record::decode(d).unwrap_or_else(|e| fail(&e));
            if d.auth_id == auth_id && self.card_program(&d.card_id).as_deref() == Some(program) {
                return Some((d.request_hash(), d.response()));
            }
        }
        None
    }

    /// The highest store sequence that is durable (everything, without a store).
    fn durable_seq(&self) -> u64 {
        self.store.as_ref().map_or(u64::MAX, |s| s.durable_seq())
    }

    /// The store's counters, for metrics; None without a store.
    pub fn store_counters(&self) -> Option<StoreCounters> {
        self.store.as_ref().map(|s| s.counters())
    }

    /// Deletes stored idempotent answers past their retention (a bounded batch per call;
    /// the service's sweeper calls it every sweep).
    pub fn sweep_retention(&self) -> Pending<()> {
        let days = i64::from(self.config.idempotency_retention_days.max(1));
        let before_ms = self.now().timestamp_millis() - days * 86_400_000;
        // Delivered and dead deliveries, and events nobody waits for, go after the same
        // retention (a dead one can be revived until then).
        let seq = self.persist(vec![
            Write::IdempotencySweep { before_ms },
            Write::Outbox(crate::store::outbox::OutboxWrite::Sweep { before_ms }),
        ]);
        self.pending((), seq)
    }

    /// Idempotent answers held in memory (bounded by `idempotency_entries_max`).
    pub fn idempotency_entries(&self) -> usize {
        self.idem.len()
    }

    /// Whether answers are made durable (an engine on a store).
    pub fn is_durable(&self) -> bool {
        self.store.is_some()
    }

    /// Whether new authorization ids skip the store lookup (see `stored_ids`): after a
    /// start from a recovery point, once the stored ids are indexed.
    pub fn stored_ids_indexed(&self) -> bool {
        self.stored_ids.is_ready()
    }

    /// Flushes every queued write and stops the store's writer (shutdown).
    pub fn close(&self) {
        if let Some(s) = &self.store {
            s.close();
        }
    }

    /// Balance of a non-card account (funding, settlement, FX, external).
    pub fn house_balance(&self, account: &AccountId) -> Decimal {
        self.house.lock().get(account).copied().unwrap_or_default()
    }
}

/// Early reversals remembered at once.
pub const EARLY_REVERSALS_MAX: usize = 100_000;

impl Engine {
    /// Remembers a reversal whose authorization has not arrived, within the bound.
    fn remember_early_reversal(&self, scoped: String) {
        let mut order = self.early_reversal_order.lock();
        if self.early_reversals.insert(scoped.clone(), ()).is_none() {
            order.push_back(scoped);
        }
        while order.len() > EARLY_REVERSALS_MAX {
            if let Some(old) = order.pop_front() {
                self.early_reversals.remove(&old);
            }
        }
    }
}

/// Locks a card for a money operation; a terminated card takes none.
fn live(card: &Shared<CardState>) -> Result<CardGuard, Rejection> {
    let c = card.lock_arc();
    if c.status == CardStatus::Terminated {
        return Err(Rejection::CardTerminated);
    }
    Ok(c)
}

/// Cardholder ids are chosen by each program; in memory they are kept as `program/id`.
fn holder_key(program: &str, id: &str) -> String {
    format!("{program}/{id}")
}

/// Authorization ids are chosen by each program's processor: every index and idempotency
/// scope keeps them as `program/id`, so one tenant can neither see nor claim another's.
/// (Program ids never contain `/`.)
fn auth_key(program: &str, auth_id: &str) -> String {
    format!("{program}/{auth_id}")
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn apply_house(house: &mut BTreeMap<AccountId, Decimal>, t: &Transfer) {
    for p in t.postings.iter().filter(|p| !p.account.is_card()) {
        *house.entry(p.account.clone()).or_insert(Decimal::ZERO) += p.amount;
    }
}
