//! Events out: each program's webhook endpoints (secrets, rotation, URL checks) and what
//! delivery needs from the store. The events themselves and the alerts are in
//! `events.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::events::{Alerts, EVENT_TYPES};
use super::{Engine, Pending, Rejection};
use crate::store::outbox::{DeliveryRow, OutboxWrite, PendingDelivery};
use crate::store::Write;

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

/// An address a tenant must not make the server call: loopback, private, link-local,
/// unspecified, shared (CGNAT) or unique-local.
/// Loopback, private, link-local, carrier-grade NAT, unique-local and unspecified
/// addresses: where a webhook must not go (unless `webhook_private_urls`).
pub fn private_ip(ip: std::net::IpAddr) -> bool {
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
/// name (names that resolve to private addresses are refused at delivery, by the
/// dispatcher's resolver).
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
    /// Whether webhooks may go to private addresses (tests, closed networks).
    pub fn webhook_private_urls(&self) -> bool {
        self.config.webhook_private_urls
    }

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

    /// Pending deliveries in event order (blocking: off the async runtime).
    /// Each enabled endpoint's pending deliveries (at most `limit_per_endpoint` each, in
    /// event order). Read endpoint by endpoint: a dead endpoint's backlog of deliveries
    /// not yet due can never fill the batch and starve another's; a disabled endpoint's
    /// wait untouched until it is enabled again.
    pub fn pending_deliveries(&self, limit_per_endpoint: usize) -> Vec<PendingDelivery> {
        let Some(store) = self.store.as_ref() else {
            return Vec::new();
        };
        let enabled: Vec<String> = self
            .webhook_endpoints
            .iter()
            .filter(|e| e.enabled)
            .map(|e| e.id.clone())
            .collect();
        enabled
            .iter()
            .filter_map(|id| store.pending_deliveries(id, limit_per_endpoint).ok())
            .flatten()
            .collect()
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
