//! Events out: each program's webhook endpoints, the events operations report (built here
//! and written in the operation's own commit, so none is lost or invented by a crash),
//! alert thresholds (balance low, funding low), and what delivery needs from the store.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{CardState, Engine, Pending, Rejection};
use crate::ledger::AccountId;
use crate::money::Currency;
use crate::store::outbox::{DeliveryRow, EventWrite, OutboxWrite, PendingDelivery};
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
    pub data: Value,
}

#[cfg(test)]
mod url_tests {
    use super::check_url;

    #[test]
    fn endpoints_cannot_point_into_the_servers_network_unless_allowed() {
        for bad in [
            "http://127.0.0.1:8080/x",
            "http://10.1.2.3/x",
            "http://192.168.0.1/x",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/x",
            "http://[::1]/x",
            "http://[fd00::1]/x",
            "http://[::ffff:10.0.0.1]/x",
            "http://localhost:9/x",
            "http://metadata.google.internal/x",
            "http://0.0.0.0/x",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
            assert!(check_url(bad, true).is_ok(), "{bad} when allowed");
        }
        assert!(check_url("https://issuer.example/spendgate", false).is_ok());
        assert!(check_url("https://8.8.8.8/x", false).is_ok());
        assert!(check_url("ftp://issuer.example/x", true).is_err());
    }
}

/// Endpoints a program may have.
pub const ENDPOINTS_PER_PROGRAM_MAX: usize = 16;
/// A rotated secret stays valid this long, so receivers can switch over.
pub const SECRET_OVERLAP_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointSecret {
    /// `whsec_` + base64 of 24 random bytes.
    pub secret: String,
    /// A rotated-out secret signs until then; the current one has none.
    pub expires_ms: Option<i64>,
}

/// A program's webhook endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WebhookEndpoint {
    pub id: String,
    pub program: String,
    pub url: String,
    /// Empty: every type.
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub description: String,
    pub secrets: Vec<EndpointSecret>,
    pub created_ms: i64,
}

impl WebhookEndpoint {
    pub fn wants(&self, kind: &str) -> bool {
        self.enabled && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == kind))
    }

    /// What the API shows: never a secret.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id, "url": self.url, "event_types": self.event_types, "enabled": self.enabled,
            "description": self.description, "created_ms": self.created_ms,
            "secrets_valid": self.secrets.len(),
        })
    }

    /// The keys that sign a delivery at `now_ms` (two during a rotation).
    pub fn signing_keys(&self, now_ms: i64) -> Vec<Vec<u8>> {
        self.secrets
            .iter()
            .filter(|s| s.expires_ms.is_none_or(|e| e > now_ms))
            .filter_map(|s| crate::processors::auth::parse_whsec(&s.secret).ok())
            .collect()
    }
}

/// What a caller may set on an endpoint.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointInput {
    pub url: Option<String>,
    /// Event types wanted; empty or absent means all.
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub description: Option<String>,
}

/// A program's alert thresholds, per currency, in major units.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// `balance.low` when a card's available balance falls below this (once per crossing).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub balance_low: BTreeMap<Currency, Decimal>,
    /// `program.funding_low` when the funding account falls below this (once per crossing).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub funding_low: BTreeMap<Currency, Decimal>,
    /// `velocity.limit_near` when an approval takes a card's own velocity window to this
    /// share of its amount or count limit (1–100 %), once per crossing.
    #[serde(default)]
    pub velocity_near_percent: Option<u8>,
}

/// An address a tenant must not make the server call: loopback, private, link-local,
/// unspecified, shared (CGNAT) or unique-local.
fn private_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v) => {
            v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || (v.octets()[0] == 100 && (64..128).contains(&v.octets()[1]))
        }
        std::net::IpAddr::V6(v) => {
            v.is_loopback()
                || v.is_unspecified()
                || (v.segments()[0] & 0xfe00) == 0xfc00
                || (v.segments()[0] & 0xffc0) == 0xfe80
                || v.to_ipv4_mapped().is_some_and(|m| private_ip(m.into()))
        }
    }
}

/// An http(s) URL; unless `private_allowed`, not a literal private address or a local
/// name (names that resolve to private addresses are not caught here).
fn check_url(url: &str, private_allowed: bool) -> Result<(), Rejection> {
    let parsed = reqwest::Url::parse(url)
        .ok()
        .filter(|u| url.len() <= 2048 && matches!(u.scheme(), "http" | "https"));
    let Some(u) = parsed else {
        return Err(Rejection::InvalidRequest(
            "url must be an http(s) URL of at most 2048 characters".into(),
        ));
    };
    let private = match u.host() {
        None => true,
        Some(url::Host::Ipv4(ip)) => private_ip(ip.into()),
        Some(url::Host::Ipv6(ip)) => private_ip(ip.into()),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost"
                || d.ends_with(".localhost")
                || d.ends_with(".local")
                || d.ends_with(".internal")
        }
    };
    if private && !private_allowed {
        return Err(Rejection::InvalidRequest(
            "url must not point at a loopback, private or local address".into(),
        ));
    }
    Ok(())
}

fn check_types(types: &[String]) -> Result<(), Rejection> {
    match types.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
        Some(t) => Err(Rejection::InvalidRequest(format!(
            "unknown event type `{}` (known: {})",
            crate::domain::shorten(t),
            EVENT_TYPES.join(", ")
        ))),
        None => Ok(()),
    }
}

impl Engine {
    fn new_secret(&self) -> String {
        use base64::Engine as _;
        let raw = format!("{}{}", self.ids.hex128(), self.ids.hex128());
        let bytes: Vec<u8> = (0..24)
            .map(|i| u8::from_str_radix(&raw[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    fn save_endpoint(&self, e: WebhookEndpoint) -> Pending<Arc<WebhookEndpoint>> {
        let config = serde_json::to_string(&e).unwrap_or_default();
        let e = Arc::new(e);
        if self
            .webhook_endpoints
            .insert(e.id.clone(), e.clone())
            .is_none()
        {
            self.endpoint_count.fetch_add(1, Ordering::SeqCst);
        }
        let seq = self.persist(vec![Write::Outbox(OutboxWrite::Endpoint {
            id: e.id.clone(),
            program: e.program.clone(),
            config: Some(config),
        })]);
        self.pending(e, seq)
    }

    /// Creates an endpoint; its secret is in the answer once and never shown again.
    pub fn create_webhook_endpoint(
        &self,
        program: &str,
        input: EndpointInput,
    ) -> Result<Pending<(Arc<WebhookEndpoint>, String)>, Rejection> {
        if self.program(program).is_none() {
            return Err(Rejection::UnknownProgram(program.to_string()));
        }
        let url = input
            .url
            .ok_or_else(|| Rejection::InvalidRequest("url is required".into()))?;
        check_url(&url, self.config.webhook_private_urls)?;
        let types = input.event_types.unwrap_or_default();
        check_types(&types)?;
        if self.webhook_endpoints(program).len() >= ENDPOINTS_PER_PROGRAM_MAX {
            return Err(Rejection::InvalidRequest(format!(
                "at most {ENDPOINTS_PER_PROGRAM_MAX} endpoints per program"
            )));
        }
        let secret = self.new_secret();
        let e = WebhookEndpoint {
            id: format!("we_{}", &self.ids.hex128()[..24]),
            program: program.to_string(),
            url,
            event_types: types,
            enabled: input.enabled.unwrap_or(true),
            description: input
                .description
                .unwrap_or_default()
                .chars()
                .take(256)
                .collect(),
            secrets: vec![EndpointSecret {
                secret: secret.clone(),
                expires_ms: None,
            }],
            created_ms: self.now().timestamp_millis(),
        };
        let p = self.save_endpoint(e);
        Ok(p.map(|e| (e, secret)))
    }

    /// A program's endpoints (another program's are never visible).
    pub fn webhook_endpoints(&self, program: &str) -> Vec<Arc<WebhookEndpoint>> {
        let mut v: Vec<_> = self
            .webhook_endpoints
            .iter()
            .filter(|e| e.program == program)
            .map(|e| e.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn webhook_endpoint(
        &self,
        program: &str,
        id: &str,
    ) -> Result<Arc<WebhookEndpoint>, Rejection> {
        self.webhook_endpoints
            .get(id)
            .filter(|e| e.program == program)
            .map(|e| e.clone())
            .ok_or_else(|| Rejection::UnknownWebhookEndpoint(id.to_string()))
    }

    /// Changes an endpoint's URL, types, description or enabled flag.
    pub fn update_webhook_endpoint(
        &self,
        program: &str,
        id: &str,
        input: EndpointInput,
    ) -> Result<Pending<Arc<WebhookEndpoint>>, Rejection> {
        let mut e = (*self.webhook_endpoint(program, id)?).clone();
        if let Some(u) = input.url {
            check_url(&u, self.config.webhook_private_urls)?;
            e.url = u;
        }
        if let Some(t) = input.event_types {
            check_types(&t)?;
            e.event_types = t;
        }
        if let Some(en) = input.enabled {
            e.enabled = en;
        }
        if let Some(d) = input.description {
            e.description = d.chars().take(256).collect();
        }
        Ok(self.save_endpoint(e))
    }

    /// A new secret, answered once; the previous one keeps signing for 24 hours.
    pub fn rotate_webhook_secret(
        &self,
        program: &str,
        id: &str,
    ) -> Result<Pending<(Arc<WebhookEndpoint>, String)>, Rejection> {
        let mut e = (*self.webhook_endpoint(program, id)?).clone();
        let now_ms = self.now().timestamp_millis();
        let secret = self.new_secret();
        let mut previous: Vec<EndpointSecret> = e
            .secrets
            .into_iter()
            .filter(|s| s.expires_ms.is_none())
            .map(|s| EndpointSecret {
                secret: s.secret,
                expires_ms: Some(now_ms + SECRET_OVERLAP_MS),
            })
            .collect();
        previous.truncate(1);
        e.secrets = std::iter::once(EndpointSecret {
            secret: secret.clone(),
            expires_ms: None,
        })
        .chain(previous)
        .collect();
        Ok(self.save_endpoint(e).map(|e| (e, secret)))
    }

    pub fn delete_webhook_endpoint(
        &self,
        program: &str,
        id: &str,
    ) -> Result<Pending<()>, Rejection> {
        let e = self.webhook_endpoint(program, id)?;
        if self.webhook_endpoints.remove(id).is_some() {
            self.endpoint_count.fetch_sub(1, Ordering::SeqCst);
        }
        let seq = self.persist(vec![Write::Outbox(OutboxWrite::Endpoint {
            id: e.id.clone(),
            program: e.program.clone(),
            config: None,
        })]);
        Ok(self.pending((), seq))
    }

    pub(super) fn restore_outbox(
        &self,
        state: &crate::store::outbox::OutboxState,
    ) -> Result<(), String> {
        for (id, _, config) in &state.endpoints {
            let e: WebhookEndpoint =
                serde_json::from_str(config).map_err(|e| format!("endpoint {id}: {e}"))?;
            if self
                .webhook_endpoints
                .insert(id.clone(), Arc::new(e))
                .is_none()
            {
                self.endpoint_count.fetch_add(1, Ordering::SeqCst);
            }
        }
        for (program, config) in &state.alerts {
            let a: Alerts =
                serde_json::from_str(config).map_err(|e| format!("alerts of {program}: {e}"))?;
            self.alerts.insert(program.clone(), Arc::new(a));
        }
        self.event_sequence
            .store(state.last_sequence, Ordering::SeqCst);
        for (program, last) in &state.program_sequences {
            self.program_sequences.insert(program.clone(), *last);
        }
        Ok(())
    }

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
        let payload = serde_json::to_string(&Event {
            id: id.clone(),
            kind: kind.to_string(),
            api_version: "v1".into(),
            program: program.to_string(),
            created,
            sequence: program_sequence,
            card_id: card_id.map(str::to_string),
            data,
        })
        .unwrap_or_default();
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
        let data = || serde_json::from_str::<Value>(answer).unwrap_or(Value::Null);
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
            let data = data();
            let k = match k {
                "authorization" if data["approved"] == true => "authorization.approved",
                "authorization" => "authorization.declined",
                k => k,
            };
            out.extend(self.event(&program, Some(&card_id), k, data, at_ms));
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

    /// Pending deliveries in event order (blocking: off the async runtime).
    pub fn pending_deliveries(&self, limit: usize) -> Vec<PendingDelivery> {
        self.store
            .as_ref()
            .and_then(|s| s.pending_deliveries(limit).ok())
            .unwrap_or_default()
    }

    /// Records a delivery attempt (durable in the background: a crash before it only
    /// means the delivery is made again — at least once).
    #[allow(clippy::too_many_arguments)]
    pub fn record_attempt(
        &self,
        d: &PendingDelivery,
        status: &'static str,
        next_attempt_ms: i64,
        last_status: Option<i64>,
        last_error: Option<String>,
        latency_ms: i64,
    ) -> Pending<()> {
        let at_ms = self.now().timestamp_millis();
        let seq = self.persist(vec![Write::Outbox(OutboxWrite::Attempt {
            endpoint_id: d.endpoint_id.clone(),
            sequence: d.sequence,
            status,
            attempts: d.attempts + 1,
            next_attempt_ms,
            last_status,
            last_error,
            latency_ms: Some(latency_ms),
            at_ms,
        })]);
        self.pending((), seq)
    }

    /// An endpoint's deliveries, newest first.
    pub fn deliveries(
        &self,
        program: &str,
        endpoint_id: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, Rejection> {
        self.webhook_endpoint(program, endpoint_id)?;
        let store = self.store.as_ref().ok_or(Rejection::HistoryUnavailable)?;
        store
            .deliveries(endpoint_id, limit)
            .map_err(|_| Rejection::HistoryUnavailable)
    }

    /// Puts a delivery (pending, failed or dead) back in the queue now.
    pub fn retry_delivery(
        &self,
        program: &str,
        endpoint_id: &str,
        event_id: &str,
    ) -> Result<Pending<()>, Rejection> {
        self.webhook_endpoint(program, endpoint_id)?;
        let store = self.store.as_ref().ok_or(Rejection::HistoryUnavailable)?;
        let sequence = store
            .delivery_sequence(endpoint_id, event_id)
            .map_err(|_| Rejection::HistoryUnavailable)?
            .ok_or_else(|| Rejection::UnknownDelivery(event_id.to_string()))?;
        let seq = self.persist(vec![Write::Outbox(OutboxWrite::Retry {
            endpoint_id: endpoint_id.to_string(),
            sequence,
            at_ms: self.now().timestamp_millis(),
        })]);
        Ok(self.pending((), seq))
    }

    /// (pending deliveries, the oldest pending event's time).
    pub fn delivery_queue(&self) -> (i64, Option<i64>) {
        self.store
            .as_ref()
            .and_then(|s| s.queue_stats().ok())
            .unwrap_or((0, None))
    }

    pub fn has_webhook_endpoints(&self) -> bool {
        // A counter, not the map's length: that would lock every shard on each call.
        self.endpoint_count.load(Ordering::Relaxed) > 0
    }

    /// The engine's clock in milliseconds (delivery schedules by it).
    pub fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }

    /// The endpoint by id, for delivery (any program).
    pub fn endpoint_for_delivery(&self, id: &str) -> Option<Arc<WebhookEndpoint>> {
        self.webhook_endpoints.get(id).map(|e| e.clone())
    }
}
