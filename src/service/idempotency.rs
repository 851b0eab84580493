//! Idempotency keys: the same key with the same request replays the stored response;
//! with a different request it is a conflict; concurrent duplicates execute once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::{Pending, Rejection};
use crate::store::Write;

/// How long a duplicate waits for the first request with its key to finish.
const IN_FLIGHT_WAIT_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Entry {
    InFlight {
        hash: String,
    },
    Done {
        hash: String,
        response: Arc<str>,
        seq: u64,
    },
}

pub enum Begin {
    /// First time: execute, then `finish` (or `abort` on failure).
    Go,
    /// Seen before with the same request: the response, durable at `seq`.
    Replay { response: Arc<str>, seq: u64 },
    /// Seen before with a different request.
    Conflict,
}

/// Answers by (scope, key). A DashMap, not a bounded cache (moka): evicting a finished
/// key would turn a processor's retry into a second execution while the store cannot yet
/// answer replays itself. An entry is in flight only while its operation runs (µs, under
/// the card's lock), so a duplicate's wait in `begin` is short; a failed or panicking
/// operation removes its entry (see `InFlightGuard`).
#[derive(Default)]
pub struct Idempotency {
    map: DashMap<(&'static str, String), Entry>,
}

/// SHA-256 of a canonical request encoding, as hex.
pub fn request_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Idempotency {
    pub fn begin(&self, scope: &'static str, key: &str, hash: &str) -> Begin {
        let deadline = Instant::now() + IN_FLIGHT_WAIT_MAX;
        loop {
            match self.map.entry((scope, key.to_string())) {
                dashmap::Entry::Vacant(v) => {
                    v.insert(Entry::InFlight {
                        hash: hash.to_string(),
                    });
                    return Begin::Go;
                }
                dashmap::Entry::Occupied(o) => match o.get() {
                    Entry::Done {
                        hash: h,
                        response,
                        seq,
                    } => {
                        return if h == hash {
                            Begin::Replay {
                                response: response.clone(),
                                seq: *seq,
                            }
                        } else {
                            Begin::Conflict
                        };
                    }
                    Entry::InFlight { hash: h } if h != hash => return Begin::Conflict,
                    Entry::InFlight { .. } => {}
                },
            }
            // The same request is executing right now: wait for its answer.
            if Instant::now() > deadline {
                return Begin::Conflict;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    pub fn finish(&self, scope: &'static str, key: &str, hash: &str, response: Arc<str>, seq: u64) {
        self.map.insert(
            (scope, key.to_string()),
            Entry::Done {
                hash: hash.to_string(),
                response,
                seq,
            },
        );
    }

    pub fn abort(&self, scope: &'static str, key: &str) {
        self.map.remove_if(&(scope, key.to_string()), |_, e| {
            matches!(e, Entry::InFlight { .. })
        });
    }

    /// Restores a completed key from the store.
    pub fn restore(&self, scope: &'static str, key: String, hash: String, response: String) {
        self.map.insert(
            (scope, key),
            Entry::Done {
                hash,
                response: response.into(),
                seq: 0,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Idempotency keys are bounded so that a key can never carry a payload.
const KEY_LEN_MAX: usize = 128;

impl super::Engine {
    /// Runs an operation once per idempotency key. `op` returns the response, the writes
    /// and the card guard to hold until the writes are queued; the response is stored
    /// with the writes and replayed on retries.
    pub(super) fn idempotent<R: serde::Serialize>(
        &self,
        scope: &'static str,
        key: &str,
        request: &impl serde::Serialize,
        op: impl FnOnce() -> Result<(R, Vec<Write>, Option<super::CardGuard>), Rejection>,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        if key.is_empty() || key.len() > KEY_LEN_MAX {
            return Err(Rejection::InvalidRequest(format!(
                "idempotency key must be 1 to {KEY_LEN_MAX} characters"
            )));
        }
        let hash = request_hash(&serde_json::to_vec(request).unwrap_or_default());
        match self.idem.begin(scope, key, &hash) {
            Begin::Replay { response, seq } => return Ok(self.pending(response, seq)),
            Begin::Conflict => return Err(Rejection::IdempotencyConflict),
            Begin::Go => {}
        }
        // Removes the in-flight entry if `op` fails or panics, so retries are not
        // turned away for a key that never finished.
        let in_flight = InFlightGuard {
            idem: &self.idem,
            scope,
            key,
        };
        let (response, mut writes, guard) = op()?;
        let json: Arc<str> = serde_json::to_string(&response).unwrap_or_default().into();
        // A decision row keeps its own response and request hash (one row, not two);
        // every other operation gets an idempotency row.
        let mut recorded = false;
        for w in writes.iter_mut() {
            if let Write::Decision(d) = w {
                d.response = json.to_string();
                d.request_hash = hash.clone();
                recorded = true;
            }
        }
        if !recorded {
            writes.push(Write::Idempotency {
                scope,
                key: key.to_string(),
                request_hash: hash.clone(),
                response: json.clone(),
                at_ms: self.now().timestamp_millis(),
            });
        }
        let seq = self.persist(writes);
        self.idem.finish(scope, key, &hash, json.clone(), seq);
        std::mem::forget(in_flight);
        // The card's lock was held until its writes were queued: commit order for one
        // card equals the order its state changed in memory.
        drop(guard);
        Ok(self.pending(json, seq))
    }
}

/// Aborts an in-flight key when dropped: on an error return and on unwinding.
struct InFlightGuard<'a> {
    idem: &'a Idempotency,
    scope: &'static str,
    key: &'a str,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.idem.abort(self.scope, self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_operation_never_leaves_its_key_in_flight() {
        let idem = Idempotency::default();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert!(matches!(idem.begin("fund", "k", "h"), Begin::Go));
            let _g = InFlightGuard {
                idem: &idem,
                scope: "fund",
                key: "k",
            };
            panic!("operation failed halfway");
        }));
        assert!(r.is_err());
        let started = Instant::now();
        assert!(matches!(idem.begin("fund", "k", "h"), Begin::Go));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "no wait for a dead key"
        );
    }
}
