//! Who may call: API keys scoped to a program, an admin key, hook signatures (Standard
//! Webhooks HMAC-SHA256), and per-key rate limits.

use std::num::NonZeroU32;

use super::problem::Problem;
use crate::processors::auth;
use axum::http::{HeaderMap, StatusCode};

/// Signatures older or newer than this are refused.
pub const SIGNATURE_TOLERANCE_S: i64 = auth::SIGNATURE_TOLERANCE_S;

/// A hook secret in Standard Webhooks form: `whsec_` + base64 of the key bytes.
pub fn parse_secret(s: &str) -> Result<Vec<u8>, String> {
    auth::parse_whsec(s)
}

/// Computes the `v1,<base64>` signature of `id.timestamp.body`.
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    auth::standard_webhooks_sign(secret, id, timestamp, body)
}

/// Verifies Standard Webhooks signatures on our own hook (the same scheme Lithic uses:
/// `processors::auth::verify_standard_webhooks`).
///
/// The signature covers `webhook-id.webhook-timestamp.body`. A request seen again within
/// the tolerance is a retry, not an attack: every hook operation is idempotent by a
/// signed key (the authorization id, the refund or advice id, the `webhook-id` for
/// captures and reversals) whose answer is stored durably, so a retry — before or after a
/// restart — gets the original answer and changes nothing. No replay cache is needed.
pub struct HookVerifier {
    /// Current and, during rotation, previous secrets.
    pub secrets: Vec<Vec<u8>>,
}

impl HookVerifier {
    pub fn new(secrets: Vec<Vec<u8>>) -> HookVerifier {
        HookVerifier { secrets }
    }

    pub fn enabled(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Checks `webhook-id`, `webhook-timestamp` and `webhook-signature` over the raw body.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now_s: i64) -> Result<(), Problem> {
        if !self.enabled() {
            return Ok(());
        }
        auth::verify_standard_webhooks(&self.secrets, headers, body, now_s)
            .map_err(|e| Problem::new(StatusCode::UNAUTHORIZED, "invalid_signature", e.0))
    }
}

/// Token bucket per program (governor's GCRA): a burst of one second's quota, refilled
/// continuously. Keys are programs, so the map is bounded by the number of programs.
pub struct RateLimiter {
    limiter: governor::DefaultKeyedRateLimiter<String>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        let quota = governor::Quota::per_second(
            NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN),
        );
        RateLimiter {
            limiter: governor::RateLimiter::keyed(quota),
        }
    }

    pub fn check(&self, program: &String) -> Result<(), Problem> {
        self.limiter.check_key(program).map_err(|_| {
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests for this API key",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_rotate_and_accept_retries() {
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
        assert!(
            v.verify(&h, body, 1000).is_ok(),
            "a retry of the same signed message passes (its operation is idempotent)"
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
        let (k, other) = ("k".to_string(), "other".to_string());
        assert!(r.check(&k).is_ok() && r.check(&k).is_ok() && r.check(&k).is_ok());
        assert_eq!(r.check(&k).unwrap_err().kind, "rate_limited");
        assert!(r.check(&other).is_ok());
    }

    #[test]
    fn signatures_agree_with_the_standard_webhooks_crate() {
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let body = br#"{"id":"auth_1","amount":"10.00"}"#;
        let reference = standardwebhooks::Webhook::from_bytes(secret.clone()).unwrap();
        let theirs = reference.sign("msg_9", 1_700_000_000, body).unwrap();
        assert_eq!(sign(&secret, "msg_9", 1_700_000_000, body), theirs);
        // What we sign, their verifier accepts (at the current time, as it reads the clock).
        let now = chrono::Utc::now().timestamp();
        let mut h = axum::http::HeaderMap::new();
        h.insert("webhook-id", "msg_10".parse().unwrap());
        h.insert("webhook-timestamp", now.to_string().parse().unwrap());
        h.insert(
            "webhook-signature",
            sign(&secret, "msg_10", now, body).parse().unwrap(),
        );
        assert!(reference.verify(body, &h).is_ok());
        assert!(HookVerifier::new(vec![secret])
            .verify(&h, body, now)
            .is_ok());
    }
}
