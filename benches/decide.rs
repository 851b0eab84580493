//! Decision-core benchmarks on the shipped reference policy (`rules/`).
//!
//! Criterion measures throughput; afterwards a percentile pass times single calls and
//! prints p50/p99/p99.9, since criterion reports means and medians of batches only.

use std::hint::black_box;
use std::path::Path;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration};
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use rust_decimal::Decimal;

use spendgate::clock::ManualClock;
use spendgate::decision::{decide, Authorization, Channel, Country, Mcc, TxnType};
use spendgate::money::Currency;
use spendgate::policy::{load_policy_dir, CompiledPolicy};
use spendgate::service::{AuthContext, CardState, Engine};
use spendgate::velocity::{VelocityState, WindowSpec};

mod common;
use common::{fund, policy, t0, txn, warm_card, POLICY};

fn bench_decide(c: &mut Criterion) {
    let full = policy();
    let plain = Arc::new(full.without_scripts());
    let mut g = c.benchmark_group("decide");
    g.throughput(Throughput::Elements(1));
    for (name, p) in [
        ("reference_without_scripts", &plain),
        ("reference_with_scripts", &full),
    ] {
        let (card, h, gs) = warm_card(p);
        let t = txn(99, "card-1");
        let now = t0() + Duration::hours(6);
        let d = decide(p, &card.view(Some(&h), Some(&gs)), &t, now);
        assert!(
            d.approved,
            "bench transaction is an approval: {:?}",
            d.reason
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                decide(
                    black_box(p),
                    &card.view(Some(&h), Some(&gs)),
                    black_box(&t),
                    now,
                )
            })
        });
    }
    g.finish();
}

fn bench_velocity(c: &mut Criterion) {
    let mut g = c.benchmark_group("velocity");
    g.throughput(Throughput::Elements(1));
    let spec = WindowSpec::parse("24h").unwrap();
    g.bench_function("record_and_read_24h_window", |b| {
        let mut s = VelocityState::default();
        let mut now_ms = t0().timestamp_millis();
        b.iter(|| {
            now_ms += 60_000; // one event a minute: ~1440 live events, capped at 128
            let start = spec.start_ms(
                DateTime::from_timestamp_millis(now_ms).unwrap(),
                chrono_tz::UTC,
            );
            let t = s.totals(7, start);
            s.record(7, start, now_ms, Decimal::new(1234, 2), now_ms as u64);
            t
        })
    });
    g.finish();
}

/// An in-memory engine with 10 000 funded cards, on a clock the bench moves.
fn engine_10k(p: &Arc<CompiledPolicy>) -> (Engine, Arc<ManualClock>) {
    let set = load_policy_dir(Path::new("rules")).unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let e = Engine::new(set).with_clock(clock.clone());
    let _ = p;
    for i in 0..10_000 {
        let mut c = CardState::new(
            &format!("card-{i}"),
            &format!("holder-{}", i / 2),
            POLICY,
            Currency::NGN,
        );
        fund(&mut c, Decimal::new(1_000_000_000, 2));
        e.add_card(c).unwrap();
    }
    (e, clock)
}

/// Mixed traffic: mostly approvals, some gambling and foreign declines, some ATM.
fn mixed_txn(i: u64) -> Authorization {
    let mut t = txn(i, &format!("card-{}", (i * 7919) % 10_000));
    match i % 10 {
        0 => t.merchant.mcc = Mcc::parse("7995").unwrap(),
        1 => t.merchant.country = Country::parse("BR").unwrap(),
        2 => {
            t.channel = Channel::Atm;
            t.txn_type = TxnType::Withdrawal;
            t.merchant.mcc = Mcc::parse("6011").unwrap();
        }
        _ => {}
    }
    t
}

fn bench_authorize(c: &mut Criterion) {
    let p = policy();
    let (e, clock) = engine_10k(&p);
    let ctx = AuthContext::default();
    let mut g = c.benchmark_group("authorize");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    let mut now = t0();
    // The next transaction of the stream, 10 ms after the one before.
    let mut next = || {
        i += 1;
        now += Duration::milliseconds(10);
        (mixed_txn(i), now)
    };
    g.bench_function("mixed_10k_cards", |b| {
        b.iter_batched(
            &mut next,
            |(t, now)| {
                clock.set(now);
                e.authorize(&t, &ctx).unwrap().wait().approved
            },
            BatchSize::SmallInput,
        )
    });
    // The same traffic decided on the same cards (as the run above left them) with no
    // effects: `decide()` plus the card's lookup and lock. What authorize adds beyond it
    // is applying the effects, the hold, the answer, the record and idempotency.
    g.bench_function("simulate_mixed_10k_cards", |b| {
        b.iter_batched(
            &mut next,
            |(t, now)| {
                clock.set(now);
                e.simulate(&t, None).unwrap().approved
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Five conditions as one Rhai `when:` expression: inside a policy (decide() with only
/// that rule, its inputs built from the card as every decision does) against the same
/// compiled expression evaluated alone on inputs built per call. The gap is what being
/// in a policy costs (issue 10's target: no more than Rhai alone).
fn bench_rhai_in_policy(c: &mut Criterion) {
    let f = common::RhaiFive::new();
    let d = decide(&f.policy, &f.view(), &f.txn, f.now);
    assert!(d.approved, "{:?} {:?}", d.reason, d.trace);
    assert!(f
        .inputs()
        .run_condition(&f.ast)
        .expect("the expression runs"));
    let (p, structured, t, now, ast) = (&f.policy, &f.structured, &f.txn, f.now, &f.ast);
    let inputs = || f.inputs();
    let mut g = c.benchmark_group("rhai_five_conditions");
    g.throughput(Throughput::Elements(1));
    g.bench_function("in_policy_decide", |b| {
        b.iter(|| decide(black_box(p), &f.view(), black_box(t), now))
    });
    g.bench_function("same_decide_structured_condition", |b| {
        b.iter(|| decide(black_box(structured), &f.view(), black_box(t), now))
    });
    g.bench_function("bare_rhai_inputs_per_call", |b| {
        b.iter(|| inputs().run_condition(black_box(ast)))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_decide,
    bench_velocity,
    bench_authorize,
    bench_rhai_in_policy
);

fn percentiles(name: &str, samples: &mut [u64]) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name:<36} n={:<8} p50={:>6} ns  p99={:>6} ns  p99.9={:>7} ns",
        samples.len(),
        at(0.50),
        at(0.99),
        at(0.999)
    );
}

/// Single-call latency distribution (criterion only reports batch statistics).
fn latency_pass(quick: bool) {
    let n = if quick { 1_000 } else { 200_000 };
    let full = policy();
    let plain = Arc::new(full.without_scripts());
    println!("\nsingle-call latency ({n} calls each, Instant::now overhead included)");
    for (name, p) in [
        ("decide/reference_without_scripts", &plain),
        ("decide/reference_with_scripts", &full),
    ] {
        let (card, h, g) = warm_card(p);
        let t = txn(99, "card-1");
        let now = t0() + Duration::hours(6);
        let mut s = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            black_box(decide(
                p,
                &card.view(Some(&h), Some(&g)),
                black_box(&t),
                now,
            ));
            s.push(start.elapsed().as_nanos() as u64);
        }
        percentiles(name, &mut s);
    }
    let (e, clock) = engine_10k(&full);
    let ctx = AuthContext::default();
    let mut s = Vec::with_capacity(n);
    let mut now = t0();
    for i in 0..n as u64 {
        let t = mixed_txn(i);
        now += Duration::milliseconds(10);
        clock.set(now);
        let start = Instant::now();
        black_box(e.authorize(&t, &ctx).unwrap().wait());
        s.push(start.elapsed().as_nanos() as u64);
    }
    percentiles("authorize/mixed_10k_cards", &mut s);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test" || a == "--quick");
    benches();
    Criterion::default().configure_from_args().final_summary();
    latency_pass(quick);
}
