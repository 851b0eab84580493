//! The engine on the real rule files: rule kinds, window edges, concurrency, scripts.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use common::{amount, at, fresh_clock, rules, t0, txn};
use rust_decimal::Decimal;
use spendgate::decision::Authorization;
use spendgate::decision::{decide, Country, DecisionSummary, KycStatus, LatLon, Mcc, ResponseCode};
use spendgate::issuing::{CardKind, Cardholder, Program};
use spendgate::ledger::TransferKind;
use spendgate::money::Currency;
use spendgate::policy::{compile_policy, load_policy_file, OnError};
use spendgate::policy_tests::run_policy_tests;
use spendgate::service::responses::{AuthorizationResponse, CardResponse, ReversalResponse};
use spendgate::service::{AuthContext, CardState, Engine, NewCard, Pending};
use spendgate::velocity::VelocityState;

const CONSUMER: &str = "consumer-prepaid-africa";

/// An engine with one active card issued through the real API and funded.
fn setup(currency: Currency, funds: &str) -> (Engine, String) {
    let e = Engine::new(rules()).with_clock(fresh_clock());
    e.create_program(Program {
        id: "consumer".into(),
        policy: CONSUMER.into(),
        currency,
    })
    .map(Pending::wait)
    .unwrap();
    e.create_cardholder(
        "h1",
        Cardholder {
            id: "holder-1".into(),
            program: "consumer".into(),
            name: "Ada Obi".into(),
            kyc: KycStatus::Verified,
            blocked: false,
        },
    )
    .map(Pending::wait)
    .unwrap();
    let json = e
        .issue_card(
            "k1",
            NewCard {
                program: "consumer".to_string(),
                cardholder_id: ("holder-1").to_string(),
                kind: CardKind::Virtual,
                currency: Some(currency),
                controls: None,
                active: true,
                expiry: None,
                processor_card_token: None,
            },
        )
        .map(Pending::wait)
        .unwrap();
    let card: CardResponse = serde_json::from_str(&json).unwrap();
    if funds != "0" {
        e.deposit("d1", "consumer", amount(funds), currency)
            .map(Pending::wait)
            .unwrap();
        e.move_funds("f1", &card.id, TransferKind::TopUp, amount(funds))
            .map(Pending::wait)
            .unwrap();
    }
    (e, card.id)
}

fn auth(e: &Engine, t: &Authorization, now: chrono::DateTime<Utc>) -> AuthorizationResponse {
    at(now, || auth_now(e, t))
}

/// Decides at whatever time the engine's clock shows (for threads other than the test's).
fn auth_now(e: &Engine, t: &Authorization) -> AuthorizationResponse {
    let a = e.authorize(t, &AuthContext::default()).unwrap().wait();
    serde_json::from_str(&a.json).unwrap()
}

/// Memory keeps an authorization's answer as its compact record and renders it again for
/// a retry: the retry must get the very bytes first sent, approvals and declines with
/// their trace alike (and text that JSON escapes).
#[test]
fn a_retried_authorization_gets_the_bytes_first_sent() {
    let (e, card) = setup(Currency::NGN, "100000.00");
    let mut approve = txn("r-ok", &card, "1500.00", "NGN");
    approve.merchant.name = "Shop \"Lekki\" \\ Ikeja".into();
    let mut gamble = txn("r-gamble", &card, "30.00", "NGN");
    gamble.merchant.mcc = Mcc::parse("7995").unwrap();
    let ctx = AuthContext::default();
    for t in [&approve, &gamble] {
        let first = at(t0(), || e.authorize(t, &ctx).unwrap().wait());
        let again = at(t0() + Duration::seconds(5), || {
            e.authorize(t, &ctx).unwrap().wait()
        });
        assert!(again.replayed && !first.replayed);
        assert_eq!(&*again.json, &*first.json, "byte for byte");
    }
    let declined = at(t0(), || e.authorize(&gamble, &ctx).unwrap().wait());
    assert!(!declined.approved && declined.json.contains("\"trace\":[{"));
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
    let (e, card) = setup(Currency::USD, "100000.00");
    let e = Arc::new(e);
    let approved_cents = Arc::new(AtomicU64::new(0));
    let approvals = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for th in 0..8 {
            let (e, cents, n, card) = (
                e.clone(),
                approved_cents.clone(),
                approvals.clone(),
                card.clone(),
            );
            s.spawn(move || {
                for i in 0..40 {
                    let t = txn(&format!("t{th}-{i}"), &card, "60.00", "USD");
                    let d = auth_now(&e, &t);
                    if d.approved {
                        cents.fetch_add(
                            (amount(&d.amount_approved) * Decimal::from(100))
                                .try_into()
                                .unwrap(),
                            Ordering::SeqCst,
                        );
                        n.fetch_add(1, Ordering::SeqCst);
                    } else {
                        assert!(
                            ["61", "59"].contains(&d.response_code.as_str()),
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
    let (e, card) = setup(Currency::USD, "100.00");
    let e = Arc::new(e);
    let approved = Arc::new(parking_lot::Mutex::new(Decimal::ZERO));
    std::thread::scope(|s| {
        for th in 0..8 {
            let (e, approved, card) = (e.clone(), approved.clone(), card.clone());
            s.spawn(move || {
                for i in 0..25 {
                    let t = txn(&format!("f{th}-{i}"), &card, "7.00", "USD");
                    let d = auth_now(&e, &t);
                    if d.approved {
                        *approved.lock() += amount(&d.amount_approved);
                    } else {
                        // Insufficient funds, then card-testing once five declines pile up.
                        assert!(
                            ["51", "59"].contains(&d.response_code.as_str()),
                            "{:?}",
                            d.reason
                        );
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
    let b = e.balance(&card).unwrap();
    assert_eq!(
        (b.posted.as_str(), b.pending.as_str(), b.available.as_str()),
        ("100.00", "98.00", "2.00")
    );
}

#[test]
fn trace_explains_the_velocity_decline() {
    let (e, card) = setup(Currency::USD, "5000.00");
    assert!(auth(&e, &txn("a1", &card, "470.00", "USD"), t0()).approved);
    assert!(
        auth(
            &e,
            &txn("a2", &card, "470.00", "USD"),
            t0() + Duration::hours(1)
        )
        .approved
    );
    let t = txn("a3", &card, "80.00", "USD");
    // Simulation shows every rule and changes nothing.
    let sim = at(t0() + Duration::hours(2), || e.simulate(&t, None)).unwrap();
    assert!(
        sim.trace.iter().any(|l| l.rule == "night_owl"),
        "every rule is in the simulated trace"
    );
    let s = auth(&e, &t, t0() + Duration::hours(2));
    assert_eq!(
        (s.approved, s.response_code.as_str(), s.rule.as_deref()),
        (false, "61", Some("daily_spend"))
    );
    let line = s.trace.iter().find(|t| t.rule == "daily_spend").unwrap();
    assert_eq!(line.outcome, "decline 61");
    assert_eq!(
        line.detail,
        "940.00 + 80.00 > 1000.00 USD (60.00 left), 2 + 1 <= 20 transactions (18 left) in 24h \
         (card scope); frees 470.00 USD and 1 transaction at 2026-06-04T11:00:00Z"
    );
    assert_eq!(
        sim.trace
            .iter()
            .find(|t| t.rule == "daily_spend")
            .unwrap()
            .detail,
        line.detail
    );
    assert_eq!(s.policy_version, rules().get(CONSUMER).unwrap().version);
}

#[test]
fn reversal_gives_velocity_capacity_and_funds_back() {
    let (e, card) = setup(Currency::USD, "5000.00");
    assert!(auth(&e, &txn("r1", &card, "450.00", "USD"), t0()).approved);
    assert!(auth(&e, &txn("r2", &card, "450.00", "USD"), t0()).approved);
    let over = auth(&e, &txn("r3", &card, "450.00", "USD"), t0());
    assert_eq!(over.response_code, "61");
    let r: ReversalResponse = serde_json::from_str(
        &e.reverse("consumer", "rev1", "r2", None)
            .map(Pending::wait)
            .unwrap(),
    )
    .unwrap();
    assert!(r.matched);
    assert_eq!(r.available_after.as_deref(), Some("4550.00"));
    assert!(auth(&e, &txn("r4", &card, "450.00", "USD"), t0()).approved);
}

#[test]
fn shadow_rule_is_recorded_but_not_enforced() {
    let (e, card) = setup(Currency::NGN, "1000000.00");
    let mut t = txn("s1", &card, "5000.00", "NGN");
    t.merchant.location = Some(LatLon {
        lat: 9.0765,
        lon: 7.3986,
    }); // Abuja: outside the Lagos fence
    let s = auth(&e, &t, t0());
    assert!(s.approved);
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
    let (e, card) = setup(Currency::USD, "5000.00");
    let mut lagos = txn("b1", &card, "10.00", "USD");
    lagos.merchant.location = Some(LatLon {
        lat: 6.5244,
        lon: 3.3792,
    });
    assert!(auth(&e, &lagos, t0()).approved);
    // The clock steps back an hour: the same place is still fine, nothing panics, and
    // the velocity window keeps counting the earlier spend.
    lagos.id = "b2".into();
    let back = auth(&e, &lagos, t0() - Duration::hours(1));
    assert!(back.approved, "{:?}", back.reason);
    let used = e
        .with_card(&card, |c| {
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
    let mut nairobi = txn("b3", &card, "10.00", "USD");
    nairobi.merchant.country = Country::parse("KE").unwrap();
    nairobi.merchant.location = Some(LatLon {
        lat: -1.2921,
        lon: 36.8219,
    });
    let d = auth(&e, &nairobi, t0() + Duration::minutes(30));
    assert_eq!(
        (d.response_code.as_str(), d.rule.as_deref()),
        ("59", Some("impossible_travel"))
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
    card.authorize(p, &txn(id, "c", value, "USD"), at, None, None, 7)
        .0
        .approved
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
    let (e, card) = setup(Currency::USD, "5000.00");
    let mut t = txn("v1", &card, "10.005", "USD");
    assert_eq!(auth(&e, &t, t0()).response_code, "13");
    t.id = "v1b".into();
    t.amount = amount("-1");
    assert_eq!(auth(&e, &t, t0()).response_code, "13");
    t.id = "v1c".into();
    t.amount = amount("10");
    t.merchant.location = Some(LatLon {
        lat: 91.0,
        lon: 0.0,
    });
    assert_eq!(auth(&e, &t, t0()).response_code, "30");
    t.id = "v1d".into();
    t.merchant.location = None;
    t.merchant.mcc = Mcc::parse("7995").unwrap();
    let d = auth(&e, &t, t0());
    assert_eq!(
        (d.response_code.as_str(), d.rule.as_deref()),
        ("57", Some("no_gambling"))
    );
    assert_eq!(
        auth(&e, &txn("v2", "nope", "1", "USD"), t0()).response_code,
        "14"
    );
    // Nothing was held by any of the declines.
    assert_eq!(e.balance(&card).unwrap().pending, "0.00");
}

#[test]
fn declines_count_in_declined_windows_only() {
    let (e, card) = setup(Currency::USD, "5000.00");
    for i in 0..5 {
        let mut t = txn(&format!("g{i}"), &card, "5.00", "USD");
        t.merchant.mcc = Mcc::parse("7995").unwrap();
        assert!(!auth(&e, &t, t0() + Duration::minutes(i)).approved);
    }
    let d = auth(
        &e,
        &txn("ok", &card, "5.00", "USD"),
        t0() + Duration::minutes(10),
    );
    assert_eq!(
        (d.response_code.as_str(), d.rule.as_deref()),
        ("59", Some("card_testing"))
    );
    // An hour after the first declines they have left the window.
    let d = auth(
        &e,
        &txn("later", &card, "5.00", "USD"),
        t0() + Duration::minutes(65),
    );
    assert!(d.approved, "{:?}", d.reason);
}

#[test]
fn policy_swap_takes_effect_for_new_decisions() {
    let (e, card) = setup(Currency::USD, "5000.00");
    let before = auth(&e, &txn("p1", &card, "1.00", "USD"), t0());
    let mut set = rules();
    let mut p = (**set.get(CONSUMER).unwrap()).clone();
    p.version = "test-version".into();
    set.policies.insert(CONSUMER.into(), Arc::new(p));
    e.replace_policies(set);
    let after = auth(&e, &txn("p2", &card, "1.00", "USD"), t0());
    assert_ne!(before.policy_version, after.policy_version);
    assert_eq!(after.policy_version, "test-version");
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

/// Issue #8.16: travel speed compares the transactions' own times (clamped to the server's
/// clock: never in the future, at most a day old); windows keep the server's clock.
#[test]
fn travel_compares_the_transactions_own_times_clamped_to_the_server_clock() {
    let (e, card) = setup(Currency::USD, "5000.00");
    let lagos_at = LatLon {
        lat: 6.5244,
        lon: 3.3792,
    };
    let mut lagos = txn("tt1", &card, "10.00", "USD");
    lagos.merchant.location = Some(lagos_at);
    lagos.timestamp = Some(t0() - Duration::hours(6));
    assert!(auth(&e, &lagos, t0()).approved);
    let mut nairobi = txn("tt2", &card, "10.00", "USD");
    nairobi.merchant.country = Country::parse("KE").unwrap();
    nairobi.merchant.location = Some(LatLon {
        lat: -1.2921,
        lon: 36.8219,
    });
    nairobi.timestamp = Some(t0() + Duration::seconds(1));
    let d = auth(&e, &nairobi, t0() + Duration::seconds(1));
    assert!(d.approved, "about 3 800 km in six hours: {:?}", d.trace);
    // A timestamp in the future counts as the server's now: Lagos a minute later is not.
    let mut back = lagos.clone();
    back.id = "tt3".into();
    back.timestamp = Some(t0() + Duration::hours(10));
    let d = auth(&e, &back, t0() + Duration::minutes(1));
    assert_eq!(
        (d.response_code.as_str(), d.rule.as_deref()),
        ("59", Some("impossible_travel"))
    );
}

/// Issue #8.15: a script's `history.count("24h")` is exact on a busy card (it reads a real
/// window, not the last 64 decisions), and a window that is not a literal is refused when
/// the policy loads.
#[test]
fn script_history_is_exact_on_a_busy_card_and_windows_are_declared() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("busy.yaml");
    std::fs::write(
        &file,
        "policy: busy\ncurrency: USD\ntimezone: UTC\nrules:\n  - id: busy_card\n    when: 'history.count(\"24h\") >= 100'\n    decline: \"65\"\n",
    )
    .unwrap();
    let p = Arc::new(load_policy_file(&file).unwrap());
    assert_eq!(p.history_windows.len(), 1);
    let mut card = CardState::new("c1", "h1", "busy", Currency::USD);
    let mut approved = 0;
    let mut last = None;
    for i in 0..101 {
        let t = txn(&format!("b{i}"), "c1", "1.00", "USD");
        let now = t0() + Duration::minutes(i);
        let (d, _) = card.authorize(&p, &t, now, None, None, 7);
        approved += usize::from(d.approved);
        last = Some(d);
    }
    let last = last.unwrap();
    assert_eq!(approved, 100, "the first 100 pass");
    assert_eq!(
        (last.response_code.as_str(), last.rule.as_deref()),
        ("65", Some("busy_card")),
        "the 101st sees all 100 earlier approvals"
    );
    std::fs::write(
        &file,
        "policy: busy\ncurrency: USD\ntimezone: UTC\nrules:\n  - id: busy_card\n    when: 'let w = \"24h\"; history.count(w) >= 100'\n    decline: \"65\"\n",
    )
    .unwrap();
    let errors = load_policy_file(&file).unwrap_err();
    assert!(
        errors[0].message.contains("string literal"),
        "{}",
        errors[0]
    );
}

/// A program-wide and a cardholder-wide budget, nothing else.
const SHARED_BUDGETS: &str = r#"
policy: shared-budgets
currency: USD
timezone: Africa/Lagos
rules:
  - id: program_budget
    velocity: { window: 1h, amount_max: 100.00, scope: program }
    decline: "61"
  - id: holder_budget
    velocity: { window: 1h, amount_max: 30.00, scope: cardholder }
    decline: "61"
"#;

#[test]
fn many_cards_never_exceed_a_shared_budget_together() {
    // Each thread spends on a card of its own, so only the shared windows are common:
    // 4 cardholders with 2 cards each, ≤ 30.00 per holder and ≤ 100.00 in the program.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shared_budgets.yaml"), SHARED_BUDGETS).unwrap();
    let e = Engine::new(spendgate::policy::load_policy_dir(dir.path()).unwrap())
        .with_clock(fresh_clock());
    let cards = common::issue_cards(&e, "budgets", "shared-budgets", 8, 2, amount("1000.00"));
    let approved: Vec<u64> = std::thread::scope(|s| {
        let threads: Vec<_> = cards
            .iter()
            .enumerate()
            .map(|(th, card)| {
                let e = &e;
                s.spawn(move || {
                    let mut approved = 0;
                    for i in 0..40 {
                        let d = auth_now(e, &txn(&format!("t{th}-{i}"), card, "1.00", "USD"));
                        if d.approved {
                            approved += 1;
                        } else {
                            assert_eq!(d.response_code, "61", "{:?}", d.rule);
                        }
                    }
                    approved
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (holder, pair) in approved.chunks(2).enumerate() {
        assert!(
            pair.iter().sum::<u64>() <= 30,
            "holder {holder} spent {pair:?} × 1.00 of its 30.00"
        );
    }
    assert_eq!(
        approved.iter().sum::<u64>(),
        100,
        "the program's 100.00 is spent exactly, never more: {approved:?}"
    );
}
