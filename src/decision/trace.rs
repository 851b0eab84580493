//! The decision trace: one entry per step and rule, stored compactly (indices and
//! numbers, no strings) and rendered to text only when someone reads it.

use std::fmt::Write as _;

use rhai::ImmutableString;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{Country, LatLon, ResponseCode};
use crate::money::Amount;
use crate::policy::{Check, CompiledPolicy, Rule};
use crate::velocity::Totals;

/// Which rule (or built-in step) a trace entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleRef {
    /// A built-in step: `request`, `card`, `fx`, `score`, `funds`.
    Step(&'static str),
    /// Index into the program policy's rules.
    Policy(u16),
    /// Index into the card's own controls.
    Controls(u16),
}

impl RuleRef {
    pub fn rule<'p>(
        &self,
        policy: &'p CompiledPolicy,
        controls: Option<&'p CompiledPolicy>,
    ) -> Option<&'p Rule> {
        match *self {
            RuleRef::Step(_) => None,
            RuleRef::Policy(i) => policy.rules.get(usize::from(i)),
            RuleRef::Controls(i) => controls.and_then(|c| c.rules.get(usize::from(i))),
        }
    }
    pub fn id<'p>(
        &self,
        policy: &'p CompiledPolicy,
        controls: Option<&'p CompiledPolicy>,
    ) -> &'p str {
        match *self {
            RuleRef::Step(s) => s,
            _ => self.rule(policy, controls).map_or("?", |r| r.id.as_str()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceOutcome {
    Pass,
    /// Conditions did not match; the rule did not apply.
    NotApplicable,
    /// Could not be evaluated (e.g. no location); treated as pass.
    Skipped,
    Decline(ResponseCode),
    Flag,
    Score(i64),
    /// Shadow rules: what would have happened.
    ShadowDecline(ResponseCode),
    ShadowFlag,
    ShadowScore(i64),
    /// The rule (a script) failed; `on_error` decided.
    Error(ResponseCode),
    ErrorIgnored,
}

impl TraceOutcome {
    fn label(&self) -> String {
        match self {
            TraceOutcome::Pass => "pass".into(),
            TraceOutcome::NotApplicable => "not_applicable".into(),
            TraceOutcome::Skipped => "skipped".into(),
            TraceOutcome::Decline(c) => format!("decline {c}"),
            TraceOutcome::Flag => "flag".into(),
            TraceOutcome::Score(p) => format!("score {p:+}"),
            TraceOutcome::ShadowDecline(c) => format!("shadow: would decline {c}"),
            TraceOutcome::ShadowFlag => "shadow: would flag".into(),
            TraceOutcome::ShadowScore(p) => format!("shadow: would score {p:+}"),
            TraceOutcome::Error(c) => format!("error, decline {c}"),
            TraceOutcome::ErrorIgnored => "error, ignored (on_error: approve)".into(),
        }
    }
}

/// What a step or rule saw, as numbers; rendered by [`TraceEntry::render`].
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    None,
    Text(&'static str),
    /// Transaction amount in the rule currency against a bound.
    Limit {
        amount: Decimal,
    },
    Velocity {
        used: Totals,
        amount: Decimal,
        /// The oldest event still in the window: (time, amount, count).
        oldest: Option<(i64, Decimal, u32)>,
        /// The decision's time (a calendar window resets at its period's end).
        now_ms: i64,
    },
    Country(Country),
    Location(LatLon),
    Travel {
        speed_kmh: f64,
    },
    Script {
        reason: ImmutableString,
    },
    Error(String),
    Funds {
        amount: Decimal,
        available: Decimal,
    },
    Score {
        total: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceEntry {
    pub rule: RuleRef,
    pub outcome: TraceOutcome,
    pub detail: Detail,
}

/// A short description of a condition for explanations.
fn describe_cond(c: &crate::policy::Cond) -> String {
    match c {
        crate::policy::Cond::Rhai { source, .. } => format!("`{source}`"),
        crate::policy::Cond::Match(m) => {
            let mut parts = Vec::new();
            if let Some(v) = &m.mcc {
                parts.push(if v.len() <= 4 {
                    format!("mcc in {v:04?}")
                } else {
                    format!("mcc in a list of {}", v.len())
                });
            }
            if m.channels.is_some() {
                parts.push("channel".to_string());
            }
            if m.types.is_some() {
                parts.push("type".to_string());
            }
            if m.merchants.is_some() {
                parts.push("merchant list".to_string());
            }
            if m.countries.is_some() {
                parts.push("country list".to_string());
            }
            if m.amount_gt.is_some()
                || m.amount_gte.is_some()
                || m.amount_lt.is_some()
                || m.amount_lte.is_some()
            {
                parts.push("amount range".to_string());
            }
            if m.local_time.is_some() {
                parts.push("local time".to_string());
            }
            if m.weekdays.is_some() {
                parts.push("weekday".to_string());
            }
            parts.join(", ")
        }
    }
}

/// A rendered trace line: `{rule, outcome, detail}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TraceLine {
    pub rule: String,
    pub outcome: String,
    pub detail: String,
}

impl TraceEntry {
    pub fn render(&self, policy: &CompiledPolicy, controls: Option<&CompiledPolicy>) -> TraceLine {
        let rule = self.rule.rule(policy, controls);
        let currency = match self.rule {
            RuleRef::Controls(_) => controls.map_or(policy.currency, |c| c.currency),
            _ => policy.currency,
        };
        let fmt = |d: Decimal| Amount(d, currency);
        let detail = match (&self.detail, rule.map(|r| &r.check)) {
            (Detail::None, Some(Check::Conditions)) if self.outcome != TraceOutcome::Pass => {
                let r = rule.expect("matched Some");
                let when = r.when.as_ref().map(describe_cond).unwrap_or_default();
                let unless = r
                    .unless
                    .as_ref()
                    .map(|c| format!("not {}", describe_cond(c)))
                    .unwrap_or_default();
                format!(
                    "matched {}",
                    [when, unless]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(" and ")
                )
            }
            (Detail::None, _) => String::new(),
            (Detail::Text(t), _) => (*t).to_string(),
            (
                Detail::Limit { amount },
                Some(Check::Limit {
                    amount_max,
                    amount_min,
                }),
            ) => {
                let mut parts = Vec::new();
                if let Some(max) = amount_max {
                    let op = if amount > max { ">" } else { "<=" };
                    parts.push(format!("{} {op} {} {currency}", fmt(*amount), fmt(*max)));
                }
                if let Some(min) = amount_min {
                    let op = if amount < min { "<" } else { ">=" };
                    parts.push(format!("{} {op} {} {currency}", fmt(*amount), fmt(*min)));
                }
                parts.join("; ")
            }
            (
                Detail::Velocity {
                    used,
                    amount,
                    oldest,
                    now_ms,
                },
                Some(Check::Velocity(v)),
            ) => {
                // Written into one String: every declined velocity rule explains itself,
                // so this runs on the authorization path.
                let mut text = String::with_capacity(128);
                let amt = |d: Decimal| Amount(d, currency);
                if let Some(max) = v.amount_max {
                    let total = used.amount + amount;
                    let op = if total > max { ">" } else { "<=" };
                    let left = (max - used.amount).max(Decimal::ZERO);
                    let _ = write!(
                        text,
                        "{} + {} {op} {} {currency} ({} left)",
                        amt(used.amount),
                        amt(*amount),
                        amt(max),
                        amt(left)
                    );
                }
                if let Some(max) = v.count_max {
                    if !text.is_empty() {
                        text.push_str(", ");
                    }
                    let left = u64::from(max).saturating_sub(used.count);
                    let _ = match v.counts {
                        crate::policy::Counts::Approved => {
                            let op = if used.count + 1 > u64::from(max) {
                                ">"
                            } else {
                                "<="
                            };
                            write!(
                                text,
                                "{} + 1 {op} {max} transactions ({left} left)",
                                used.count
                            )
                        }
                        crate::policy::Counts::Declined => {
                            let op = if used.count >= u64::from(max) {
                                ">="
                            } else {
                                "<"
                            };
                            write!(text, "{} declines {op} {max}", used.count)
                        }
                    };
                }
                let _ = write!(text, " in {} ({} scope)", v.window, v.scope.as_str());
                if let Some(reset) = velocity_reset(v, *used, *oldest, *now_ms, policy.timezone) {
                    text.push_str("; ");
                    reset.write_to(&mut text, v, currency);
                }
                text
            }
            (Detail::Country(c), Some(Check::Countries { allow, list, .. })) => {
                let verb = if *allow { "allow" } else { "deny" };
                format!("country {c} against {verb} list {list}")
            }
            (Detail::Country(c), _) => format!("country {c}"),
            (
                Detail::Location(p),
                Some(Check::Geofence {
                    shape,
                    fires_inside,
                }),
            ) => {
                let side = if shape.contains(*p) {
                    "inside"
                } else {
                    "outside"
                };
                let fires = if *fires_inside { "inside" } else { "outside" };
                format!("{side} fence ({}); fires {fires}", shape.describe(*p))
            }
            (Detail::Travel { speed_kmh }, Some(Check::Travel { speed_kmh_max })) => {
                if speed_kmh.is_infinite() {
                    format!(
                        "moved between two places at the same instant; max {speed_kmh_max} km/h"
                    )
                } else {
                    format!("{speed_kmh:.0} km/h since last located transaction; max {speed_kmh_max} km/h")
                }
            }
            (Detail::Script { reason }, _) => reason.to_string(),
            (Detail::Error(e), _) => e.clone(),
            (Detail::Funds { amount, available }, _) => {
                format!("{amount} requested, {available} available")
            }
            (Detail::Score { total }, _) => match policy.score_decline_at {
                Some(at) => format!("score {total}, declines at {at}"),
                None => format!("score {total}"),
            },
            (d, _) => format!("{d:?}"),
        };
        TraceLine {
            rule: self.rule.id(policy, controls).to_string(),
            outcome: self.outcome.label(),
            detail,
        }
    }
}

/// When a velocity window gives capacity back: a rolling window when its oldest event
/// leaves (that event's amount and count), a calendar window at its period's end
/// (everything); a lifetime window never.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VelocityReset {
    pub at_ms: i64,
    pub amount: Decimal,
    pub count: u64,
}

impl VelocityReset {
    /// Appends `frees <amount> and <count> at <time>` to `text`.
    fn write_to(
        &self,
        text: &mut String,
        v: &crate::policy::VelocityCheck,
        currency: crate::money::Currency,
    ) {
        text.push_str("frees ");
        if v.amount_max.is_some() {
            let _ = write!(text, "{} {currency}", Amount(self.amount, currency));
        }
        if v.count_max.is_some() {
            if v.amount_max.is_some() {
                text.push_str(" and ");
            }
            let noun = match (v.counts, self.count) {
                (crate::policy::Counts::Declined, 1) => "decline",
                (crate::policy::Counts::Declined, _) => "declines",
                (_, 1) => "transaction",
                _ => "transactions",
            };
            let _ = write!(text, "{} {noun}", self.count);
        }
        text.push_str(" at ");
        if let Some(t) = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(self.at_ms) {
            write_rfc3339_secs(text, t);
        }
    }
}

/// Appends `t` as `to_rfc3339_opts(SecondsFormat::Secs, true)` writes it
/// (`2026-12-06T19:40:00Z`), without that call's `String` and formatter: a declined
/// velocity rule's trace line says when its window frees, and rendering those times was
/// ≈ 5 % of an in-process authorization (profile of `authorize/mixed_10k_cards`).
fn write_rfc3339_secs(text: &mut String, t: chrono::DateTime<chrono::Utc>) {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // chrono writes these with a sign and more digits; rare enough to leave to it.
        text.push_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        return;
    }
    let mut out = *b"0000-00-00T00:00:00Z";
    for (at, width, n) in [
        (0, 4, year as u32),
        (5, 2, t.month()),
        (8, 2, t.day()),
        (11, 2, t.hour()),
        (14, 2, t.minute()),
        (17, 2, t.second()),
    ] {
        let mut n = n;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    // Only ASCII digits and separators were written.
    text.push_str(std::str::from_utf8(&out).unwrap_or_default());
}

/// See [`VelocityReset`]; None when nothing is used.
pub fn velocity_reset(
    v: &crate::policy::VelocityCheck,
    used: Totals,
    oldest: Option<(i64, Decimal, u32)>,
    now_ms: i64,
    tz: chrono_tz::Tz,
) -> Option<VelocityReset> {
    if used.count == 0 {
        return None;
    }
    match v.window {
        crate::velocity::WindowSpec::Rolling { length_ms } => {
            oldest.map(|(at_ms, amount, count)| VelocityReset {
                at_ms: at_ms + length_ms,
                amount,
                count: u64::from(count),
            })
        }
        crate::velocity::WindowSpec::Calendar(_) => {
            let now = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now_ms)?;
            v.window.next_start_ms(now, tz).map(|at_ms| VelocityReset {
                at_ms,
                amount: used.amount,
                count: used.count,
            })
        }
        crate::velocity::WindowSpec::Lifetime => None,
    }
}

#[cfg(test)]
mod tests {
    use super::write_rfc3339_secs;
    use chrono::{DateTime, SecondsFormat, Utc};

    #[test]
    fn reset_times_are_written_as_chrono_writes_rfc3339() {
        let year_ms = 365 * 86_400_000_i64;
        let mut at_ms = vec![0, 1, 999, 59_999, 86_399_999, -1, -86_400_001];
        // Every day across a leap year, at odd times, and far past and future years
        // (0000, 9999, and beyond where chrono's own form is kept).
        at_ms.extend((0..800).map(|d| 1_704_067_200_000 + d * 86_400_000 + d * 3_723_456));
        at_ms.extend([
            -62_167_219_200_000,
            253_402_300_799_999,
            253_402_300_800_000,
        ]);
        at_ms.extend([-70 * year_ms * 100, 90 * year_ms * 100]);
        for ms in at_ms {
            let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
            let mut text = String::from("frees at ");
            write_rfc3339_secs(&mut text, t);
            assert_eq!(
                text,
                format!("frees at {}", t.to_rfc3339_opts(SecondsFormat::Secs, true)),
                "{ms}"
            );
        }
    }
}
