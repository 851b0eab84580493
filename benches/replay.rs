//! `spendgate replay` over a large store: every stored authorization decoded and run
//! through the shipped rules (scripts included), with velocity, funds and releases
//! rebuilt as it goes. Issue 11's target: 1 000 000 authorizations in under 60 s on the
//! 2-core machine.
//!
//! The store: 10 000 funded cards and `SPENDGATE_REPLAY_DECISIONS` authorizations
//! (default 1 000 000) through the engine, a minute apart per 200, a third captured and
//! a tenth reversed; kept in `target/tmp/bench-replay-N/` and reused. Run:
//! `cargo bench --bench replay` (`-- --test` for a quick run on 20 000).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use rust_decimal::Decimal;
use spendgate::analysis::history;
use spendgate::analysis::replay::{replay, ReplayFilter};
use spendgate::clock::ManualClock;
use spendgate::policy::load_policy_dir;
use spendgate::service::{Engine, EngineConfig};
use spendgate::store::{load_snapshot, Durability, Store, DB_FILE};

mod common;

const CARDS: usize = 10_000;

fn build(dir: &Path, n: usize) {
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 6, 3, 11, 0, 0).unwrap(),
    ));
    let (store, snapshot) = Store::open(dir, Durability::Off).unwrap();
    let e = Engine::open(
        load_policy_dir(Path::new("rules")).unwrap(),
        Arc::new(store),
        snapshot,
        EngineConfig::default(),
    )
    .unwrap()
    .with_clock(clock.clone());
    let cards = common::issue_cards(&e, "p", CARDS, Decimal::new(5_000, 0));
    let started = Instant::now();
    for i in 0..n {
        if i % 200 == 0 {
            clock.advance(Duration::minutes(1));
        }
        let card = &cards[(i * 7919) % cards.len()];
        let t = common::txn(i as u64, card);
        common::authorize_and_settle(&e, &t, i);
    }
    e.store().unwrap().close();
    println!(
        "built: {CARDS} cards, {n} authorizations in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(dir.join("built"), n.to_string()).unwrap();
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let n: usize = std::env::var("SPENDGATE_REPLAY_DECISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 1_000_000 });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-replay-{n}"));
    if std::fs::read_to_string(dir.join("built")).ok() != Some(n.to_string()) {
        let _ = std::fs::remove_dir_all(&dir);
        build(&dir, n);
    }
    let policies = load_policy_dir(Path::new("rules")).unwrap();
    let started = Instant::now();
    let mut conn = rusqlite::Connection::open_with_flags(
        dir.join(DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let h = history::from_snapshot(load_snapshot(&mut conn).unwrap()).unwrap();
    let loaded = started.elapsed().as_secs_f64();
    let records = h.records.len();
    let r = replay(
        &policies,
        &h.controls,
        h.records,
        h.releases,
        &ReplayFilter::default(),
        |_| {},
    )
    .unwrap();
    let total = started.elapsed().as_secs_f64();
    assert_eq!(r.decisions as usize, records);
    println!(
        "replay of {records} stored authorizations with the shipped rules: {total:.1} s \
         ({loaded:.1} s reading and decoding the store, {:.1} s deciding; {:.0} k/s); \
         {} flips against history",
        total - loaded,
        records as f64 / total / 1000.0,
        r.flips.len()
    );
}
