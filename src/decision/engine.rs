//! `decide`: the checks of DESIGN.md in order. Pure: everything it knows comes in as
//! arguments, everything it wants changed goes out as `Decision::effects`.

use std::borrow::Cow;

use chrono::{DateTime, Datelike, Timelike, Utc};
use rust_decimal::Decimal;
use rust_decimal::RoundingStrategy;
use smallvec::SmallVec;

use super::trace::{Detail, RuleRef, TraceEntry, TraceOutcome};
use super::{
    Authorization, CardStatus, CardView, Channel, Decision, Effects, KycStatus, ResponseCode,
    TxnType, VelocityEffect,
};
use crate::money::check_precision;
use crate::policy::script::{ScriptCard, ScriptHistory, ScriptInputs, ScriptTxn, Verdict};
use crate::policy::{
    Check, CompiledPolicy, Cond, Counts, Matcher, Mode, OnError, Outcome, Rule, VelocityScope,
};
use crate::velocity::{key_hash, Activity, CalendarUnit, VelocityState, WindowSpec};

/// Identifier fields are bounded so that nothing unbounded reaches logs or state.
const ID_LEN_MAX: usize = 64;
const NAME_LEN_MAX: usize = 128;
/// Largest single authorization in major units.
const AMOUNT_MAX: i64 = 1_000_000_000_000;

static EMPTY_STATE: std::sync::LazyLock<VelocityState> =
    std::sync::LazyLock::new(VelocityState::default);

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

/// Per-decision evaluation state: lazily computed local time, calendar starts and
/// script inputs, shared by all rules of the decision.
struct Evaluator<'a> {
    card: &'a CardView<'a>,
    txn: &'a Authorization,
    now: DateTime<Utc>,
    now_ms: i64,
    merchant_key: u64,
    /// Amount in the currency of the policy being evaluated, rounded up.
    amount: Decimal,
    amount_policy_currency: Decimal,
    /// (minute of day, ISO weekday) in the policy's time zone.
    local: Option<(u16, u8)>,
    calendar_start: [Option<i64>; 4],
    tz: chrono_tz::Tz,
    scripts: Option<ScriptInputs>,
}

impl<'a> Evaluator<'a> {
    fn new(
        card: &'a CardView<'a>,
        txn: &'a Authorization,
        now: DateTime<Utc>,
        tz: chrono_tz::Tz,
    ) -> Evaluator<'a> {
        Evaluator {
            card,
            txn,
            now,
            now_ms: now.timestamp_millis(),
            merchant_key: key_hash(&[txn.merchant.id.as_bytes()]),
            amount: Decimal::ZERO,
            amount_policy_currency: Decimal::ZERO,
            local: None,
            calendar_start: [None; 4],
            tz,
            scripts: None,
        }
    }

    fn begin_policy(&mut self, p: &CompiledPolicy, amount: Decimal) {
        self.amount = amount;
        if self.tz != p.timezone {
            self.local = None;
            self.calendar_start = [None; 4];
        }
        self.tz = p.timezone;
        self.scripts = None;
    }

    fn local(&mut self) -> (u16, u8) {
        *self.local.get_or_insert_with(|| {
            let l = self.now.with_timezone(&self.tz);
            (
                (l.hour() * 60 + l.minute()) as u16,
                l.weekday().number_from_monday() as u8,
            )
        })
    }

    fn window_start(&mut self, w: WindowSpec) -> i64 {
        match w {
            WindowSpec::Rolling { length_ms } => self.now_ms - length_ms + 1,
            WindowSpec::Lifetime => i64::MIN,
            WindowSpec::Calendar(u) => {
                let i = match u {
                    CalendarUnit::Day => 0,
                    CalendarUnit::Week => 1,
                    CalendarUnit::Month => 2,
                    CalendarUnit::Year => 3,
                };
                let (now, tz) = (self.now, self.tz);
                *self.calendar_start[i].get_or_insert_with(|| w.start_ms(now, tz))
            }
        }
    }

    fn matches(&mut self, m: &Matcher) -> bool {
        let t = self.txn;
        if let Some(mcc) = &m.mcc {
            if mcc.binary_search(&t.merchant.mcc.value()).is_err() {
                return false;
            }
        }
        if m.channels.is_some_and(|b| b & t.channel.bit() == 0)
            || m.types.is_some_and(|b| b & t.txn_type.bit() == 0)
        {
            return false;
        }
        if let Some(ms) = &m.merchants {
            if ms.binary_search(&self.merchant_key).is_err() {
                return false;
            }
        }
        if m.countries
            .as_ref()
            .is_some_and(|c| !c.contains(t.merchant.country))
        {
            return false;
        }
        let a = self.amount;
        if m.amount_gt.is_some_and(|x| a <= x)
            || m.amount_gte.is_some_and(|x| a < x)
            || m.amount_lt.is_some_and(|x| a >= x)
            || m.amount_lte.is_some_and(|x| a > x)
        {
            return false;
        }
        if m.local_time.is_some() || m.weekdays.is_some() {
            let (minute, weekday) = self.local();
            if let Some((from, to)) = m.local_time {
                let inside = if from < to {
                    minute >= from && minute < to
                } else {
                    minute >= from || minute < to
                };
                if !inside {
                    return false;
                }
            }
            if m.weekdays.is_some_and(|b| b & (1 << weekday) == 0) {
                return false;
            }
        }
        true
    }

    fn script_inputs(&mut self, p: &CompiledPolicy) -> &mut ScriptInputs {
        if self.scripts.is_none() {
            let (minute, weekday) = self.local();
            let t = self.txn;
            let c = self.card;
            let txn = ScriptTxn {
                amount: self.amount,
                original_amount: t.amount,
                original_currency: t.currency,
                mcc: t.merchant.mcc,
                country: t.merchant.country,
                channel: t.channel,
                txn_type: t.txn_type,
                merchant_id: t.merchant.id.as_str().into(),
                merchant_name: t.merchant.name.as_str().into(),
                location: t.merchant.location.map(|l| (l.lat, l.lon)),
                local_hour: i64::from(minute / 60),
                local_minute: i64::from(minute % 60),
                weekday: i64::from(weekday),
            };
            let card = ScriptCard {
                status: c.status,
                currency: c.currency,
                kyc: c.kyc,
                available: c.available,
                last_location: c.last_seen.map(|l| (l.location.lat, l.location.lon)),
                minutes_since_last: c.last_seen.map(|l| (self.now_ms - l.at_ms) / 60_000),
            };
            let history = ScriptHistory {
                now_ms: self.now_ms,
                events: c.activity.snapshot(),
            };
            self.scripts = Some(ScriptInputs::new(txn, card, history, p.lists.clone()));
        }
        self.scripts.as_mut().expect("just built")
    }

    /// Evaluates a condition; `Err` carries a script error message.
    fn cond(&mut self, p: &CompiledPolicy, c: &Cond) -> Result<bool, String> {
        match c {
            Cond::Match(m) => Ok(self.matches(m)),
            Cond::Rhai { ast, .. } => self.script_inputs(p).run_condition(ast),
        }
    }

    fn state(&self, scope: VelocityScope) -> &'a VelocityState {
        match scope {
            VelocityScope::Card | VelocityScope::CardMerchant => self.card.card_velocity,
            VelocityScope::Cardholder => self.card.cardholder_velocity.unwrap_or(&EMPTY_STATE),
            VelocityScope::Program => self.card.program_velocity.unwrap_or(&EMPTY_STATE),
        }
    }

    fn rule(
        &mut self,
        p: &CompiledPolicy,
        rule: &Rule,
        r: RuleRef,
        d: &mut Decision,
        first: &mut Option<(ResponseCode, Cow<'static, str>, Option<RuleRef>)>,
    ) {
        // Conditions.
        let mut applies = Ok(true);
        if let Some(c) = &rule.when {
            applies = self.cond(p, c);
        }
        if let (Ok(true), Some(c)) = (&applies, &rule.unless) {
            applies = self.cond(p, c).map(|x| !x);
        }
        let (fired, default_code, detail): (Option<Outcome>, ResponseCode, Detail) = match applies {
            Err(e) => return self.script_error(p, rule, r, e, d, first),
            Ok(false) => {
                d.trace.push(TraceEntry {
                    rule: r,
                    outcome: TraceOutcome::NotApplicable,
                    detail: Detail::None,
                });
                return;
            }
            Ok(true) => match &rule.check {
                Check::Conditions => (
                    Some(rule.outcome),
                    ResponseCode::NOT_PERMITTED,
                    Detail::None,
                ),
                Check::Limit {
                    amount_max,
                    amount_min,
                } => {
                    let over = amount_max.is_some_and(|m| self.amount > m);
                    let under = amount_min.is_some_and(|m| self.amount < m);
                    let code = if over {
                        ResponseCode::AMOUNT_LIMIT
                    } else {
                        ResponseCode::INVALID_AMOUNT
                    };
                    (
                        (over || under).then_some(rule.outcome),
                        code,
                        Detail::Limit {
                            amount: self.amount,
                        },
                    )
                }
                Check::Velocity(v) => {
                    let key = match v.scope {
                        VelocityScope::CardMerchant => {
                            key_hash(&[&v.key.to_le_bytes(), &self.merchant_key.to_le_bytes()])
                        }
                        _ => v.key,
                    };
                    let start_ms = self.window_start(v.window);
                    let used = self.state(v.scope).totals(key, start_ms);
                    let (amount_over, count_over) = match v.counts {
                        Counts::Approved => (
                            v.amount_max.is_some_and(|m| used.amount + self.amount > m),
                            v.count_max.is_some_and(|m| used.count + 1 > u64::from(m)),
                        ),
                        Counts::Declined => (
                            false,
                            v.count_max.is_some_and(|m| used.count >= u64::from(m)),
                        ),
                    };
                    d.effects.velocity.push(VelocityEffect {
                        scope: v.scope,
                        key,
                        start_ms,
                        amount: if v.counts == Counts::Approved {
                            self.amount
                        } else {
                            Decimal::ZERO
                        },
                        counts: v.counts,
                    });
                    let code = if amount_over {
                        ResponseCode::AMOUNT_LIMIT
                    } else {
                        ResponseCode::COUNT_LIMIT
                    };
                    (
                        (amount_over || count_over).then_some(rule.outcome),
                        code,
                        Detail::Velocity {
                            used,
                            amount: self.amount,
                        },
                    )
                }
                Check::Countries { allow, set, .. } => {
                    let c = self.txn.merchant.country;
                    let fired = set.contains(c) != *allow;
                    (
                        fired.then_some(rule.outcome),
                        ResponseCode::RESTRICTED,
                        Detail::Country(c),
                    )
                }
                Check::Geofence {
                    shape,
                    fires_inside,
                } => match self.txn.merchant.location {
                    None => (
                        None,
                        ResponseCode::RESTRICTED,
                        Detail::Text("no merchant location"),
                    ),
                    Some(loc) => {
                        let fired = shape.contains(loc) == *fires_inside;
                        (
                            fired.then_some(rule.outcome),
                            ResponseCode::RESTRICTED,
                            Detail::Location(loc),
                        )
                    }
                },
                Check::Travel { speed_kmh_max } => {
                    match (self.card.last_seen, self.txn.merchant.location) {
                        (Some(last), Some(loc)) => {
                            let speed_kmh = crate::geo::travel_speed_kmh(
                                last.location,
                                last.at_ms,
                                loc,
                                self.now_ms,
                            );
                            let fired = speed_kmh > *speed_kmh_max;
                            (
                                fired.then_some(rule.outcome),
                                ResponseCode::FRAUD,
                                Detail::Travel { speed_kmh },
                            )
                        }
                        (None, _) => (
                            None,
                            ResponseCode::FRAUD,
                            Detail::Text("no earlier located transaction"),
                        ),
                        (_, None) => (
                            None,
                            ResponseCode::FRAUD,
                            Detail::Text("no merchant location"),
                        ),
                    }
                }
                Check::Script { ast, .. } => {
                    let allow_loops = p.allow_script_loops;
                    match self.script_inputs(p).run_script(ast, allow_loops) {
                        Err(e) => return self.script_error(p, rule, r, e, d, first),
                        Ok(Verdict::Pass) => (None, ResponseCode::FRAUD, Detail::None),
                        Ok(Verdict::Decline { code, reason }) => (
                            Some(Outcome::Decline(Some(code))),
                            code,
                            Detail::Script { reason },
                        ),
                        Ok(Verdict::Flag { reason }) => (
                            Some(Outcome::Flag),
                            ResponseCode::FRAUD,
                            Detail::Script { reason },
                        ),
                        Ok(Verdict::Score { points, reason }) => (
                            Some(Outcome::Score(points)),
                            ResponseCode::FRAUD,
                            Detail::Script { reason },
                        ),
                    }
                }
            },
        };
        let shadow = rule.mode == Mode::Shadow;
        let outcome = match fired {
            None => match detail {
                Detail::Text(_) => TraceOutcome::Skipped,
                _ => TraceOutcome::Pass,
            },
            Some(Outcome::Decline(code)) => {
                let code = code.unwrap_or(default_code);
                if shadow {
                    TraceOutcome::ShadowDecline(code)
                } else {
                    if first.is_none() {
                        let reason = match &detail {
                            // A script's own reason says more than its rule id.
                            Detail::Script { reason } if !reason.is_empty() => {
                                Cow::Owned(reason.to_string())
                            }
                            _ => Cow::Owned(rule.reason.clone()),
                        };
                        *first = Some((code, reason, Some(r)));
                    }
                    TraceOutcome::Decline(code)
                }
            }
            Some(Outcome::Flag) if shadow => TraceOutcome::ShadowFlag,
            Some(Outcome::Flag) => {
                d.flags.push(r);
                TraceOutcome::Flag
            }
            Some(Outcome::Score(points)) if shadow => TraceOutcome::ShadowScore(points),
            Some(Outcome::Score(points)) => {
                d.score = d.score.saturating_add(points);
                TraceOutcome::Score(points)
            }
        };
        d.trace.push(TraceEntry {
            rule: r,
            outcome,
            detail,
        });
    }

    fn script_error(
        &mut self,
        p: &CompiledPolicy,
        rule: &Rule,
        r: RuleRef,
        message: String,
        d: &mut Decision,
        first: &mut Option<(ResponseCode, Cow<'static, str>, Option<RuleRef>)>,
    ) {
        let outcome = match (p.on_error, rule.mode) {
            (OnError::Decline, Mode::Enforce) => {
                first.get_or_insert((
                    ResponseCode::SYSTEM_ERROR,
                    Cow::Borrowed("script_error"),
                    Some(r),
                ));
                TraceOutcome::Error(ResponseCode::SYSTEM_ERROR)
            }
            (OnError::Decline, Mode::Shadow) => {
                TraceOutcome::ShadowDecline(ResponseCode::SYSTEM_ERROR)
            }
            (OnError::Approve, _) => {
                if rule.mode == Mode::Enforce {
                    d.flags.push(r);
                }
                TraceOutcome::ErrorIgnored
            }
        };
        d.trace.push(TraceEntry {
            rule: r,
            outcome,
            detail: Detail::Error(message),
        });
    }
}
