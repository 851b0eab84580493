//! Durable authorization throughput in-process: many threads authorizing against a
//! SQLite store with group commit, with `synchronous=FULL` and with durability off.
//!
//! Reports throughput, end-to-end authorize latency (decide + hold + commit wait) at
//! p50/p99/p99.9, and the writer's batch size and commit time. Run:
//! `cargo bench --bench ledger` (add `-- --test` for a quick smoke run).

use std::path::Path;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;

use spendgate::clock::ManualClock;
use spendgate::decision::{Authorization, Channel, Country, Mcc, Merchant, TxnType};
use spendgate::money::Currency;
use spendgate::policy::load_policy_dir;
use spendgate::service::{AuthContext, Engine, EngineConfig};
use spendgate::store::{Durability, Store};

mod common;

/// A durable engine with `cards` funded cards, on a clock the bench moves.
fn setup(
    dir: &Path,
    durability: Durability,
    cards: usize,
) -> (Arc<Engine>, Vec<String>, Arc<ManualClock>) {
    let policies = load_policy_dir(Path::new("rules")).unwrap();
    let (store, snapshot) = Store::open(dir, durability).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 6, 3, 11, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(now));
    let e = Engine::open(policies, Arc::new(store), snapshot, EngineConfig::default())
        .unwrap()
        .with_clock(clock.clone());
    let ids = common::issue_cards(&e, "bench", cards, Decimal::new(100_000, 0));
    (Arc::new(e), ids, clock)
}

fn txn(id: String, card: &str, i: u64) -> Authorization {
    Authorization {
        id,
        card_id: card.to_string(),
        amount: Decimal::new(500 + (i % 300) as i64, 2),
        currency: Currency::USD,
        merchant: Merchant {
            id: format!("m{}", i % 1000),
            name: "Bench".into(),
            mcc: Mcc::parse("5411").unwrap(),
            country: Country::parse("NG").unwrap(),
            location: None,
        },
        channel: Channel::Pos,
        txn_type: TxnType::Purchase,
        timestamp: None,
        partial_ok: false,
    }
}

fn pct(v: &[u64], q: f64) -> u64 {
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

/// `tasks` concurrent callers on a 2-worker tokio runtime, each authorizing one at a
/// time and awaiting its commit, as the HTTP service does.
fn run(label: &str, durability: Durability, tasks: usize, per_task: u64, events: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (e, cards, clock) = setup(dir.path(), durability, 1_000);
    if events {
        // Every authorization then writes an event and a delivery row in its commit.
        let input = spendgate::service::webhooks::EndpointInput {
            url: Some("https://receiver.example/spendgate".into()),
            ..Default::default()
        };
        e.create_webhook_endpoint("bench", input).unwrap().wait();
    }
    let cards = Arc::new(cards);
    let stats = e.store().unwrap().stats.clone();
    let (b0, w0, c0) = (
        stats.batches.load(Ordering::Relaxed),
        stats.writes.load(Ordering::Relaxed),
        stats.commit_us_total.load(Ordering::Relaxed),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let mut lat: Vec<u64> = rt.block_on(async {
        let hs: Vec<_> = (0..tasks)
            .map(|t| {
                let (e, cards, clock) = (e.clone(), cards.clone(), clock.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per_task as usize);
                    // Spread over a simulated day so velocity windows stay realistic.
                    let base = Utc.with_ymd_and_hms(2026, 6, 3, 0, 0, 0).unwrap();
                    for i in 0..per_task {
                        let n = t as u64 * per_task + i;
                        let card = &cards[(n as usize * 7919) % cards.len()];
                        let a = txn(format!("b{t}-{i}"), card, n);
                        let now = base + chrono::Duration::milliseconds(n as i64 * 50);
                        let t0 = Instant::now();
                        clock.set(now);
                        let r = e
                            .authorize(&a, &AuthContext::default())
                            .unwrap()
                            .durable()
                            .await;
                        lat.push(t0.elapsed().as_micros() as u64);
                        std::hint::black_box(r);
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in hs {
            all.extend(h.await.unwrap());
        }
        all
    });
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let n = lat.len();
    let batches = stats.batches.load(Ordering::Relaxed) - b0;
    let writes = stats.writes.load(Ordering::Relaxed) - w0;
    let commit_us = stats.commit_us_total.load(Ordering::Relaxed) - c0;
    println!(
        "{label:<28} concurrency={tasks:<5} n={n:<7} {:>8.0} auth/s   latency p50={:>6} us p99={:>6} us p99.9={:>6} us   {:.1} writes/batch, {:.0} us/commit",
        n as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        writes as f64 / batches.max(1) as f64,
        commit_us as f64 / batches.max(1) as f64
    );
    e.store().unwrap().close();
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test" || a == "--quick");
    let per_thread = if quick { 20 } else { 2_000 };
    println!(
        "durable authorize, in-process, reference policy with scripts, 1000 cards, 2 tokio workers"
    );
    for tasks in [16, 64, 256, 1024] {
        if quick && tasks > 16 {
            break;
        }
        run(
            "group commit (FULL fsync)",
            Durability::Full,
            tasks,
            per_thread * 64 / tasks as u64,
            false,
        );
        if tasks == 64 {
            run(
                "group commit, an endpoint wanting every event",
                Durability::Full,
                tasks,
                per_thread,
                true,
            );
        }
    }
    run(
        "durability off (baseline)",
        Durability::Off,
        256,
        per_thread / 4,
        false,
    );
}
