//! A generated sequence of operations (authorize, capture, reverse, top up, expire,
//! recovery point) and what a restart must rebuild of it: shared by the recovery tests
//! and the PostgreSQL backend's.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use spendgate::decision::{Authorization, Channel, Country};
use spendgate::ledger::TransferKind;
use spendgate::service::{AuthContext, Engine, Pending};

use super::{amount, at, t0, txn};

/// Program `p` with `n` funded cards, two per cardholder (so cardholder-scope windows
/// are shared between cards).
pub fn issue(e: &Engine, n: usize) -> Vec<String> {
    super::issue_cards(e, "p", "consumer-prepaid-africa", n, 2, amount("900.00"))
}

/// A purchase that exercises many windows: online or in store, at home or abroad.
pub fn purchase(id: &str, card: &str, cents: i64, online: bool, abroad: bool) -> Authorization {
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
pub enum Op {
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

pub fn op() -> impl Strategy<Value = Op> {
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
pub fn run(e: &Engine, cards: &[String], ops: &[Op]) -> DateTime<Utc> {
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
pub fn observe(e: &Engine, cards: &[String], now: DateTime<Utc>) -> Vec<String> {
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
pub fn first_difference(got: &[String], want: &[String]) -> Option<(String, String)> {
    if got.len() != want.len() {
        return Some((got.len().to_string(), want.len().to_string()));
    }
    got.iter()
        .zip(want)
        .find(|(a, b)| a != b)
        .map(|(a, b)| (a.clone(), b.clone()))
}

/// After a start from a recovery point, answers before it are in the store only; the
/// index of stored authorization ids lets new ids skip the store, but an old id must
/// still be found and replayed (never decided twice), and so must one decided after the
/// index was built. `open` opens the same store each time.
pub fn retries_replay_after_a_restart(open: impl Fn() -> Engine) {
    use std::time::{Duration, Instant};
    let ctx = AuthContext {
        tenant: Some("p"),
        request_id: "r",
    };
    let (card, first) = {
        let e = open();
        let card = issue(&e, 1).remove(0);
        let first = e
            .authorize(&txn("old-1", &card, "12.00", "USD"), &ctx)
            .map(Pending::wait)
            .unwrap();
        assert!(first.approved && !first.replayed);
        e.save_recovery_point().wait();
        e.close();
        (card, first)
    };
    let e = open();
    let started = Instant::now();
    while !e.stored_ids_indexed() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "stored ids never indexed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let again = e
        .authorize(&txn("old-1", &card, "12.00", "USD"), &ctx)
        .map(Pending::wait)
        .unwrap();
    assert!(again.replayed, "the retry was decided a second time");
    assert_eq!(again.json, first.json);
    let other_body = e.authorize(&txn("old-1", &card, "13.00", "USD"), &ctx);
    assert!(other_body.is_err(), "same id, other body: a conflict");
    let new = e
        .authorize(&txn("new-1", &card, "12.00", "USD"), &ctx)
        .map(Pending::wait)
        .unwrap();
    assert!(new.approved && !new.replayed);
    let new_again = e
        .authorize(&txn("new-1", &card, "12.00", "USD"), &ctx)
        .map(Pending::wait)
        .unwrap();
    assert!(new_again.replayed);
}
