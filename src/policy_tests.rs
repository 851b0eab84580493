//! Runs the tests embedded in policy files (`spendgate test`).
//!
//! Each test gets a fresh card, replays its `history` through the real engine (decide,
//! then apply effects), then decides the test transaction and compares the outcome.

use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use rust_decimal::Decimal;

use crate::decision::{
    decide, Authorization, CardStatus, Channel, Country, DecisionSummary, Expiry, KycStatus,
    LatLon, Mcc, Merchant, TxnType,
};
use crate::money::{parse_amount, Currency};
use crate::policy::raw::{RawExpect, RawTest, RawTestTxn};
use crate::policy::{CompiledPolicy, PolicyTestCase};
use crate::service::CardState;
use crate::velocity::{VelocityState, WindowSpec};

/// The result of one embedded test.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub name: String,
    pub line: usize,
    pub passed: bool,
    /// What was expected and what happened, when it failed.
    pub message: String,
    pub decision: Option<DecisionSummary>,
}

const DEFAULT_AT: &str = "2026-06-03T12:00";

fn pick<'a>(a: &'a Option<String>, b: &'a Option<String>) -> Option<&'a str> {
    a.as_deref().or(b.as_deref())
}

/// Builds an authorization from test fields over the policy's test defaults.
fn build_txn(
    p: &CompiledPolicy,
    t: &RawTestTxn,
    id: String,
    at: DateTime<Utc>,
) -> Result<Authorization, String> {
    let d = &p.test_defaults;
    let currency = match pick(&t.currency, &d.currency) {
        Some(c) => Currency::from_str(c).map_err(|e| e.to_string())?,
        None => p.currency,
    };
    let amount_text = t
        .amount
        .as_ref()
        .or(d.amount.as_ref())
        .map_or("10".to_string(), |s| s.0.clone());
    let amount = parse_amount(&amount_text, currency).map_err(|e| format!("amount: {e}"))?;
    let mcc_text = t
        .mcc
        .as_ref()
        .or(d.mcc.as_ref())
        .map_or("5999".to_string(), |s| s.0.clone());
    let channel = pick(&t.channel, &d.channel).unwrap_or("pos");
    let txn_type = pick(&t.txn_type, &d.txn_type).unwrap_or("purchase");
    let location = t.location.or(d.location).map(|l| LatLon {
        lat: l[0],
        lon: l[1],
    });
    Ok(Authorization {
        id,
        card_id: "test-card".into(),
        amount,
        currency,
        merchant: Merchant {
            id: pick(&t.merchant, &d.merchant)
                .unwrap_or("test-merchant")
                .to_string(),
            name: "Test merchant".into(),
            mcc: Mcc::parse(&mcc_text)?,
            country: Country::parse(pick(&t.country, &d.country).unwrap_or("US"))?,
            location,
        },
        channel: Channel::parse(channel).ok_or_else(|| format!("unknown channel `{channel}`"))?,
        txn_type: TxnType::parse(txn_type).ok_or_else(|| format!("unknown type `{txn_type}`"))?,
        timestamp: Some(at),
        partial_ok: t.partial_ok.or(d.partial_ok).unwrap_or(false),
    })
}

fn local_time(p: &CompiledPolicy, text: &str) -> Result<DateTime<Utc>, String> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
        .map_err(|_| format!("at `{text}` must be YYYY-MM-DDTHH:MM local time"))?;
    p.timezone
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("at `{text}` does not exist in {}", p.timezone))
}

fn card_for(p: &CompiledPolicy, t: &RawTest) -> Result<CardState, String> {
    // Cards default to the tests' default transaction currency, else the policy's.
    let currency = match &p.test_defaults.currency {
        Some(c) => Currency::from_str(c).map_err(|e| e.to_string())?,
        None => p.currency,
    };
    let mut card = CardState::new("test-card", "test-holder", &p.name, currency);
    if let Some(c) = &t.card {
        if let Some(cur) = &c.currency {
            card.currency = Currency::from_str(cur).map_err(|e| e.to_string())?;
        }
        if let Some(s) = &c.status {
            card.status =
                CardStatus::parse(s).ok_or_else(|| format!("unknown card status `{s}`"))?;
        }
        if let Some(k) = &c.kyc {
            card.kyc = KycStatus::parse(k).ok_or_else(|| format!("unknown kyc `{k}`"))?;
        }
        card.cardholder_blocked = c.blocked.unwrap_or(false);
        if let Some(a) = &c.available {
            let amount =
                parse_amount(a.as_str(), card.currency).map_err(|e| format!("available: {e}"))?;
            card.account = crate::ledger::CardAccount::new("test-card", card.currency);
            if amount > Decimal::ZERO {
                let funding = crate::ledger::AccountId::funding("test", card.currency);
                card.account
                    .transfer_with_funding(
                        "test",
                        crate::ledger::TransferKind::TopUp,
                        funding,
                        amount,
                        0,
                    )
                    .map_err(|e| format!("available: {e}"))?;
            }
            card.funds_tracked = true;
        }
        if let Some(e) = &c.expiry {
            let (y, m) = e
                .split_once('-')
                .ok_or_else(|| format!("expiry `{e}` must be YYYY-MM"))?;
            let exp = Expiry {
                year: y
                    .parse()
                    .map_err(|_| format!("expiry `{e}` must be YYYY-MM"))?,
                month: m
                    .parse()
                    .map_err(|_| format!("expiry `{e}` must be YYYY-MM"))?,
            };
            if exp.first_day().is_none() {
                return Err(format!("expiry `{e}` is not a month"));
            }
            card.expiry = Some(exp);
        }
    }
    Ok(card)
}

fn run_one(
    p: &CompiledPolicy,
    case: &PolicyTestCase,
) -> Result<(bool, String, DecisionSummary), String> {
    let t = &case.raw;
    let at_text = t
        .txn
        .at
        .as_deref()
        .or(p.test_defaults.at.as_deref())
        .unwrap_or(DEFAULT_AT);
    let at = local_time(p, at_text)?;
    let mut card = card_for(p, t)?;
    let mut holder = VelocityState::default();
    let mut program = VelocityState::default();
    // History runs oldest first.
    let mut history = Vec::new();
    for (i, h) in t.history.iter().enumerate() {
        let ago = match WindowSpec::parse(&h.ago) {
            Ok(WindowSpec::Rolling { length_ms }) => length_ms,
            _ => {
                return Err(format!(
                    "history[{i}].ago `{}` must be a length like 2h (10s..400d)",
                    h.ago
                ))
            }
        };
        let when = at - chrono::Duration::milliseconds(ago);
        let when = match &h.txn.at {
            Some(text) => local_time(p, text)?,
            None => when,
        };
        history.push((when, i, h));
    }
    history.sort_by_key(|(when, i, _)| (*when, *i));
    for (when, i, h) in history {
        let txn = build_txn(p, &h.txn, format!("history-{i}"), when)?;
        card.authorize(
            p,
            &txn,
            when,
            Some(&mut holder),
            Some(&mut program),
            crate::ledger::HOLD_EXPIRY_DAYS_DEFAULT,
        );
    }
    let txn = build_txn(p, &t.txn, "test".into(), at)?;
    let d = decide(p, &card.view(Some(&holder), Some(&program)), &txn, at);
    let summary = DecisionSummary::new(&d, p, None);
    let got = format!(
        "{} {} (rule {}, reason {}, flags [{}])",
        if d.approved { "approve" } else { "decline" },
        d.response_code,
        summary.rule.as_deref().unwrap_or("-"),
        summary.reason,
        summary.flags.join(", ")
    );
    let (ok, want) = match &t.expect {
        RawExpect::Word(w) => match w.as_str() {
            "approve" => (d.approved, "approve".to_string()),
            "decline" => (!d.approved, "decline".to_string()),
            "flag" => (
                d.approved && !d.flags.is_empty(),
                "approve with a flag".to_string(),
            ),
            other => {
                return Err(format!(
                    "expect `{other}` must be approve, decline, flag or a mapping"
                ))
            }
        },
        RawExpect::Detail(x) => {
            let mut ok = true;
            let mut want = Vec::new();
            if let Some(a) = x.approve {
                ok &= d.approved == a;
                want.push(if a {
                    "approve".to_string()
                } else {
                    "decline".to_string()
                });
            }
            if let Some(code) = &x.decline {
                ok &= !d.approved && d.response_code.as_str() == code.as_str();
                want.push(format!("decline {}", code.as_str()));
            }
            if let Some(rule) = &x.rule {
                ok &= summary.rule.as_deref() == Some(rule.as_str());
                want.push(format!("rule {rule}"));
            }
            if let Some(flag) = &x.flag {
                ok &= summary.flags.iter().any(|f| f == flag);
                want.push(format!("flag {flag}"));
            }
            if let Some(amount) = &x.amount_approved {
                let a = Decimal::from_str(amount.as_str())
                    .map_err(|e| format!("amount_approved: {e}"))?;
                ok &= d.amount_approved == a;
                want.push(format!("amount_approved {a}"));
            }
            if want.is_empty() {
                return Err(
                    "expect mapping needs approve, decline, rule, flag or amount_approved".into(),
                );
            }
            (ok, want.join(", "))
        }
    };
    let message = if ok {
        String::new()
    } else {
        format!("expected {want}, got {got}")
    };
    Ok((ok, message, summary))
}

/// Runs all embedded tests of a policy.
pub fn run_policy_tests(p: &CompiledPolicy) -> Vec<TestResult> {
    p.tests
        .iter()
        .map(|case| match run_one(p, case) {
            Ok((passed, message, decision)) => TestResult {
                name: case.name.clone(),
                line: case.line,
                passed,
                message,
                decision: Some(decision),
            },
            Err(e) => TestResult {
                name: case.name.clone(),
                line: case.line,
                passed: false,
                message: format!("invalid test: {e}"),
                decision: None,
            },
        })
        .collect()
}
