//! Orchestration: per-card locks around the pure core, the ledger, and the store.
//!
//! Lock order is always card → cardholder velocity → program velocity → house accounts,
//! so operations never deadlock, and a card's decision, its hold and its effects happen in
//! one critical section. Writes are submitted to the store inside that section (so commit
//! order matches memory order) and waited for outside it; nothing is answered before
//! its writes are durable.

mod card;
mod idempotency;
pub mod responses;

pub use card::CardState;
pub use idempotency::{request_hash, Begin, Idempotency};

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use chrono::{DateTime, Datelike, Utc};
use dashmap::DashMap;
use parking_lot::Mutex;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::decision::{
    Authorization, CardStatus, Decision, DecisionSummary, Expiry, KycStatus, TraceLine,
    TraceOutcome,
};
use crate::issuing::{
    transition, CardAction, CardKind, CardRecord, Cardholder, Program, SpendingControls,
    TransitionError,
};
use crate::ledger::{check_amount, AccountId, HoldStatus, LedgerError, Transfer, TransferKind};
use crate::money::{format_amount, Currency, MoneyError};
use crate::policy::{CompiledPolicy, PolicySet, VelocityScope};
use crate::store::{DecisionRow, Snapshot, Store, Write};
use crate::velocity::VelocityState;
use responses::*;

/// Errors of engine operations. Each has a stable kind for API error types.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown card `{0}`")]
    UnknownCard(String),
    #[error("unknown cardholder `{0}`")]
    UnknownCardholder(String),
    #[error("unknown program `{0}`")]
    UnknownProgram(String),
    #[error("unknown policy `{0}`")]
    UnknownPolicy(String),
    #[error("no authorization `{0}`")]
    UnknownAuthorization(String),
    #[error("{0} `{1}` already exists")]
    Exists(&'static str, String),
    #[error("this idempotency key was used with a different request")]
    IdempotencyConflict,
    #[error("{0}")]
    Ledger(#[from] LedgerError),
    #[error("{0}")]
    Transition(#[from] TransitionError),
    #[error("invalid controls: {0}")]
    InvalidControls(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Money(#[from] MoneyError),
}

impl EngineError {
    /// A stable, machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::UnknownCard(_) => "card_not_found",
            EngineError::UnknownCardholder(_) => "cardholder_not_found",
            EngineError::UnknownProgram(_) => "program_not_found",
            EngineError::UnknownPolicy(_) => "policy_not_found",
            EngineError::UnknownAuthorization(_) => "authorization_not_found",
            EngineError::Exists(..) => "already_exists",
            EngineError::IdempotencyConflict => "idempotency_conflict",
            EngineError::Ledger(
                LedgerError::InsufficientFunds { .. }
                | LedgerError::InsufficientProgramFunds { .. },
            ) => "insufficient_funds",
            EngineError::Ledger(LedgerError::CardTerminated) => "card_terminated",
            EngineError::Ledger(LedgerError::HoldNotPending { .. }) => "hold_not_pending",
            EngineError::Ledger(LedgerError::PendingHolds(_)) => "pending_holds",
            EngineError::Ledger(_) => "invalid_amount",
            EngineError::Transition(_) => "invalid_transition",
            EngineError::InvalidControls(_) => "invalid_controls",
            EngineError::Invalid(_) => "invalid_request",
            EngineError::Money(MoneyError::NoRate { .. }) => "fx_rate_unavailable",
            EngineError::Money(_) => "invalid_amount",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub hold_expiry_days: u32,
    pub over_capture_bps: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            hold_expiry_days: crate::ledger::HOLD_EXPIRY_DAYS_DEFAULT,
            over_capture_bps: crate::ledger::OVER_CAPTURE_BPS_DEFAULT,
        }
    }
}

/// The answer to an authorization, serialized, plus what the caller may want to log.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub json: Arc<str>,
    pub approved: bool,
    pub response_code: String,
    pub rule: Option<String>,
    pub replayed: bool,
}

type Shared<T> = Arc<Mutex<T>>;
type CardGuard = parking_lot::ArcMutexGuard<parking_lot::RawMutex, CardState>;

/// Stored form of a decision's effects, enough to rebuild velocity state at start-up.
#[derive(Debug, Serialize, Deserialize)]
struct EffectsRecord {
    at: i64,
    auth: u64,
    /// (scope, key, window start, amount, counts declined)
    v: Vec<(u8, u64, i64, String, bool)>,
    loc: Option<(f64, f64)>,
    act: Option<(String, String, u64)>,
}

const SCOPES: [&str; 14] = [
    "authorization",
    "capture",
    "reversal",
    "refund",
    "advice",
    "fund",
    "withdraw",
    "deposit",
    "card",
    "cardholder",
    "program",
    "status",
    "controls",
    "cardholder_update",
];

fn scope_id(s: VelocityScope) -> u8 {
    match s {
        VelocityScope::Card => 0,
        VelocityScope::Cardholder => 1,
        VelocityScope::Program => 2,
        VelocityScope::CardMerchant => 3,
    }
}

fn scope_from(id: u8) -> VelocityScope {
    match id {
        1 => VelocityScope::Cardholder,
        2 => VelocityScope::Program,
        3 => VelocityScope::CardMerchant,
        _ => VelocityScope::Card,
    }
}

/// Live state: cards, holders, programs, house accounts, idempotency, policies, store.
pub struct Engine {
    cards: DashMap<String, Shared<CardState>>,
    records: DashMap<String, CardRecord>,
    holder_velocity: DashMap<String, Shared<VelocityState>>,
    program_velocity: DashMap<String, Shared<VelocityState>>,
    programs: DashMap<String, Program>,
    cardholders: DashMap<String, Cardholder>,
    /// Authorization id → card id, for captures and reversals.
    auth_index: DashMap<String, String>,
    /// SHA-256 of each API key → its program.
    api_keys: DashMap<String, String>,
    /// Authorizations reversed before they arrived (out-of-order messages).
    /// Authorization id → the tenant that reversed it (None in-process).
    early_reversals: DashMap<String, Option<String>>,
    /// Balances of every non-card account.
    house: Mutex<BTreeMap<AccountId, Decimal>>,
    idem: Idempotency,
    policies: ArcSwap<PolicySet>,
    store: Option<Arc<Store>>,
    pub config: EngineConfig,
}

fn money(d: Decimal, c: Currency) -> String {
    format_amount(d, c)
}

impl Engine {
    /// A memory-only engine (no store): for tests of the decision path and benches.
    pub fn new(policies: PolicySet) -> Engine {
        Engine {
            cards: DashMap::new(),
            records: DashMap::new(),
            holder_velocity: DashMap::new(),
            program_velocity: DashMap::new(),
            programs: DashMap::new(),
            cardholders: DashMap::new(),
            auth_index: DashMap::new(),
            api_keys: DashMap::new(),
            early_reversals: DashMap::new(),
            house: Mutex::new(BTreeMap::new()),
            idem: Idempotency::default(),
            policies: ArcSwap::from_pointee(policies),
            store: None,
            config: EngineConfig::default(),
        }
    }

    /// An engine on a store, with all state rebuilt from the store's snapshot.
    pub fn open(
        policies: PolicySet,
        store: Arc<Store>,
        snapshot: Snapshot,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        let mut e = Engine::new(policies);
        e.config = config;
        e.recover(snapshot)?;
        e.store = Some(store);
        Ok(e)
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

    fn persist(&self, writes: Vec<Write>) -> u64 {
        match &self.store {
            Some(s) => s.submit(writes),
            None => 0,
        }
    }

    fn wait(&self, seq: u64) {
        if let (Some(s), true) = (&self.store, seq > 0) {
            s.wait(seq);
        }
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

    /// Adds a card state directly (memory-only engines, tests and benches).
    pub fn add_card(&self, card: CardState) -> Result<(), EngineError> {
        if self.policies.load().get(&card.policy).is_none() {
            return Err(EngineError::UnknownPolicy(card.policy));
        }
        match self.cards.entry(card.card_id.clone()) {
            dashmap::Entry::Occupied(_) => Err(EngineError::Exists("card", card.card_id)),
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
    ) -> Result<R, EngineError> {
        let c = self
            .card(card_id)
            .ok_or_else(|| EngineError::UnknownCard(card_id.to_string()))?;
        let mut g = c.lock();
        Ok(f(&mut g))
    }

    fn shared(map: &DashMap<String, Shared<VelocityState>>, key: &str) -> Shared<VelocityState> {
        if let Some(s) = map.get(key) {
            return s.clone();
        }
        map.entry(key.to_string()).or_default().clone()
    }

    /// Runs an operation once per idempotency key. `op` returns the response and the
    /// writes; the response is stored with them and replayed on retries.
    fn idempotent<R: Serialize>(
        &self,
        scope: &'static str,
        key: &str,
        request: &impl Serialize,
        op: impl FnOnce() -> Result<(R, Vec<Write>, Option<CardGuard>), EngineError>,
    ) -> Result<Arc<str>, EngineError> {
        let (json, seq) = self.idempotent_nowait(scope, key, request, op)?;
        self.wait(seq);
        Ok(json)
    }

    /// Like `idempotent`, but returns the store sequence to wait for instead of waiting.
    fn idempotent_nowait<R: Serialize>(
        &self,
        scope: &'static str,
        key: &str,
        request: &impl Serialize,
        op: impl FnOnce() -> Result<(R, Vec<Write>, Option<CardGuard>), EngineError>,
    ) -> Result<(Arc<str>, u64), EngineError> {
        if key.is_empty() || key.len() > 128 {
            return Err(EngineError::Invalid(
                "idempotency key must be 1 to 128 characters".into(),
            ));
        }
        let hash = request_hash(&serde_json::to_vec(request).unwrap_or_default());
        match self.idem.begin(scope, key, &hash) {
            Begin::Replay { response, seq } => return Ok((response, seq)),
            Begin::Conflict => return Err(EngineError::IdempotencyConflict),
            Begin::Go => {}
        }
        let (response, mut writes, guard) = match op() {
            Ok(x) => x,
            Err(e) => {
                self.idem.abort(scope, key);
                return Err(e);
            }
        };
        let json: Arc<str> = serde_json::to_string(&response).unwrap_or_default().into();
        // A decision row keeps its own response and request hash (one row, not two);
        // every other operation gets an idempotency row.
        let mut recorded = false;
        for w in writes.iter_mut() {
            if let Write::Decision(d) = w {
                d.response = json.to_string();
                d.request_hash = hash.clone();
                recorded = true;
            }
        }
        if !recorded {
            writes.push(Write::Idempotency {
                scope,
                key: key.to_string(),
                request_hash: hash.clone(),
                response: json.clone(),
                at_ms: Utc::now().timestamp_millis(),
            });
        }
        let seq = self.persist(writes);
        self.idem.finish(scope, key, &hash, json.clone(), seq);
        // The card's lock was held until its writes were queued: commit order for one
        // card equals the order its state changed in memory.
        drop(guard);
        Ok((json, seq))
    }

    // ---- Programs, cardholders, cards -------------------------------------------------

    pub fn create_program(&self, p: Program) -> Result<Arc<str>, EngineError> {
        let key = p.id.clone();
        self.idempotent("program", &key, &p, || {
            if self.policies.load().get(&p.policy).is_none() {
                return Err(EngineError::UnknownPolicy(p.policy.clone()));
            }
            if !valid_id(&p.id) {
                return Err(EngineError::Invalid(
                    "program id must be 1 to 64 of a-z, 0-9, _ and -".into(),
                ));
            }
            if self.programs.contains_key(&p.id) {
                return Err(EngineError::Exists("program", p.id.clone()));
            }
            self.programs.insert(p.id.clone(), p.clone());
            Ok((p.clone(), vec![Write::Program(p.clone())], None))
        })
    }

    pub fn program(&self, id: &str) -> Option<Program> {
        self.programs.get(id).map(|p| p.clone())
    }

    pub fn create_cardholder(&self, key: &str, h: Cardholder) -> Result<Arc<str>, EngineError> {
        self.idempotent("cardholder", key, &h, || {
            if !self.programs.contains_key(&h.program) {
                return Err(EngineError::UnknownProgram(h.program.clone()));
            }
            if !valid_id(&h.id) || h.name.is_empty() || h.name.len() > 128 {
                return Err(EngineError::Invalid(
                    "cardholder id must be 1 to 64 of a-z, 0-9, _ and -; name 1 to 128 characters"
                        .into(),
                ));
            }
            match self.cardholders.entry(holder_key(&h.program, &h.id)) {
                dashmap::Entry::Occupied(_) => {
                    return Err(EngineError::Exists("cardholder", h.id.clone()))
                }
                dashmap::Entry::Vacant(v) => {
                    v.insert(h.clone());
                }
            }
            Ok((h.clone(), vec![Write::Cardholder(h.clone())], None))
        })
    }

    /// A cardholder of a program (ids are scoped to their program).
    pub fn cardholder(&self, program: &str, id: &str) -> Option<Cardholder> {
        self.cardholders
            .get(&holder_key(program, id))
            .map(|h| h.clone())
    }

    /// Changes KYC status or the blocked flag, and every card of the holder with it.
    pub fn update_cardholder(
        &self,
        key: &str,
        program: &str,
        id: &str,
        kyc: Option<KycStatus>,
        blocked: Option<bool>,
    ) -> Result<Arc<str>, EngineError> {
        self.idempotent(
            "cardholder_update",
            key,
            &(program, id, kyc, blocked),
            || {
                let mut h = self
                    .cardholder(program, id)
                    .ok_or_else(|| EngineError::UnknownCardholder(id.to_string()))?;
                if let Some(k) = kyc {
                    h.kyc = k;
                }
                if let Some(b) = blocked {
                    h.blocked = b;
                }
                let hk = holder_key(&h.program, &h.id);
                self.cardholders.insert(hk.clone(), h.clone());
                for c in self.cards.iter() {
                    let mut g = c.lock();
                    if g.cardholder_id == hk {
                        g.kyc = h.kyc;
                        g.cardholder_blocked = h.blocked;
                    }
                }
                Ok((h.clone(), vec![Write::Cardholder(h)], None))
            },
        )
    }

    fn compile_controls(
        &self,
        policy: &str,
        currency: Currency,
        c: &SpendingControls,
    ) -> Result<Option<Arc<CompiledPolicy>>, EngineError> {
        if c.is_empty() {
            return Ok(None);
        }
        let set = self.policies.load();
        let p = set
            .get(policy)
            .ok_or_else(|| EngineError::UnknownPolicy(policy.to_string()))?;
        c.compile(currency, p.timezone, set.fx.clone())
            .map(|p| Some(Arc::new(p)))
            .map_err(EngineError::InvalidControls)
    }

    fn state_for(&self, r: &CardRecord) -> Result<CardState, EngineError> {
        let program = self
            .program(&r.program)
            .ok_or_else(|| EngineError::UnknownProgram(r.program.clone()))?;
        let holder = self
            .cardholder(&r.program, &r.cardholder_id)
            .ok_or_else(|| EngineError::UnknownCardholder(r.cardholder_id.clone()))?;
        // In memory the holder is `program/id`, which also keys cardholder-scope velocity.
        let mut s = CardState::new(
            &r.id,
            &holder_key(&r.program, &r.cardholder_id),
            &program.policy,
            r.currency,
        );
        s.status = r.status;
        s.expiry = Some(r.expiry);
        s.kyc = holder.kyc;
        s.cardholder_blocked = holder.blocked;
        s.funds_tracked = true;
        s.controls = match &r.controls {
            Some(c) => self.compile_controls(&program.policy, r.currency, c)?,
            None => None,
        };
        Ok(s)
    }

    /// Issues a card. The id is an opaque token; no card number is stored.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_card(
        &self,
        key: &str,
        program: &str,
        cardholder_id: &str,
        kind: CardKind,
        currency: Option<Currency>,
        controls: Option<SpendingControls>,
        active: bool,
        now: DateTime<Utc>,
    ) -> Result<Arc<str>, EngineError> {
        let request = (program, cardholder_id, kind, currency, &controls, active);
        self.idempotent("card", key, &request, || {
            let p = self
                .program(program)
                .ok_or_else(|| EngineError::UnknownProgram(program.to_string()))?;
            let h = self
                .cardholder(&p.id, cardholder_id)
                .ok_or_else(|| EngineError::UnknownCardholder(cardholder_id.to_string()))?;
            let token = uuid::Uuid::new_v4().simple().to_string();
            let last4 = format!(
                "{:04}",
                u16::from_str_radix(&token[..4], 16).unwrap_or(0) % 10_000
            );
            let three_years = now.date_naive();
            let r = CardRecord {
                id: format!("card_{}", &token[..24]),
                program: p.id.clone(),
                cardholder_id: h.id.clone(),
                kind,
                currency: currency.unwrap_or(p.currency),
                last4,
                expiry: Expiry {
                    year: three_years.year() + 3,
                    month: three_years.month(),
                },
                status: if active {
                    CardStatus::Active
                } else {
                    CardStatus::Inactive
                },
                controls: controls.clone().filter(|c| !c.is_empty()),
            };
            let state = self.state_for(&r)?;
            let response = self.card_response(&r, &state);
            self.records.insert(r.id.clone(), r.clone());
            self.cards.insert(r.id.clone(), Arc::new(Mutex::new(state)));
            Ok((response, vec![Write::Card(r)], None))
        })
    }

    fn card_response(&self, r: &CardRecord, s: &CardState) -> CardResponse {
        CardResponse {
            id: r.id.clone(),
            program: r.program.clone(),
            cardholder_id: r.cardholder_id.clone(),
            kind: r.kind,
            currency: r.currency,
            last4: r.last4.clone(),
            expiry: format!("{:04}-{:02}", r.expiry.year, r.expiry.month),
            status: s.status.as_str().to_string(),
            controls: r.controls.clone(),
            balance: balance(s),
        }
    }

    pub fn get_card(&self, card_id: &str) -> Result<CardResponse, EngineError> {
        let r = self
            .records
            .get(card_id)
            .map(|r| r.clone())
            .ok_or_else(|| EngineError::UnknownCard(card_id.to_string()))?;
        self.with_card(card_id, |s| self.card_response(&r, s))
    }

    pub fn card_program(&self, card_id: &str) -> Option<String> {
        self.records.get(card_id).map(|r| r.program.clone())
    }

    pub fn balance(&self, card_id: &str) -> Result<Balance, EngineError> {
        self.with_card(card_id, |s| balance(s))
    }

    /// Lifecycle change; terminating returns the remaining balance to the funding account.
    pub fn card_action(
        &self,
        key: &str,
        card_id: &str,
        action: CardAction,
        now: DateTime<Utc>,
    ) -> Result<Arc<str>, EngineError> {
        self.idempotent("status", key, &(card_id, action), || {
            let card = self
                .card(card_id)
                .ok_or_else(|| EngineError::UnknownCard(card_id.to_string()))?;
            let mut c = card.lock_arc();
            let to = transition(c.status, action)?;
            let mut writes = Vec::new();
            let mut r = self
                .records
                .get(card_id)
                .map(|r| r.clone())
                .ok_or_else(|| EngineError::UnknownCard(card_id.to_string()))?;
            if to == CardStatus::Terminated {
                let pending = c.account.pending_holds();
                if pending > 0 {
                    return Err(LedgerError::PendingHolds(pending).into());
                }
                let remaining = c.account.posted;
                if remaining > Decimal::ZERO {
                    let funding = AccountId::funding(&r.program, c.currency);
                    let mut house = self.house.lock();
                    let t = c.account.transfer_with_funding(
                        card_id,
                        TransferKind::Termination,
                        funding,
                        remaining,
                        now.timestamp_millis(),
                    )?;
                    apply_house(&mut house, &t);
                    writes.push(Write::Transfer(t));
                }
            }
            c.status = to;
            r.status = to;
            self.records.insert(card_id.to_string(), r.clone());
            let response = self.card_response(&r, &c);
            writes.push(Write::Card(r));
            Ok((response, writes, Some(c)))
        })
    }

    pub fn set_controls(
        &self,
        key: &str,
        card_id: &str,
        controls: SpendingControls,
    ) -> Result<Arc<str>, EngineError> {
        self.idempotent("controls", key, &(card_id, &controls), || {
            let card = self
                .card(card_id)
                .ok_or_else(|| EngineError::UnknownCard(card_id.to_string()))?;
            let mut c = live(&card)?;
            let compiled = self.compile_controls(&c.policy, c.currency, &controls)?;
            let mut r = self
                .records
                .get(card_id)
                .map(|r| r.clone())
                .ok_or_else(|| EngineError::UnknownCard(card_id.to_string()))?;
            r.controls = (!controls.is_empty()).then_some(controls.clone());
            c.controls = compiled;
            self.records.insert(card_id.to_string(), r.clone());
            let response = self.card_response(&r, &c);
            Ok((response, vec![Write::Card(r)], Some(c)))
        })
    }

    // ---- Money in and out ---------------------------------------------------------------

    /// External money into a program's funding account.
    pub fn deposit(
        &self,
        key: &str,
        program: &str,
        amount: Decimal,
        currency: Currency,
        now: DateTime<Utc>,
    ) -> Result<Arc<str>, EngineError> {
        self.idempotent(
            "deposit",
            key,
            &(program, amount.to_string(), currency),
            || {
                if !self.programs.contains_key(program) {
                    return Err(EngineError::UnknownProgram(program.to_string()));
                }
                check_amount(amount, currency)?;
                let funding = AccountId::funding(program, currency);
                let t = Transfer::simple(
                    format!("deposit:{program}:{key}"),
                    TransferKind::Deposit,
                    program,
                    AccountId::external(currency),
                    funding.clone(),
                    amount,
                    currency,
                    now.timestamp_millis(),
                );
                let mut house = self.house.lock();
                apply_house(&mut house, &t);
                let after = house.get(&funding).copied().unwrap_or_default();
                let response = transfer_response(&t, &funding, after, currency);
                Ok((response, vec![Write::Transfer(t)], None))
            },
        )
    }

    /// Top-up (program funding → card) or withdrawal (card → program funding).
    pub fn move_funds(
        &self,
        key: &str,
        card_id: &str,
        kind: TransferKind,
        amount: Decimal,
        now: DateTime<Utc>,
    ) -> Result<Arc<str>, EngineError> {
        let scope = if kind == TransferKind::TopUp {
            "fund"
        } else {
            "withdraw"
        };
        self.idempotent(scope, key, &(card_id, amount.to_string()), || {
            let card = self
                .card(card_id)
                .ok_or_else(|| EngineError::UnknownCard(card_id.to_string()))?;
            let mut c = live(&card)?;
            let program = self
                .card_program(card_id)
                .ok_or_else(|| EngineError::UnknownCard(card_id.to_string()))?;
            let funding = AccountId::funding(&program, c.currency);
            check_amount(amount, c.currency)?;
            let mut house = self.house.lock();
            if kind == TransferKind::TopUp {
                let available = house.get(&funding).copied().unwrap_or_default();
                if amount > available {
                    return Err(LedgerError::InsufficientProgramFunds {
                        requested: amount,
                        available,
                    }
                    .into());
                }
            }
            let t = c.account.transfer_with_funding(
                &format!("{card_id}:{key}"),
                kind,
                funding,
                amount,
                now.timestamp_millis(),
            )?;
            apply_house(&mut house, &t);
            let response = transfer_response(
                &t,
                &c.account.account_id(),
                c.account.available(),
                c.currency,
            );
            Ok((response, vec![Write::Transfer(t)], Some(c)))
        })
    }

    // ---- Authorizations -----------------------------------------------------------------

    /// Decides an authorization, places its hold, makes both durable, then answers.
    /// The processor's authorization id is the idempotency key.
    pub fn authorize(
        &self,
        txn: &Authorization,
        now: DateTime<Utc>,
    ) -> Result<Authorized, EngineError> {
        let (a, seq) = self.authorize_nowait(txn, now)?;
        self.wait(seq);
        Ok(a)
    }

    /// `authorize` for async callers: the commit wait does not block a thread.
    pub async fn authorize_async(
        &self,
        txn: &Authorization,
        now: DateTime<Utc>,
    ) -> Result<Authorized, EngineError> {
        let (a, seq) = self.authorize_nowait(txn, now)?;
        if let (Some(s), true) = (&self.store, seq > 0) {
            s.wait_async(seq).await;
        }
        Ok(a)
    }

    /// Decides and queues the writes; the answer may be given once `seq` is durable.
    pub fn authorize_nowait(
        &self,
        txn: &Authorization,
        now: DateTime<Utc>,
    ) -> Result<(Authorized, u64), EngineError> {
        self.authorize_for(None, txn, now)
    }

    /// `authorize_nowait` for one tenant: a card of another program is as unknown as a
    /// card that does not exist (code 14), and is never touched.
    pub fn authorize_for(
        &self,
        tenant: Option<&str>,
        txn: &Authorization,
        now: DateTime<Utc>,
    ) -> Result<(Authorized, u64), EngineError> {
        self.authorize_traced(tenant, txn, now, "")
    }

    /// `authorize_for`, recording the caller's request id with the decision.
    pub fn authorize_traced(
        &self,
        tenant: Option<&str>,
        txn: &Authorization,
        now: DateTime<Utc>,
        request_id: &str,
    ) -> Result<(Authorized, u64), EngineError> {
        let started = Instant::now();
        let mut out = None;
        let (json, seq) = self.idempotent_nowait("authorization", &txn.id.clone(), txn, || {
            let visible =
                tenant.is_none_or(|t| self.card_program(&txn.card_id).as_deref() == Some(t));
            let Some(card) = self.card(&txn.card_id).filter(|_| visible) else {
                let r = self.unknown_card_response(txn, started);
                out = Some((false, "14".to_string(), None));
                return Ok((r, vec![], None));
            };
            let policies = self.policies.load();
            let mut c = card.lock_arc();
            let policy = policies
                .get(&c.policy)
                .cloned()
                .ok_or_else(|| EngineError::UnknownPolicy(c.policy.clone()))?;
            let uses =
                |s| policy.has_scope(s) || c.controls.as_ref().is_some_and(|p| p.has_scope(s));
            let holder = uses(VelocityScope::Cardholder)
                .then(|| Self::shared(&self.holder_velocity, &c.cardholder_id));
            let program = uses(VelocityScope::Program)
                .then(|| Self::shared(&self.program_velocity, &policy.name));
            let mut hg = holder.as_ref().map(|h| h.lock());
            let mut pg = program.as_ref().map(|p| p.lock());
            let (d, hold) = c.authorize(
                &policy,
                txn,
                now,
                hg.as_deref_mut(),
                pg.as_deref_mut(),
                self.config.hold_expiry_days,
            );
            drop((hg, pg));
            let mut writes = vec![Write::Decision(Box::new(decision_row(
                txn, &d, c.currency, request_id,
            )))];
            let mut voided_early = false;
            if let Some(h) = hold {
                self.auth_index.insert(txn.id.clone(), c.card_id.clone());
                writes.push(Write::Hold(h));
                // The processor reversed this authorization before we saw it: void the
                // hold now, so the money is not reserved for a transaction that is gone.
                // The closure (and its program lookup) runs only when such a reversal exists.
                let reversed = self
                    .early_reversals
                    .remove_if(&txn.id, |_, t| {
                        t.is_none() || *t == self.card_program(&c.card_id)
                    })
                    .is_some();
                if reversed {
                    voided_early =
                        self.void_hold(&mut c, &txn.id, now.timestamp_millis(), &mut writes);
                }
            }
            let controls = c.controls.clone();
            let mut response = authorization_response(
                txn,
                &d,
                &policy,
                controls.as_deref(),
                c.available(),
                started,
            );
            if voided_early {
                response.trace.push(TraceLine {
                    rule: "reversal".into(),
                    outcome: "hold voided".into(),
                    detail: "a reversal for this authorization arrived before it".into(),
                });
            }
            out = Some((d.approved, d.response_code.to_string(), d.rule.clone()));
            Ok((response, writes, Some(c)))
        })?;
        let a = match out {
            Some((approved, response_code, rule)) => Authorized {
                json,
                approved,
                response_code,
                rule,
                replayed: false,
            },
            None => {
                let r: AuthorizationResponse =
                    serde_json::from_str(&json).map_err(|e| EngineError::Invalid(e.to_string()))?;
                Authorized {
                    json,
                    approved: r.approved,
                    response_code: r.response_code,
                    rule: r.rule,
                    replayed: true,
                }
            }
        };
        Ok((a, seq))
    }

    /// Answers 91 for an authorization whose decision missed its deadline and voids the
    /// hold it placed, so a late decision never leaves money reserved. The 91 answer
    /// replaces the stored one: a retry gets 91 too.
    pub fn abandon_authorization(&self, txn: &Authorization, now: DateTime<Utc>) -> Arc<str> {
        let hash = request_hash(&serde_json::to_vec(txn).unwrap_or_default());
        let at_ms = now.timestamp_millis();
        let mut writes = Vec::new();
        let mut guard = None;
        if let Some(card) = self.card(&txn.card_id) {
            let mut c = card.lock_arc();
            self.void_hold(&mut c, &txn.id, at_ms, &mut writes);
            guard = Some(c);
        }
        let response = step_decline(
            txn,
            "91",
            "deadline_exceeded",
            "deadline",
            "the decision missed its deadline; any hold was voided",
            0,
        );
        let json: Arc<str> = serde_json::to_string(&response).unwrap_or_default().into();
        writes.push(Write::Idempotency {
            scope: "authorization",
            key: txn.id.clone(),
            request_hash: hash.clone(),
            response: json.clone(),
            at_ms,
        });
        let seq = self.persist(writes);
        self.idem
            .finish("authorization", &txn.id, &hash, json.clone(), seq);
        drop(guard);
        json
    }

    /// Creates an API key for a program. The key is returned once; only its SHA-256 is kept.
    pub fn create_api_key(&self, program: &str, now: DateTime<Utc>) -> Result<String, EngineError> {
        if !self.programs.contains_key(program) {
            return Err(EngineError::UnknownProgram(program.to_string()));
        }
        let key = format!(
            "sk_{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let hash = request_hash(key.as_bytes());
        self.api_keys.insert(hash.clone(), program.to_string());
        let seq = self.persist(vec![Write::ApiKey {
            hash,
            program: program.to_string(),
            prefix: key[..11].to_string(),
            at_ms: now.timestamp_millis(),
        }]);
        self.wait(seq);
        Ok(key)
    }

    /// The program an API key belongs to.
    pub fn program_for_key(&self, key: &str) -> Option<String> {
        self.api_keys
            .get(&request_hash(key.as_bytes()))
            .map(|p| p.clone())
    }

    /// The program of the card an authorization was placed on.
    pub fn auth_program(&self, auth_id: &str) -> Option<String> {
        let card = self.auth_index.get(auth_id).map(|c| c.clone())?;
        self.card_program(&card)
    }

    fn unknown_card_response(
        &self,
        txn: &Authorization,
        started: Instant,
    ) -> AuthorizationResponse {
        step_decline(
            txn,
            "14",
            "card_not_found",
            "card",
            "no such card",
            started.elapsed().as_micros() as u64,
        )
    }

    /// Decides without any effect (no counters, no hold, nothing stored): `/v1/simulate`.
    pub fn simulate(
        &self,
        txn: &Authorization,
        now: DateTime<Utc>,
    ) -> Result<DecisionSummary, EngineError> {
        let card = self
            .card(&txn.card_id)
            .ok_or_else(|| EngineError::UnknownCard(txn.card_id.clone()))?;
        let policies = self.policies.load();
        let c = card.lock();
        let policy = policies
            .get(&c.policy)
            .cloned()
            .ok_or_else(|| EngineError::UnknownPolicy(c.policy.clone()))?;
        let holder = self
            .holder_velocity
            .get(&c.cardholder_id)
            .map(|h| h.clone());
        let program = self.program_velocity.get(&policy.name).map(|p| p.clone());
        let hg = holder.as_ref().map(|h| h.lock());
        let pg = program.as_ref().map(|p| p.lock());
        let d = crate::decision::decide(&policy, &c.view(hg.as_deref(), pg.as_deref()), txn, now);
        Ok(DecisionSummary::new(&d, &policy, c.controls.as_deref()))
    }

    fn card_of_auth(&self, auth_id: &str) -> Option<Shared<CardState>> {
        let card_id = self.auth_index.get(auth_id).map(|c| c.clone())?;
        self.card(&card_id)
    }

    /// Releases everything an authorization still holds and records it; false when
    /// nothing was pending.
    fn void_hold(
        &self,
        c: &mut CardState,
        auth_id: &str,
        at_ms: i64,
        writes: &mut Vec<Write>,
    ) -> bool {
        let Ok(r) = c.account.reverse(auth_id, None, at_ms) else {
            return false;
        };
        writes.push(Write::Hold(r.hold.clone()));
        writes.push(Write::HoldResolved {
            auth_id: auth_id.to_string(),
            status: r.hold.status,
            at_ms,
        });
        self.release(c, auth_id, r.released_ratio, at_ms, writes);
        true
    }

    /// Gives velocity capacity back in the card's windows and its shared scopes.
    fn give_back(&self, c: &mut CardState, auth_id: &str, ratio: Decimal) {
        let holder = self
            .holder_velocity
            .get(&c.cardholder_id)
            .map(|h| h.clone());
        let program = self.program_velocity.get(&c.policy).map(|p| p.clone());
        let mut hg = holder.as_ref().map(|h| h.lock());
        let mut pg = program.as_ref().map(|p| p.lock());
        c.release_velocity(auth_id, ratio, hg.as_deref_mut(), pg.as_deref_mut());
    }

    /// `give_back`, recorded for recovery.
    fn release(
        &self,
        c: &mut CardState,
        auth_id: &str,
        ratio: Decimal,
        at_ms: i64,
        writes: &mut Vec<Write>,
    ) {
        if ratio <= Decimal::ZERO {
            return;
        }
        self.give_back(c, auth_id, ratio);
        writes.push(Write::VelocityRelease {
            card_id: c.card_id.clone(),
            auth_id: auth_id.to_string(),
            ratio: ratio.to_string(),
            at_ms,
        });
    }

    /// Captures (part of) an authorization's hold. `amount` is in the authorization's
    /// currency.
    pub fn capture(
        &self,
        key: &str,
        auth_id: &str,
        amount: Decimal,
        is_final: bool,
        now: DateTime<Utc>,
    ) -> Result<Arc<str>, EngineError> {
        self.idempotent(
            "capture",
            &format!("{auth_id}:{key}"),
            &(auth_id, amount.to_string(), is_final),
            || {
                let card = self
                    .card_of_auth(auth_id)
                    .ok_or_else(|| EngineError::UnknownAuthorization(auth_id.to_string()))?;
                let mut c = live(&card)?;
                let at_ms = now.timestamp_millis();
                let r = c.account.capture(
                    &format!("{auth_id}:{key}"),
                    auth_id,
                    amount,
                    is_final,
                    self.config.over_capture_bps,
                    at_ms,
                )?;
                apply_house(&mut self.house.lock(), &r.transfer);
                let mut writes = vec![
                    Write::Transfer(r.transfer.clone()),
                    Write::Hold(r.hold.clone()),
                ];
                if r.hold.status != HoldStatus::Pending {
                    writes.push(Write::HoldResolved {
                        auth_id: auth_id.to_string(),
                        status: r.hold.status,
                        at_ms,
                    });
                }
                self.release(&mut c, auth_id, r.released_ratio, at_ms, &mut writes);
                let response = hold_response(
                    &r.hold,
                    -r.transfer.posting(&c.account.account_id()),
                    c.account.available(),
                );
                Ok((response, writes, Some(c)))
            },
        )
    }

    /// Reverses (part of) an authorization. An unknown authorization is recorded and
    /// answered (`matched: false`), so the processor's retries settle.
    pub fn reverse(
        &self,
        key: &str,
        auth_id: &str,
        amount: Option<Decimal>,
        now: DateTime<Utc>,
    ) -> Result<Arc<str>, EngineError> {
        self.reverse_for(None, key, auth_id, amount, now)
    }

    /// `reverse` on behalf of a tenant: a reversal that arrives before its authorization
    /// is remembered for that tenant's cards only.
    pub fn reverse_for(
        &self,
        tenant: Option<&str>,
        key: &str,
        auth_id: &str,
        amount: Option<Decimal>,
        now: DateTime<Utc>,
    ) -> Result<Arc<str>, EngineError> {
        self.idempotent(
            "reversal",
            &format!("{auth_id}:{key}"),
            &(auth_id, amount.map(|a| a.to_string())),
            || {
                let Some(card) = self.card_of_auth(auth_id) else {
                    // Remembered, so that the authorization is voided if it arrives later.
                    self.early_reversals
                        .insert(auth_id.to_string(), tenant.map(str::to_string));
                    let r = ReversalResponse {
                        authorization_id: auth_id.to_string(),
                        matched: false,
                        released: None,
                        hold_status: None,
                        available_after: None,
                    };
                    return Ok((r, vec![], None));
                };
                let mut c = live(&card)?;
                let at_ms = now.timestamp_millis();
                let r = c.account.reverse(auth_id, amount, at_ms)?;
                let mut writes = vec![Write::Hold(r.hold.clone())];
                if r.hold.status != HoldStatus::Pending {
                    writes.push(Write::HoldResolved {
                        auth_id: auth_id.to_string(),
                        status: r.hold.status,
                        at_ms,
                    });
                }
                self.release(&mut c, auth_id, r.released_ratio, at_ms, &mut writes);
                let response = ReversalResponse {
                    authorization_id: auth_id.to_string(),
                    matched: true,
                    released: Some(money(r.released, c.currency)),
                    hold_status: Some(r.hold.status),
                    available_after: Some(money(c.account.available(), c.currency)),
                };
                Ok((response, writes, Some(c)))
            },
        )
    }

    /// Credits a refund to a card, linked to an authorization or not.
    #[allow(clippy::too_many_arguments)]
    pub fn refund(
        &self,
        key: &str,
        card_id: &str,
        auth_id: Option<&str>,
        amount: Decimal,
        currency: Currency,
        now: DateTime<Utc>,
    ) -> Result<Arc<str>, EngineError> {
        self.idempotent(
            "refund",
            key,
            &(card_id, auth_id, amount.to_string(), currency),
            || {
                let card = self
                    .card(card_id)
                    .ok_or_else(|| EngineError::UnknownCard(card_id.to_string()))?;
                let mut c = live(&card)?;
                let (t, _hold) =
                    c.account
                        .refund(key, auth_id, amount, currency, now.timestamp_millis())?;
                apply_house(&mut self.house.lock(), &t);
                let mut writes = vec![Write::Transfer(t.clone())];
                if let Some(h) = _hold {
                    writes.push(Write::Hold(h));
                }
                let response = transfer_response(
                    &t,
                    &c.account.account_id(),
                    c.account.available(),
                    c.currency,
                );
                Ok((response, writes, Some(c)))
            },
        )
    }

    /// Posts a stand-in advice: the processor approved without us. Never declined;
    /// may take the balance negative, and the transfer is flagged as forced.
    pub fn advice(
        &self,
        key: &str,
        card_id: &str,
        amount: Decimal,
        currency: Currency,
        now: DateTime<Utc>,
    ) -> Result<Arc<str>, EngineError> {
        self.idempotent(
            "advice",
            key,
            &(card_id, amount.to_string(), currency),
            || {
                let card = self
                    .card(card_id)
                    .ok_or_else(|| EngineError::UnknownCard(card_id.to_string()))?;
                let mut c = live(&card)?;
                check_amount(amount, currency)?;
                let fx = self.policies.load().fx.clone();
                let (amount_card, quote) = fx.convert_charge(amount, currency, c.currency)?;
                let t = c.account.forced_post(
                    key,
                    amount_card,
                    amount,
                    currency,
                    quote.rate,
                    now.timestamp_millis(),
                )?;
                apply_house(&mut self.house.lock(), &t);
                let response = transfer_response(
                    &t,
                    &c.account.account_id(),
                    c.account.available(),
                    c.currency,
                );
                Ok((response, vec![Write::Transfer(t)], Some(c)))
            },
        )
    }

    /// Expires every hold past its expiry, each exactly once, giving capacity back.
    pub fn expire_holds(&self, now: DateTime<Utc>) -> ExpiryReport {
        let at_ms = now.timestamp_millis();
        let mut expired = Vec::new();
        let mut last_seq = 0;
        let cards: Vec<Shared<CardState>> = self.cards.iter().map(|c| c.clone()).collect();
        for card in cards {
            let mut c = card.lock_arc();
            let holds = c.account.expire(at_ms);
            if holds.is_empty() {
                continue;
            }
            let mut writes = Vec::new();
            for e in holds {
                writes.push(Write::Hold(e.hold.clone()));
                writes.push(Write::HoldResolved {
                    auth_id: e.hold.auth_id.clone(),
                    status: HoldStatus::Expired,
                    at_ms,
                });
                self.release(
                    &mut c,
                    &e.hold.auth_id,
                    e.released_ratio,
                    at_ms,
                    &mut writes,
                );
                expired.push(e.hold.auth_id);
            }
            last_seq = self.persist(writes);
        }
        self.wait(last_seq);
        expired.sort();
        ExpiryReport { expired }
    }

    // ---- Recovery -----------------------------------------------------------------------

    fn recover(&mut self, s: Snapshot) -> Result<(), EngineError> {
        for p in s.programs {
            self.programs.insert(p.id.clone(), p);
        }
        for h in s.cardholders {
            self.cardholders.insert(holder_key(&h.program, &h.id), h);
        }
        for r in s.cards {
            let state = self.state_for(&r)?;
            self.records.insert(r.id.clone(), r.clone());
            self.cards.insert(r.id.clone(), Arc::new(Mutex::new(state)));
        }
        let mut house = BTreeMap::new();
        for t in &s.ledger.transfers {
            for p in &t.postings {
                if let Some(card_id) = p.account.as_str().strip_prefix("card:") {
                    if let Some(c) = self.card(card_id) {
                        c.lock().account.replay_transfer(t);
                    }
                } else {
                    *house.entry(p.account.clone()).or_insert(Decimal::ZERO) += p.amount;
                }
            }
        }
        *self.house.lock() = house;
        for h in s.ledger.holds {
            if let Some(c) = self.card(&h.card_id) {
                self.auth_index.insert(h.auth_id.clone(), h.card_id.clone());
                c.lock().account.replay_hold(h);
            }
        }
        for d in &s.decisions {
            // A retried authorization replays its stored answer after a restart too.
            self.idem.restore(
                "authorization",
                d.auth_id.clone(),
                d.request_hash.clone(),
                d.response.clone(),
            );
            let Some(card) = self.card(&d.card_id) else {
                continue;
            };
            let Ok(rec) = serde_json::from_str::<EffectsRecord>(&d.effects) else {
                continue;
            };
            let mut c = card.lock_arc();
            let holder = rec
                .v
                .iter()
                .any(|v| v.0 == 1)
                .then(|| Self::shared(&self.holder_velocity, &c.cardholder_id));
            let program = rec
                .v
                .iter()
                .any(|v| v.0 == 2)
                .then(|| Self::shared(&self.program_velocity, &c.policy));
            let e = effects_from(&rec);
            let mut hg = holder.as_ref().map(|h| h.lock());
            let mut pg = program.as_ref().map(|p| p.lock());
            c.apply(d.approved, &e, hg.as_deref_mut(), pg.as_deref_mut());
        }
        for (card_id, auth_id, ratio) in &s.velocity_releases {
            if let Some(card) = self.card(card_id) {
                self.give_back(&mut card.lock(), auth_id, *ratio);
            }
        }
        for (hash, program) in s.api_keys {
            self.api_keys.insert(hash, program);
        }
        for (_, key, _, response) in s
            .idempotency
            .iter()
            .filter(|(scope, ..)| scope == "reversal")
        {
            if let Ok(r) = serde_json::from_str::<ReversalResponse>(response) {
                if !r.matched && !self.auth_index.contains_key(&r.authorization_id) {
                    // Keys are `{auth}:{idempotency key}`; over HTTP the latter is `{program}/…`.
                    let tenant = key
                        .strip_prefix(&format!("{}:", r.authorization_id))
                        .and_then(|k| k.split_once('/'))
                        .map(|(p, _)| p.to_string());
                    self.early_reversals.insert(r.authorization_id, tenant);
                }
            }
        }
        for (scope, key, hash, response) in s.idempotency {
            if let Some(sc) = SCOPES.iter().find(|x| **x == scope) {
                self.idem.restore(sc, key, hash, response);
            }
        }
        Ok(())
    }

    /// Balance of a non-card account (funding, settlement, FX, external).
    pub fn house_balance(&self, account: &AccountId) -> Decimal {
        self.house.lock().get(account).copied().unwrap_or_default()
    }
}

/// A decline decided by a built-in step before or around the rules (no such card,
/// missed deadline).
fn step_decline(
    txn: &Authorization,
    code: &str,
    reason: &str,
    step: &str,
    detail: &str,
    latency_us: u64,
) -> AuthorizationResponse {
    AuthorizationResponse {
        authorization_id: txn.id.clone(),
        card_id: txn.card_id.clone(),
        approved: false,
        response_code: code.into(),
        reason: reason.into(),
        rule: None,
        amount_approved: "0".into(),
        currency: txn.currency,
        fx_rate: None,
        available_after: None,
        flags: vec![],
        score: 0,
        policy_version: String::new(),
        trace: vec![TraceLine {
            rule: step.into(),
            outcome: format!("decline {code}"),
            detail: detail.into(),
        }],
        latency_us,
    }
}

/// Locks a card for a money operation; a terminated card takes none.
fn live(card: &Shared<CardState>) -> Result<CardGuard, EngineError> {
    let c = card.lock_arc();
    if c.status == CardStatus::Terminated {
        return Err(LedgerError::CardTerminated.into());
    }
    Ok(c)
}

/// Cardholder ids are chosen by each program; in memory they are kept as `program/id`.
fn holder_key(program: &str, id: &str) -> String {
    format!("{program}/{id}")
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

fn balance(s: &CardState) -> Balance {
    Balance {
        currency: s.currency,
        posted: money(s.account.posted, s.currency),
        pending: money(s.account.pending, s.currency),
        available: money(s.account.available(), s.currency),
    }
}

fn transfer_response(
    t: &Transfer,
    account: &AccountId,
    available: Decimal,
    currency: Currency,
) -> TransferResponse {
    TransferResponse {
        transfer_id: t.id.clone(),
        kind: t.kind.as_str().to_string(),
        account: account.to_string(),
        amount: money(t.posting(account).abs(), currency),
        currency,
        available_after: money(available, currency),
    }
}

fn hold_response(h: &crate::ledger::Hold, amount: Decimal, available: Decimal) -> HoldResponse {
    let c = h.card_currency;
    HoldResponse {
        authorization_id: h.auth_id.clone(),
        card_id: h.card_id.clone(),
        amount: money(amount, c),
        currency: c,
        hold_status: h.status,
        pending: money(h.pending, c),
        captured: money(h.captured, c),
        available_after: money(available, c),
    }
}

fn authorization_response(
    txn: &Authorization,
    d: &Decision,
    p: &CompiledPolicy,
    controls: Option<&CompiledPolicy>,
    available: Option<Decimal>,
    started: Instant,
) -> AuthorizationResponse {
    let trace = d
        .trace
        .iter()
        .filter(|t| {
            !matches!(
                t.outcome,
                TraceOutcome::Pass | TraceOutcome::NotApplicable | TraceOutcome::Skipped
            )
        })
        .map(|t| t.render(p, controls))
        .collect();
    AuthorizationResponse {
        authorization_id: txn.id.clone(),
        card_id: txn.card_id.clone(),
        approved: d.approved,
        response_code: d.response_code.to_string(),
        reason: d.reason.to_string(),
        rule: d.rule.clone(),
        amount_approved: money(d.amount_approved, d.currency),
        currency: d.currency,
        fx_rate: d.fx.map(|q| q.rate.normalize().to_string()),
        available_after: available.map(|a| money(a, d.currency)),
        flags: d.flag_ids(p, controls),
        score: d.score,
        policy_version: d.policy_version.clone(),
        trace,
        latency_us: started.elapsed().as_micros() as u64,
    }
}

fn decision_row(
    txn: &Authorization,
    d: &Decision,
    card_currency: Currency,
    request_id: &str,
) -> DecisionRow {
    let e = &d.effects;
    let rec = EffectsRecord {
        at: e.at_ms,
        auth: e.auth_key,
        v: e.velocity
            .iter()
            .map(|v| {
                (
                    scope_id(v.scope),
                    v.key,
                    v.start_ms,
                    v.amount.to_string(),
                    v.counts == crate::policy::Counts::Declined,
                )
            })
            .collect(),
        loc: e.location.map(|l| (l.lat, l.lon)),
        act: e
            .activity
            .map(|a| (a.amount.to_string(), a.country.to_string(), a.merchant)),
    };
    DecisionRow {
        auth_id: txn.id.clone(),
        card_id: txn.card_id.clone(),
        at_ms: e.at_ms,
        approved: d.approved,
        response_code: d.response_code.to_string(),
        reason: d.reason.to_string(),
        rule: d.rule.clone(),
        amount: txn.amount.to_string(),
        currency: txn.currency.code().to_string(),
        amount_approved: d.amount_approved.to_string(),
        card_currency: card_currency.code().to_string(),
        policy_version: d.policy_version.clone(),
        request_id: request_id.to_string(),
        // Filled in with the exact answer by `idempotent`.
        request_hash: String::new(),
        response: String::new(),
        effects: serde_json::to_string(&rec).unwrap_or_default(),
    }
}

fn effects_from(r: &EffectsRecord) -> crate::decision::Effects {
    use crate::decision::{Country, Effects, LatLon, VelocityEffect};
    Effects {
        velocity: r
            .v
            .iter()
            .filter_map(|(s, key, start_ms, amount, declined)| {
                Some(VelocityEffect {
                    scope: scope_from(*s),
                    key: *key,
                    start_ms: *start_ms,
                    amount: Decimal::from_str(amount).ok()?,
                    counts: if *declined {
                        crate::policy::Counts::Declined
                    } else {
                        crate::policy::Counts::Approved
                    },
                })
            })
            .collect(),
        auth_key: r.auth,
        at_ms: r.at,
        location: r.loc.map(|(lat, lon)| LatLon { lat, lon }),
        activity: r.act.as_ref().and_then(|(amount, country, merchant)| {
            Some(crate::velocity::Activity {
                at_ms: r.at,
                amount: Decimal::from_str(amount).ok()?,
                approved: false,
                country: Country::parse(country).ok()?,
                merchant: *merchant,
            })
        }),
    }
}
