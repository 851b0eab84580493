//! Instruction counts (Callgrind, through gungraun): deterministic where wall-clock time on
//! a shared 2-core machine is noise, so CI can fail on a regression. Each benchmark's
//! limit is its committed baseline in `benches/instructions.baseline` plus 10 %; gungraun
//! exits non-zero when one is passed and prints the table either way.
//!
//! Run: `cargo bench --bench instructions` (needs valgrind and `gungraun-runner` 0.20.0:
//! `cargo install gungraun-runner --version 0.20.0`). After an intended change, refresh
//! the baseline from the printed `Instructions` figures.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use gungraun::{
    library_benchmark, library_benchmark_group, main, Callgrind, EventKind, LibraryBenchmarkConfig,
};
use rust_decimal::Decimal;
use spendgate::decision::{decide, Authorization, Decision};
use spendgate::money::Currency;
use spendgate::policy::{load_policy_dir, load_policy_file, CompiledPolicy};
use spendgate::service::{AuthContext, CardState, Engine};
use spendgate::velocity::{VelocityState, WindowSpec};

// The service's allocator (src/bin/spendgate/main.rs), so counts include what its
// allocations really cost: with the system allocator they were a fifth of an
// authorization's instructions.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{fund, policy, t0, txn, warm_card, RhaiFive, POLICY};

/// The committed baseline of `name` plus 10 %, as Callgrind's hard limit on instructions.
fn limit(name: &str) -> LibraryBenchmarkConfig {
    let baseline = include_str!("instructions.baseline");
    let ir: u64 = baseline
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no baseline for {name}"));
    let mut config = LibraryBenchmarkConfig::default();
    config.tool(
        Callgrind::with_args(["--cache-sim=no"]).hard_limits([(EventKind::Ir, ir + ir / 10)]),
    );
    config
}

struct DecideInput {
    policy: Arc<CompiledPolicy>,
    card: CardState,
    holder: VelocityState,
    program: VelocityState,
    txn: Authorization,
    now: DateTime<Utc>,
}

fn decide_input(scripts: bool) -> DecideInput {
    let full = policy();
    let policy = if scripts {
        full
    } else {
        Arc::new(full.without_scripts())
    };
    let (card, holder, program) = warm_card(&policy);
    DecideInput {
        policy,
        card,
        holder,
        program,
        txn: txn(99, "card-1"),
        now: t0() + Duration::hours(6),
    }
}

// 100 decisions on a warm card (one-time initialisation amortized).
#[library_benchmark]
#[bench::without_scripts(args = (false), setup = decide_input, config = limit("decide_without_scripts_100"))]
#[bench::with_scripts(args = (true), setup = decide_input, config = limit("decide_with_scripts_100"))]
fn decide_100(i: DecideInput) -> usize {
    let view = i.card.view(Some(&i.holder), Some(&i.program));
    let mut approved = 0;
    for _ in 0..100 {
        let d: Decision = decide(&i.policy, &view, black_box(&i.txn), i.now);
        approved += usize::from(d.approved);
    }
    black_box(approved)
}

fn velocity_state() -> VelocityState {
    let mut s = VelocityState::default();
    let at = t0().timestamp_millis();
    for i in 0..128 {
        s.record(7, at, at + i * 60_000, Decimal::new(1234, 2), i as u64 + 1);
    }
    s
}

// 1 000 record-and-read steps on a full 24 h window.
#[library_benchmark]
#[bench::record_and_read_1000(setup = velocity_state, config = limit("velocity_1000"))]
fn velocity(mut s: VelocityState) -> u64 {
    let spec = WindowSpec::parse("24h").unwrap();
    let mut now_ms = t0().timestamp_millis() + 128 * 60_000;
    let mut count = 0;
    for i in 0..1_000u64 {
        now_ms += 60_000;
        let start = spec.start_ms(
            DateTime::from_timestamp_millis(now_ms).unwrap(),
            chrono_tz::UTC,
        );
        count += s.totals(7, start).count;
        s.record(7, start, now_ms, Decimal::new(1234, 2), 1_000 + i);
    }
    black_box(count)
}

#[library_benchmark]
#[bench::reference_policy(config = limit("policy_compile"))]
fn policy_compile() -> usize {
    let p = load_policy_file(Path::new("rules/consumer_prepaid.yaml")).unwrap();
    black_box(p.rules.len())
}

fn engine_with_card() -> Engine {
    let e = Engine::new(load_policy_dir(Path::new("rules")).unwrap());
    let mut c = CardState::new("card-1", "holder-1", POLICY, Currency::NGN);
    fund(&mut c, Decimal::new(1_000_000_000, 2));
    e.add_card(c).unwrap();
    e
}

// 100 authorizations through the in-memory engine (idempotency, locks, hold, answer).
#[library_benchmark]
#[bench::hundred(setup = engine_with_card, config = limit("engine_authorize_100"))]
fn engine_authorize(e: Engine) -> usize {
    let ctx = AuthContext::default();
    let mut approved = 0;
    for i in 0..100 {
        let t = txn(1_000 + i, "card-1");
        if e.authorize(&t, &ctx).unwrap().wait().approved {
            approved += 1;
        }
    }
    black_box(approved)
}

// Five Rhai conditions, 100 times: inside a one-rule policy through decide(), the same
// decision with one structured condition instead, and the compiled expression alone on
// inputs built per call. Issue 10's target: in policy minus structured <= alone.
#[library_benchmark]
#[bench::in_policy(args = (0), setup = rhai_five, config = limit("rhai_five_in_policy_100"))]
#[bench::structured(args = (1), setup = rhai_five, config = limit("rhai_five_structured_100"))]
#[bench::alone(args = (2), setup = rhai_five, config = limit("rhai_five_alone_100"))]
fn rhai_five_100((f, variant): (RhaiFive, u8)) -> usize {
    let mut yes = 0;
    for _ in 0..100 {
        let ok = match variant {
            0 => decide(&f.policy, &f.view(), black_box(&f.txn), f.now).approved,
            1 => decide(&f.structured, &f.view(), black_box(&f.txn), f.now).approved,
            _ => f.inputs().run_condition(black_box(&f.ast)) == Ok(true),
        };
        yes += usize::from(ok);
    }
    black_box(yes)
}

fn rhai_five(variant: u8) -> (RhaiFive, u8) {
    (RhaiFive::new(), variant)
}

library_benchmark_group!(
    name = core;
    benchmarks = decide_100, velocity, policy_compile, engine_authorize, rhai_five_100
);

main!(library_benchmark_groups = core);
