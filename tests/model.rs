//! A reference model, driven side by side with the engine.
//!
//! The model is deliberately simple and shares no code with the engine: balances are two
//! integers of cents per card, holds a map, velocity a list of approved (time, amount)
//! events per card that it scans, idempotent answers a map from key to the first answer
//! the engine gave. Random operation sequences — authorizations, captures (partial and
//! full), reversals, top-ups, withdrawals, freezes, time passing, hold expiry, retries with
//! the same and with a different request, and restarts from the store — run against both;
//! after every step the engine's answer and every card's balance must be what the model
//! says. A divergence is reported with the shortest sequence found that still diverges.
//!
//! The policy (written by the test) has two rules the model knows: at most 5 approvals per
//! card in a rolling hour, at most 800.00 approved per card in a rolling 24 h.
//!
//! `cargo test --release --test model` runs 10⁶ operations (CI); `MODEL_OPS=10000000` runs
//! 10⁷; `MODEL_SEED` picks another sequence.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngAlgorithm, TestRng};
use rust_decimal::Decimal;
use spendgate::clock::{Clock, ManualClock};
use spendgate::issuing::CardAction;
use spendgate::ledger::TransferKind;
use spendgate::policy::load_policy_dir;
use spendgate::service::responses::AuthorizationResponse;
use spendgate::service::{AuthContext, Engine, EngineConfig, Pending, Rejection};
use spendgate::store::{Durability, Store};

const CARDS: usize = 3;
const HOUR_MS: i64 = 3_600_000;
const COUNT_PER_HOUR_MAX: usize = 5;
const AMOUNT_PER_DAY_MAX_CENTS: i64 = 80_000;
/// Each card's balance before the first operation.
const START_CENTS: i64 = 300_000;
const HOLD_EXPIRY_MS: i64 = 7 * 24 * HOUR_MS;

const POLICY: &str = r#"policy: model
description: the reference model's policy
currency: USD
timezone: UTC
rules:
  - id: hourly_count
    velocity: { window: 1h, count_max: 5 }
  - id: daily_amount
    velocity: { window: 24h, amount_max: 800.00 }
"#;

#[derive(Debug, Clone)]
enum Op {
    Authorize {
        card: usize,
        cents: i64,
    },
    /// Capture `percent` of the `nth` authorization so far (final: the rest is released).
    Capture {
        nth: usize,
        percent: i64,
    },
    Reverse {
        nth: usize,
    },
    TopUp {
        card: usize,
        cents: i64,
    },
    Withdraw {
        card: usize,
        cents: i64,
    },
    Freeze {
        card: usize,
    },
    Unfreeze {
        card: usize,
    },
    /// Time passes (minutes); hold expiry runs.
    Wait {
        minutes: i64,
    },
    /// The `nth` earlier keyed operation again, same key and request.
    Retry {
        nth: usize,
    },
    /// The `nth` earlier keyed operation's key with another amount.
    Conflict {
        nth: usize,
    },
    Restart {
        point: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..CARDS, 1..40_000i64).prop_map(|(card, cents)| Op::Authorize { card, cents }),
        3 => (0..200usize, 1..=100i64).prop_map(|(nth, percent)| Op::Capture { nth, percent }),
        3 => (0..200usize).prop_map(|nth| Op::Reverse { nth }),
        2 => (0..CARDS, 1..60_000i64).prop_map(|(card, cents)| Op::TopUp { card, cents }),
        1 => (0..CARDS, 1..60_000i64).prop_map(|(card, cents)| Op::Withdraw { card, cents }),
        1 => (0..CARDS).prop_map(|card| Op::Freeze { card }),
        1 => (0..CARDS).prop_map(|card| Op::Unfreeze { card }),
        3 => (1..30i64).prop_map(|minutes| Op::Wait { minutes }),
        1 => (60..4_000i64).prop_map(|minutes| Op::Wait { minutes }),
        2 => (0..200usize).prop_map(|nth| Op::Retry { nth }),
        1 => (0..200usize).prop_map(|nth| Op::Conflict { nth }),
        1 => any::<bool>().prop_map(|point| Op::Restart { point }),
    ]
}

/// A keyed operation as first sent, to send again.
#[derive(Debug, Clone)]
enum Keyed {
    Capture {
        auth: String,
        cents: i64,
    },
    Reverse {
        auth: String,
    },
    Move {
        card: usize,
        cents: i64,
        top_up: bool,
    },
}

/// The obviously correct version.
#[derive(Default, Clone)]
struct Model {
    now_ms: i64,
    posted: [i64; CARDS],
    frozen: [bool; CARDS],
    /// auth id → (card, authorized cents, placed at), while pending.
    holds: HashMap<String, (usize, i64, i64)>,
    /// Approved events per card: (auth id, at, cents counted now); removed when fully
    /// given back.
    events: [Vec<(String, i64, i64)>; CARDS],
    /// Keyed operations done so far, in order: (key, what, first answer).
    keyed: Vec<(String, Keyed, String)>,
    auths: Vec<String>,
}

impl Model {
    /// One of the last 8 authorizations (older ones are mostly resolved already).
    fn recent(&self, nth: usize) -> String {
        let back = nth % self.auths.len().min(8);
        self.auths[self.auths.len() - 1 - back].clone()
    }

    fn pending(&self, card: usize) -> i64 {
        self.holds
            .values()
            .filter(|(c, ..)| *c == card)
            .map(|(_, a, _)| a)
            .sum()
    }
    fn available(&self, card: usize) -> i64 {
        self.posted[card] - self.pending(card)
    }
    /// A rolling window of length L at `now` holds events after `now - L`: one exactly L
    /// old has left it.
    fn approves(&self, card: usize, cents: i64) -> bool {
        let hour: Vec<_> = self.events[card]
            .iter()
            .filter(|(_, at, _)| *at > self.now_ms - HOUR_MS)
            .collect();
        let day: i64 = self.events[card]
            .iter()
            .filter(|(_, at, _)| *at > self.now_ms - 24 * HOUR_MS)
            .map(|(_, _, c)| c)
            .sum();
        !self.frozen[card]
            && cents <= self.available(card)
            && hour.len() < COUNT_PER_HOUR_MAX
            && day + cents <= AMOUNT_PER_DAY_MAX_CENTS
    }
    /// Gives back `released` of an authorization's `authorized` in its windows.
    fn give_back(&mut self, card: usize, auth: &str, authorized: i64, released: i64) {
        if let Some(i) = self.events[card].iter().position(|(a, ..)| a == auth) {
            if released == authorized {
                self.events[card].remove(i);
            } else {
                self.events[card][i].2 -= released;
            }
        }
    }
    fn expire(&mut self) {
        let now = self.now_ms;
        let gone: Vec<String> = self
            .holds
            .iter()
            .filter(|(_, (_, _, at))| now >= at + HOLD_EXPIRY_MS)
            .map(|(a, _)| a.clone())
            .collect();
        for a in gone {
            let (card, authorized, _) = self.holds.remove(&a).unwrap();
            self.give_back(card, &a, authorized, authorized);
        }
    }
}

fn cents(c: i64) -> Decimal {
    Decimal::new(c, 2)
}

fn to_cents(s: &str) -> i64 {
    let d: Decimal = s.parse().unwrap();
    (d * Decimal::ONE_HUNDRED)
        .trunc()
        .to_string()
        .parse()
        .unwrap()
}

/// Where the harness keeps the engine's store.
enum Backend {
    Sqlite,
    /// A schema of its own in the test database, and the lease of the engine open on it.
    Postgres {
        url: String,
        lease: Option<Box<(spendgate::cluster::LeaseClient, spendgate::cluster::Fence)>>,
    },
}

struct Harness {
    backend: Backend,
    dir: tempfile::TempDir,
    rules: tempfile::TempDir,
    clock: Arc<ManualClock>,
    engine: Option<Engine>,
    cards: Vec<String>,
}

impl Harness {
    fn new(backend: Backend) -> Harness {
        let rules = tempfile::tempdir().unwrap();
        std::fs::write(rules.path().join("model.yaml"), POLICY).unwrap();
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap(),
        ));
        let mut h = Harness {
            backend,
            dir: tempfile::tempdir().unwrap(),
            rules,
            clock,
            engine: None,
            cards: Vec::new(),
        };
        h.open();
        h.cards = common::issue_cards(
            h.engine.as_ref().unwrap(),
            "p",
            "model",
            CARDS,
            1,
            cents(START_CENTS),
        );
        h
    }

    fn open(&mut self) {
        let policies = load_policy_dir(self.rules.path()).unwrap();
        let engine = match &mut self.backend {
            Backend::Sqlite => {
                let (store, snapshot) = Store::open(self.dir.path(), Durability::Off).unwrap();
                Engine::open(policies, Arc::new(store), snapshot, EngineConfig::default())
            }
            Backend::Postgres { url, lease } => {
                // Each start is a new owner: the last one gave its lease up when it closed.
                let (client, fence) = common::pg::lease(url, "model", 60_000);
                let engine =
                    Engine::open_postgres(policies, url, fence.clone(), EngineConfig::default());
                *lease = Some(Box::new((client, fence)));
                engine
            }
        };
        self.engine = Some(engine.unwrap().with_clock(self.clock.clone()));
    }

    fn restart(&mut self, point: bool) {
        if let Some(e) = self.engine.take() {
            if point {
                e.save_recovery_point().wait();
            }
            e.store().unwrap().close();
        }
        if let Backend::Postgres {
            lease: Some(held), ..
        } = &mut self.backend
        {
            let (client, fence) = &mut **held;
            client.release(fence).unwrap();
        }
        self.open();
    }

    fn e(&self) -> &Engine {
        self.engine.as_ref().unwrap()
    }
}

/// The engine's answer to one keyed operation, as text (an error's kind included), so a
/// retry can be compared with the first answer byte for byte.
fn answer(r: Result<Pending<Arc<str>>, Rejection>) -> Result<String, Rejection> {
    r.map(|p| p.wait().to_string())
}

/// What a run exercised (so a run that never reaches a case cannot pass unnoticed).
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    approved: u64,
    declined_velocity: u64,
    declined_other: u64,
    captured: u64,
    reversed: u64,
    expired: u64,
    replayed: u64,
    conflicts: u64,
    restarts: u64,
}

impl Seen {
    fn add(&mut self, o: Seen) {
        self.approved += o.approved;
        self.declined_velocity += o.declined_velocity;
        self.declined_other += o.declined_other;
        self.captured += o.captured;
        self.reversed += o.reversed;
        self.expired += o.expired;
        self.replayed += o.replayed;
        self.conflicts += o.conflicts;
        self.restarts += o.restarts;
    }
}

/// Runs `ops` on a fresh engine and model; the first divergence, with its step.
fn run(ops: &[Op]) -> Result<(), (usize, String)> {
    run_counting(ops).map(|_| ())
}

fn run_counting(ops: &[Op]) -> Result<Seen, (usize, String)> {
    run_on(Backend::Sqlite, ops)
}

fn run_on(backend: Backend, ops: &[Op]) -> Result<Seen, (usize, String)> {
    let mut seen = Seen::default();
    let mut h = Harness::new(backend);
    let mut m = Model {
        now_ms: h.clock.now().timestamp_millis(),
        posted: [START_CENTS; CARDS],
        ..Model::default()
    };
    let p = "p";
    for (step, op) in ops.iter().enumerate() {
        let fail = |what: String| Err((step, what));
        let key = format!("k{step}");
        match op {
            Op::Authorize { card, cents: c } => {
                let id = format!("a{step}");
                let t = common::txn(&id, &h.cards[*card], &cents(*c).to_string(), "USD");
                let r = h
                    .e()
                    .authorize(&t, &AuthContext::default())
                    .map(Pending::wait)
                    .map_err(|e| format!("{e}"));
                let r: AuthorizationResponse = match r {
                    Ok(a) => serde_json::from_str(&a.json).unwrap(),
                    Err(e) => return fail(format!("authorize failed: {e}")),
                };
                let want = m.approves(*card, *c);
                if r.approved != want {
                    return fail(format!(
                        "{op:?}: engine approved={} ({} {:?}), model {want}",
                        r.approved, r.response_code, r.rule
                    ));
                }
                match (want, r.rule.as_deref()) {
                    (true, _) => seen.approved += 1,
                    (false, Some("hourly_count" | "daily_amount")) => seen.declined_velocity += 1,
                    (false, _) => seen.declined_other += 1,
                }
                if want {
                    if to_cents(&r.amount_approved) != *c {
                        return fail(format!("approved {} for {c}", r.amount_approved));
                    }
                    m.holds.insert(id.clone(), (*card, *c, m.now_ms));
                    m.events[*card].push((id.clone(), m.now_ms, *c));
                }
                m.auths.push(id);
            }
            Op::Capture { nth, percent } => {
                if m.auths.is_empty() {
                    continue;
                }
                let auth = m.recent(*nth);
                let held = m.holds.get(&auth).copied();
                let amount = held.map_or(100, |(_, a, _)| (a * percent / 100).max(1));
                let r = answer(h.e().capture(p, &key, &auth, cents(amount), true));
                match (held, &r) {
                    (Some((card, authorized, _)), Ok(_)) => {
                        seen.captured += 1;
                        m.holds.remove(&auth);
                        m.posted[card] -= amount;
                        m.give_back(card, &auth, authorized, authorized - amount);
                    }
                    (None, Err(_)) => {}
                    _ => return fail(format!("{op:?} on {auth}: {r:?}, model held {held:?}")),
                }
                if let Ok(a) = r {
                    m.keyed.push((
                        key,
                        Keyed::Capture {
                            auth,
                            cents: amount,
                        },
                        a,
                    ));
                }
            }
            Op::Reverse { nth } => {
                if m.auths.is_empty() {
                    continue;
                }
                let auth = m.recent(*nth);
                let held = m.holds.get(&auth).copied();
                let r = answer(h.e().reverse(p, &key, &auth, None));
                match (held, &r) {
                    (Some((card, authorized, _)), Ok(_)) => {
                        seen.reversed += 1;
                        m.holds.remove(&auth);
                        m.give_back(card, &auth, authorized, authorized);
                    }
                    // A reversal of a resolved hold is answered and changes nothing.
                    (None, _) => {}
                    _ => return fail(format!("{op:?} on {auth}: {r:?}")),
                }
                if let Ok(a) = r {
                    m.keyed.push((key, Keyed::Reverse { auth }, a));
                }
            }
            Op::TopUp { card, cents: c } | Op::Withdraw { card, cents: c } => {
                let top_up = matches!(op, Op::TopUp { .. });
                let kind = if top_up {
                    TransferKind::TopUp
                } else {
                    TransferKind::Withdrawal
                };
                let r = answer(h.e().move_funds(&key, &h.cards[*card], kind, cents(*c)));
                let ok = top_up || *c <= m.available(*card);
                match (&r, ok) {
                    (Ok(_), true) => m.posted[*card] += if top_up { *c } else { -*c },
                    (Err(_), false) => {}
                    _ => {
                        return fail(format!(
                            "{op:?}: {r:?}, model says ok={ok} (available {})",
                            m.available(*card)
                        ))
                    }
                }
                if let Ok(a) = r {
                    m.keyed.push((
                        key,
                        Keyed::Move {
                            card: *card,
                            cents: *c,
                            top_up,
                        },
                        a,
                    ));
                }
            }
            Op::Freeze { card } | Op::Unfreeze { card } => {
                let freeze = matches!(op, Op::Freeze { .. });
                let action = if freeze {
                    CardAction::Freeze
                } else {
                    CardAction::Unfreeze
                };
                let r = answer(h.e().card_action(&key, &h.cards[*card], action));
                // Freezing a frozen card (or unfreezing an active one) is refused.
                match (&r, m.frozen[*card] != freeze) {
                    (Ok(_), true) => m.frozen[*card] = freeze,
                    (Err(_), false) => {}
                    _ => return fail(format!("{op:?}: {r:?}, model frozen={}", m.frozen[*card])),
                }
            }
            Op::Wait { minutes } => {
                h.clock.advance(Duration::minutes(*minutes));
                m.now_ms += minutes * 60_000;
                seen.expired += h.e().expire_holds().wait().expired.len() as u64;
                m.expire();
            }
            Op::Retry { nth } | Op::Conflict { nth } => {
                if m.keyed.is_empty() {
                    continue;
                }
                let (key, first, first_answer) = m.keyed[nth % m.keyed.len()].clone();
                let conflict = matches!(op, Op::Conflict { .. });
                let bump = if conflict { 1 } else { 0 };
                let r = match &first {
                    Keyed::Capture { auth, cents: c } => {
                        answer(h.e().capture(p, &key, auth, cents(c + bump), true))
                    }
                    Keyed::Reverse { auth } => {
                        answer(h.e().reverse(p, &key, auth, conflict.then(|| cents(1))))
                    }
                    Keyed::Move {
                        card,
                        cents: c,
                        top_up,
                    } => answer(h.e().move_funds(
                        &key,
                        &h.cards[*card],
                        if *top_up {
                            TransferKind::TopUp
                        } else {
                            TransferKind::Withdrawal
                        },
                        cents(c + bump),
                    )),
                };
                match (conflict, r) {
                    (false, Ok(a)) if a == first_answer => seen.replayed += 1,
                    (true, Err(Rejection::IdempotencyConflict)) => seen.conflicts += 1,
                    (_, r) => {
                        return fail(format!(
                            "{op:?} of {first:?} (key {key}): {r:?}, first answer {first_answer}"
                        ))
                    }
                }
            }
            Op::Restart { point } => {
                seen.restarts += 1;
                h.restart(*point);
            }
        }
        for (i, card) in h.cards.iter().enumerate() {
            let b = h.e().balance(card).unwrap();
            let got = (to_cents(&b.posted), to_cents(&b.pending));
            let want = (m.posted[i], m.pending(i));
            if got != want {
                return fail(format!(
                    "after {op:?}: card {i} (posted, pending) engine {got:?}, model {want:?}"
                ));
            }
        }
    }
    Ok(seen)
}

/// Removes chunks of the sequence while it still diverges (delta debugging, bounded).
fn shrink(mut ops: Vec<Op>) -> Vec<Op> {
    let mut chunk = ops.len() / 2;
    let mut tries = 0;
    while chunk >= 1 && tries < 400 {
        let mut i = 0;
        let mut removed = false;
        while i < ops.len() && tries < 400 {
            let mut candidate = ops.clone();
            candidate.drain(i..(i + chunk).min(ops.len()));
            tries += 1;
            if let Err((step, _)) = run(&candidate) {
                candidate.truncate(step + 1);
                ops = candidate;
                removed = true;
            } else {
                i += chunk;
            }
        }
        if !removed {
            chunk /= 2;
        }
    }
    ops
}

fn random_ops(seed: u64, n: usize) -> Vec<Op> {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        proptest::test_runner::Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let strategy = op();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Short sequences, shrunk by proptest on a divergence.
    #[test]
    fn the_engine_agrees_with_the_reference_model(ops in proptest::collection::vec(op(), 1..120)) {
        if let Err((step, what)) = run(&ops) {
            prop_assert!(false, "step {step}: {what}");
        }
    }
}

/// One long sequence (10⁶ operations by default, restarts included), in chunks that each
/// start a fresh engine, so a divergence is reported from a short prefix. The chunks are
/// independent (each its own engine, store and seed), so they run on every core; the
/// first chunk to diverge, by seed, is the one reported.
#[test]
fn a_million_operations_agree_with_the_reference_model() {
    let total: usize = std::env::var("MODEL_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            20_000
        } else {
            1_000_000
        });
    let seed: u64 = std::env::var("MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    const CHUNK: usize = 5_000;
    let chunks = total.div_ceil(CHUNK);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut seen, mut diverged) = (Seen::default(), Vec::new());
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let (mut seen, mut diverged) = (Seen::default(), Vec::new());
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= chunks {
                            break;
                        }
                        let chunk_seed = seed + i as u64;
                        let ops = random_ops(chunk_seed, CHUNK.min(total - i * CHUNK));
                        match run_counting(&ops) {
                            Ok(s) => seen.add(s),
                            Err((step, what)) => diverged.push((chunk_seed, ops, step, what)),
                        }
                    }
                    (seen, diverged)
                })
            })
            .collect();
        for w in workers {
            let (s, d) = w.join().expect("a model worker panicked");
            seen.add(s);
            diverged.extend(d);
        }
    });
    if let Some((chunk_seed, ops, step, what)) = diverged.into_iter().min_by_key(|d| d.0) {
        let ops = shrink(ops[..=step].to_vec());
        panic!(
            "seed {chunk_seed}: diverged at step {step}: {what}\nshortest sequence found ({} ops): {ops:#?}",
            ops.len()
        );
    }
    println!("{total} operations agreed on {threads} threads: {seen:?}");
    for (what, n) in [
        ("approvals", seen.approved),
        ("velocity declines", seen.declined_velocity),
        ("other declines", seen.declined_other),
        ("captures", seen.captured),
        ("reversals", seen.reversed),
        ("expiries", seen.expired),
        ("replays", seen.replayed),
        ("conflicts", seen.conflicts),
        ("restarts", seen.restarts),
    ] {
        assert!(n > 0, "the run never exercised {what}: {seen:?}");
    }
}

/// The same reference model against the PostgreSQL store: random sequences with restarts
/// (each a new lease holder reading the recovery point and the log after it).
#[test]
fn the_engine_on_postgres_agrees_with_the_reference_model() {
    let Some(base) = common::pg::base_url() else {
        return;
    };
    let total: usize = std::env::var("MODEL_OPS_POSTGRES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000);
    const CHUNK: usize = 1_000;
    let mut seen = Seen::default();
    for (i, done) in (0..total).step_by(CHUNK).enumerate() {
        let seed = 1_000 + i as u64;
        let ops = random_ops(seed, CHUNK.min(total - done));
        let backend = Backend::Postgres {
            url: common::pg::fresh_schema(&base),
            lease: None,
        };
        match run_on(backend, &ops) {
            Ok(s) => seen.add(s),
            Err((step, what)) => panic!("seed {seed}: diverged at step {step}: {what}"),
        }
    }
    for (what, n) in [
        ("approvals", seen.approved),
        ("captures", seen.captured),
        ("reversals", seen.reversed),
        ("replays", seen.replayed),
        ("restarts", seen.restarts),
    ] {
        assert!(n > 0, "the run never exercised {what}: {seen:?}");
    }
}
