//! The issuing and ledger core through the engine, on a real SQLite store.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use common::{amount, at, fresh_clock, rules, t0, txn};
use proptest::prelude::*;
use rusqlite::{Connection, OpenFlags};
use rust_decimal::Decimal;
use spendgate::decision::KycStatus;
use spendgate::http::Problem;
use spendgate::issuing::{
    CardAction, CardKind, Cardholder, LimitInterval, Program, SpendingControls, SpendingLimit,
};
use spendgate::ledger::verify::verify;
use spendgate::ledger::TransferKind;
use spendgate::money::Currency;
use spendgate::policy::load_policy_dir;
use spendgate::service::responses::{
    AuthorizationResponse, Balance, CardResponse, HoldResponse, ReversalResponse,
};
use spendgate::service::{AuthContext, Engine, EngineConfig, NewCard, Pending, Rejection};
use spendgate::store::{load_snapshot, Durability, Store, DB_FILE};

const CONSUMER: &str = "consumer-prepaid-africa";

fn open(dir: &Path, durability: Durability) -> Engine {
    let (store, snapshot) = Store::open(dir, durability).unwrap();
    Engine::open(rules(), Arc::new(store), snapshot, EngineConfig::default())
        .unwrap()
        .with_clock(fresh_clock())
}

/// Program `p` with a funded funding account and `n` active, funded USD cards.
/// An engine on the store in `dir` (opened or created), with `config` and a fresh clock.
fn open_engine(dir: &Path, config: EngineConfig) -> Engine {
    open_engine_with(dir, Durability::Full, config)
}

/// [`open_engine`] with another durability (`Off` for tests that write thousands).
fn open_engine_with(dir: &Path, durability: Durability, config: EngineConfig) -> Engine {
    let (store, snapshot) = Store::open(dir, durability).unwrap();
    Engine::open(rules(), Arc::new(store), snapshot, config)
        .unwrap()
        .with_clock(fresh_clock())
}

fn issue(e: &Engine, n: usize, each: &str) -> Vec<String> {
    common::issue_cards(e, "p", CONSUMER, n, 1, amount(each))
}

fn authorize(
    e: &Engine,
    id: &str,
    card: &str,
    value: &str,
    now: DateTime<Utc>,
) -> AuthorizationResponse {
    serde_json::from_str(
        &at(now, || {
            e.authorize(&txn(id, card, value, "USD"), &AuthContext::default())
                .map(Pending::wait)
        })
        .unwrap()
        .json,
    )
    .unwrap()
}

fn verify_store(dir: &Path) -> spendgate::store::Snapshot {
    let mut conn =
        Connection::open_with_flags(dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let s = load_snapshot(&mut conn).unwrap();
    let r = verify(&s.ledger);
    assert!(r.ok(), "{:?}", r.violations);
    s
}

fn balance(e: &Engine, card: &str) -> (String, String, String) {
    let b: Balance = e.balance(card).unwrap();
    (b.posted, b.pending, b.available)
}

#[test]
fn authorization_lifecycle_capture_refund_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let card;
    {
        let e = open(dir.path(), Durability::Full);
        card = issue(&e, 1, "100.00").remove(0);
        let a = authorize(&e, "a1", &card, "40.00", t0());
        assert!(a.approved);
        assert_eq!(a.available_after.as_deref(), Some("60.00"));
        assert_eq!(
            balance(&e, &card),
            ("100.00".into(), "40.00".into(), "60.00".into())
        );
        let c: HoldResponse = serde_json::from_str(
            &e.capture("p", "c1", "a1", amount("15.00"), false)
                .map(Pending::wait)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (c.pending.as_str(), c.captured.as_str()),
            ("25.00", "15.00")
        );
        let c: HoldResponse = serde_json::from_str(
            &e.capture("p", "c2", "a1", amount("20.00"), true)
                .map(Pending::wait)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(c.hold_status, spendgate::ledger::HoldStatus::Posted);
        assert_eq!(
            balance(&e, &card),
            ("65.00".into(), "0.00".into(), "65.00".into())
        );
        e.refund("rf1", &card, Some("a1"), amount("5.00"), Currency::USD)
            .map(Pending::wait)
            .unwrap();
        assert_eq!(balance(&e, &card).0, "70.00");
        // An over-precise, zero or too-large capture is refused and changes nothing.
        assert!(authorize(&e, "a2", &card, "30.00", t0()).approved);
        for (bad, reason) in [
            ("0", "invalid_amount"),
            ("-1.00", "invalid_amount"),
            ("1.001", "invalid_amount"),
            ("33.01", "capture_exceeds_hold"),
        ] {
            let err = e
                .capture("p", "bad", "a2", amount(bad), true)
                .map(Pending::wait)
                .unwrap_err();
            assert_eq!(Problem::from(err.clone()).kind, reason, "{bad}: {err}");
        }
        assert_eq!(
            balance(&e, &card),
            ("70.00".into(), "30.00".into(), "40.00".into())
        );
        e.store().unwrap().close();
    }
    verify_store(dir.path());
    // Restart: everything is rebuilt from the store, including the open hold.
    let e = open(dir.path(), Durability::Full);
    assert_eq!(
        balance(&e, &card),
        ("70.00".into(), "30.00".into(), "40.00".into())
    );
    let c: HoldResponse = serde_json::from_str(
        &e.capture("p", "c3", "a2", amount("33.00"), true)
            .map(Pending::wait)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(c.captured, "33.00", "over-capture within 10% is allowed");
    // Idempotency survives the restart: the same capture key replays byte for byte.
    let first = e
        .capture("p", "c2", "a1", amount("20.00"), true)
        .map(Pending::wait)
        .unwrap();
    assert!(first.contains("\"hold_status\":\"posted\""));
    e.store().unwrap().close();
    verify_store(dir.path());
}

#[test]
fn velocity_windows_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let card;
    {
        let e = open(dir.path(), Durability::Full);
        card = issue(&e, 1, "5000.00").remove(0);
        assert!(authorize(&e, "v1", &card, "480.00", t0()).approved);
        assert!(authorize(&e, "v2", &card, "480.00", t0() + Duration::minutes(1)).approved);
        e.store().unwrap().close();
    }
    let e = open(dir.path(), Durability::Full);
    let d = authorize(&e, "v3", &card, "50.00", t0() + Duration::minutes(2));
    assert_eq!(
        (d.response_code.as_str(), d.rule.as_deref()),
        ("61", Some("daily_spend"))
    );
    // A reversal after the restart gives the capacity back.
    let r: ReversalResponse = serde_json::from_str(
        &at(t0() + Duration::minutes(3), || {
            e.reverse("p", "r", "v2", None).map(Pending::wait)
        })
        .unwrap(),
    )
    .unwrap();
    assert!(r.matched);
    assert!(authorize(&e, "v4", &card, "50.00", t0() + Duration::minutes(4)).approved);
}

#[test]
fn every_mutating_operation_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Durability::Off);
    let card = issue(&e, 1, "100.00").remove(0);
    let now = t0();
    let a1 = at(now, || {
        e.authorize(&txn("i1", &card, "10.00", "USD"), &AuthContext::default())
            .map(Pending::wait)
    })
    .unwrap();
    let a2 = at(now + Duration::seconds(5), || {
        e.authorize(&txn("i1", &card, "10.00", "USD"), &AuthContext::default())
            .map(Pending::wait)
    })
    .unwrap();
    assert_eq!(
        a1.json, a2.json,
        "same id, same body: the original answer byte for byte"
    );
    assert!(a2.replayed);
    let conflict = at(now, || {
        e.authorize(&txn("i1", &card, "11.00", "USD"), &AuthContext::default())
            .map(Pending::wait)
    })
    .unwrap_err();
    assert!(matches!(conflict, Rejection::IdempotencyConflict));
    assert_eq!(balance(&e, &card).1, "10.00", "held once");

    type Op<'a> = Box<dyn Fn(&str) -> Result<Arc<str>, Rejection> + 'a>;
    let ops: Vec<(&str, Op, Op)> = vec![
        (
            "capture",
            Box::new(|k| {
                at(now, || {
                    e.capture("p", k, "i1", amount("4.00"), false)
                        .map(Pending::wait)
                })
            }),
            Box::new(|k| {
                at(now, || {
                    e.capture("p", k, "i1", amount("5.00"), false)
                        .map(Pending::wait)
                })
            }),
        ),
        (
            "reversal",
            Box::new(|k| {
                at(now, || {
                    e.reverse("p", k, "i1", Some(amount("1.00")))
                        .map(Pending::wait)
                })
            }),
            Box::new(|k| {
                at(now, || {
                    e.reverse("p", k, "i1", Some(amount("2.00")))
                        .map(Pending::wait)
                })
            }),
        ),
        (
            "refund",
            Box::new(|k| {
                at(now, || {
                    e.refund(k, &card, None, amount("1.00"), Currency::USD)
                        .map(Pending::wait)
                })
            }),
            Box::new(|k| {
                at(now, || {
                    e.refund(k, &card, None, amount("2.00"), Currency::USD)
                        .map(Pending::wait)
                })
            }),
        ),
        (
            "advice",
            Box::new(|k| {
                at(now, || {
                    e.advice(k, &card, amount("1.00"), Currency::USD)
                        .map(Pending::wait)
                })
            }),
            Box::new(|k| {
                at(now, || {
                    e.advice(k, &card, amount("2.00"), Currency::USD)
                        .map(Pending::wait)
                })
            }),
        ),
        (
            "top-up",
            Box::new(|k| {
                at(now, || {
                    e.move_funds(k, &card, TransferKind::TopUp, amount("1.00"))
                        .map(Pending::wait)
                })
            }),
            Box::new(|k| {
                at(now, || {
                    e.move_funds(k, &card, TransferKind::TopUp, amount("2.00"))
                        .map(Pending::wait)
                })
            }),
        ),
        (
            "withdraw",
            Box::new(|k| {
                at(now, || {
                    e.move_funds(k, &card, TransferKind::Withdrawal, amount("1.00"))
                        .map(Pending::wait)
                })
            }),
            Box::new(|k| {
                at(now, || {
                    e.move_funds(k, &card, TransferKind::Withdrawal, amount("2.00"))
                        .map(Pending::wait)
                })
            }),
        ),
        (
            "deposit",
            Box::new(|k| {
                at(now, || {
                    e.deposit(k, "p", amount("1.00"), Currency::USD)
                        .map(Pending::wait)
                })
            }),
            Box::new(|k| {
                at(now, || {
                    e.deposit(k, "p", amount("2.00"), Currency::USD)
                        .map(Pending::wait)
                })
            }),
        ),
        (
            "freeze",
            Box::new(|k| {
                at(now, || {
                    e.card_action(k, &card, CardAction::Freeze)
                        .map(Pending::wait)
                })
            }),
            Box::new(|k| {
                at(now, || {
                    e.card_action(k, &card, CardAction::ReportLost)
                        .map(Pending::wait)
                })
            }),
        ),
        (
            "unfreeze",
            Box::new(|k| {
                at(now, || {
                    e.card_action(k, &card, CardAction::Unfreeze)
                        .map(Pending::wait)
                })
            }),
            Box::new(|k| {
                at(now, || {
                    e.card_action(k, &card, CardAction::ReportStolen)
                        .map(Pending::wait)
                })
            }),
        ),
        (
            "controls",
            Box::new(|k| {
                e.set_controls(
                    k,
                    &card,
                    SpendingControls {
                        blocked_categories: vec![],
                        ..Default::default()
                    },
                )
                .map(Pending::wait)
            }),
            Box::new(|k| {
                e.set_controls(
                    k,
                    &card,
                    SpendingControls {
                        spending_limits: vec![SpendingLimit {
                            amount: amount("5"),
                            interval: LimitInterval::Daily,
                        }],
                        ..Default::default()
                    },
                )
                .map(Pending::wait)
            }),
        ),
        (
            "cardholder",
            Box::new(|k| {
                e.update_cardholder(k, "p", "h0", Some(KycStatus::Verified), None)
                    .map(Pending::wait)
            }),
            Box::new(|k| {
                e.update_cardholder(k, "p", "h0", Some(KycStatus::Rejected), None)
                    .map(Pending::wait)
            }),
        ),
    ];
    for (name, op, different) in &ops {
        let key = format!("key-{name}");
        let first = op(&key).unwrap_or_else(|err| panic!("{name}: {err}"));
        let snapshot = balance(&e, &card);
        let again = op(&key).unwrap();
        assert_eq!(first, again, "{name}: replayed byte for byte");
        assert_eq!(
            balance(&e, &card),
            snapshot,
            "{name}: the replay changed nothing"
        );
        let err = different(&key).unwrap_err();
        assert!(
            matches!(err, Rejection::IdempotencyConflict),
            "{name}: {err}"
        );
        assert_eq!(
            balance(&e, &card),
            snapshot,
            "{name}: the conflict changed nothing"
        );
    }
    e.store().unwrap().close();
    verify_store(dir.path());
}

#[test]
fn concurrent_duplicates_execute_once() {
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(open(dir.path(), Durability::Full));
    let card = issue(&e, 1, "100.00").remove(0);
    let answers: Vec<Arc<str>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (e, card) = (e.clone(), card.clone());
                s.spawn(move || {
                    e.move_funds("same-key", &card, TransferKind::TopUp, amount("10.00"))
                        .map(Pending::wait)
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(balance(&e, &card).0, "110.00", "funded exactly once");
}

#[test]
fn bad_inputs_are_typed_errors_that_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Durability::Off);
    let card = issue(&e, 1, "100.00").remove(0);
    assert!(authorize(&e, "h1", &card, "50.00", t0()).approved);
    let before = balance(&e, &card);
    let kind = |r: Result<Arc<str>, Rejection>| Problem::from(r.unwrap_err()).kind;
    assert_eq!(
        kind(
            e.move_funds("b1", &card, TransferKind::TopUp, amount("0"))
                .map(Pending::wait)
        ),
        "invalid_amount"
    );
    assert_eq!(
        kind(
            e.move_funds("b2", &card, TransferKind::TopUp, amount("-5"))
                .map(Pending::wait)
        ),
        "invalid_amount"
    );
    assert_eq!(
        kind(
            e.move_funds("b3", &card, TransferKind::TopUp, amount("1.005"))
                .map(Pending::wait)
        ),
        "invalid_amount"
    );
    assert_eq!(
        kind(
            e.move_funds("b4", &card, TransferKind::Withdrawal, amount("50.01"))
                .map(Pending::wait)
        ),
        "insufficient_funds"
    );
    assert_eq!(
        kind(
            e.advice(
                "b5",
                &card,
                amount("1.00"),
                Currency::from_code("XOF").unwrap()
            )
            .map(Pending::wait)
        ),
        "fx_rate_unavailable"
    );
    assert!(
        Currency::from_code("XYZ").is_err(),
        "unknown currencies never reach the engine"
    );
    assert_eq!(
        kind(
            e.capture("p", "b6", "h1", amount("55.01"), true)
                .map(Pending::wait)
        ),
        "capture_exceeds_hold"
    );
    assert_eq!(
        kind(
            e.reverse("p", "b7", "h1", Some(amount("50.01")))
                .map(Pending::wait)
        ),
        "reversal_exceeds_hold"
    );
    assert_eq!(
        kind(
            e.refund("b8", &card, Some("h1"), amount("1.00"), Currency::USD)
                .map(Pending::wait)
        ),
        "refund_exceeds_captured"
    );
    assert_eq!(
        kind(
            e.card_action("b9", &card, CardAction::Unfreeze)
                .map(Pending::wait)
        ),
        "invalid_transition"
    );
    assert_eq!(
        kind(
            e.card_action("b10", &card, CardAction::Terminate)
                .map(Pending::wait)
        ),
        "pending_holds"
    );
    assert_eq!(balance(&e, &card), before);
    e.capture("p", "ok", "h1", amount("50.00"), true)
        .map(Pending::wait)
        .unwrap();
    assert_eq!(
        kind(
            e.capture("p", "b11", "h1", amount("1.00"), true)
                .map(Pending::wait)
        ),
        "hold_not_pending"
    );
    // Terminating returns the rest to the funding account; then every operation fails.
    let funding_before =
        e.house_balance(&spendgate::ledger::AccountId::funding("p", Currency::USD));
    e.card_action("term", &card, CardAction::Terminate)
        .map(Pending::wait)
        .unwrap();
    let funding_after = e.house_balance(&spendgate::ledger::AccountId::funding("p", Currency::USD));
    assert_eq!(funding_after - funding_before, amount("50.00"));
    let dead = balance(&e, &card);
    assert_eq!(dead.0, "0.00");
    assert_eq!(
        kind(
            e.move_funds("t1", &card, TransferKind::TopUp, amount("1.00"))
                .map(Pending::wait)
        ),
        "card_terminated"
    );
    assert_eq!(
        kind(
            e.refund("t2", &card, None, amount("1.00"), Currency::USD)
                .map(Pending::wait)
        ),
        "card_terminated"
    );
    assert_eq!(
        kind(
            e.advice("t3", &card, amount("1.00"), Currency::USD)
                .map(Pending::wait)
        ),
        "card_terminated"
    );
    assert_eq!(
        kind(
            e.set_controls("t4", &card, SpendingControls::default())
                .map(Pending::wait)
        ),
        "card_terminated"
    );
    assert_eq!(
        kind(
            e.card_action("t5", &card, CardAction::Activate)
                .map(Pending::wait)
        ),
        "invalid_transition"
    );
    assert_eq!(authorize(&e, "t6", &card, "1.00", t0()).response_code, "46");
    assert_eq!(balance(&e, &card), dead);
    e.store().unwrap().close();
    verify_store(dir.path());
}

#[test]
fn holds_expire_on_the_injected_clock_and_give_capacity_back() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Durability::Off);
    let card = issue(&e, 1, "5000.00").remove(0);
    // calendar_week cardholder budget is 3000; a week-old hold still counts until it expires.
    assert!(authorize(&e, "x1", &card, "480.00", t0()).approved);
    assert!(
        at(t0() + Duration::days(7) - Duration::milliseconds(1), || e
            .expire_holds()
            .wait())
        .expired
        .is_empty()
    );
    let r = at(t0() + Duration::days(7), || e.expire_holds().wait());
    assert_eq!(r.expired, ["x1"]);
    assert!(
        at(t0() + Duration::days(8), || e.expire_holds().wait())
            .expired
            .is_empty(),
        "exactly once"
    );
    assert_eq!(
        balance(&e, &card),
        ("5000.00".into(), "0.00".into(), "5000.00".into())
    );
    e.store().unwrap().close();
    verify_store(dir.path());
}

#[test]
fn partial_approval_cross_currency_and_forced_posts() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Durability::Off);
    e.create_program(Program {
        id: "ng".into(),
        policy: CONSUMER.into(),
        currency: Currency::NGN,
    })
    .map(Pending::wait)
    .unwrap();
    e.deposit("d", "ng", amount("10000000.00"), Currency::NGN)
        .map(Pending::wait)
        .unwrap();
    e.create_cardholder(
        "h",
        Cardholder {
            id: "h".into(),
            program: "ng".into(),
            name: "Chidi".into(),
            kyc: KycStatus::Verified,
            blocked: false,
        },
    )
    .map(Pending::wait)
    .unwrap();
    let c: CardResponse = serde_json::from_str(
        &e.issue_card(
            "c",
            NewCard {
                program: "ng".to_string(),
                cardholder_id: "h".to_string(),
                kind: CardKind::Virtual,
                currency: None,
                controls: None,
                active: true,
                expiry: None,
                processor_card_token: None,
            },
        )
        .map(Pending::wait)
        .unwrap(),
    )
    .unwrap();
    assert_eq!(c.currency, Currency::NGN);
    e.move_funds("f", &c.id, TransferKind::TopUp, amount("100000.00"))
        .map(Pending::wait)
        .unwrap();
    // 50 USD at 1550 NGN/USD plus the 1.5% spread = 78662.50 NGN.
    let a = authorize(&e, "usd1", &c.id, "50.00", t0());
    assert!(a.approved);
    assert_eq!(
        (a.amount_approved.as_str(), a.fx_rate.as_deref()),
        ("78662.50", Some("1573.25"))
    );
    let cap: HoldResponse = serde_json::from_str(
        &e.capture("ng", "k", "usd1", amount("50.00"), true)
            .map(Pending::wait)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(cap.captured, "78662.50");
    // Partial approval: ask for more than is left.
    let mut t = txn("part", &c.id, "30000.00", "NGN");
    t.partial_ok = true;
    let p: AuthorizationResponse = serde_json::from_str(
        &e.authorize(&t, &AuthContext::default())
            .map(Pending::wait)
            .unwrap()
            .json,
    )
    .unwrap();
    assert_eq!(
        (p.response_code.as_str(), p.amount_approved.as_str()),
        ("10", "21337.50")
    );
    // A stand-in advice may take the card below zero; the ledger still verifies.
    e.advice("adv", &c.id, amount("5000.00"), Currency::NGN)
        .map(Pending::wait)
        .unwrap();
    assert_eq!(balance(&e, &c.id).2, "-5000.00");
    e.store().unwrap().close();
    let s = verify_store(dir.path());
    assert!(s.ledger.transfers.iter().any(|t| t.forced));
}

#[test]
fn card_controls_restrict_beyond_the_program_policy() {
    let e = Engine::new(rules()).with_clock(fresh_clock());
    let card = issue(&e, 1, "1000.00").remove(0);
    let controls = SpendingControls {
        spending_limits: vec![SpendingLimit {
            amount: amount("50.00"),
            interval: LimitInterval::Daily,
        }],
        blocked_categories: vec![spendgate::decision::Mcc::parse("5411").unwrap()],
        ..Default::default()
    };
    e.set_controls("ctl", &card, controls)
        .map(Pending::wait)
        .unwrap();
    let d = authorize(&e, "k1", &card, "10.00", t0());
    assert_eq!(
        (d.response_code.as_str(), d.rule.as_deref()),
        ("57", Some("card_blocked_categories"))
    );
    e.set_controls(
        "ctl2",
        &card,
        SpendingControls {
            spending_limits: vec![SpendingLimit {
                amount: amount("50.00"),
                interval: LimitInterval::Daily,
            }],
            ..Default::default()
        },
    )
    .map(Pending::wait)
    .unwrap();
    assert!(authorize(&e, "k2", &card, "40.00", t0()).approved);
    let d = authorize(&e, "k3", &card, "20.00", t0());
    assert_eq!(
        (d.response_code.as_str(), d.rule.as_deref()),
        ("61", Some("card_limit_0_calendar_day"))
    );
    // Cardholder KYC change reaches the card.
    e.update_cardholder("kyc", "p", "h0", Some(KycStatus::Rejected), None)
        .map(Pending::wait)
        .unwrap();
    assert_eq!(
        authorize(&e, "k4", &card, "1.00", t0()).reason,
        "kyc_not_verified"
    );
}

#[test]
fn verify_and_reconcile_commands_on_a_real_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path(), Durability::Full);
        let card = issue(&e, 1, "500.00").remove(0);
        for (i, v) in ["10.00", "20.00", "30.00"].iter().enumerate() {
            let id = format!("s{i}");
            assert!(authorize(&e, &id, &card, v, t0()).approved);
            e.capture("p", "cap", &id, amount(v), true)
                .map(Pending::wait)
                .unwrap();
        }
        e.store().unwrap().close();
    }
    let bin = env!("CARGO_BIN_EXE_spendgate");
    let out = Command::new(bin)
        .args(["ledger", "verify", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok: every invariant holds"), "{text}");

    let day = t0().date_naive().to_string();
    let good = dir.path().join("good.csv");
    std::fs::write(&good, format!("authorization_id,amount,currency,settlement_date\ns0,10.00,USD,{day}\ns1,20.00,USD,{day}\ns2,30.00,USD,{day}\n")).unwrap();
    let out = Command::new(bin)
        .args(["reconcile", "--date", &day, "--settlement"])
        .arg(&good)
        .arg("--data")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("USD matched: 3 totalling 60.00"), "{text}");

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, format!("authorization_id,amount,currency,settlement_date\ns0,10.00,USD,{day}\ns1,21.00,USD,{day}\nzz,5.00,USD,{day}\n")).unwrap();
    let out = Command::new(bin)
        .args(["reconcile", "--date", &day, "--settlement"])
        .arg(&bad)
        .arg("--data")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("mismatched: s1 USD ledger=20.00 settlement=21.00"),
        "{text}"
    );
    assert!(text.contains("missing_in_settlement: s2"), "{text}");
    assert!(text.contains("missing_in_ledger: zz"), "{text}");

    // The sample file documents the format and parses.
    let sample = std::fs::read_to_string("tests/fixtures/settlement_sample.csv").unwrap();
    let s = spendgate::reconcile::reconcile(
        &[],
        &sample,
        chrono::NaiveDate::from_ymd_opt(2026, 6, 3).unwrap(),
    )
    .unwrap();
    assert_eq!(s.missing_in_ledger.len(), 3);
}

#[derive(Debug, Clone)]
enum Op {
    Authorize {
        card: usize,
        cents: i64,
    },
    Capture {
        auth: usize,
        percent: i64,
        last: bool,
    },
    Reverse {
        auth: usize,
        full: bool,
    },
    Refund {
        card: usize,
        cents: i64,
    },
    Advice {
        card: usize,
        cents: i64,
    },
    TopUp {
        card: usize,
        cents: i64,
    },
    Withdraw {
        card: usize,
        cents: i64,
    },
    Expire {
        days: i64,
    },
    Freeze {
        card: usize,
    },
    Unfreeze {
        card: usize,
    },
    Terminate {
        card: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 1..20_000i64).prop_map(|(card, cents)| Op::Authorize { card, cents }),
        3 => (0..40usize, 1..120i64, any::<bool>()).prop_map(|(auth, percent, last)| Op::Capture { auth, percent, last }),
        2 => (0..40usize, any::<bool>()).prop_map(|(auth, full)| Op::Reverse { auth, full }),
        1 => (0..3usize, 1..5_000i64).prop_map(|(card, cents)| Op::Refund { card, cents }),
        1 => (0..3usize, 1..5_000i64).prop_map(|(card, cents)| Op::Advice { card, cents }),
        2 => (0..3usize, 1..50_000i64).prop_map(|(card, cents)| Op::TopUp { card, cents }),
        1 => (0..3usize, 1..50_000i64).prop_map(|(card, cents)| Op::Withdraw { card, cents }),
        1 => (1..10i64).prop_map(|days| Op::Expire { days }),
        1 => (0..3usize).prop_map(|card| Op::Freeze { card }),
        1 => (0..3usize).prop_map(|card| Op::Unfreeze { card }),
        1 => (0..3usize).prop_map(|card| Op::Terminate { card }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any sequence of operations, valid or not, keeps every invariant, and a restart
    /// rebuilds exactly the balances memory had.
    #[test]
    fn random_operation_sequences_keep_every_invariant(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let cards;
        let mut balances = Vec::new();
        {
            let e = open(dir.path(), Durability::Off);
            cards = issue(&e, 3, "100.00");
            let mut auths: Vec<String> = Vec::new();
            let mut now = t0();
            for (i, op) in ops.iter().enumerate() {
                now += Duration::minutes(7);
                let key = format!("k{i}");
                let cents = |c: i64| Decimal::new(c, 2);
                let _ = match op {
                    Op::Authorize { card, cents: c } => {
                        let id = format!("a{i}");
                        let r = at(now, || e.authorize(&txn(&id, &cards[*card], &cents(*c).to_string(), "USD"), &AuthContext::default()).map(Pending::wait)).map(|a| a.json);
                        auths.push(id);
                        r
                    }
                    Op::Capture { auth, percent, last } => match auths.get(*auth) {
                        // Captures of 0.01..1.19: some partial, some over the hold, some fine.
                        Some(a) => at(now, || e.capture("p", &key, a, Decimal::new(*percent, 2), *last).map(Pending::wait)),
                        None => Ok("".into()),
                    },
                    Op::Reverse { auth, full } => match auths.get(*auth) {
                        Some(a) => at(now, || e.reverse("p", &key, a, if *full { None } else { Some(Decimal::new(1, 0)) }).map(Pending::wait)),
                        None => at(now, || e.reverse("p", &key, "never-seen", None).map(Pending::wait)),
                    },
                    Op::Refund { card, cents: c } => at(now, || e.refund(&key, &cards[*card], None, cents(*c), Currency::USD).map(Pending::wait)),
                    Op::Advice { card, cents: c } => at(now, || e.advice(&key, &cards[*card], cents(*c), Currency::USD).map(Pending::wait)),
                    Op::TopUp { card, cents: c } => at(now, || e.move_funds(&key, &cards[*card], TransferKind::TopUp, cents(*c)).map(Pending::wait)),
                    Op::Withdraw { card, cents: c } => at(now, || e.move_funds(&key, &cards[*card], TransferKind::Withdrawal, cents(*c)).map(Pending::wait)),
                    Op::Expire { days } => {
                        now += Duration::days(*days);
                        at(now, || e.expire_holds().wait());
                        Ok("".into())
                    }
                    Op::Freeze { card } => at(now, || e.card_action(&key, &cards[*card], CardAction::Freeze).map(Pending::wait)),
                    Op::Unfreeze { card } => at(now, || e.card_action(&key, &cards[*card], CardAction::Unfreeze).map(Pending::wait)),
                    Op::Terminate { card } => at(now, || e.card_action(&key, &cards[*card], CardAction::Terminate).map(Pending::wait)),
                };
                for c in &cards {
                    let b = e.balance(c).unwrap();
                    let (posted, pending): (Decimal, Decimal) = (b.posted.parse().unwrap(), b.pending.parse().unwrap());
                    prop_assert!(pending >= Decimal::ZERO);
                    let forced = e.with_card(c, |s| s.account.forced).unwrap();
                    prop_assert!(forced || posted - pending >= Decimal::ZERO, "available below zero without a forced post");
                }
            }
            for c in &cards {
                balances.push(balance(&e, c));
            }
            e.store().unwrap().close();
        }
        verify_store(dir.path());
        let e = open(dir.path(), Durability::Off);
        for (c, b) in cards.iter().zip(&balances) {
            prop_assert_eq!(&balance(&e, c), b);
        }
    }
}

#[test]
fn a_reversal_that_arrives_first_voids_its_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let card;
    {
        let e = open(dir.path(), Durability::Full);
        card = issue(&e, 1, "100.00").remove(0);
        let r: ReversalResponse = serde_json::from_str(
            &e.reverse("p", "rv", "early-1", None)
                .map(Pending::wait)
                .unwrap(),
        )
        .unwrap();
        assert!(!r.matched);
        e.store().unwrap().close();
    }
    // The reversal is remembered across a restart.
    let e = open(dir.path(), Durability::Full);
    let a = authorize(&e, "early-1", &card, "30.00", t0());
    assert!(
        a.trace
            .iter()
            .any(|t| t.rule == "reversal" && t.outcome == "hold voided"),
        "{:?}",
        a.trace
    );
    assert_eq!(
        balance(&e, &card),
        ("100.00".into(), "0.00".into(), "100.00".into())
    );
    // Only that authorization: the next one holds as usual.
    assert!(authorize(&e, "normal-1", &card, "30.00", t0()).approved);
    assert_eq!(balance(&e, &card).1, "30.00");
    e.store().unwrap().close();
    let s = verify_store(dir.path());
    let h = s
        .ledger
        .holds
        .iter()
        .find(|h| h.auth_id == "early-1")
        .unwrap();
    assert_eq!(h.status, spendgate::ledger::HoldStatus::Voided);
}

/// Issue #8.18: an expiry may be set at issue (validated); a card in debt (after a forced
/// post) cannot be terminated until the debt is settled, as one with pending holds.
#[test]
fn card_expiry_at_issue_is_validated_and_a_debt_blocks_termination() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Durability::Off);
    let card = issue(&e, 1, "10.00").remove(0);
    let new = |expiry: &str| NewCard {
        program: "p".into(),
        cardholder_id: "h0".into(),
        kind: CardKind::Virtual,
        currency: None,
        controls: None,
        active: true,
        expiry: Some(expiry.into()),
        processor_card_token: None,
    };
    let ok: CardResponse = serde_json::from_str(
        &e.issue_card("exp-ok", new("2027-01"))
            .map(Pending::wait)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ok.expiry, "2027-01");
    for (i, bad) in ["2026-05", "2036-07", "2026-13", "27-01", "2027/01"]
        .iter()
        .enumerate()
    {
        let r = e
            .issue_card(&format!("exp-bad{i}"), new(bad))
            .map(Pending::wait);
        assert!(
            matches!(r, Err(Rejection::InvalidRequest(_))),
            "{bad}: {r:?}"
        );
    }
    // A stand-in advice beyond the balance leaves a debt.
    e.advice("adv", &card, amount("25.00"), Currency::USD)
        .map(Pending::wait)
        .unwrap();
    let r = e
        .card_action("t1", &card, CardAction::Terminate)
        .map(Pending::wait);
    assert_eq!(
        Problem::from(r.unwrap_err()).kind,
        "negative_balance",
        "a debt is never written off by terminating"
    );
    e.move_funds("settle", &card, TransferKind::TopUp, amount("15.00"))
        .map(Pending::wait)
        .unwrap();
    e.card_action("t2", &card, CardAction::Terminate)
        .map(Pending::wait)
        .unwrap();
    e.store().unwrap().close();
    verify_store(dir.path());
}

/// Issue #8.15: recovery replays decisions and velocity releases in the order they
/// happened, so a window past its event cap (where the oldest events merge) recovers the
/// same totals it had live.
#[test]
fn recovery_replays_releases_in_time_order_with_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    std::fs::write(
        rules_dir.join("many.yaml"),
        "policy: many\ncurrency: USD\ntimezone: UTC\nrules:\n  - id: daily\n    velocity: { window: 24h, amount_max: 100000.00 }\n",
    )
    .unwrap();
    let policies = || spendgate::policy::load_policy_dir(&rules_dir).unwrap();
    let key = {
        let set = policies();
        let p = set.get("many").unwrap();
        let spendgate::policy::Check::Velocity(v) = &p.rules[0].check else {
            panic!("a velocity rule")
        };
        v.key
    };
    let data = dir.path().join("data");
    let open_many = || {
        let (store, snapshot) = Store::open(&data, Durability::Off).unwrap();
        Engine::open(
            policies(),
            Arc::new(store),
            snapshot,
            EngineConfig::default(),
        )
        .unwrap()
        .with_clock(fresh_clock())
    };
    let e = open_many();
    e.create_program(Program {
        id: "p".into(),
        policy: "many".into(),
        currency: Currency::USD,
    })
    .map(Pending::wait)
    .unwrap();
    e.deposit("d", "p", amount("1000.00"), Currency::USD)
        .map(Pending::wait)
        .unwrap();
    e.create_cardholder(
        "h",
        Cardholder {
            id: "h".into(),
            program: "p".into(),
            name: "Ama Mensah".into(),
            kyc: KycStatus::Verified,
            blocked: false,
        },
    )
    .map(Pending::wait)
    .unwrap();
    let new = NewCard {
        program: "p".into(),
        cardholder_id: "h".into(),
        kind: CardKind::Virtual,
        currency: None,
        controls: None,
        active: true,
        expiry: None,
        processor_card_token: None,
    };
    let c: CardResponse =
        serde_json::from_str(&e.issue_card("c", new).map(Pending::wait).unwrap()).unwrap();
    e.move_funds("f", &c.id, TransferKind::TopUp, amount("500.00"))
        .map(Pending::wait)
        .unwrap();
    let step = |e: &Engine, id: &str, i: i64| {
        let when = t0() + Duration::seconds(i);
        at(when, || authorize(e, id, &c.id, "1.00", when))
    };
    for i in 0..100 {
        assert!(step(&e, &format!("a{i}"), i).approved);
    }
    at(t0() + Duration::seconds(100), || {
        e.reverse("p", "r", "a0", None).map(Pending::wait)
    })
    .unwrap();
    for i in 100..140 {
        assert!(step(&e, &format!("a{i}"), i + 1).approved);
    }
    let since = (t0() - Duration::hours(1)).timestamp_millis();
    let live = e
        .with_card(&c.id, |s| s.velocity.totals(key, since))
        .unwrap();
    assert_eq!((live.amount, live.count), (amount("139.00"), 139));
    e.store().unwrap().close();
    drop(e);
    let again = open_many();
    let recovered = again
        .with_card(&c.id, |s| s.velocity.totals(key, since))
        .unwrap();
    assert_eq!(recovered, live);
}

/// Issue #8.6: a small foreign amount never converts to a zero hold, and partial captures
/// in another currency add up exactly to the converted authorization, even with no
/// over-capture tolerance.
#[test]
fn small_foreign_amounts_never_hold_zero_and_partial_captures_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let (store, snapshot) = Store::open(dir.path(), Durability::Off).unwrap();
    let config = EngineConfig {
        over_capture_bps: 0,
        ..EngineConfig::default()
    };
    let e = Engine::open(rules(), Arc::new(store), snapshot, config)
        .unwrap()
        .with_clock(fresh_clock());
    let card = issue(&e, 1, "100.00").remove(0);
    let tiny: AuthorizationResponse = serde_json::from_str(
        &e.authorize(&txn("ngn1", &card, "0.01", "NGN"), &AuthContext::default())
            .unwrap()
            .wait()
            .json,
    )
    .unwrap();
    assert!(tiny.approved);
    assert_eq!(tiny.amount_approved, "0.01", "never a free charge");
    let a: AuthorizationResponse = serde_json::from_str(
        &e.authorize(&txn("eur1", &card, "10.00", "EUR"), &AuthContext::default())
            .unwrap()
            .wait()
            .json,
    )
    .unwrap();
    assert!(a.approved, "{:?}", a.reason);
    let mut captured = Decimal::ZERO;
    for (i, (part, last)) in [("3.33", false), ("3.33", false), ("3.34", true)]
        .iter()
        .enumerate()
    {
        let h: HoldResponse = serde_json::from_str(
            &e.capture("p", &format!("cap{i}"), "eur1", amount(part), *last)
                .map(Pending::wait)
                .unwrap(),
        )
        .unwrap();
        captured += amount(&h.amount);
    }
    assert_eq!(
        captured,
        amount(&a.amount_approved),
        "captures add up exactly"
    );
    e.store().unwrap().close();
    verify_store(dir.path());
}

/// Issue #8.12: under sustained writes the WAL stays bounded (here at a 1 MiB limit,
/// with 12 MiB written): checkpoints keep up and truncate it.
#[test]
fn the_wal_stays_bounded_under_sustained_writes() {
    let dir = tempfile::tempdir().unwrap();
    let limit: u64 = 1024 * 1024;
    let (store, _) = Store::open_with_wal_limit(dir.path(), Durability::Off, limit).unwrap();
    let wal = dir.path().join(format!("{DB_FILE}-wal"));
    let mut wal_max = 0;
    let response: Arc<str> = "x".repeat(400).into();
    for batch in 0..300 {
        let writes = (0..100)
            .map(|i| spendgate::store::Write::Idempotency {
                scope: "fund",
                key: format!("k{batch}-{i}"),
                request_hash: "h".into(),
                response: response.clone(),
                at_ms: 0,
            })
            .collect();
        store.commit(writes);
        if batch % 10 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        wal_max = wal_max.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    assert!(wal_max <= 8 * limit, "WAL peaked at {wal_max} bytes");
    // With traffic trickling on, the writer brings the WAL back under its bound.
    let mut wal_end = u64::MAX;
    for i in 0..200 {
        store.commit(vec![spendgate::store::Write::Idempotency {
            scope: "fund",
            key: format!("trickle-{i}"),
            request_hash: "h".into(),
            response: response.clone(),
            at_ms: 0,
        }]);
        wal_end = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if wal_end <= limit {
            break;
        }
    }
    assert!(wal_end <= limit, "WAL {wal_end} bytes after the load");
    store.close();
}

#[test]
fn once_answers_leave_memory_new_authorization_ids_skip_the_store_lookup() {
    // A process that started on a fresh store (no recovery point) and decided past its
    // memory bound: a new id must not cost a store read (it did: a third of the
    // throughput at 64 connections once 500 000 answers were in memory).
    let dir = tempfile::tempdir().unwrap();
    let e = open_engine(
        dir.path(),
        EngineConfig {
            idempotency_entries_max: 4,
            ..EngineConfig::default()
        },
    );
    let card = issue(&e, 1, "1000.00").remove(0);
    let mut answers = Vec::new();
    for i in 0..12 {
        let a = e
            .authorize(
                &txn(&format!("s{i}"), &card, "10.00", "USD"),
                &AuthContext::default(),
            )
            .unwrap()
            .wait();
        answers.push(a.json);
    }
    assert!(e.idempotency_entries() <= 4, "answers left memory");
    let started = std::time::Instant::now();
    while !e.stored_ids_indexed() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "stored ids never indexed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let ctx = AuthContext::default();
    let fresh = (0..100)
        .filter(|i| {
            !e.authorization_may_block(&txn(&format!("new-{i}"), &card, "1.00", "USD"), &ctx)
        })
        .count();
    assert!(fresh > 90, "new ids skip the store: {fresh} of 100");
    // Every id decided by this process may still be stored: its retry replays.
    for (i, first) in answers.iter().enumerate() {
        let t = txn(&format!("s{i}"), &card, "10.00", "USD");
        let retry = e.authorize(&t, &ctx).unwrap().wait();
        assert!(retry.replayed, "s{i}");
        assert_eq!(&retry.json, first);
    }
}

/// Issue #8.13: idempotent answers are bounded in memory (here 4) and the ones that left
/// memory are answered from the store: a late retry replays, a different body conflicts,
/// nothing runs twice — also after a restart.
#[test]
fn answers_beyond_the_memory_bound_replay_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        idempotency_entries_max: 4,
        ..EngineConfig::default()
    };
    let open_small = || open_engine(dir.path(), config);
    let e = open_small();
    let card = issue(&e, 1, "1000.00").remove(0);
    let mut answers = Vec::new();
    for i in 0..12 {
        let a = e
            .authorize(
                &txn(&format!("m{i}"), &card, "10.00", "USD"),
                &AuthContext::default(),
            )
            .unwrap()
            .wait();
        assert!(!a.replayed);
        answers.push(a.json);
    }
    let cap = e
        .capture("p", "cap-1", "m0", amount("10.00"), true)
        .map(Pending::wait)
        .unwrap();
    for i in 12..20 {
        e.move_funds(&format!("f{i}"), &card, TransferKind::TopUp, amount("1.00"))
            .map(Pending::wait)
            .unwrap();
    }
    let before = balance(&e, &card);
    assert!(e.idempotency_entries() <= 4, "{}", e.idempotency_entries());
    let retry = e
        .authorize(&txn("m0", &card, "10.00", "USD"), &AuthContext::default())
        .unwrap()
        .wait();
    assert!(retry.replayed, "answered from the store");
    assert_eq!(retry.json, answers[0]);
    let conflict = e
        .authorize(&txn("m1", &card, "11.00", "USD"), &AuthContext::default())
        .map(Pending::wait);
    assert!(matches!(conflict, Err(Rejection::IdempotencyConflict)));
    let cap_again = e
        .capture("p", "cap-1", "m0", amount("10.00"), true)
        .map(Pending::wait)
        .unwrap();
    assert_eq!(cap_again, cap, "a capture retry replays too");
    assert_eq!(balance(&e, &card), before, "nothing ran twice");
    e.store().unwrap().close();
    drop(e);
    let e = open_small();
    let retry = e
        .authorize(&txn("m2", &card, "10.00", "USD"), &AuthContext::default())
        .unwrap()
        .wait();
    assert!(retry.replayed);
    assert_eq!(retry.json, answers[2]);
    assert_eq!(balance(&e, &card), before);
    e.store().unwrap().close();
    verify_store(dir.path());
}

/// Issue #8.13: stored idempotent answers are kept for their retention (7 days by default)
/// and then swept; decisions stay as history.
#[test]
fn idempotent_answers_past_their_retention_are_swept_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Durability::Full);
    let card = issue(&e, 1, "10.00").remove(0);
    assert!(authorize(&e, "kept", &card, "1.00", t0()).approved);
    at(t0() + Duration::days(8), || {
        e.deposit("recent", "p", amount("5.00"), Currency::USD)
            .map(Pending::wait)
            .unwrap();
        e.sweep_retention().wait();
    });
    let conn =
        Connection::open_with_flags(dir.path().join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM idempotency WHERE key = 'dep'"),
        0,
        "swept"
    );
    assert_eq!(
        count("SELECT count(*) FROM idempotency WHERE key = 'recent'"),
        1
    );
    let kept = spendgate::store::id_hash("kept");
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM decision_log WHERE auth_hash = {kept}"
        )),
        1
    );
    e.store().unwrap().close();
}

/// Issue #8.13: the authorization index is bounded (here 2); captures and reversals of
/// authorizations it no longer holds find their card in the store.
#[test]
fn captures_beyond_the_authorization_index_bound_find_their_card_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_engine(
        dir.path(),
        EngineConfig {
            authorization_index_entries_max: 2,
            ..EngineConfig::default()
        },
    );
    let card = issue(&e, 1, "1000.00").remove(0);
    for i in 0..6 {
        assert!(authorize(&e, &format!("x{i}"), &card, "10.00", t0()).approved);
    }
    assert!(e.has_authorization("p", "x0"));
    assert!(
        !e.has_authorization("other", "x0"),
        "another program's id is unknown"
    );
    let c: HoldResponse = serde_json::from_str(
        &e.capture("p", "c0", "x0", amount("10.00"), true)
            .map(Pending::wait)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(c.captured, "10.00");
    let r: ReversalResponse =
        serde_json::from_str(&e.reverse("p", "r1", "x1", None).map(Pending::wait).unwrap())
            .unwrap();
    assert!(r.matched, "{r:?}");
    assert_eq!(
        balance(&e, &card),
        ("990.00".into(), "40.00".into(), "950.00".into())
    );
    e.store().unwrap().close();
    verify_store(dir.path());
}

/// Issue 11.5: a redefined velocity rule starts from the stored decisions it covers, not
/// from zero. A changed limit keeps its window (the key is what is counted); a changed
/// window (24 h → 48 h) is a new one: with 10 approvals (one reversed) it holds 9, so a
/// count of 12 leaves room for 3 more — also after a restart. Without the rebuild the
/// card could make 12 more (failing first: that is what happened before).
#[test]
fn a_redefined_velocity_rule_rebuilds_its_window_from_stored_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Durability::Full);
    let card = issue(&e, 1, "5000.00").remove(0);
    for i in 0..10 {
        let when = t0() + Duration::minutes(i);
        assert!(authorize(&e, &format!("d{i}"), &card, "10.00", when).approved);
    }
    // A reversal gives one back in the old window and, replayed, in the new one.
    at(t0() + Duration::minutes(10), || {
        e.reverse("p", "rev-d0", "d0", None)
            .map(Pending::wait)
            .unwrap()
    });
    let rules_dir = dir.path().join("rules12");
    let tightened = redefined_rules(&rules_dir);
    let updates = at(t0() + Duration::minutes(20), || e.swap_policies(tightened)).unwrap();
    assert!(updates >= 10, "{updates} window updates");
    // 9 count (10 approvals, one reversed): 3 more fit under 12.
    let codes: Vec<String> = (0..5)
        .map(|i| {
            authorize(
                &e,
                &format!("n{i}"),
                &card,
                "10.00",
                t0() + Duration::minutes(30 + i),
            )
            .response_code
        })
        .collect();
    assert_eq!(codes, ["00", "00", "00", "65", "65"]);
    e.store().unwrap().close();
    drop(e);
    // After a restart on the tightened rules, the window is still full.
    let (store, snapshot) = Store::open(dir.path(), Durability::Full).unwrap();
    let e = Engine::open(
        load_policy_dir(&rules_dir).unwrap(),
        Arc::new(store),
        snapshot,
        EngineConfig::default(),
    )
    .unwrap()
    .with_clock(fresh_clock());
    let a = authorize(&e, "after", &card, "10.00", t0() + Duration::minutes(40));
    assert_eq!(a.response_code, "65");
    e.store().unwrap().close();
}

/// The shipped rules with `daily_spend` redefined: 12 approvals in 48 h (a new window).
fn redefined_rules(dir: &Path) -> spendgate::policy::PolicySet {
    common::rules_with_daily_spend(
        dir,
        "velocity: { window: 48h, amount_max: 1000.00, count_max: 12 }",
    )
}

/// Decision records the store wrote compressed, with a dictionary it trained on its own
/// records (`store::dictionary`), replay their answers byte for byte — read back once the
/// answers left memory, and after a restart — and rebuild the same balances.
#[test]
fn compressed_decision_records_replay_their_answers_and_rebuild_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        idempotency_entries_max: 64,
        ..EngineConfig::default()
    };
    let open_small = || open_engine_with(dir.path(), Durability::Off, config);
    let compressed = || -> i64 {
        let c =
            Connection::open_with_flags(dir.path().join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        c.query_row(
            "SELECT count(*) FROM decision_log
             WHERE substr(answer, 1, 1) = x'f0' AND substr(body, 1, 1) = x'f0'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let e = open_small();
    let cards = issue(&e, 40, "100000.00");
    let ctx = AuthContext::default();
    let mut answers = Vec::new();
    // Enough for the first dictionary (4 096 records) and some written with it; each
    // card's daily count fills at 20, so most are velocity declines with their trace.
    while answers.len() < 20_000 && (answers.len() % 256 != 0 || compressed() < 300) {
        let i = answers.len();
        let (id, card) = (format!("z{i}"), &cards[i % cards.len()]);
        let value = ["10.00", "2000.00", "35.50"][i % 3];
        let a = e
            .authorize(&txn(&id, card, value, "USD"), &ctx)
            .unwrap()
            .wait();
        answers.push((id, card.clone(), value, a.json));
    }
    assert!(compressed() >= 300, "records compressed: {}", compressed());
    let declined = answers
        .iter()
        .filter(|a| a.3.contains("\"approved\":false"))
        .count();
    assert!(declined > answers.len() / 2, "{declined} declines");
    let replays_all = |e: &Engine| {
        for (id, card, value, first) in answers.iter().rev().take(1_000) {
            let retry = e
                .authorize(&txn(id, card, value, "USD"), &ctx)
                .unwrap()
                .wait();
            assert!(retry.replayed, "{id}");
            assert_eq!(&retry.json, first, "{id}");
        }
    };
    replays_all(&e);
    let balances: Vec<_> = cards.iter().map(|c| balance(&e, c)).collect();
    drop(e);
    let e = open_small();
    replays_all(&e);
    assert_eq!(
        cards.iter().map(|c| balance(&e, c)).collect::<Vec<_>>(),
        balances
    );
    drop(e);
    verify_store(dir.path());
}
