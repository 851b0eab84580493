//! Who may call: API keys scoped to a program, an admin key, hook signatures (Standard
//! Webhooks HMAC-SHA256 with replay protection), and per-key rate limits.

use std::time::Instant;

use base64::Engine as _;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;

use super::problem::Problem;
use axum::http::{HeaderMap, StatusCode};

/// Signatures older or newer than this are refused.
pub const SIGNATURE_TOLERANCE_S: i64 = 300;
/// Seen webhook ids are remembered at least this long (twice the tolerance).
const REPLAY_WINDOW_S: i64 = 2 * SIGNATURE_TOLERANCE_S;
const REPLAY_CACHE_MAX: usize = 1_000_000;

/// A hook secret in Standard Webhooks form: `whsec_` + base64 of the key bytes.
pub fn parse_secret(s: &str) -> Result<Vec<u8>, String> {
    let b64 = s.trim().strip_prefix("whsec_").unwrap_or(s.trim());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "hook secret must be whsec_ + base64".to_string())?;
    if bytes.len() < 16 {
        return Err("hook secret must be at least 16 bytes".into());
    }
    Ok(bytes)
}

/// Computes the `v1,<base64>` signature of `id.timestamp.body`.
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

pub struct HookVerifier {
    /// Current and, during rotation, previous secrets.
    pub secrets: Vec<Vec<u8>>,
    seen: DashMap<String, i64>,
}

impl HookVerifier {
    pub fn new(secrets: Vec<Vec<u8>>) -> HookVerifier {
        HookVerifier {
            secrets,
            seen: DashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Checks `webhook-id`, `webhook-timestamp` and `webhook-signature` over the raw body.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now_s: i64) -> Result<(), Problem> {
        if !self.enabled() {
            return Ok(());
        }
        let bad =
            |d: &str| Problem::new(StatusCode::UNAUTHORIZED, "invalid_signature", d.to_string());
        let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
        let id = get("webhook-id").ok_or_else(|| bad("missing webhook-id header"))?;
        let ts: i64 = get("webhook-timestamp")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad("missing or invalid webhook-timestamp header"))?;
        let sigs =
            get("webhook-signature").ok_or_else(|| bad("missing webhook-signature header"))?;
        if (now_s - ts).abs() > SIGNATURE_TOLERANCE_S {
            return Err(bad("webhook-timestamp is outside the 5-minute tolerance"));
        }
        if id.is_empty() || id.len() > 128 {
            return Err(bad("webhook-id must be 1 to 128 characters"));
        }
        let valid = self.secrets.iter().any(|secret| {
            sigs.split_whitespace().any(|candidate| {
                let Some(b64) = candidate.strip_prefix("v1,") else {
                    return false;
                };
                let Ok(given) = base64::engine::general_purpose::STANDARD.decode(b64) else {
                    return false;
                };
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(ts.to_string().as_bytes());
                mac.update(b".");
                mac.update(body);
                mac.verify_slice(&given).is_ok()
            })
        });
        if !valid {
            return Err(bad("no webhook-signature matches"));
        }
        // Replay cache: a valid id may be used once within the window.
        if self.seen.len() > REPLAY_CACHE_MAX {
            self.seen.retain(|_, seen| now_s - *seen <= REPLAY_WINDOW_S);
        }
        match self.seen.entry(id.to_string()) {
            dashmap::Entry::Occupied(_) => Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "replayed_signature",
                "this webhook-id was already used",
            )),
            dashmap::Entry::Vacant(v) => {
                v.insert(now_s);
                Ok(())
            }
        }
    }
}

/// Token bucket per API key.
pub struct RateLimiter {
    per_second: f64,
    buckets: DashMap<String, Mutex<(f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(per_second.max(1)),
            buckets: DashMap::new(),
        }
    }

    pub fn check(&self, key: &str) -> Result<(), Problem> {
        let now = Instant::now();
        // The common case finds its bucket without allocating a key.
        let entry = match self.buckets.get(key) {
            Some(e) => e,
            None => self
                .buckets
                .entry(key.to_string())
                .or_insert_with(|| Mutex::new((self.per_second, now)))
                .downgrade(),
        };
        let mut b = entry.lock();
        let refill = now.duration_since(b.1).as_secs_f64() * self.per_second;
        b.0 = (b.0 + refill).min(self.per_second);
        b.1 = now;
        if b.0 < 1.0 {
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests for this API key",
            ));
        }
        b.0 -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_rotate_and_refuse_replays() {
        let old = b"0123456789abcdef-old".to_vec();
        let new = b"0123456789abcdef-new".to_vec();
        let v = HookVerifier::new(vec![new.clone(), old.clone()]);
        let body = br#"{"x":1}"#;
        let mut h = HeaderMap::new();
        h.insert("webhook-id", "msg_1".parse().unwrap());
        h.insert("webhook-timestamp", "1000".parse().unwrap());
        h.insert(
            "webhook-signature",
            sign(&old, "msg_1", 1000, body).parse().unwrap(),
        );
        assert!(
            v.verify(&h, body, 1000).is_ok(),
            "the previous secret still works during rotation"
        );
        assert_eq!(
            v.verify(&h, body, 1000).unwrap_err().kind,
            "replayed_signature"
        );
        h.insert("webhook-id", "msg_2".parse().unwrap());
        h.insert(
            "webhook-signature",
            sign(&new, "msg_2", 1000, body).parse().unwrap(),
        );
        assert_eq!(
            v.verify(&h, body, 1301).unwrap_err().kind,
            "invalid_signature",
            "too old"
        );
        assert_eq!(
            v.verify(&h, b"{}", 1000).unwrap_err().kind,
            "invalid_signature",
            "body changed"
        );
        assert!(v.verify(&h, body, 1000).is_ok());
        assert!(parse_secret("whsec_c2hvcnQ=").is_err());
    }

    #[test]
    fn rate_limit() {
        let r = RateLimiter::new(3);
        assert!(r.check("k").is_ok() && r.check("k").is_ok() && r.check("k").is_ok());
        assert_eq!(r.check("k").unwrap_err().kind, "rate_limited");
        assert!(r.check("other").is_ok());
    }
}
