//! The answer record: what the caller was told, less the two ids the body holds.
//!
//! Format 2 leaves out what the rest of the answer already says: the reason when it is
//! the rule's id, and in each trace line the rule when it is the answer's rule and the
//! outcome when it is `decline {response code}` — a declined answer's decisive line
//! repeats both (33 of a card-testing decline's 171 bytes). Format 1 (every field
//! written out) is still read.

use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::super::effects::CodecError;
use super::super::responses::AuthorizationResponse;
use crate::decision::TraceLine;
use crate::money::Currency;

/// The format this code writes.
const FORMAT: u8 = 2;
/// Every field as the response has it.
const FORMAT_V1: u8 = 1;

/// What a trace line's outcome says when the line is the decline the answer reports.
const DECLINE: &str = "decline ";

/// An answer record, decoded.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Answer {
    pub approved: bool,
    pub response_code: String,
    pub reason: String,
    pub rule: Option<String>,
    pub amount_approved: String,
    pub currency: Currency,
    pub fx_rate: Option<String>,
    pub available_after: Option<String>,
    pub flags: Vec<String>,
    pub score: i64,
    pub policy_version: String,
    pub trace: Vec<TraceLine>,
    pub latency_us: u64,
}

/// `AnswerRef::state`: approved.
const APPROVED: u8 = 1;
/// `AnswerRef::state`: the reason is the rule's id (and left out).
const REASON_IS_RULE: u8 = 1 << 1;

impl Answer {
    /// The answer as it was sent, with the two ids the record leaves to the request.
    pub(super) fn into_response(self, auth_id: &str, card_id: &str) -> AuthorizationResponse {
        AuthorizationResponse {
            authorization_id: auth_id.to_string(),
            card_id: card_id.to_string(),
            approved: self.approved,
            response_code: self.response_code,
            reason: self.reason,
            rule: self.rule,
            amount_approved: self.amount_approved,
            currency: self.currency,
            fx_rate: self.fx_rate,
            available_after: self.available_after,
            flags: self.flags,
            score: self.score,
            policy_version: self.policy_version,
            trace: self.trace,
            latency_us: self.latency_us,
        }
    }
}

/// The answer record of `r` (a deadline's 91 replaces a decision's answer with its own).
pub(super) fn encode(r: &AuthorizationResponse) -> Vec<u8> {
    let rule = r.rule.as_deref();
    let reason_is_rule = Some(r.reason.as_str()) == rule;
    let record = AnswerRef {
        state: (u8::from(r.approved) * APPROVED) | (u8::from(reason_is_rule) * REASON_IS_RULE),
        response_code: &r.response_code,
        reason: if reason_is_rule { "" } else { &r.reason },
        rule: &r.rule,
        amount_approved: &r.amount_approved,
        currency: r.currency,
        fx_rate: &r.fx_rate,
        available_after: &r.available_after,
        flags: &r.flags,
        score: r.score,
        policy_version: &r.policy_version,
        trace: Lines {
            lines: &r.trace,
            rule,
            code: &r.response_code,
        },
        latency_us: r.latency_us,
    };
    // Room for a typical answer (≈ 200 bytes): growing from one byte was a dozen copies.
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT);
    // Plain fields always serialize.
    postcard::to_io(&record, &mut out).expect("postcard writes to a Vec");
    out
}

/// Reads an answer record of either format.
pub(super) fn decode(bytes: &[u8]) -> Result<Answer, CodecError> {
    let syntax = |e: postcard::Error| CodecError::Syntax(format!("answer: {e}"));
    match bytes.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes::<AnswerV2>(rest)
            .map_err(syntax)?
            .expand(),
        Some((&FORMAT_V1, rest)) => postcard::from_bytes(rest).map_err(syntax),
        Some((f, _)) => Err(CodecError::Syntax(format!("answer: unknown format {f}"))),
        None => Err(CodecError::Syntax("answer: empty".into())),
    }
}

#[derive(Serialize)]
struct AnswerRef<'a> {
    /// [`APPROVED`], [`REASON_IS_RULE`] (in the byte format 1's `approved` took).
    state: u8,
    response_code: &'a str,
    /// Empty when it is the rule's id.
    reason: &'a str,
    rule: &'a Option<String>,
    amount_approved: &'a str,
    currency: Currency,
    fx_rate: &'a Option<String>,
    available_after: &'a Option<String>,
    flags: &'a [String],
    score: i64,
    policy_version: &'a str,
    trace: Lines<'a>,
    latency_us: u64,
}

/// The trace lines, each written as a [`LineRef`] (without collecting them first).
struct Lines<'a> {
    lines: &'a [TraceLine],
    rule: Option<&'a str>,
    code: &'a str,
}

/// A trace line; the variant (one byte) says what it leaves out.
#[derive(Serialize, Deserialize)]
enum Line<S> {
    Whole {
        rule: S,
        outcome: S,
        detail: S,
    },
    /// The rule is the answer's.
    OfTheRule {
        outcome: S,
        detail: S,
    },
    /// The outcome is `decline {response code}`.
    Declined {
        rule: S,
        detail: S,
    },
    /// Both: the line of the decline the answer reports.
    Decisive {
        detail: S,
    },
}

impl Serialize for Lines<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.lines.len()))?;
        for l in self.lines {
            let (rule, outcome, detail) = (l.rule.as_str(), l.outcome.as_str(), l.detail.as_str());
            let of_the_rule = Some(rule) == self.rule;
            let declined = outcome.strip_prefix(DECLINE) == Some(self.code);
            seq.serialize_element(&match (of_the_rule, declined) {
                (false, false) => Line::Whole {
                    rule,
                    outcome,
                    detail,
                },
                (true, false) => Line::OfTheRule { outcome, detail },
                (false, true) => Line::Declined { rule, detail },
                (true, true) => Line::Decisive { detail },
            })?;
        }
        seq.end()
    }
}

/// [`AnswerRef`], owned.
#[derive(Deserialize)]
struct AnswerV2 {
    state: u8,
    response_code: String,
    reason: String,
    rule: Option<String>,
    amount_approved: String,
    currency: Currency,
    fx_rate: Option<String>,
    available_after: Option<String>,
    flags: Vec<String>,
    score: i64,
    policy_version: String,
    trace: Vec<Line<String>>,
    latency_us: u64,
}

impl AnswerV2 {
    /// Puts back what the record left out.
    fn expand(self) -> Result<Answer, CodecError> {
        let rule = || {
            self.rule.clone().ok_or_else(|| {
                CodecError::Syntax("answer: refers to a rule it does not name".into())
            })
        };
        let declined = || format!("{DECLINE}{}", self.response_code);
        let trace = self
            .trace
            .into_iter()
            .map(|l| {
                let (rule, outcome, detail) = match l {
                    Line::Whole {
                        rule,
                        outcome,
                        detail,
                    } => (rule, outcome, detail),
                    Line::OfTheRule { outcome, detail } => (rule()?, outcome, detail),
                    Line::Declined { rule, detail } => (rule, declined(), detail),
                    Line::Decisive { detail } => (rule()?, declined(), detail),
                };
                Ok(TraceLine {
                    rule,
                    outcome,
                    detail,
                })
            })
            .collect::<Result<_, CodecError>>()?;
        Ok(Answer {
            approved: self.state & APPROVED != 0,
            reason: if self.state & REASON_IS_RULE != 0 {
                rule()?
            } else {
                self.reason
            },
            response_code: self.response_code,
            rule: self.rule,
            amount_approved: self.amount_approved,
            currency: self.currency,
            fx_rate: self.fx_rate,
            available_after: self.available_after,
            flags: self.flags,
            score: self.score,
            policy_version: self.policy_version,
            trace,
            latency_us: self.latency_us,
        })
    }
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
