//! Fixtures shared by the integration tests: the real rules directory and transactions.
#![allow(dead_code)]

pub mod instance;
pub mod ops;
pub mod pg;

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use spendgate::clock::ManualClock;
use spendgate::decision::{Authorization, Channel, Country, LatLon, Mcc, Merchant, TxnType};
use spendgate::money::Currency;
use spendgate::policy::{load_policy_dir, PolicySet};

pub fn rules() -> PolicySet {
    load_policy_dir(Path::new("rules")).expect("shipped rules load")
}

/// The shipped `daily_spend` velocity line.
pub const DAILY_SPEND: &str = "velocity: { window: 24h, amount_max: 1000.00, count_max: 20 }";

/// A copy of the shipped rules (scripts and FX included) in `dir`, with `daily_spend`'s
/// velocity line replaced by `velocity`, loaded.
pub fn rules_with_daily_spend(dir: &Path, velocity: &str) -> PolicySet {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    copy(Path::new("rules"), dir);
    let file = dir.join("consumer_prepaid.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(DAILY_SPEND),
        "the shipped daily_spend rule changed"
    );
    std::fs::write(&file, text.replace(DAILY_SPEND, velocity)).unwrap();
    load_policy_dir(dir).unwrap()
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 3, 11, 0, 0).unwrap()
}

pub fn amount(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// A plain card-present grocery purchase in Lagos.
pub fn txn(id: &str, card: &str, value: &str, currency: &str) -> Authorization {
    Authorization {
        id: id.to_string(),
        card_id: card.to_string(),
        amount: amount(value),
        currency: Currency::from_code(currency).unwrap(),
        merchant: Merchant {
            id: format!("merchant-{id}"),
            name: "Shoprite".into(),
            mcc: Mcc::parse("5411").unwrap(),
            country: Country::parse("NG").unwrap(),
            location: Some(LatLon {
                lat: 6.45,
                lon: 3.40,
            }),
        },
        channel: Channel::Pos,
        txn_type: TxnType::Purchase,
        timestamp: None,
        partial_ok: false,
    }
}

thread_local! {
    static CLOCK: RefCell<Option<Arc<ManualClock>>> = const { RefCell::new(None) };
}

/// This test thread's clock, set back to `t0()`: engines built with it read the time the
/// test sets with [`at`].
pub fn fresh_clock() -> Arc<ManualClock> {
    CLOCK.with(|c| {
        let clock = Arc::new(ManualClock::new(t0()));
        *c.borrow_mut() = Some(clock.clone());
        clock
    })
}

/// Runs `f` with this thread's clock set to `when`. Only the thread that built the
/// engine holds its clock: elsewhere this panics rather than set a clock nobody reads.
pub fn at<R>(when: DateTime<Utc>, f: impl FnOnce() -> R) -> R {
    CLOCK.with(|c| {
        c.borrow()
            .as_ref()
            .expect("no engine clock on this thread (build the engine here)")
            .set(when)
    });
    f()
}

/// Program `program` (USD, on `policy`) with a large funded funding account and `n`
/// active cards, `per_holder` cards to each verified cardholder `h0, h1, …`, each topped
/// up with `each` (none when zero). Returns the card ids in order.
pub fn issue_cards(
    e: &spendgate::service::Engine,
    program: &str,
    policy: &str,
    n: usize,
    per_holder: usize,
    each: Decimal,
) -> Vec<String> {
    use spendgate::decision::KycStatus;
    use spendgate::issuing::{CardKind, Cardholder, Program};
    use spendgate::ledger::TransferKind;
    use spendgate::service::{NewCard, Pending};
    e.create_program(Program {
        id: program.into(),
        policy: policy.into(),
        currency: Currency::USD,
    })
    .map(Pending::wait)
    .unwrap();
    e.deposit("dep", program, amount("1000000000.00"), Currency::USD)
        .map(Pending::wait)
        .unwrap();
    (0..n)
        .map(|i| {
            let holder = format!("h{}", i / per_holder.max(1));
            if i % per_holder.max(1) == 0 {
                e.create_cardholder(
                    &holder,
                    Cardholder {
                        id: holder.clone(),
                        program: program.into(),
                        name: "Ama Mensah".into(),
                        kyc: KycStatus::Verified,
                        blocked: false,
                    },
                )
                .map(Pending::wait)
                .unwrap();
            }
            let json = e
                .issue_card(
                    &format!("card{i}"),
                    NewCard {
                        program: program.into(),
                        cardholder_id: holder,
                        kind: CardKind::Physical,
                        currency: None,
                        controls: None,
                        active: true,
                        expiry: None,
                        processor_card_token: None,
                    },
                )
                .map(Pending::wait)
                .unwrap();
            let card: spendgate::service::responses::CardResponse =
                serde_json::from_str(&json).unwrap();
            if !each.is_zero() {
                e.move_funds(&format!("fund{i}"), &card.id, TransferKind::TopUp, each)
                    .map(Pending::wait)
                    .unwrap();
            }
            card.id
        })
        .collect()
}
