//! The pure decision core: `decide(policy, card, txn, now) -> Decision`.
//!
//! No I/O, no clock of its own, no panics on input. The service runs it under the card's
//! lock and then applies `Decision::effects`.

mod engine;
mod rules;
mod trace;
mod types;

// The vocabulary lives in `domain`; re-exported so `decision::Country` etc. still read well.
pub use crate::domain::*;
pub use engine::decide;
pub use rules::script_txn;
pub use trace::{
    velocity_reset, Detail, RuleRef, TraceEntry, TraceLine, TraceOutcome, VelocityReset,
};
pub use types::*;

use std::borrow::Cow;

use rust_decimal::Decimal;
use serde::Serialize;
use smallvec::SmallVec;

use crate::money::{Currency, FxQuote};
use crate::velocity::Activity;

/// One window update the decision asks for; the service applies those whose `counts`
/// matches the outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VelocityEffect {
    pub scope: VelocityScope,
    pub key: u64,
    pub start_ms: i64,
    pub amount: Decimal,
    pub counts: Counts,
}

/// State changes that follow from a decision, applied atomically under the card's lock.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    pub velocity: SmallVec<[VelocityEffect; 8]>,
    /// `key_hash` of the authorization id, so reversals can find the window events.
    pub auth_key: u64,
    pub at_ms: i64,
    /// The location to remember for impossible-travel checks (approved, located only).
    pub location: Option<LatLon>,
    /// When the transaction happened at `location`: its own timestamp, clamped (see
    /// [`transaction_time_ms`]).
    pub location_at_ms: i64,
    pub activity: Option<Activity>,
}

/// How far in the past a transaction's own timestamp may lie; older ones count as this old.
pub const TXN_TIME_AGE_MAX_MS: i64 = 24 * 3_600_000;

/// The transaction's own time for travel checks: its `timestamp` when given, never after
/// the server's clock and at most [`TXN_TIME_AGE_MAX_MS`] before it. Windows keep the
/// server's clock.
pub fn transaction_time_ms(txn: &Authorization, now_ms: i64) -> i64 {
    match txn.timestamp {
        Some(t) => t
            .timestamp_millis()
            .clamp(now_ms.saturating_sub(TXN_TIME_AGE_MAX_MS), now_ms),
        None => now_ms,
    }
}

/// The answer to an authorization.
#[derive(Debug, Clone)]
pub struct Decision {
    pub approved: bool,
    pub response_code: ResponseCode,
    /// Why: `approved`, a rule's reason, or a step's reason (`card_frozen`, ...).
    pub reason: Cow<'static, str>,
    /// The rule that decided a decline, if a rule did.
    pub rule: Option<String>,
    /// In the card currency; less than requested on a partial approval (code 10).
    pub amount_approved: Decimal,
    /// The requested amount converted into the card currency.
    pub amount_card: Decimal,
    pub currency: Currency,
    pub fx: Option<FxQuote>,
    /// Rules that flagged the transaction for review (enforced `flag` outcomes).
    pub flags: SmallVec<[RuleRef; 2]>,
    pub score: i64,
    pub trace: Vec<TraceEntry>,
    pub policy_version: String,
    pub effects: Effects,
}

impl Decision {
    /// Renders the trace with rule ids and human-readable details.
    pub fn explain(
        &self,
        policy: &crate::policy::CompiledPolicy,
        controls: Option<&crate::policy::CompiledPolicy>,
    ) -> Vec<TraceLine> {
        self.trace
            .iter()
            .map(|t| t.render(policy, controls))
            .collect()
    }

    pub fn flag_ids(
        &self,
        policy: &crate::policy::CompiledPolicy,
        controls: Option<&crate::policy::CompiledPolicy>,
    ) -> Vec<String> {
        self.flags
            .iter()
            .map(|r| r.id(policy, controls).to_string())
            .collect()
    }
}

/// A decision as JSON and CLI show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DecisionSummary {
    pub approved: bool,
    #[schema(value_type = String)]
    pub response_code: ResponseCode,
    pub reason: String,
    pub rule: Option<String>,
    pub amount_approved: String,
    #[schema(value_type = String)]
    pub currency: Currency,
    pub flags: Vec<String>,
    pub score: i64,
    pub policy_version: String,
    pub trace: Vec<TraceLine>,
}

impl DecisionSummary {
    pub fn new(
        d: &Decision,
        policy: &crate::policy::CompiledPolicy,
        controls: Option<&crate::policy::CompiledPolicy>,
    ) -> DecisionSummary {
        DecisionSummary {
            approved: d.approved,
            response_code: d.response_code,
            reason: d.reason.to_string(),
            rule: d.rule.clone(),
            amount_approved: crate::money::format_amount(d.amount_approved, d.currency),
            currency: d.currency,
            flags: d.flag_ids(policy, controls),
            score: d.score,
            policy_version: d.policy_version.clone(),
            trace: d.explain(policy, controls),
        }
    }
}
