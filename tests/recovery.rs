//! Start-up from a recovery point: the saved states plus the log after them rebuild
//! exactly what a full replay of the whole log rebuilds, and nothing before the point is
//! read again.

mod common;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use common::{amount, at, fresh_clock, rules, t0, txn};
use proptest::prelude::*;
use rusqlite::Connection;
use rust_decimal::Decimal;
use spendgate::decision::{Authorization, Channel, Country};
use spendgate::ledger::TransferKind;
use spendgate::service::{AuthContext, Engine, EngineConfig, Pending};
use spendgate::store::{Durability, Store, DB_FILE};

fn open(dir: &Path) -> Engine {
    let (store, snapshot) = Store::open(dir, Durability::Off).unwrap();
    Engine::open(rules(), Arc::new(store), snapshot, EngineConfig::default())
        .unwrap()
        .with_clock(fresh_clock())
}

/// Program `p` with `n` funded cards, two per cardholder (so cardholder-scope windows
/// are shared between cards).
fn issue(e: &Engine, n: usize) -> Vec<String> {
    common::issue_cards(e, "p", "consumer-prepaid-africa", n, 2, amount("900.00"))
}

/// A purchase that exercises many windows: online or in store, at home or abroad.
fn purchase(id: &str, card: &str, cents: i64, online: bool, abroad: bool) -> Authorization {
    let mut t = txn(id, card, &Decimal::new(cents, 2).to_string(), "USD");
    if online {
        t.channel = Channel::Ecommerce;
        t.merchant.location = None;
    }
    if abroad {
        t.merchant.country = Country::parse("GH").unwrap();
    }
    t
}

#[derive(Debug, Clone)]
enum Op {
    Authorize {
        card: usize,
        cents: i64,
        online: bool,
        abroad: bool,
    },
    Capture {
        auth: usize,
        percent: i64,
    },
    Reverse {
        auth: usize,
    },
    TopUp {
        card: usize,
        cents: i64,
    },
    Expire,
    Point,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..4usize, 1..40_000i64, any::<bool>(), any::<bool>())
            .prop_map(|(card, cents, online, abroad)| Op::Authorize { card, cents, online, abroad }),
        3 => (0..30usize, 1..110i64).prop_map(|(auth, percent)| Op::Capture { auth, percent }),
        2 => (0..30usize).prop_map(|auth| Op::Reverse { auth }),
        1 => (0..4usize, 1..50_000i64).prop_map(|(card, cents)| Op::TopUp { card, cents }),
        1 => Just(Op::Expire),
        2 => Just(Op::Point),
    ]
}

/// Runs `ops` from `t0()`, each a few minutes (an expiry a few days) after the last.
fn run(e: &Engine, cards: &[String], ops: &[Op]) -> DateTime<Utc> {
    let mut now = t0();
    let mut auths: Vec<String> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        now += Duration::minutes(9);
        let key = format!("k{i}");
        match op {
            Op::Authorize {
                card,
                cents,
                online,
                abroad,
            } => {
                let id = format!("a{i}");
                let t = purchase(&id, &cards[*card], *cents, *online, *abroad);
                let _ = at(now, || {
                    e.authorize(&t, &AuthContext::default()).map(Pending::wait)
                });
                auths.push(id);
            }
            Op::Capture { auth, percent } => {
                if let Some(a) = auths.get(*auth) {
                    let _ = at(now, || {
                        e.capture("p", &key, a, Decimal::new(*percent, 2), true)
                            .map(Pending::wait)
                    });
                }
            }
            Op::Reverse { auth } => {
                if let Some(a) = auths.get(*auth) {
                    let _ = at(now, || e.reverse("p", &key, a, None).map(Pending::wait));
                }
            }
            Op::TopUp { card, cents } => {
                let _ = at(now, || {
                    e.move_funds(
                        &key,
                        &cards[*card],
                        TransferKind::TopUp,
                        Decimal::new(*cents, 2),
                    )
                    .map(Pending::wait)
                });
            }
            Op::Expire => {
                now += Duration::days(4);
                at(now, || e.expire_holds().wait());
            }
            Op::Point => {
                e.save_recovery_point().wait();
            }
        }
    }
    now
}

/// Everything a restart must rebuild, per card: balances, every velocity window and the
/// activity scripts read, the travel anchor, and what a set of probe purchases would be
/// answered (which also reads the cardholder's and the program's windows).
fn observe(e: &Engine, cards: &[String], now: DateTime<Utc>) -> Vec<String> {
    let mut out = Vec::new();
    for c in cards {
        let b = e.balance(c).unwrap();
        out.push(format!("{c}: {} {} {}", b.posted, b.pending, b.available));
        out.push(
            e.with_card(c, |s| {
                format!(
                    "{:?} {:?} {:?} {:?} {}",
                    s.velocity, s.activity, s.last_seen, s.countries_seen, s.account.forced
                )
            })
            .unwrap(),
        );
        for (i, (cents, online, abroad)) in [
            (100, false, false),
            (15_000, false, false),
            (30_000, true, false),
            (2_500, true, true),
        ]
        .into_iter()
        .enumerate()
        {
            let probe = purchase(&format!("probe{i}"), c, cents, online, abroad);
            let d = at(now, || e.simulate(&probe, None)).unwrap();
            out.push(serde_json::to_string(&d).unwrap());
        }
    }
    out
}

/// The first observation that differs, both sides (the whole lists are too long to read).
fn first_difference(got: &[String], want: &[String]) -> Option<(String, String)> {
    if got.len() != want.len() {
        return Some((got.len().to_string(), want.len().to_string()));
    }
    got.iter()
        .zip(want)
        .find(|(a, b)| a != b)
        .map(|(a, b)| (a.clone(), b.clone()))
}

fn copy_store(from: &Path, to: &Path) {
    std::fs::copy(from.join(DB_FILE), to.join(DB_FILE)).unwrap();
}

#[test]
fn a_restart_reads_the_recovery_point_not_the_history_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let cards;
    let before;
    let now;
    {
        let e = open(dir.path());
        cards = issue(&e, 4);
        let mut ops: Vec<Op> = (0..60)
            .map(|i| Op::Authorize {
                card: i % 4,
                cents: 500 + 37 * i as i64,
                online: i % 3 == 0,
                abroad: i % 5 == 0,
            })
            .collect();
        ops.extend((0..20).map(|i| Op::Capture {
            auth: i,
            percent: 100,
        }));
        ops.extend((20..30).map(|auth| Op::Reverse { auth }));
        ops.push(Op::Point);
        // The tail after the point: replayed on top of it.
        ops.extend((0..8).map(|i| Op::Authorize {
            card: i % 4,
            cents: 900,
            online: true,
            abroad: false,
        }));
        ops.push(Op::Capture {
            auth: 61,
            percent: 50,
        });
        ops.push(Op::Reverse { auth: 62 });
        now = run(&e, &cards, &ops);
        before = observe(&e, &cards, now);
        e.store().unwrap().close();
    }
    // Everything before the point is made unreadable: a start-up that read it would fail.
    let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let (d, r, t): (i64, i64, i64) = c
        .query_row(
            "SELECT decision_seq, release_seq, transfer_seq FROM recovery_point",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(
        d >= 60 && r > 0 && t > 0,
        "the point cuts the log: {d} {r} {t}"
    );
    let spoiled = c
        .execute("UPDATE decision_log SET body = x'ff' WHERE seq <= ?1", [d])
        .unwrap();
    assert_eq!(spoiled as i64, d);
    c.execute(
        "UPDATE velocity_releases SET ratio = 'x' WHERE seq <= ?1",
        [r],
    )
    .unwrap();
    c.execute(
        "UPDATE postings SET amount = 'x' WHERE transfer_id IN (SELECT id FROM transfers WHERE seq <= ?1)",
        [t],
    )
    .unwrap();
    drop(c);
    let e = open(dir.path());
    assert_eq!(observe(&e, &cards, now), before);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Wherever the points fall in any sequence of operations, a restart from the last
    /// point rebuilds the same state as a full replay of the log.
    #[test]
    fn a_restart_from_a_recovery_point_equals_a_full_replay(ops in proptest::collection::vec(op(), 1..70)) {
        let dir = tempfile::tempdir().unwrap();
        let full = tempfile::tempdir().unwrap();
        let cards;
        let live;
        let now;
        {
            let e = open(dir.path());
            cards = issue(&e, 4);
            now = run(&e, &cards, &ops);
            live = observe(&e, &cards, now);
            e.store().unwrap().close();
        }
        copy_store(dir.path(), full.path());
        Connection::open(full.path().join(DB_FILE))
            .unwrap()
            .execute_batch("DELETE FROM recovery_point; DELETE FROM recovery_states;")
            .unwrap();
        // Each engine is observed before the next is opened: `at` moves the newest clock.
        let replayed = observe(&open(full.path()), &cards, now);
        prop_assert_eq!(first_difference(&replayed, &live), None, "full replay");
        let from_point = observe(&open(dir.path()), &cards, now);
        prop_assert_eq!(first_difference(&from_point, &live), None, "from the point");
    }
}
