//! `spendgate replay`: authorizations, stored or generated, run in time order through a
//! candidate policy set next to the decisions actually made.
//!
//! - Velocity windows, the activity log and the travel anchor are rebuilt from the
//!   candidate's own decisions as the replay goes (the same `decide()` and
//!   `CardState::apply` as the service).
//! - Funds: the card's available balance as recorded at each decision, corrected by the
//!   holds the candidate placed that history did not (released at their expiry) and the
//!   holds history placed that the candidate did not (until history released them).
//! - Reversals, expiries and under-captures give velocity back at the times history
//!   recorded them.
//! - Decisions refused on the card's facts at the time (status, expiry, KYC, an unknown
//!   card, a missed deadline) are carried over unchanged: no policy can alter them, and
//!   the facts are not in the policy's reach.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::decision::{decide, Authorization, TraceOutcome};
use crate::issuing::SpendingControls;
use crate::money::Currency;
use crate::policy::{CompiledPolicy, PolicySet};
use crate::service::CardState;
use crate::velocity::VelocityState;

/// Reasons that come from the card's facts, not the policy: carried over as they were.
const CARD_FACTS: [&str; 10] = [
    "card_terminated",
    "card_lost",
    "card_stolen",
    "card_frozen",
    "card_inactive",
    "card_expired",
    "cardholder_blocked",
    "kyc_not_verified",
    "card_not_found",
    "deadline_exceeded",
];

/// How long a hold the candidate placed (and history did not) reserves funds: the
/// service's default hold expiry.
const HOLD_EXPIRY_MS: i64 = 7 * 86_400_000;

/// One authorization of a stream: what `spendgate decisions` prints, what `spendgate gen`
/// writes (without `before`), what `replay --input` and `loadgen --input` read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayRecord {
    /// When it was decided.
    pub at: DateTime<Utc>,
    pub program: String,
    /// The policy (by name) that governs the card.
    pub policy: String,
    pub cardholder_id: String,
    pub card_currency: Currency,
    /// Available balance before the decision, card currency; absent when funds are not
    /// tracked.
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub available: Option<Decimal>,
    pub request: Authorization,
    /// What was decided then; absent for generated traffic.
    #[serde(default)]
    pub before: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub approved: bool,
    pub response_code: String,
    pub reason: String,
    pub rule: Option<String>,
    /// Card currency.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_approved: Decimal,
}

/// Velocity given back by history (a reversal, an expiry, a capture below the hold).
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub card_id: String,
    pub auth_id: String,
    pub ratio: Decimal,
    pub at_ms: i64,
}

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub program: Option<String>,
}

impl ReplayFilter {
    fn keeps(&self, r: &ReplayRecord) -> bool {
        self.from.is_none_or(|f| r.at >= f)
            && self.to.is_none_or(|t| r.at < t)
            && self.program.as_ref().is_none_or(|p| *p == r.program)
    }
}

/// Everything the reports show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Candidate policies: name → version.
    pub policies: BTreeMap<String, String>,
    pub decisions: u64,
    /// Decisions with a recorded outcome to compare against.
    pub compared: u64,
    /// Carried over unchanged (refused on the card's facts).
    pub carried_over: u64,
    pub codes_before: BTreeMap<String, u64>,
    pub codes_after: BTreeMap<String, u64>,
    pub approved_before: u64,
    pub approved_after: u64,
    /// By transaction currency.
    pub amounts: BTreeMap<String, AmountTotals>,
    /// How often each rule decided a decline, before and after.
    pub rules: BTreeMap<String, BeforeAfter>,
    /// How often each shadow rule would have fired (candidate).
    pub shadow: BTreeMap<String, u64>,
    /// By UTC day.
    pub days: BTreeMap<String, DayTotals>,
    /// Decisions whose approval flipped, in time order.
    pub flips: Vec<Flip>,
    /// Decisions whose response code changed without flipping.
    pub code_changes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BeforeAfter {
    pub before: u64,
    pub after: u64,
}

/// Amounts in one transaction currency.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AmountTotals {
    #[serde(with = "rust_decimal::serde::str")]
    pub approved_before: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub approved_after: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub declined_before: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub declined_after: Decimal,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DayTotals {
    pub decisions: u64,
    pub compared: u64,
    pub approved_before: u64,
    pub approved_after: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flip {
    pub authorization_id: String,
    pub card_id: String,
    pub at: DateTime<Utc>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: Currency,
    pub before: String,
    pub after: String,
    /// The rule that decided the decline (after, or before when the candidate approves).
    pub rule: Option<String>,
}

impl ReplayReport {
    pub fn approval_rate_before(&self) -> f64 {
        rate(self.approved_before, self.compared)
    }

    pub fn approval_rate_after(&self) -> f64 {
        rate(self.approved_after, self.decisions)
    }
}

fn rate(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

/// One card as the replay keeps it.
struct ReplayCard {
    state: CardState,
    /// Candidate's available balance minus history's, card currency.
    adjustment: Decimal,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReplayError {
    #[error("no policy `{0}` in the candidate rules (the card's program uses it)")]
    UnknownPolicy(String),
    #[error("card `{card}`: its spending controls do not compile: {error}")]
    Controls { card: String, error: String },
}

/// Runs `records` (any order: sorted here) and `releases` through `policies`.
/// `controls` are the cards' own spending controls; `progress` is told how many records
/// are done.
pub fn replay(
    policies: &PolicySet,
    controls: &HashMap<String, SpendingControls>,
    mut records: Vec<ReplayRecord>,
    mut releases: Vec<Release>,
    filter: &ReplayFilter,
    mut progress: impl FnMut(u64),
) -> Result<ReplayReport, ReplayError> {
    records.retain(|r| filter.keeps(r));
    // Stable: within one millisecond, the store's commit order.
    records.sort_by_key(|r| r.at);
    // A release goes right after its own authorization when both fall in the same
    // millisecond (a reversal never precedes what it reverses); otherwise at the start
    // of its millisecond.
    let index: HashMap<(&str, &str), (usize, i64)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                (r.request.card_id.as_str(), r.request.id.as_str()),
                (i, r.at.timestamp_millis()),
            )
        })
        .collect();
    let mut ordered: Vec<(i64, i64, Release)> = releases
        .drain(..)
        .map(|rel| {
            let after = match index.get(&(rel.card_id.as_str(), rel.auth_id.as_str())) {
                Some(&(i, at)) if at == rel.at_ms => i as i64,
                _ => -1,
            };
            (rel.at_ms, after, rel)
        })
        .collect();
    drop(index);
    ordered.sort_by_key(|(at, after, _)| (*at, *after));
    let mut report = ReplayReport {
        policies: policies
            .policies
            .values()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect(),
        ..ReplayReport::default()
    };
    let mut cards: HashMap<String, ReplayCard> = HashMap::new();
    let mut holders: HashMap<String, VelocityState> = HashMap::new();
    let mut programs: HashMap<String, VelocityState> = HashMap::new();
    let mut compiled: HashMap<String, Option<Arc<CompiledPolicy>>> = HashMap::new();
    // (card, authorization) → history's hold minus the candidate's, for holds history
    // placed: released as history released them.
    let mut differences: HashMap<(String, String), Decimal> = HashMap::new();
    // Holds only the candidate placed, released at their expiry: (at_ms, card, amount).
    let mut expiries: BinaryHeap<Reverse<(i64, String, Decimal)>> = BinaryHeap::new();
    let mut next_release = 0;
    for (done, r) in records.into_iter().enumerate() {
        let at_ms = r.at.timestamp_millis();
        while next_release < ordered.len()
            && (ordered[next_release].0, ordered[next_release].1) < (at_ms, done as i64)
        {
            let rel = &ordered[next_release].2;
            next_release += 1;
            let Some(card) = cards.get_mut(&rel.card_id) else {
                continue;
            };
            let holder = holders.get_mut(&card.state.cardholder_id);
            let program = programs.get_mut(&card.state.program);
            card.state
                .release_velocity(&rel.auth_id, rel.ratio, holder, program);
            if let Some(diff) = differences.get(&(rel.card_id.clone(), rel.auth_id.clone())) {
                card.adjustment -= *diff * rel.ratio.min(Decimal::ONE);
            }
        }
        while let Some(Reverse((t, _, _))) = expiries.peek() {
            if *t > at_ms {
                break;
            }
            let Some(Reverse((_, card, amount))) = expiries.pop() else {
                break;
            };
            if let Some(c) = cards.get_mut(&card) {
                c.adjustment += amount;
            }
        }
        let policy = policies
            .get(&r.policy)
            .ok_or_else(|| ReplayError::UnknownPolicy(r.policy.clone()))?;
        let card_id = r.request.card_id.clone();
        if !cards.contains_key(&card_id) {
            let mut state = CardState::new(&card_id, &r.cardholder_id, &r.policy, r.card_currency);
            state.program = r.program.clone();
            state.controls = match compiled.get(&card_id) {
                Some(c) => c.clone(),
                None => {
                    let c = match controls.get(&card_id).filter(|c| !c.is_empty()) {
                        Some(c) => Some(Arc::new(
                            c.compile(r.card_currency, policy.timezone, policies.fx.clone())
                                .map_err(|error| ReplayError::Controls {
                                    card: card_id.clone(),
                                    error,
                                })?,
                        )),
                        None => None,
                    };
                    compiled.insert(card_id.clone(), c.clone());
                    c
                }
            };
            cards.insert(
                card_id.clone(),
                ReplayCard {
                    state,
                    adjustment: Decimal::ZERO,
                },
            );
        }
        let card = cards.get_mut(&card_id).expect("inserted above");
        let day = r.at.format("%Y-%m-%d").to_string();
        let currency = r.request.currency.code().to_string();
        report.decisions += 1;
        let day_totals = report.days.entry(day).or_default();
        day_totals.decisions += 1;
        let carried = r
            .before
            .as_ref()
            .is_some_and(|b| !b.approved && CARD_FACTS.contains(&b.reason.as_str()));
        let after = if carried {
            report.carried_over += 1;
            r.before.clone().expect("carried decisions have one")
        } else {
            let holder = holders.entry(r.cardholder_id.clone()).or_default();
            let program = programs.entry(r.program.clone()).or_default();
            let mut view = card.state.view(Some(holder), Some(program));
            view.available = r.available.map(|a| a + card.adjustment);
            let d = decide(policy, &view, &r.request, r.at);
            card.state
                .apply(d.approved, &d.effects, Some(holder), Some(program));
            for t in &d.trace {
                if matches!(
                    t.outcome,
                    TraceOutcome::ShadowDecline(_)
                        | TraceOutcome::ShadowFlag
                        | TraceOutcome::ShadowScore(_)
                ) {
                    *report
                        .shadow
                        .entry(
                            t.rule
                                .id(policy, card.state.controls.as_deref())
                                .to_string(),
                        )
                        .or_default() += 1;
                }
            }
            Outcome {
                approved: d.approved,
                response_code: d.response_code.to_string(),
                reason: d.reason.to_string(),
                rule: d.rule,
                amount_approved: d.amount_approved,
            }
        };
        // Funds: the difference between history's hold and the candidate's.
        let held_before = r
            .before
            .as_ref()
            .filter(|b| b.approved)
            .map_or(Decimal::ZERO, |b| b.amount_approved);
        let held_after = if after.approved {
            after.amount_approved
        } else {
            Decimal::ZERO
        };
        let diff = held_before - held_after;
        if !diff.is_zero() && r.available.is_some() {
            card.adjustment += diff;
            if held_before.is_zero() {
                expiries.push(Reverse((
                    at_ms + HOLD_EXPIRY_MS,
                    card_id.clone(),
                    held_after,
                )));
            } else {
                differences.insert((card_id.clone(), r.request.id.clone()), diff);
            }
        }
        *report
            .codes_after
            .entry(after.response_code.clone())
            .or_default() += 1;
        let totals = report.amounts.entry(currency).or_default();
        if after.approved {
            report.approved_after += 1;
            day_totals.approved_after += 1;
            totals.approved_after += r.request.amount;
        } else {
            totals.declined_after += r.request.amount;
        }
        if let Some(rule) = after.rule.as_ref().filter(|_| !after.approved) {
            report.rules.entry(rule.clone()).or_default().after += 1;
        }
        if let Some(b) = &r.before {
            report.compared += 1;
            day_totals.compared += 1;
            *report
                .codes_before
                .entry(b.response_code.clone())
                .or_default() += 1;
            if b.approved {
                report.approved_before += 1;
                day_totals.approved_before += 1;
                totals.approved_before += r.request.amount;
            } else {
                totals.declined_before += r.request.amount;
            }
            if let Some(rule) = b.rule.as_ref().filter(|_| !b.approved) {
                report.rules.entry(rule.clone()).or_default().before += 1;
            }
            if b.approved != after.approved {
                report.flips.push(Flip {
                    authorization_id: r.request.id.clone(),
                    card_id: card_id.clone(),
                    at: r.at,
                    amount: r.request.amount,
                    currency: r.request.currency,
                    before: b.response_code.clone(),
                    after: after.response_code.clone(),
                    rule: after.rule.clone().or_else(|| b.rule.clone()),
                });
            } else if b.response_code != after.response_code {
                report.code_changes += 1;
            }
        }
        progress(done as u64 + 1);
    }
    Ok(report)
}

/// Milliseconds since the epoch as a time (out-of-range values clamp to the epoch).
pub fn at_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(|| Utc.timestamp_millis_opt(0).unwrap())
}
