//! The webhook dispatcher: delivers the outbox's events to each program's endpoints,
//! signed with Standard Webhooks, at least once, in order per card and endpoint; failed
//! deliveries are retried with exponential backoff and jitter until the event is a day
//! old (configurable), then left dead (`POST …/deliveries/{event}/retry` revives one).
//! A slow or dead endpoint holds only its own slots: never another endpoint, never an
//! authorization (the outbox is written in the operation's commit; delivery runs here,
//! in the background). Memory is bounded: the queue stays in the store, and at most
//! `in_flight_max` deliveries are held at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use serde::Deserialize;

use crate::processors::auth::standard_webhooks_sign;
use crate::service::Engine;
use crate::store::outbox::PendingDelivery;

/// Delivery settings (`webhooks:` in the configuration file).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// One attempt's budget, connection to last byte.
    pub timeout_ms: u64,
    /// The first retry's delay; each next one doubles, with ±20 % jitter.
    pub retry_base_ms: u64,
    /// The longest delay between two attempts.
    pub retry_max_ms: u64,
    /// An event still undelivered this long after it happened is dead.
    pub give_up_after_ms: u64,
    /// How often the queue is read.
    pub poll_ms: u64,
    /// Attempts in flight to one endpoint.
    pub per_endpoint_in_flight: usize,
    /// Attempts in flight in all.
    pub in_flight_max: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout_ms: 10_000,
            retry_base_ms: 5_000,
            retry_max_ms: 4 * 3600 * 1000,
            give_up_after_ms: 24 * 3600 * 1000,
            poll_ms: 200,
            per_endpoint_in_flight: 4,
            in_flight_max: 64,
        }
    }
}

/// The delay before attempt `attempts + 1`, jittered.
pub fn backoff_ms(cfg: &DeliveryConfig, attempts: i64, jitter: f64) -> u64 {
    let exp = cfg
        .retry_base_ms
        .saturating_mul(1u64 << attempts.clamp(0, 30) as u32)
        .min(cfg.retry_max_ms);
    ((exp as f64) * (1.0 + jitter.clamp(-0.2, 0.2))) as u64
}

/// The headers of one signed delivery: every valid key signs it (two during a rotation).
pub fn signature_headers(
    keys: &[Vec<u8>],
    event_id: &str,
    ts_s: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let sigs: Vec<String> = keys
        .iter()
        .map(|k| standard_webhooks_sign(k, event_id, ts_s, body))
        .collect();
    vec![
        ("webhook-id", event_id.to_string()),
        ("webhook-timestamp", ts_s.to_string()),
        ("webhook-signature", sigs.join(" ")),
    ]
}

/// Pending deliveries read per endpoint and poll (memory stays bounded: the queue is in
/// the store).
const PENDING_READ_PER_ENDPOINT: usize = 200;

/// Resolves names as the system does, then keeps only public addresses: a name that
/// leads to a private one (an internal name, DNS rebinding) is refused at delivery, not
/// only literal addresses at registration.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !crate::service::webhooks::private_ip(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Default)]
struct InFlight {
    /// (endpoint, sequence) being attempted.
    deliveries: HashSet<(String, i64)>,
    per_endpoint: HashMap<String, usize>,
    /// Reads of the pending deliveries begun so far.
    reads: u64,
    /// Attempts that ended since the latest read began, with `reads` when they ended: that
    /// read may have seen them still pending, and must not send them again.
    ended: HashMap<(String, i64), u64>,
}

impl InFlight {
    /// A read of the pending deliveries begins: attempts that ended before it are in it.
    fn read_begins(&mut self) {
        self.reads += 1;
        let reads = self.reads;
        self.ended.retain(|_, at| *at >= reads);
    }

    /// Whether a delivery the latest read found pending may be attempted now.
    fn may_attempt(&self, key: &(String, i64)) -> bool {
        !self.deliveries.contains(key) && !self.ended.contains_key(key)
    }

    fn begin(&mut self, key: (String, i64)) {
        *self.per_endpoint.entry(key.0.clone()).or_default() += 1;
        self.deliveries.insert(key);
    }

    /// An attempt ended (its outcome is durable).
    fn end(&mut self, key: (String, i64)) {
        if let Some(n) = self.per_endpoint.get_mut(&key.0) {
            *n = n.saturating_sub(1);
        }
        self.deliveries.remove(&key);
        self.ended.insert(key, self.reads);
    }
}

/// Runs until `stop` turns true.
pub async fn run(
    engine: Arc<Engine>,
    cfg: DeliveryConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .user_agent(concat!("spendgate-webhooks/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none());
    if !engine.webhook_private_urls() {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook delivery cannot start");
            return;
        }
    };
    let in_flight: Arc<Mutex<InFlight>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.poll_ms.max(10)));
    let mut last_stats = Instant::now() - Duration::from_secs(10);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if !engine.has_webhook_endpoints() {
            continue;
        }
        let e = engine.clone();
        in_flight.lock().read_begins();
        let Ok(pending) =
            tokio::task::spawn_blocking(move || e.pending_deliveries(PENDING_READ_PER_ENDPOINT))
                .await
        else {
            break;
        };
        if last_stats.elapsed() >= Duration::from_secs(1) {
            last_stats = Instant::now();
            let e = engine.clone();
            if let Ok((depth, oldest)) =
                tokio::task::spawn_blocking(move || e.delivery_queue()).await
            {
                metrics::gauge!("spendgate_webhook_queue_depth").set(depth as f64);
                let now_ms = engine.now_ms();
                let age_s = oldest.map_or(0.0, |o| (now_ms - o).max(0) as f64 / 1e3);
                metrics::gauge!("spendgate_webhook_oldest_pending_age_seconds").set(age_s);
            }
        }
        let now_ms = engine.now_ms();
        // Deliveries of one card to one endpoint go in event order: once one is waiting
        // (in flight or not yet due), the card's later events wait behind it. Events of
        // no card (the program's own) form one more such lane.
        let mut waiting: HashSet<(String, String)> = HashSet::new();
        for d in pending {
            let lane = (d.endpoint_id.clone(), d.card_id.clone().unwrap_or_default());
            if waiting.contains(&lane) {
                continue;
            }
            let mut f = in_flight.lock();
            let key = (d.endpoint_id.clone(), d.sequence);
            // In flight, or ended after this read began (it may be stale for it).
            let busy = !f.may_attempt(&key);
            let due = d.next_attempt_ms <= now_ms;
            let full = f.per_endpoint.get(&d.endpoint_id).copied().unwrap_or(0)
                >= cfg.per_endpoint_in_flight;
            if busy || !due || full {
                waiting.insert(lane);
                continue;
            }
            if f.deliveries.len() >= cfg.in_flight_max {
                break;
            }
            f.begin(key.clone());
            drop(f);
            waiting.insert(lane);
            let (engine, client, in_flight) = (engine.clone(), client.clone(), in_flight.clone());
            tokio::spawn(async move {
                attempt(&engine, &client, &cfg, &d).await;
                in_flight.lock().end(key);
            });
        }
    }
}

/// One attempt, recorded durably before its delivery may be read again.
async fn attempt(
    engine: &Engine,
    client: &reqwest::Client,
    cfg: &DeliveryConfig,
    d: &PendingDelivery,
) {
    let Some(endpoint) = engine.endpoint_for_delivery(&d.endpoint_id) else {
        return;
    };
    if !endpoint.enabled {
        return;
    }
    let now_ms = engine.now_ms();
    let keys = endpoint.signing_keys(now_ms);
    let started = Instant::now();
    let mut req = client
        .post(&endpoint.url)
        .header("content-type", "application/json")
        .body(d.payload.clone());
    for (h, v) in signature_headers(&keys, &d.event_id, now_ms / 1000, d.payload.as_bytes()) {
        req = req.header(h, v);
    }
    let result = req.send().await;
    let latency_ms = started.elapsed().as_millis() as i64;
    metrics::histogram!("spendgate_webhook_delivery_seconds").record(latency_ms as f64 / 1e3);
    let (ok, status, error) = match result {
        Ok(r) => (
            r.status().is_success(),
            Some(i64::from(r.status().as_u16())),
            None,
        ),
        Err(e) => (
            false,
            None,
            Some(if e.is_timeout() {
                "timeout".to_string()
            } else {
                "connection failed".to_string()
            }),
        ),
    };
    let (outcome, next_ms) = if ok {
        ("delivered", now_ms)
    } else if now_ms - d.at_ms >= cfg.give_up_after_ms as i64 {
        ("dead", now_ms)
    } else {
        let jitter = rand::rng().random_range(-0.2..=0.2);
        (
            "pending",
            now_ms + backoff_ms(cfg, d.attempts, jitter) as i64,
        )
    };
    let label = match outcome {
        "pending" => "failed",
        o => o,
    };
    metrics::counter!("spendgate_webhook_deliveries_total", "outcome" => label).increment(1);
    if !ok {
        tracing::warn!(endpoint = %d.endpoint_id, event = %d.event_id, status = ?status, error = ?error, outcome, "webhook delivery failed");
    }
    engine
        .record_attempt(d, outcome, next_ms, status, error, latency_ms)
        .durable()
        .await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_delivery_that_ended_while_pending_ones_were_read_is_not_sent_again() {
        let mut f = super::InFlight::default();
        let key = ("we_1".to_string(), 7);
        f.read_begins();
        f.begin(key.clone());
        assert!(!f.may_attempt(&key), "in flight");
        // The next read begins while the attempt is still out, so it finds the delivery
        // pending; the attempt then ends (delivered) before that read's result is used.
        f.read_begins();
        f.end(key.clone());
        assert!(
            !f.may_attempt(&key),
            "that read is stale for it: no second send"
        );
        assert_eq!(f.per_endpoint["we_1"], 0);
        // A read that begins after the outcome was stored sees it as it is.
        f.read_begins();
        assert!(f.may_attempt(&key));
        assert!(f.ended.is_empty(), "what ended is forgotten once read past");
    }

    use super::*;

    /// A webhook URL whose name leads to a loopback or private address: refused when it
    /// is resolved for delivery, not only when the URL names the address literally.
    #[tokio::test]
    async fn a_name_that_resolves_to_a_private_address_is_refused() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = PublicOnly.resolve(name).await.err().expect("refused");
        assert!(err.to_string().contains("no public address"), "{err}");
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap_with_bounded_jitter() {
        let cfg = DeliveryConfig::default();
        assert_eq!(backoff_ms(&cfg, 0, 0.0), 5_000);
        assert_eq!(backoff_ms(&cfg, 3, 0.0), 40_000);
        assert_eq!(backoff_ms(&cfg, 40, 0.0), cfg.retry_max_ms);
        assert_eq!(backoff_ms(&cfg, 0, 0.9), 6_000, "jitter is at most 20 %");
        assert_eq!(backoff_ms(&cfg, 0, -0.2), 4_000);
        // Retries go on for a day: 16 delays (5 s doubling to the 4 h cap) fit in 24 h,
        // the 17th passes it.
        let total = |n: i64| (0..n).map(|a| backoff_ms(&cfg, a, 0.0)).sum::<u64>();
        assert!(total(16) < cfg.give_up_after_ms && total(17) > cfg.give_up_after_ms);
    }

    #[test]
    fn a_delivery_is_signed_by_every_valid_key() {
        let keys = vec![
            b"0123456789abcdef-new".to_vec(),
            b"0123456789abcdef-old".to_vec(),
        ];
        let h = signature_headers(&keys, "evt_1", 1_700_000_000, b"{}");
        let sigs: Vec<&str> = h[2].1.split(' ').collect();
        assert_eq!(sigs.len(), 2);
        let mut map = axum::http::HeaderMap::new();
        for (k, v) in &h {
            map.insert(*k, v.parse().unwrap());
        }
        // A receiver holding either secret accepts it (Standard Webhooks: any of the
        // space-separated signatures may match).
        for key in &keys {
            let v = crate::processors::auth::verify_standard_webhooks(
                std::slice::from_ref(key),
                &map,
                b"{}",
                1_700_000_000,
            );
            assert!(v.is_ok());
        }
        let other = b"0123456789abcdef-bad".to_vec();
        assert!(crate::processors::auth::verify_standard_webhooks(
            &[other],
            &map,
            b"{}",
            1_700_000_000
        )
        .is_err());
    }
}
