//! What operations answer, serialized once and replayed byte for byte on retries.

use std::time::Instant;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::CardState;
use crate::decision::{Authorization, Decision, TraceLine, TraceOutcome};
use crate::issuing::{CardKind, SpendingControls};
use crate::ledger::{AccountId, Hold, HoldStatus, Transfer};
use crate::money::{format_amount, Currency};
use crate::policy::CompiledPolicy;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuthorizationResponse {
    pub authorization_id: String,
    pub card_id: String,
    pub approved: bool,
    pub response_code: String,
    pub reason: String,
    pub rule: Option<String>,
    /// In the card currency.
    pub amount_approved: String,
    #[schema(value_type = String)]
    pub currency: Currency,
    /// Card-currency units per transaction-currency unit, when converted.
    pub fx_rate: Option<String>,
    pub available_after: Option<String>,
    pub flags: Vec<String>,
    pub score: i64,
    pub policy_version: String,
    /// Rules that did something (declined, flagged, scored, shadow, errored); rules that
    /// passed, did not apply or could not be evaluated are left out (`/v1/simulate` shows
    /// every rule).
    pub trace: Vec<TraceLine>,
    /// Time spent deciding, in microseconds (the commit wait is not included).
    pub latency_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Balance {
    #[schema(value_type = String)]
    pub currency: Currency,
    pub posted: String,
    pub pending: String,
    pub available: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CardResponse {
    pub id: String,
    pub program: String,
    pub cardholder_id: String,
    pub kind: CardKind,
    #[schema(value_type = String)]
    pub currency: Currency,
    pub last4: String,
    pub expiry: String,
    pub status: String,
    pub controls: Option<SpendingControls>,
    /// The processor's token for the card (processor hooks find the card by it).
    pub processor_card_token: Option<String>,
    pub balance: Balance,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransferResponse {
    pub transfer_id: String,
    pub kind: String,
    pub account: String,
    pub amount: String,
    #[schema(value_type = String)]
    pub currency: Currency,
    /// The card's (or funding account's) available balance afterwards.
    pub available_after: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HoldResponse {
    pub authorization_id: String,
    pub card_id: String,
    /// Amount of this operation in the card currency.
    pub amount: String,
    #[schema(value_type = String)]
    pub currency: Currency,
    pub hold_status: HoldStatus,
    pub pending: String,
    pub captured: String,
    pub available_after: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReversalResponse {
    pub authorization_id: String,
    /// False when the authorization was unknown: the reversal is recorded and answered.
    pub matched: bool,
    pub released: Option<String>,
    pub hold_status: Option<HoldStatus>,
    pub available_after: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExpiryReport {
    pub expired: Vec<String>,
}

impl ReversalResponse {
    /// The answer to a reversal of an authorization that is not known (here, or to
    /// this tenant): recorded and answered so the processor's retries settle.
    pub fn unmatched(auth_id: &str) -> ReversalResponse {
        ReversalResponse {
            authorization_id: auth_id.to_string(),
            matched: false,
            released: None,
            hold_status: None,
            available_after: None,
        }
    }
}

// ---- builders ---------------------------------------------------------------------------

pub(super) fn money(d: Decimal, c: Currency) -> String {
    format_amount(d, c)
}

pub(super) fn balance(s: &CardState) -> Balance {
    Balance {
        currency: s.currency,
        posted: money(s.account.posted, s.currency),
        pending: money(s.account.pending, s.currency),
        available: money(s.account.available(), s.currency),
    }
}

pub(super) fn transfer_response(
    t: &Transfer,
    account: &AccountId,
    available: Decimal,
    currency: Currency,
) -> TransferResponse {
    TransferResponse {
        transfer_id: t.id.clone(),
        kind: t.kind.as_str().to_string(),
        account: account.to_string(),
        amount: money(t.posting(account).abs(), currency),
        currency,
        available_after: money(available, currency),
    }
}

pub(super) fn hold_response(h: &Hold, amount: Decimal, available: Decimal) -> HoldResponse {
    let c = h.card_currency;
    HoldResponse {
        authorization_id: h.auth_id.clone(),
        card_id: h.card_id.clone(),
        amount: money(amount, c),
        currency: c,
        hold_status: h.status,
        pending: money(h.pending, c),
        captured: money(h.captured, c),
        available_after: money(available, c),
    }
}

pub(super) fn authorization_response(
    txn: &Authorization,
    d: &Decision,
    p: &CompiledPolicy,
    controls: Option<&CompiledPolicy>,
    available: Option<Decimal>,
    started: Instant,
) -> AuthorizationResponse {
    let trace = d
        .trace
        .iter()
        .filter(|t| {
            !matches!(
                t.outcome,
                TraceOutcome::Pass | TraceOutcome::NotApplicable | TraceOutcome::Skipped
            )
        })
        .map(|t| t.render(p, controls))
        .collect();
    AuthorizationResponse {
        authorization_id: txn.id.clone(),
        card_id: txn.card_id.clone(),
        approved: d.approved,
        response_code: d.response_code.to_string(),
        reason: d.reason.to_string(),
        rule: d.rule.clone(),
        amount_approved: money(d.amount_approved, d.currency),
        currency: d.currency,
        fx_rate: d.fx.map(|q| q.rate.normalize().to_string()),
        available_after: available.map(|a| money(a, d.currency)),
        flags: d.flag_ids(p, controls),
        score: d.score,
        policy_version: d.policy_version.clone(),
        trace,
        latency_us: started.elapsed().as_micros() as u64,
    }
}

/// The answer to an authorization whose ids are malformed (30, format error): nothing is
/// looked up, logged or stored, and the ids are echoed shortened.
pub fn format_error(txn: &Authorization, detail: &str) -> AuthorizationResponse {
    let mut r = step_decline(txn, "30", "format_error", "request", detail, 0);
    r.authorization_id = crate::domain::shorten(&txn.id);
    r.card_id = crate::domain::shorten(&txn.card_id);
    r
}

/// A decline decided by a built-in step before or around the rules (no such card,
/// missed deadline).
pub(super) fn step_decline(
    txn: &Authorization,
    code: &str,
    reason: &str,
    step: &str,
    detail: &str,
    latency_us: u64,
) -> AuthorizationResponse {
    AuthorizationResponse {
        authorization_id: txn.id.clone(),
        card_id: txn.card_id.clone(),
        approved: false,
        response_code: code.into(),
        reason: reason.into(),
        rule: None,
        amount_approved: "0".into(),
        currency: txn.currency,
        fx_rate: None,
        available_after: None,
        flags: vec![],
        score: 0,
        policy_version: String::new(),
        trace: vec![TraceLine {
            rule: step.into(),
            outcome: format!("decline {code}"),
            detail: detail.into(),
        }],
        latency_us,
    }
}
