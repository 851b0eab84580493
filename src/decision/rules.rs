//! Rule evaluation for one decision: matchers, each check kind (limit, velocity,
//! countries, geofence, travel, script) and their effects, with lazily computed local
//! time, calendar window starts and script inputs shared by every rule.

use std::borrow::Cow;

use chrono::{DateTime, Datelike, Timelike, Utc};
use rust_decimal::Decimal;

use super::trace::{Detail, RuleRef, TraceEntry, TraceOutcome};
use super::{Authorization, CardView, Decision, ResponseCode, VelocityEffect};
use crate::policy::script::{
    LocalTime, ScriptCard, ScriptHistory, ScriptInputs, ScriptTxn, Verdict,
};
use crate::policy::{
    Check, CompiledPolicy, Cond, Counts, Matcher, Mode, OnError, Outcome, Rule, VelocityScope,
};
use crate::velocity::{key_hash, CalendarUnit, VelocityState, WindowSpec};

/// The state a shared scope reads when it has no window yet.
static EMPTY_STATE: std::sync::LazyLock<VelocityState> =
    std::sync::LazyLock::new(VelocityState::default);

/// Per-decision evaluation state: lazily computed local time, calendar starts and
/// script inputs, shared by all rules of the decision.
pub(super) struct Evaluator<'a> {
    card: &'a CardView<'a>,
    txn: &'a Authorization,
    now: DateTime<Utc>,
    now_ms: i64,
    merchant_key: u64,
    /// Amount in the currency of the policy being evaluated, rounded up.
    amount: Decimal,
    pub(super) amount_policy_currency: Decimal,
    /// (minute of day, ISO weekday) in the policy's time zone.
    local: Option<(u16, u8)>,
    calendar_start: [Option<i64>; 4],
    tz: chrono_tz::Tz,
    scripts: Option<ScriptInputs>,
}

/// A transaction as scripts see it (`amount` in the policy currency).
pub fn script_txn(t: &Authorization, amount: Decimal, local: LocalTime) -> ScriptTxn {
    ScriptTxn {
        amount,
        original_amount: t.amount,
        original_currency: t.currency,
        mcc: t.merchant.mcc,
        country: t.merchant.country,
        channel: t.channel,
        txn_type: t.txn_type,
        merchant_id: t.merchant.id.as_str().into(),
        merchant_name: t.merchant.name.as_str().into(),
        location: t.merchant.location.map(|l| (l.lat, l.lon)),
        local,
    }
}

impl<'a> Evaluator<'a> {
    pub(super) fn new(
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

    pub(super) fn begin_policy(&mut self, p: &CompiledPolicy, amount: Decimal) {
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
            let c = self.card;
            let local = LocalTime::new(self.now, self.tz, self.local);
            let txn = script_txn(self.txn, self.amount, local);
            let card = ScriptCard {
                status: c.status,
                currency: c.currency,
                kyc: c.kyc,
                available: c.available,
                last_location: c.last_seen.map(|l| (l.location.lat, l.location.lon)),
                minutes_since_last: c.last_seen.map(|l| (self.now_ms - l.at_ms) / 60_000),
            };
            let windows = p
                .history_windows
                .iter()
                .map(|w| {
                    let start = self.now_ms - w.length_ms + 1;
                    (
                        w.length_ms,
                        c.card_velocity.totals(w.key_approved, start),
                        c.card_velocity.totals(w.key_declined, start),
                    )
                })
                .collect();
            let history = ScriptHistory {
                now_ms: self.now_ms,
                events: p.history_reads.activity.then(|| c.activity.snapshot()),
                windows,
                countries: p.history_reads.countries.then(|| c.countries_seen.into()),
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

    pub(super) fn rule(
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
                            // Only a line that fires says when capacity frees (a walk
                            // of the window per rule would cost every decision ≈ 10 %).
                            oldest: if amount_over || count_over {
                                self.state(v.scope).oldest(key, start_ms)
                            } else {
                                None
                            },
                            now_ms: self.now_ms,
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
                                super::transaction_time_ms(self.txn, self.now_ms),
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
