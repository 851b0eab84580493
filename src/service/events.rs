//! The events operations report and the alerts they cross: built here and written in
//! the operation's own commit (the outbox), so a crash can neither lose nor invent one.
//! A program without endpoints gets none. Endpoints and delivery are in `webhooks.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{CardState, Engine, Pending, Rejection};
use crate::ledger::AccountId;
use crate::money::Currency;
use crate::store::outbox::{EventWrite, OutboxWrite};
use crate::store::Write;

/// Every event type, versioned by the `v1` payload.
pub const EVENT_TYPES: &[&str] = &[
    "authorization.approved",
    "authorization.declined",
    "authorization.captured",
    "authorization.reversed",
    "authorization.expired",
    "refund.created",
    "advice.posted",
    "card.status_changed",
    "card.funded",
    "card.withdrawn",
    "balance.low",
    "program.funding_low",
    "velocity.limit_near",
];

/// What a receiver gets: one event, signed with Standard Webhooks (`webhook-id` is the
/// event's `id`). Receivers order a card's events by `sequence`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// `evt_…`: unique, the same on every delivery attempt.
    pub id: String,
    /// One of the event types.
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload's version (`v1`).
    pub api_version: String,
    pub program: String,
    /// RFC 3339, UTC, milliseconds.
    pub created: String,
    /// The program's own event number: increasing, never shared with another program.
    pub sequence: i64,
    /// The card concerned (never a card number), when there is one.
    pub card_id: Option<String>,
    /// The object as the API answered it (an authorization's decision, a hold, a
    /// transfer, a card), or the alert's figures.
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// A program's alert thresholds, per currency, in major units.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// `balance.low` when a card's available balance falls below this (once per crossing).
    #[serde(default, deserialize_with = "amounts_by_currency")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub balance_low: BTreeMap<Currency, Decimal>,
    /// `program.funding_low` when the funding account falls below this (once per crossing).
    #[serde(default, deserialize_with = "amounts_by_currency")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub funding_low: BTreeMap<Currency, Decimal>,
    /// `velocity.limit_near` when an approval takes a card's own velocity window to this
    /// share of its amount or count limit (1–100 %), once per crossing.
    #[serde(default, deserialize_with = "percent")]
    pub velocity_near_percent: Option<u8>,
}

/// Whether a decision's JSON answer approved. Its first `"approved":` is the field: in
/// an id or a reason before it a quote is escaped (`\"approved\":`), so never matches.
fn approved(answer: &str) -> bool {
    answer
        .find("\"approved\":")
        .is_some_and(|i| answer[i + "\"approved\":".len()..].starts_with("true"))
}

/// A whole percentage; JSON's `13.0` is the integer 13, as JSON Schema has it.
fn percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    match Option::<f64>::deserialize(d)? {
        None => Ok(None),
        Some(p) if p.fract() == 0.0 && (0.0..=255.0).contains(&p) => Ok(Some(p as u8)),
        Some(p) => Err(serde::de::Error::custom(format!(
            "velocity_near_percent {p} is not a whole number from 1 to 100"
        ))),
    }
}

/// Thresholds as the API takes every amount: decimal strings in the one exact grammar
/// (`"5000.00"`), never JSON numbers.
fn amounts_by_currency<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<Currency, Decimal>, D::Error> {
    let raw = BTreeMap::<Currency, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(c, a)| {
            crate::money::parse_decimal(&a)
                .map(|v| (c, v))
                .map_err(serde::de::Error::custom)
        })
        .collect()
}

impl Engine {
    /// After start-up: a card or funding account already below its threshold counts as
    /// reported, so a restart never repeats (or invents) an alert.
    pub(super) fn arm_alerts(&self) {
        if self.alerts.is_empty() {
            return;
        }
        for card in self.cards.iter() {
            let mut c = card.lock();
            if let Some(t) = self.alerts(&c.program).balance_low.get(&c.currency) {
                c.balance_low = c.account.available() < *t;
            }
        }
        let house = self.house.lock();
        for a in self.alerts.iter() {
            for (currency, t) in &a.funding_low {
                let account = AccountId::funding(a.key(), *currency);
                if house.get(&account).is_some_and(|b| b < t) {
                    self.funding_low.insert(account.as_str().to_string(), ());
                }
            }
        }
    }

    /// Sets a program's alert thresholds.
    pub fn set_alerts(
        &self,
        program: &str,
        alerts: Alerts,
    ) -> Result<Pending<Arc<Alerts>>, Rejection> {
        if self.program(program).is_none() {
            return Err(Rejection::UnknownProgram(program.to_string()));
        }
        if alerts
            .balance_low
            .values()
            .chain(alerts.funding_low.values())
            .any(|d| d.is_sign_negative())
        {
            return Err(Rejection::InvalidRequest(
                "thresholds must not be negative".into(),
            ));
        }
        if alerts
            .velocity_near_percent
            .is_some_and(|p| !(1..=100).contains(&p))
        {
            return Err(Rejection::InvalidRequest(
                "velocity_near_percent is from 1 to 100".into(),
            ));
        }
        let config = serde_json::to_string(&alerts).unwrap_or_default();
        let a = Arc::new(alerts);
        self.alerts.insert(program.to_string(), a.clone());
        let seq = self.persist(vec![Write::Outbox(OutboxWrite::Alerts {
            program: program.to_string(),
            config,
        })]);
        Ok(self.pending(a, seq))
    }

    pub fn alerts(&self, program: &str) -> Arc<Alerts> {
        self.alerts
            .get(program)
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// An event for the endpoints of `program` that want it; none when no endpoint does
    /// (events exist to be delivered: a program without endpoints stores none).
    pub(super) fn event(
        &self,
        program: &str,
        card_id: Option<&str>,
        kind: &'static str,
        data: Value,
        at_ms: i64,
    ) -> Option<Write> {
        self.event_raw(program, card_id, kind, &data.to_string(), at_ms)
    }

    /// [`Engine::event`] with `data` already JSON (an operation's own answer, embedded as
    /// it is rather than parsed and written again).
    fn event_raw(
        &self,
        program: &str,
        card_id: Option<&str>,
        kind: &'static str,
        data: &str,
        at_ms: i64,
    ) -> Option<Write> {
        let endpoints: Vec<String> = self
            .webhook_endpoints
            .iter()
            .filter(|e| e.program == program && e.wants(kind))
            .map(|e| e.id.clone())
            .collect();
        if endpoints.is_empty() {
            return None;
        }
        let sequence = self.event_sequence.fetch_add(1, Ordering::SeqCst) + 1;
        // Each program counts its own events: another program's activity never shows.
        let program_sequence = {
            let mut n = self
                .program_sequences
                .entry(program.to_string())
                .or_insert(0);
            *n += 1;
            *n
        };
        let id = format!("evt_{}", &self.ids.hex128()[..24]);
        let created = chrono::DateTime::from_timestamp_millis(at_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let head = serde_json::to_string(&Event {
            id: id.clone(),
            kind: kind.to_string(),
            api_version: "v1".into(),
            program: program.to_string(),
            created,
            sequence: program_sequence,
            card_id: card_id.map(str::to_string),
            data: Value::Null,
        })
        .unwrap_or_default();
        // `data` (left out above as null) goes last, as written: `{…,"data":{…}}`.
        let payload = format!("{},\"data\":{data}}}", head.trim_end_matches('}'));
        Some(Write::Outbox(OutboxWrite::Event(Box::new(EventWrite {
            id,
            sequence,
            program_sequence,
            program: program.to_string(),
            card_id: card_id.map(str::to_string),
            kind,
            at_ms,
            payload,
            endpoints,
        }))))
    }

    /// The events an idempotent operation reports, from its answer and writes, plus the
    /// alerts it crossed; added to its own writes (one commit). `card` is the card the
    /// operation changed, still locked.
    pub(super) fn operation_events(
        &self,
        scope: &str,
        answer: &str,
        card: Option<&mut CardState>,
        writes: &[Write],
    ) -> Vec<Write> {
        // Fast path: a program without endpoints reports nothing.
        if !self.has_webhook_endpoints() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let at_ms = self.now().timestamp_millis();
        let Some(c) = card else {
            if scope == "deposit" {
                self.funding_alerts(writes, at_ms, &mut out);
            }
            return out;
        };
        let program = c.program.clone();
        let card_id = c.card_id.clone();
        let kind: Option<&'static str> = match scope {
            "authorization" => Some("authorization"),
            "capture" => Some("authorization.captured"),
            "reversal" => Some("authorization.reversed"),
            "refund" => Some("refund.created"),
            "advice" => Some("advice.posted"),
            "status" => Some("card.status_changed"),
            "fund" => Some("card.funded"),
            "withdraw" => Some("card.withdrawn"),
            _ => None,
        };
        if let Some(k) = kind {
            let k = match k {
                "authorization" if approved(answer) => "authorization.approved",
                "authorization" => "authorization.declined",
                k => k,
            };
            out.extend(self.event_raw(&program, Some(&card_id), k, answer, at_ms));
            if k == "authorization.approved" {
                self.velocity_alerts(c, at_ms, &mut out);
            }
        }
        self.balance_alert(c, at_ms, &mut out);
        self.funding_alerts(writes, at_ms, &mut out);
        out
    }

    /// `balance.low` once per crossing below the program's threshold; rising back above
    /// re-arms it.
    pub(super) fn balance_alert(&self, c: &mut CardState, at_ms: i64, out: &mut Vec<Write>) {
        let Some(threshold) = self
            .alerts(&c.program)
            .balance_low
            .get(&c.currency)
            .copied()
        else {
            return;
        };
        let available = c.account.available();
        let below = available < threshold;
        if below && !c.balance_low {
            let data = json!({"card_id": c.card_id, "currency": c.currency,
                "available": crate::money::format_amount(available, c.currency),
                "threshold": crate::money::format_amount(threshold, c.currency)});
            out.extend(self.event(
                &c.program,
                Some(&c.card_id.clone()),
                "balance.low",
                data,
                at_ms,
            ));
        }
        c.balance_low = below;
    }

    /// `velocity.limit_near` for each of the card's own velocity windows (policy and
    /// controls, `scope: card`, counting approvals) that reached the program's share of
    /// its amount or count limit; once per crossing (falling back under re-arms it).
    fn velocity_alerts(&self, c: &mut CardState, at_ms: i64, out: &mut Vec<Write>) {
        use crate::policy::{Check, Counts, VelocityScope};
        let Some(pct) = self.alerts(&c.program).velocity_near_percent else {
            return;
        };
        let policies = self.policies.load();
        let Some(policy) = policies.get(&c.policy).cloned() else {
            return;
        };
        let now = chrono::DateTime::from_timestamp_millis(at_ms).unwrap_or_default();
        let controls = c.controls.clone();
        let share = Decimal::from(pct);
        for (source, p) in [("policy", Some(&policy)), ("controls", controls.as_ref())] {
            let Some(p) = p else { continue };
            for rule in &p.rules {
                let Check::Velocity(v) = &rule.check else {
                    continue;
                };
                if v.scope != VelocityScope::Card || v.counts != Counts::Approved {
                    continue;
                }
                let start_ms = v.window.start_ms(now, p.timezone);
                let used = c.velocity.totals(v.key, start_ms);
                let near_amount = v.amount_max.is_some_and(|m| {
                    m > Decimal::ZERO && used.amount * Decimal::ONE_HUNDRED >= m * share
                });
                let near_count = v.count_max.is_some_and(|m| {
                    m > 0 && u128::from(used.count) * 100 >= u128::from(m) * u128::from(pct)
                });
                let id = format!("{source}:{}", rule.id);
                let was = c.velocity_near.contains(&id);
                if (near_amount || near_count) && !was {
                    let money = |d| crate::money::format_amount(d, p.currency);
                    let data = json!({"rule": rule.id, "source": source, "window": v.window.to_string(),
                        "percent": pct, "currency": p.currency,
                        "amount_used": money(used.amount), "amount_max": v.amount_max.map(money),
                        "count_used": used.count, "count_max": v.count_max});
                    let card_id = c.card_id.clone();
                    out.extend(self.event(
                        &c.program,
                        Some(&card_id),
                        "velocity.limit_near",
                        data,
                        at_ms,
                    ));
                    c.velocity_near.push(id);
                } else if !(near_amount || near_count) && was {
                    c.velocity_near.retain(|r| *r != id);
                }
            }
        }
    }

    /// `program.funding_low` for each funding account the writes moved below its
    /// program's threshold (once per crossing).
    fn funding_alerts(&self, writes: &[Write], at_ms: i64, out: &mut Vec<Write>) {
        for w in writes {
            let Write::Transfer(t) = w else { continue };
            for p in &t.postings {
                let Some(rest) = p.account.as_str().strip_prefix("funding:") else {
                    continue;
                };
                let Some((program, _)) = rest.rsplit_once(':') else {
                    continue;
                };
                let Some(threshold) = self.alerts(program).funding_low.get(&p.currency).copied()
                else {
                    continue;
                };
                let account = AccountId::funding(program, p.currency);
                let balance = self.house.lock().get(&account).copied().unwrap_or_default();
                let below = balance < threshold;
                let was = self.funding_low.contains_key(account.as_str());
                if below && !was {
                    self.funding_low.insert(account.as_str().to_string(), ());
                    let data = json!({"currency": p.currency,
                        "balance": crate::money::format_amount(balance, p.currency),
                        "threshold": crate::money::format_amount(threshold, p.currency)});
                    out.extend(self.event(program, None, "program.funding_low", data, at_ms));
                } else if !below && was {
                    self.funding_low.remove(account.as_str());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_approves_by_its_field_not_by_text_in_an_id() {
        let yes = r#"{"authorization_id":"a","card_id":"c","approved":true,"reason":"approved"}"#;
        let tricky = serde_json::json!({"authorization_id": "x\"approved\":true", "card_id": "c", "approved": false});
        assert!(approved(yes));
        assert!(!approved(&tricky.to_string()), "{tricky}");
        assert!(!approved(r#"{"approved":false}"#));
    }
}
