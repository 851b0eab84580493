//! The engine on the real rule files: rule kinds, window edges, concurrency, scripts.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use common::{amount, rules, t0, txn};
use rust_decimal::Decimal;
use spendgate::decision::{decide, Country, DecisionSummary, LatLon, Mcc, ResponseCode};
use spendgate::money::Currency;
use spendgate::policy::{compile_policy, load_policy_file, OnError};
use spendgate::policy_tests::run_policy_tests;
use spendgate::service::{CardState, Engine};
use spendgate::velocity::VelocityState;

const CONSUMER: &str = "consumer-prepaid-africa";

fn engine_with_card(card_id: &str, currency: Currency, available: Option<&str>) -> Engine {
    let e = Engine::new(rules());
    let mut c = CardState::new(card_id, "holder-1", CONSUMER, currency);
    c.available = available.map(amount);
    e.add_card(c).unwrap();
    e
}

#[test]
fn embedded_tests_of_shipped_rules_pass() {
    for (name, p) in rules().policies {
        let results = run_policy_tests(&p);
        assert!(results.len() >= 9, "{name} has its tests");
        for r in results {
            assert!(
                r.passed,
                "{name}: {} at line {}: {}",
                r.name, r.line, r.message
            );
        }
    }
}

#[test]
fn reference_policy_covers_every_rule_kind() {
    let set = rules();
    let p = set.get(CONSUMER).unwrap();
    let kinds: std::collections::BTreeSet<_> = p.rules.iter().map(|r| r.check.kind()).collect();
    for k in [
        "conditions",
        "limit",
        "velocity",
        "countries",
        "geofence",
        "travel",
        "script",
    ] {
        assert!(kinds.contains(k), "missing {k}");
    }
    assert!(p.rules.len() >= 12);
    assert!(p.tests.len() >= 20);
    assert!(
        p.rules
            .iter()
            .filter(|r| r.check.kind() == "script")
            .count()
            >= 2
    );
}

#[test]
fn many_threads_never_exceed_a_velocity_limit_together() {
    // daily_spend allows 1000.00 USD per 24h; 8 threads try 60.00 each, 40 times.
    let e = Arc::new(engine_with_card("c1", Currency::USD, None));
    let approved_cents = Arc::new(AtomicU64::new(0));
    let approvals = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for th in 0..8 {
            let (e, cents, n) = (e.clone(), approved_cents.clone(), approvals.clone());
            s.spawn(move || {
                for i in 0..40 {
                    let t = txn(&format!("t{th}-{i}"), "c1", "60.00", "USD");
                    let now = t0() + Duration::milliseconds(i64::from(th * 40 + i));
                    let d = e.authorize(&t, now).unwrap().decision;
                    if d.approved {
                        cents.fetch_add(
                            (d.amount_approved * Decimal::from(100)).try_into().unwrap(),
                            Ordering::SeqCst,
                        );
                        n.fetch_add(1, Ordering::SeqCst);
                    } else {
                        assert!(
                            [ResponseCode::AMOUNT_LIMIT, ResponseCode::FRAUD]
                                .contains(&d.response_code),
                            "declined by {:?} {}",
                            d.rule,
                            d.response_code
                        );
                    }
                }
            });
        }
    });
    assert_eq!(
        approvals.load(Ordering::SeqCst),
        16,
        "16 × 60 = 960 fits, a 17th would not"
    );
    assert_eq!(approved_cents.load(Ordering::SeqCst), 96_000);
}

#[test]
fn many_threads_never_spend_more_than_the_balance() {
    let e = Arc::new(engine_with_card("c2", Currency::USD, Some("100.00")));
    let approved = Arc::new(parking_lot::Mutex::new(Decimal::ZERO));
    std::thread::scope(|s| {
        for th in 0..8 {
            let (e, approved) = (e.clone(), approved.clone());
            s.spawn(move || {
                for i in 0..25 {
                    let t = txn(&format!("f{th}-{i}"), "c2", "7.00", "USD");
                    let d = e
                        .authorize(&t, t0() + Duration::seconds(i64::from(th * 25 + i)))
                        .unwrap()
                        .decision;
                    if d.approved {
                        *approved.lock() += d.amount_approved;
                    }
                }
            });
        }
    });
    assert_eq!(
        *approved.lock(),
        amount("98.00"),
        "14 × 7.00; the 15th would overspend"
    );
    let left = e.with_card("c2", |c| c.available).unwrap();
    assert_eq!(left, Some(amount("2.00")));
}

#[test]
fn trace_explains_the_velocity_decline() {
    let e = engine_with_card("c3", Currency::USD, None);
    let a = e
        .authorize(&txn("a1", "c3", "470.00", "USD"), t0())
        .unwrap();
    assert!(a.decision.approved);
    let b = e
        .authorize(&txn("a2", "c3", "470.00", "USD"), t0() + Duration::hours(1))
        .unwrap();
    assert!(b.decision.approved);
    let c = e
        .authorize(&txn("a3", "c3", "80.00", "USD"), t0() + Duration::hours(2))
        .unwrap();
    let s = DecisionSummary::new(&c.decision, &c.policy, None);
    assert_eq!(
        (s.approved, s.response_code.as_str(), s.rule.as_deref()),
        (false, "61", Some("daily_spend"))
    );
    let line = s.trace.iter().find(|t| t.rule == "daily_spend").unwrap();
    assert_eq!(line.outcome, "decline 61");
    assert_eq!(
        line.detail,
        "940.00 + 80.00 > 1000.00 USD, 2 + 1 <= 20 transactions in 24h (card scope)"
    );
    // Every rule appears in the trace, even after the deciding one.
    assert!(s.trace.iter().any(|t| t.rule == "night_owl"));
    assert_eq!(s.policy_version, c.policy.version);
}

#[test]
fn reversal_gives_velocity_capacity_back() {
    let e = engine_with_card("c4", Currency::USD, None);
    assert!(
        e.authorize(&txn("r1", "c4", "450.00", "USD"), t0())
            .unwrap()
            .decision
            .approved
    );
    assert!(
        e.authorize(&txn("r2", "c4", "450.00", "USD"), t0())
            .unwrap()
            .decision
            .approved
    );
    let over = e
        .authorize(&txn("r3", "c4", "450.00", "USD"), t0())
        .unwrap()
        .decision;
    assert_eq!(over.response_code, ResponseCode::AMOUNT_LIMIT);
    // Windows: daily_spend, cardholder_weekly, merchant_repeat, program_hourly_exposure.
    assert!(e.reverse("c4", "r2", Decimal::ONE, Decimal::ZERO).unwrap() >= 2);
    assert!(
        e.authorize(&txn("r4", "c4", "450.00", "USD"), t0())
            .unwrap()
            .decision
            .approved
    );
}

#[test]
fn shadow_rule_is_recorded_but_not_enforced() {
    let e = engine_with_card("c5", Currency::NGN, None);
    let mut t = txn("s1", "c5", "5000.00", "NGN");
    t.merchant.location = Some(LatLon {
        lat: 9.0765,
        lon: 7.3986,
    }); // Abuja: outside the Lagos fence
    let a = e.authorize(&t, t0()).unwrap();
    assert!(a.decision.approved);
    let s = DecisionSummary::new(&a.decision, &a.policy, None);
    let fence = s.trace.iter().find(|l| l.rule == "lagos_geofence").unwrap();
    assert_eq!(fence.outcome, "shadow: would decline 62");
    assert!(
        fence.detail.starts_with("outside fence"),
        "{}",
        fence.detail
    );
}

#[test]
fn impossible_travel_with_a_clock_that_goes_backwards() {
    let e = engine_with_card("c6", Currency::USD, None);
    let mut lagos = txn("b1", "c6", "10.00", "USD");
    lagos.merchant.location = Some(LatLon {
        lat: 6.5244,
        lon: 3.3792,
    });
    assert!(e.authorize(&lagos, t0()).unwrap().decision.approved);
    // The clock steps back an hour: the same place is still fine, nothing panics, and
    // the velocity window keeps counting the earlier spend.
    lagos.id = "b2".into();
    let back = e
        .authorize(&lagos, t0() - Duration::hours(1))
        .unwrap()
        .decision;
    assert!(back.approved, "{:?}", back.reason);
    let used = e
        .with_card("c6", |c| {
            let p = rules().get(CONSUMER).unwrap().clone();
            let daily = p.rules.iter().find(|r| r.id == "daily_spend").unwrap();
            let spendgate::policy::Check::Velocity(v) = &daily.check else {
                panic!()
            };
            c.velocity
                .totals(v.key, (t0() - Duration::hours(23)).timestamp_millis())
        })
        .unwrap();
    assert_eq!((used.amount, used.count), (amount("20.00"), 2));
    // Anchor did not move back in time: Nairobi right after t0 is impossible.
    let mut nairobi = txn("b3", "c6", "10.00", "USD");
    nairobi.merchant.country = Country::parse("KE").unwrap();
    nairobi.merchant.location = Some(LatLon {
        lat: -1.2921,
        lon: 36.8219,
    });
    let d = e
        .authorize(&nairobi, t0() + Duration::minutes(30))
        .unwrap()
        .decision;
    assert_eq!(
        (d.response_code, d.rule.as_deref()),
        (ResponseCode::FRAUD, Some("impossible_travel"))
    );
}

const DST_POLICY: &str = "policy: ny\ncurrency: USD\ntimezone: America/New_York\nrules:\n  - id: daily\n    velocity: { window: calendar_day, amount_max: 100.00 }\n";

fn spend(
    p: &spendgate::policy::CompiledPolicy,
    card: &mut CardState,
    id: &str,
    value: &str,
    at: chrono::DateTime<Utc>,
) -> bool {
    let d = decide(p, &card.view(None, None), &txn(id, "c", value, "USD"), at);
    card.apply(&d, None, None);
    d.approved
}

#[test]
fn calendar_day_window_across_a_dst_change() {
    let p = compile_policy(
        Path::new("ny.yaml"),
        DST_POLICY,
        Default::default(),
        &|_| unreachable!(),
    )
    .unwrap();
    let mut card = CardState::new("c", "h", "ny", Currency::USD);
    // 2026-03-08 02:00 EST jumps to 03:00 EDT. The day starts at 05:00 UTC and ends
    // 23 hours later at 04:00 UTC.
    let day_start = Utc.with_ymd_and_hms(2026, 3, 8, 5, 0, 0).unwrap();
    assert!(spend(&p, &mut card, "d1", "90.00", day_start)); // exactly at local midnight
    assert!(!spend(
        &p,
        &mut card,
        "d2",
        "20.00",
        Utc.with_ymd_and_hms(2026, 3, 9, 3, 59, 59).unwrap()
    ));
    assert!(spend(
        &p,
        &mut card,
        "d3",
        "20.00",
        Utc.with_ymd_and_hms(2026, 3, 9, 4, 0, 0).unwrap()
    ));
    // A millisecond before local midnight belongs to the day before.
    let mut other = CardState::new("c", "h", "ny", Currency::USD);
    assert!(spend(
        &p,
        &mut other,
        "e1",
        "95.00",
        day_start - Duration::milliseconds(1)
    ));
    assert!(spend(&p, &mut other, "e2", "95.00", day_start));
    assert!(!spend(
        &p,
        &mut other,
        "e3",
        "10.00",
        day_start + Duration::hours(22)
    ));
}

fn abuse_policy() -> spendgate::policy::CompiledPolicy {
    load_policy_file(Path::new("tests/fixtures/abuse/abuse.yaml")).unwrap()
}

#[test]
fn hostile_scripts_end_promptly_with_on_error() {
    let p = abuse_policy();
    let card = CardState::new("c", "h", "abuse", Currency::USD);
    for merchant in ["loop", "recursion", "doubling", "wrong-return", "bad-code"] {
        let mut t = txn("x", "c", "10.00", "USD");
        t.merchant.id = merchant.into();
        let start = Instant::now();
        let d = decide(&p, &card.view(None, None), &t, t0());
        assert!(
            start.elapsed().as_millis() < 2_000,
            "{merchant} took {:?}",
            start.elapsed()
        );
        assert_eq!(
            (d.approved, d.response_code, &*d.reason),
            (false, ResponseCode::SYSTEM_ERROR, "script_error"),
            "{merchant}"
        );
        let s = DecisionSummary::new(&d, &p, None);
        let line = s
            .trace
            .iter()
            .find(|l| l.outcome.starts_with("error"))
            .unwrap();
        assert!(
            !line.detail.is_empty(),
            "{merchant}: the error is explained"
        );
    }
    // Failing open instead: approve, flagged.
    let mut open = p.clone();
    open.on_error = OnError::Approve;
    let mut t = txn("y", "c", "10.00", "USD");
    t.merchant.id = "loop".into();
    let d = decide(&open, &card.view(None, None), &t, t0());
    assert!(d.approved);
    assert_eq!(d.flag_ids(&open, None), ["endless_loop"]);
}

#[test]
fn request_validation_comes_first() {
    let e = engine_with_card("c7", Currency::USD, None);
    let mut t = txn("v1", "c7", "10.005", "USD");
    assert_eq!(
        e.authorize(&t, t0()).unwrap().decision.response_code,
        ResponseCode::INVALID_AMOUNT
    );
    t.amount = amount("-1");
    assert_eq!(
        e.authorize(&t, t0()).unwrap().decision.response_code,
        ResponseCode::INVALID_AMOUNT
    );
    t.amount = amount("10");
    t.merchant.location = Some(LatLon {
        lat: 91.0,
        lon: 0.0,
    });
    assert_eq!(
        e.authorize(&t, t0()).unwrap().decision.response_code,
        ResponseCode::FORMAT_ERROR
    );
    t.merchant.location = None;
    t.merchant.mcc = Mcc::parse("7995").unwrap();
    let d = e.authorize(&t, t0()).unwrap().decision;
    assert_eq!(
        (d.response_code, d.rule.as_deref()),
        (ResponseCode::NOT_PERMITTED, Some("no_gambling"))
    );
    assert!(e.authorize(&txn("v2", "nope", "1", "USD"), t0()).is_err());
}

#[test]
fn declines_count_in_declined_windows_only() {
    let e = engine_with_card("c8", Currency::USD, None);
    for i in 0..5 {
        let mut t = txn(&format!("g{i}"), "c8", "5.00", "USD");
        t.merchant.mcc = Mcc::parse("7995").unwrap();
        assert!(
            !e.authorize(&t, t0() + Duration::minutes(i))
                .unwrap()
                .decision
                .approved
        );
    }
    let d = e
        .authorize(
            &txn("ok", "c8", "5.00", "USD"),
            t0() + Duration::minutes(10),
        )
        .unwrap()
        .decision;
    assert_eq!(
        (d.response_code, d.rule.as_deref()),
        (ResponseCode::FRAUD, Some("card_testing"))
    );
    // An hour after the first declines they have left the window.
    let d = e
        .authorize(
            &txn("later", "c8", "5.00", "USD"),
            t0() + Duration::minutes(65),
        )
        .unwrap()
        .decision;
    assert!(d.approved, "{:?}", d.reason);
}

#[test]
fn policy_swap_takes_effect_for_new_decisions() {
    let e = engine_with_card("c9", Currency::USD, None);
    let before = e.authorize(&txn("p1", "c9", "1.00", "USD"), t0()).unwrap();
    let mut set = rules();
    let mut p = (**set.get(CONSUMER).unwrap()).clone();
    p.version = "test-version".into();
    set.policies.insert(CONSUMER.into(), Arc::new(p));
    e.replace_policies(set);
    let after = e.authorize(&txn("p2", "c9", "1.00", "USD"), t0()).unwrap();
    assert_ne!(
        before.decision.policy_version,
        after.decision.policy_version
    );
    assert_eq!(after.decision.policy_version, "test-version");
}

#[test]
fn without_scripts_drops_only_rhai_rules() {
    let set = rules();
    let p = set.get(CONSUMER).unwrap();
    let plain = p.without_scripts();
    assert_eq!(
        p.rules.len() - plain.rules.len(),
        3,
        "two scripts and one Rhai condition"
    );
    assert!(!plain.uses_rhai);
    let card = CardState::new("c", "h", CONSUMER, Currency::USD);
    let h = VelocityState::default();
    let d = decide(
        &plain,
        &card.view(Some(&h), Some(&h)),
        &txn("n1", "c", "10.00", "USD"),
        t0(),
    );
    assert!(d.approved);
    assert_eq!(d.trace.len(), plain.rules.len());
}

#[test]
fn scripts_see_every_field_with_its_type() {
    let policy = r#"policy: fields
currency: USD
timezone: Africa/Lagos
rules:
  - id: all_fields
    when: 'txn.mcc == "5411" && txn.country == "NG" && txn.channel == "pos" && txn.type == "purchase" && txn.original_currency == "NGN" && txn.original_amount == 15500.to_decimal() && txn.amount == 10.to_decimal() && txn.merchant_id == "merchant-f1" && txn.merchant_name == "Shoprite" && txn.has_location && txn.lat > 6.0 && txn.local_hour == 12 && txn.weekday == 3 && card.status == "active" && card.kyc == "verified" && card.currency == "NGN" && card.available == () && !card.has_last_location && history.count("24h") == 0 && history.sum("24h") == 0.to_decimal() && lists.has("ng", txn.country)'
    decline: "57"
lists:
  ng: [NG]
"#;
    let mut fx = spendgate::money::FxTable::new(0);
    fx.set_rate(Currency::USD, Currency::NGN, amount("1550"));
    let p = compile_policy(
        Path::new("fields.yaml"),
        policy,
        Arc::new(fx),
        &|_| unreachable!(),
    )
    .unwrap();
    let card = CardState::new("c", "h", "fields", Currency::NGN);
    let d = decide(
        &p,
        &card.view(None, None),
        &txn("f1", "c", "15500.00", "NGN"),
        t0() + Duration::hours(0),
    );
    // Every comparison holds, so the condition fires: proof each getter has the right type.
    assert_eq!(
        (d.response_code, d.rule.as_deref()),
        (ResponseCode::NOT_PERMITTED, Some("all_fields")),
        "{:?}",
        d.trace
    );
}
