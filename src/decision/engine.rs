//! `decide`: the checks of DESIGN.md in order. Pure: everything it knows comes in as
//! arguments, everything it wants changed goes out as `Decision::effects`.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::RoundingStrategy;
use smallvec::SmallVec;

use super::rules::Evaluator;
use super::trace::{Detail, RuleRef, TraceEntry, TraceOutcome};
use super::{
    Authorization, CardStatus, CardView, Channel, Decision, Effects, KycStatus, ResponseCode,
    TxnType, VelocityEffect,
};
use crate::money::check_precision;
use crate::policy::{CompiledPolicy, Counts, VelocityScope};
use crate::velocity::{key_hash, Activity};

/// Identifier fields are bounded so that nothing unbounded reaches logs or state.
const ID_LEN_MAX: usize = 64;
const NAME_LEN_MAX: usize = 128;
/// Largest single authorization in major units.
const AMOUNT_MAX: i64 = 1_000_000_000_000;

/// Decides an authorization. See the module docs and DESIGN.md for the order of checks.
pub fn decide(
    policy: &CompiledPolicy,
    card: &CardView<'_>,
    txn: &Authorization,
    now: DateTime<Utc>,
) -> Decision {
    let mut d = Decision {
        approved: false,
        response_code: ResponseCode::APPROVED,
        reason: Cow::Borrowed("approved"),
        rule: None,
        amount_approved: Decimal::ZERO,
        amount_card: Decimal::ZERO,
        currency: card.currency,
        fx: None,
        flags: SmallVec::new(),
        score: 0,
        trace: Vec::with_capacity(
            policy.rules.len() + card.controls.map_or(0, |c| c.rules.len()) + 4,
        ),
        policy_version: policy.version.clone(),
        effects: Effects {
            auth_key: key_hash(&[txn.id.as_bytes()]),
            at_ms: now.timestamp_millis(),
            ..Effects::default()
        },
    };

    // 1. Request validity.
    if let Err((code, reason)) = validate(txn) {
        d.trace.push(TraceEntry {
            rule: RuleRef::Step("request"),
            outcome: TraceOutcome::Decline(code),
            detail: Detail::Text(reason),
        });
        return decline(d, code, Cow::Borrowed(reason), None);
    }
    let fx = &policy.fx;
    let amount_card = match fx.convert_charge(txn.amount, txn.currency, card.currency) {
        Ok((amount, quote)) => {
            if txn.currency != card.currency {
                d.fx = Some(quote);
            }
            amount
        }
        Err(_) => {
            d.trace.push(TraceEntry {
                rule: RuleRef::Step("fx"),
                outcome: TraceOutcome::Decline(ResponseCode::SYSTEM_ERROR),
                detail: Detail::Text("no FX rate into the card currency"),
            });
            return decline(
                d,
                ResponseCode::SYSTEM_ERROR,
                Cow::Borrowed("fx_rate_unavailable"),
                None,
            );
        }
    };
    d.amount_card = amount_card;

    // 2. Card state.
    let mut first: Option<(ResponseCode, Cow<'static, str>, Option<RuleRef>)> = None;
    if let Some((code, reason)) = card_check(card, now) {
        d.trace.push(TraceEntry {
            rule: RuleRef::Step("card"),
            outcome: TraceOutcome::Decline(code),
            detail: Detail::Text(reason),
        });
        first = Some((code, Cow::Borrowed(reason), None));
    }

    // 3. Rules: the program's policy, then the card's own controls.
    let mut ev = Evaluator::new(card, txn, now, policy.timezone);
    for (p, source) in std::iter::once((policy, false)).chain(card.controls.map(|c| (c, true))) {
        let amount = match fx.convert_for_limit(txn.amount, txn.currency, p.currency) {
            Ok(a) => a,
            Err(_) => {
                d.trace.push(TraceEntry {
                    rule: RuleRef::Step("fx"),
                    outcome: TraceOutcome::Decline(ResponseCode::SYSTEM_ERROR),
                    detail: Detail::Text("no FX rate into the policy currency"),
                });
                first.get_or_insert((
                    ResponseCode::SYSTEM_ERROR,
                    Cow::Borrowed("fx_rate_unavailable"),
                    None,
                ));
                continue;
            }
        };
        if !source {
            ev.amount_policy_currency = amount;
        }
        ev.begin_policy(p, amount);
        for (i, rule) in p.rules.iter().enumerate() {
            let r = if source {
                RuleRef::Controls(i as u16)
            } else {
                RuleRef::Policy(i as u16)
            };
            ev.rule(p, rule, r, &mut d, &mut first);
        }
    }
    if let Some(at) = policy.score_decline_at {
        if d.score != 0 || first.is_none() && d.score >= at {
            let fired = d.score >= at;
            d.trace.push(TraceEntry {
                rule: RuleRef::Step("score"),
                outcome: if fired {
                    TraceOutcome::Decline(ResponseCode::FRAUD)
                } else {
                    TraceOutcome::Pass
                },
                detail: Detail::Score { total: d.score },
            });
            if fired {
                first.get_or_insert((ResponseCode::FRAUD, Cow::Borrowed("risk_score"), None));
            }
        }
    }
    d.effects.activity = Some(Activity {
        at_ms: d.effects.at_ms,
        amount: ev.amount_policy_currency,
        approved: false,
        country: txn.merchant.country,
        merchant: key_hash(&[txn.merchant.id.as_bytes()]),
    });
    // The windows scripts read through `history`: every decided authorization counts,
    // approved or declined, whatever rules applied.
    let now_ms = d.effects.at_ms;
    for w in &policy.history_windows {
        for (key, counts) in [
            (w.key_approved, Counts::Approved),
            (w.key_declined, Counts::Declined),
        ] {
            d.effects.velocity.push(VelocityEffect {
                scope: VelocityScope::Card,
                key,
                start_ms: now_ms - w.length_ms + 1,
                amount: ev.amount_policy_currency,
                counts,
            });
        }
    }
    if let Some((code, reason, rule)) = first {
        let id = rule.map(|r| r.id(policy, card.controls).to_string());
        return decline(d, code, reason, id);
    }

    // 4. Funds.
    let mut amount_approved = amount_card;
    if let (Some(available), true) = (card.available, txn.txn_type != TxnType::Verification) {
        if amount_card > available {
            let partial =
                txn.partial_ok && txn.txn_type == TxnType::Purchase && available > Decimal::ZERO;
            let code = if partial {
                ResponseCode::PARTIAL
            } else {
                ResponseCode::INSUFFICIENT_FUNDS
            };
            d.trace.push(TraceEntry {
                rule: RuleRef::Step("funds"),
                outcome: if partial {
                    TraceOutcome::Pass
                } else {
                    TraceOutcome::Decline(code)
                },
                detail: Detail::Funds {
                    amount: amount_card,
                    available,
                },
            });
            if !partial {
                return decline(d, code, Cow::Borrowed("insufficient_funds"), None);
            }
            // Partial approval: windows count only what was approved.
            let ratio = available / amount_card;
            for e in d.effects.velocity.iter_mut() {
                e.amount = (e.amount * ratio)
                    .round_dp_with_strategy(e.amount.scale(), RoundingStrategy::AwayFromZero);
            }
            amount_approved = available;
            d.response_code = code;
            d.reason = Cow::Borrowed("partial_approval");
        }
    }

    // 5. Approve.
    d.approved = true;
    d.amount_approved = amount_approved;
    if let Some(a) = d.effects.activity.as_mut() {
        a.approved = true;
    }
    d.effects.location = txn.merchant.location;
    d.effects.location_at_ms = super::transaction_time_ms(txn, now.timestamp_millis());
    d
}

fn decline(
    mut d: Decision,
    code: ResponseCode,
    reason: Cow<'static, str>,
    rule: Option<String>,
) -> Decision {
    debug_assert!(!code.is_approval());
    d.approved = false;
    d.response_code = code;
    d.reason = reason;
    d.rule = rule;
    d.amount_approved = Decimal::ZERO;
    d.effects.location = None;
    d
}

fn validate(txn: &Authorization) -> Result<(), (ResponseCode, &'static str)> {
    let fmt = ResponseCode::FORMAT_ERROR;
    if txn.id.is_empty() || txn.id.len() > ID_LEN_MAX {
        return Err((fmt, "id must be 1 to 64 characters"));
    }
    if txn.card_id.is_empty() || txn.card_id.len() > ID_LEN_MAX {
        return Err((fmt, "card_id must be 1 to 64 characters"));
    }
    if txn.merchant.id.is_empty() || txn.merchant.id.len() > ID_LEN_MAX {
        return Err((fmt, "merchant.id must be 1 to 64 characters"));
    }
    if txn.merchant.name.len() > NAME_LEN_MAX {
        return Err((fmt, "merchant.name is longer than 128 characters"));
    }
    if txn.merchant.location.is_some_and(|l| !l.is_valid()) {
        return Err((fmt, "merchant.location is not a valid lat/lon"));
    }
    let amt = ResponseCode::INVALID_AMOUNT;
    if txn.amount.is_sign_negative() && !txn.amount.is_zero() {
        return Err((amt, "amount is negative"));
    }
    if check_precision(txn.amount, txn.currency).is_err() {
        return Err((amt, "amount has more decimals than the currency allows"));
    }
    if txn.amount > Decimal::from(AMOUNT_MAX) {
        return Err((amt, "amount is too large"));
    }
    match txn.txn_type {
        TxnType::Verification if !txn.amount.is_zero() => {
            Err((amt, "a verification must have amount 0"))
        }
        TxnType::Verification => Ok(()),
        _ if txn.amount.is_zero() => Err((amt, "amount must be positive")),
        TxnType::Refund => Err((
            ResponseCode::INVALID_TRANSACTION,
            "refunds are not authorized; post them to /v1/refunds",
        )),
        TxnType::Withdrawal if !matches!(txn.channel, Channel::Atm | Channel::Pos) => Err((
            ResponseCode::INVALID_TRANSACTION,
            "cash withdrawal is only possible at an ATM or POS",
        )),
        _ => Ok(()),
    }
}

fn card_check(card: &CardView<'_>, now: DateTime<Utc>) -> Option<(ResponseCode, &'static str)> {
    match card.status {
        CardStatus::Terminated => return Some((ResponseCode::CLOSED, "card_terminated")),
        CardStatus::Lost => return Some((ResponseCode::LOST, "card_lost")),
        CardStatus::Stolen => return Some((ResponseCode::STOLEN, "card_stolen")),
        CardStatus::Frozen => return Some((ResponseCode::RESTRICTED, "card_frozen")),
        CardStatus::Inactive => return Some((ResponseCode::RESTRICTED, "card_inactive")),
        CardStatus::Active => {}
    }
    if card.expiry.is_some_and(|e| e.is_expired(now)) {
        return Some((ResponseCode::EXPIRED, "card_expired"));
    }
    if card.cardholder_blocked {
        return Some((ResponseCode::RESTRICTED, "cardholder_blocked"));
    }
    if card.kyc != KycStatus::Verified {
        return Some((ResponseCode::RESTRICTED, "kyc_not_verified"));
    }
    None
}
