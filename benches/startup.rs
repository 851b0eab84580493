//! Start-up time on a store with millions of stored decisions: a full replay of the log
//! (a store without a recovery point, as before points existed) against a start from the
//! recovery point plus the log after it.
//!
//! The store: 20 000 funded cards and 50 000 real authorizations through the engine (a
//! third captured, a tenth reversed), then history copied from those decisions (new ids, dated back) until
//! the store holds `SPENDGATE_STARTUP_DECISIONS` decisions (default 5 000 000): each copy a
//! decision and, for approvals, its hold, captured long ago. The store is kept in
//! `target/bench-startup-N/` and reused. Run: `cargo bench --bench startup` (`-- --test`
//! for a quick run on 60 000 decisions).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use rust_decimal::Decimal;
use spendgate::clock::ManualClock;
use spendgate::decision::{Authorization, Channel, Country, Mcc, Merchant, TxnType};
use spendgate::money::Currency;
use spendgate::policy::load_policy_dir;
use spendgate::service::decision_record::{self, DecodedDecision};
use spendgate::service::responses::AuthorizationResponse;
use spendgate::service::{Engine, EngineConfig};
use spendgate::store::{load_snapshot, Durability, Store, DB_FILE};
use spendgate::velocity::key_hash;

mod common;

const CARDS: usize = 20_000;
const LIVE_AUTHORIZATIONS: usize = 50_000;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 6, 3, 11, 0, 0).unwrap(),
    ))
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> (Engine, f64) {
    let policies = load_policy_dir(Path::new("rules")).unwrap();
    let started = Instant::now();
    let (store, snapshot) = Store::open(dir, Durability::Off).unwrap();
    let e = Engine::open(policies, Arc::new(store), snapshot, EngineConfig::default())
        .unwrap()
        .with_clock(clock.clone());
    (e, started.elapsed().as_secs_f64())
}

fn purchase(id: String, card: &str, cents: i64, online: bool) -> Authorization {
    Authorization {
        merchant: Merchant {
            id: format!("m{}", cents % 97),
            name: "Shop".into(),
            mcc: Mcc::parse("5411").unwrap(),
            country: Country::parse("NG").unwrap(),
            location: (!online).then_some(spendgate::decision::LatLon {
                lat: 6.45,
                lon: 3.40,
            }),
        },
        id,
        card_id: card.to_string(),
        amount: Decimal::new(cents, 2),
        currency: Currency::USD,
        channel: if online {
            Channel::Ecommerce
        } else {
            Channel::Pos
        },
        txn_type: TxnType::Purchase,
        timestamp: None,
        partial_ok: false,
    }
}

/// Real traffic through the engine: `n` authorizations spread over the cards, a minute
/// apart per 100, with captures and reversals.
fn traffic(e: &Engine, clock: &ManualClock, cards: &[String], prefix: &str, n: usize) {
    for i in 0..n {
        if i % 100 == 0 {
            clock.advance(Duration::minutes(1));
        }
        let card = &cards[(i * 7919) % cards.len()];
        let id = format!("{prefix}{i}");
        let t = purchase(id.clone(), card, 100 + (i as i64 * 37) % 9_000, i % 3 == 0);
        common::authorize_and_settle(e, &t, i);
    }
}

fn build(dir: &Path, decisions: usize) {
    let clock = clock();
    let (e, _) = open(dir, &clock);
    let cards = common::issue_cards(&e, "p", CARDS, Decimal::new(5_000, 0));
    traffic(&e, &clock, &cards, "live", LIVE_AUTHORIZATIONS);
    e.store().unwrap().close();
    drop(e);
    // History: copies of the live decisions (new ids, dated a year and more back), the
    // approvals' holds long captured.
    let mut c = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    c.execute_batch(
        "PRAGMA synchronous = OFF; DELETE FROM recovery_point; DELETE FROM recovery_states;",
    )
    .unwrap();
    // Read through the store: past its first few thousand decisions it compresses them.
    let template: Vec<DecodedDecision> = load_snapshot(&mut c)
        .unwrap()
        .decisions
        .iter()
        .map(|d| decision_record::decode(d).unwrap())
        .collect();
    let live = template.len() as i64;
    let copies = (decisions as i64 - live).max(0);
    let started = Instant::now();
    let tx = c.transaction().unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO decision_log (auth_hash, card_hash, answer, body) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        let mut hold = tx
            .prepare(
                "INSERT INTO holds (auth_id, card_id, card_currency, pending, authorized, captured,
                     refunded, txn_amount, txn_currency, fx_rate, status, created_ms, expires_ms,
                     resolved_ms, captured_txn)
                 VALUES (?1, ?2, ?3, '0', ?4, ?4, '0', ?5, ?6, '1', 'posted', ?7, ?8, ?9, ?5)",
            )
            .unwrap();
        for i in 0..copies {
            let d = &template[(i % live) as usize];
            let back_ms = 400 * 86_400_000 + i * 1_000;
            let mut t = d.request().unwrap().clone();
            t.id = format!("h{i}-{}", t.id);
            let mut e = d.effects.clone();
            e.at_ms -= back_ms;
            e.location_at_ms -= back_ms;
            e.auth_key = key_hash(&[t.id.as_bytes()]);
            for v in e.velocity.iter_mut().filter(|v| v.start_ms != i64::MIN) {
                v.start_ms -= back_ms;
            }
            if let Some(a) = e.activity.as_mut() {
                a.at_ms = e.at_ms;
            }
            let mut r: AuthorizationResponse = serde_json::from_str(&d.response()).unwrap();
            r.authorization_id = t.id.clone();
            let w = decision_record::encode(&t, &d.request_id, &e, &r);
            insert
                .execute(rusqlite::params![
                    w.auth_hash,
                    w.card_hash,
                    w.answer,
                    w.body
                ])
                .unwrap();
            if r.approved {
                hold.execute(rusqlite::params![
                    t.id,
                    t.card_id,
                    r.currency.code(),
                    r.amount_approved,
                    t.amount.to_string(),
                    t.currency.code(),
                    e.at_ms,
                    e.at_ms + 7 * 86_400_000,
                    e.at_ms + 86_400_000
                ])
                .unwrap();
            }
        }
    }
    tx.commit().unwrap();
    println!(
        "built: {CARDS} cards, {live} live decisions, {copies} history copies in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(dir.join("built"), decisions.to_string()).unwrap();
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let decisions: usize = std::env::var("SPENDGATE_STARTUP_DECISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 60_000 } else { 5_000_000 });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-startup-{decisions}"));
    if std::fs::read_to_string(dir.join("built")).ok() != Some(decisions.to_string()) {
        let _ = std::fs::remove_dir_all(&dir);
        build(&dir, decisions);
    }
    let db_mib = std::fs::metadata(dir.join(DB_FILE)).map_or(0, |m| m.len()) as f64 / 1048576.0;
    let c = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    let stored: i64 = c
        .query_row("SELECT count(*) FROM decision_log", [], |r| r.get(0))
        .unwrap();
    let has_point: bool = c
        .query_row("SELECT count(*) > 0 FROM recovery_point", [], |r| r.get(0))
        .unwrap();
    drop(c);
    println!("store: {stored} decisions, {db_mib:.0} MiB");
    let clock = clock();
    if !has_point {
        // The start-up every restart paid before recovery points: the whole log.
        let (e, s) = open(&dir, &clock);
        println!(
            "full replay (no recovery point; saves one): {s:.2} s, RSS {:.0} MiB",
            rss_mib()
        );
        e.store().unwrap().close();
    }
    // A tail after the point, as a crash between points leaves.
    {
        let (e, _) = open(&dir, &clock);
        let cards = e.card_ids();
        traffic(
            &e,
            &clock,
            &cards,
            &format!("tail{}-", Utc::now().timestamp()),
            10_000,
        );
        e.store().unwrap().close();
    }
    let (e, s) = open(&dir, &clock);
    println!("recovery point + 10 000-authorization tail: {s:.2} s");
    e.store().unwrap().close();
    drop(e);
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let (e, s) = open(&dir, &clock);
            e.store().unwrap().close();
            s
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "recovery point, nothing after it (5 starts): median {:.2} s, max {:.2} s, RSS {:.0} MiB",
        times[2],
        times[4],
        rss_mib()
    );
}
