//! Fixtures shared by the benches: the reference policy, a warm card, transactions.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;

use spendgate::decision::{Authorization, Channel, Country, LatLon, Mcc, Merchant, TxnType};
use spendgate::ledger::{AccountId, TransferKind};
use spendgate::money::Currency;
use spendgate::policy::{load_policy_dir, CompiledPolicy};
use spendgate::service::CardState;
use spendgate::velocity::VelocityState;

pub const POLICY: &str = "consumer-prepaid-africa";

pub fn policy() -> Arc<CompiledPolicy> {
    let set = load_policy_dir(Path::new("rules")).expect("reference rules load");
    set.get(POLICY).expect("reference policy").clone()
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 3, 11, 0, 0).unwrap()
}

pub fn txn(i: u64, card: &str) -> Authorization {
    let mccs = ["5411", "5812", "5999", "4121", "5732"];
    Authorization {
        id: format!("auth-{i}"),
        card_id: card.to_string(),
        amount: Decimal::new(150_000 + (i % 7) as i64 * 10_000, 2), // 1500.00.. NGN
        currency: Currency::NGN,
        merchant: Merchant {
            id: format!("merchant-{}", i % 50),
            name: "Shoprite Lekki".into(),
            mcc: Mcc::parse(mccs[(i % 5) as usize]).unwrap(),
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

pub fn fund(card: &mut CardState, amount: Decimal) {
    let funding = AccountId::funding("bench", card.currency);
    card.account
        .transfer_with_funding("bench", TransferKind::TopUp, funding, amount, 0)
        .unwrap();
    card.funds_tracked = true;
}

/// A card with ten earlier approvals, as a typical active card has.
pub fn warm_card(p: &CompiledPolicy) -> (CardState, VelocityState, VelocityState) {
    let mut card = CardState::new("card-1", "holder-1", POLICY, Currency::NGN);
    fund(&mut card, Decimal::new(500_000_000, 2));
    let (mut h, mut g) = (VelocityState::default(), VelocityState::default());
    for i in 0..10 {
        let now = t0() + Duration::minutes(i * 30);
        card.authorize(
            p,
            &txn(i as u64, "card-1"),
            now,
            Some(&mut h),
            Some(&mut g),
            7,
        );
    }
    (card, h, g)
}

/// Program `program` (USD, reference policy) with a large funding account and `n` active
/// virtual cards, one per cardholder, each topped up with `each`. Returns the card ids.
pub fn issue_cards(
    e: &spendgate::service::Engine,
    program: &str,
    n: usize,
    each: Decimal,
) -> Vec<String> {
    use spendgate::decision::KycStatus;
    use spendgate::issuing::{CardKind, Cardholder, Program};
    use spendgate::service::{NewCard, Pending};
    e.create_program(Program {
        id: program.into(),
        policy: POLICY.into(),
        currency: Currency::USD,
    })
    .map(Pending::wait)
    .unwrap();
    e.deposit("d", program, Decimal::new(1_000_000_000, 0), Currency::USD)
        .map(Pending::wait)
        .unwrap();
    (0..n)
        .map(|i| {
            let h = format!("h{i}");
            e.create_cardholder(
                &h,
                Cardholder {
                    id: h.clone(),
                    program: program.into(),
                    name: "Bench".into(),
                    kyc: KycStatus::Verified,
                    blocked: false,
                },
            )
            .map(Pending::wait)
            .unwrap();
            let c: spendgate::service::responses::CardResponse = serde_json::from_str(
                &e.issue_card(
                    &h,
                    NewCard {
                        program: program.into(),
                        cardholder_id: h.clone(),
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
            e.move_funds(&h, &c.id, TransferKind::TopUp, each)
                .map(Pending::wait)
                .unwrap();
            c.id
        })
        .collect()
}

/// Authorizes `t` (the `i`th of a run) and settles some approvals as traffic does: a
/// third captured in full, a tenth of the rest reversed.
pub fn authorize_and_settle(e: &spendgate::service::Engine, t: &Authorization, i: usize) {
    use spendgate::service::{AuthContext, Pending};
    let approved = e
        .authorize(t, &AuthContext::default())
        .map(Pending::wait)
        .is_ok_and(|a| a.approved);
    if approved && i % 3 == 0 {
        let _ = e
            .capture("p", &format!("c{}", t.id), &t.id, t.amount, true)
            .map(Pending::wait);
    } else if approved && i % 10 == 1 {
        let _ = e
            .reverse("p", &format!("r{}", t.id), &t.id, None)
            .map(Pending::wait);
    }
}

/// Five conditions as one Rhai `when:` expression, for comparing Rhai inside a policy
/// with the same compiled expression alone (issue 10).
pub const FIVE_CONDITIONS: &str = r#"txn.amount < 100000.to_decimal() && txn.country == "NG" && txn.mcc != "7995" && card.status == "active" && history.count("1h") < 50"#;

/// A one-rule policy with [`FIVE_CONDITIONS`], the same rule with one structured condition
/// instead (what `decide()` costs around the expression), a warm card and the expression
/// compiled alone.
pub struct RhaiFive {
    pub policy: Arc<CompiledPolicy>,
    pub structured: Arc<CompiledPolicy>,
    pub card: CardState,
    pub holder: VelocityState,
    pub program: VelocityState,
    pub txn: Authorization,
    pub now: DateTime<Utc>,
    pub ast: rhai::AST,
}

impl RhaiFive {
    pub fn new() -> RhaiFive {
        let one_rule = |when: &str| {
            let text = format!(
                "policy: {POLICY}\ncurrency: NGN\ntimezone: Africa/Lagos\nrules:\n  - id: one\n    when: {when}\n    flag: true\n"
            );
            Arc::new(
                spendgate::policy::compile_policy(
                    Path::new("one.yaml"),
                    &text,
                    policy().fx.clone(),
                    &|_| Err(std::io::Error::other("no scripts")),
                )
                .expect("the bench policy compiles"),
            )
        };
        let policy = one_rule(&format!("'{FIVE_CONDITIONS}'"));
        let structured = one_rule("{ channel: [pos] }");
        let (card, holder, program) = warm_card(&policy);
        RhaiFive {
            policy,
            structured,
            card,
            holder,
            program,
            txn: txn(99, "card-1"),
            now: t0() + Duration::hours(6),
            ast: spendgate::policy::script::compile_condition(FIVE_CONDITIONS)
                .expect("the expression compiles"),
        }
    }

    pub fn view(&self) -> spendgate::decision::CardView<'_> {
        self.card.view(Some(&self.holder), Some(&self.program))
    }

    /// The expression's inputs as a bare run builds them: per call, from the transaction,
    /// with the one window it reads.
    pub fn inputs(&self) -> spendgate::policy::script::ScriptInputs {
        use spendgate::policy::script::{
            LocalTime, ScriptCard, ScriptHistory, ScriptInputs, ScriptLists,
        };
        let t = &self.txn;
        ScriptInputs::new(
            spendgate::decision::script_txn(
                t,
                t.amount,
                LocalTime::new(self.now, chrono_tz::Africa::Lagos, None),
            ),
            ScriptCard {
                status: spendgate::decision::CardStatus::Active,
                currency: Currency::NGN,
                kyc: spendgate::decision::KycStatus::Verified,
                available: None,
                last_location: None,
                minutes_since_last: None,
            },
            ScriptHistory {
                now_ms: self.now.timestamp_millis(),
                events: None,
                windows: Arc::from(vec![(
                    3_600_000,
                    spendgate::velocity::Totals::default(),
                    spendgate::velocity::Totals::default(),
                )]),
                countries: None,
            },
            ScriptLists::default(),
        )
    }
}
