//! Recovery points: the derived state of every card, cardholder and program (balances,
//! velocity windows, activity, travel anchors) and the house balances, saved at a cut of
//! the log so that start-up replays only what came after it.
//!
//! A point is consistent because nothing changes memory while it is taken: every
//! operation that changes derived state holds the engine's `quiet` gate for reading from
//! before it takes a card's lock until its writes are queued, and a point takes it for
//! writing. The point's write then queues behind every write of the state it saw, and the
//! writer stamps it with the sequences committed before it. Only states that changed
//! since the last point are written (compared by digest).

use std::sync::atomic::Ordering;
use std::time::Instant;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::card::CardState;
use super::{Engine, Pending};
use crate::decision::LastSeen;
use crate::domain::Country;
use crate::store::{SavedState, Write, RECOVERY_POINT_FORMAT};
use crate::velocity::{ActivityLog, VelocityState};

/// A card's derived state, as written (borrowed; the same fields in the same order as
/// [`CardPoint`]). Everything else about a card comes from its record and live holds.
#[derive(Serialize)]
struct CardPointOut<'a> {
    #[serde(with = "rust_decimal::serde::str")]
    posted: Decimal,
    forced: bool,
    clock_ms: i64,
    velocity: &'a VelocityState,
    activity: &'a ActivityLog,
    last_seen: Option<LastSeen>,
    countries_seen: &'a [(Country, i64)],
}

/// A card's derived state, as read back.
#[derive(Deserialize)]
struct CardPoint {
    #[serde(with = "rust_decimal::serde::str")]
    posted: Decimal,
    forced: bool,
    clock_ms: i64,
    velocity: VelocityState,
    activity: ActivityLog,
    last_seen: Option<LastSeen>,
    countries_seen: Vec<(Country, i64)>,
}

/// What a point wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointSaved {
    /// States written (changed since the last point).
    pub states_written: usize,
    /// States that had not changed and were skipped.
    pub states_unchanged: usize,
    /// How long operations were held back while the states were read (µs).
    pub pause_us: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("recovery point: {kind} `{id}`: {error}")]
pub struct PointError {
    kind: String,
    id: String,
    error: postcard::Error,
}

fn digest(bytes: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_allocvec(v).expect("recovery state encodes")
}

impl Engine {
    /// Saves a recovery point: holds every state-changing operation back while the states
    /// are read (the pause is reported), then queues the changed ones as one write.
    pub fn save_recovery_point(&self) -> Pending<PointSaved> {
        let started = Instant::now();
        let quiet = self.quiet.write();
        let mut states = Vec::new();
        let mut unchanged = 0;
        for card in self.cards.iter() {
            let mut c = card.value().lock();
            let state = encode(&CardPointOut::of(&c));
            let d = digest(&state);
            if c.point_digest == d {
                unchanged += 1;
            } else {
                c.point_digest = d;
                states.push(SavedState {
                    kind: "card",
                    id: card.key().clone(),
                    state,
                });
            }
        }
        let mut digests = self.point_digests.lock();
        let mut put = |kind: &'static str, id: &str, state: Vec<u8>| {
            let d = digest(&state);
            let key = format!("{kind}/{id}");
            if digests.get(&key) == Some(&d) {
                unchanged += 1;
            } else {
                digests.insert(key, d);
                states.push(SavedState {
                    kind,
                    id: id.to_string(),
                    state,
                });
            }
        };
        for h in self.holder_velocity.iter() {
            put("cardholder", h.key(), encode(&*h.value().read().0));
        }
        for p in self.program_velocity.iter() {
            put("program", p.key(), encode(&*p.value().read().0));
        }
        let house: Vec<(String, String)> = self
            .house
            .lock()
            .iter()
            .map(|(a, b)| (a.as_str().to_string(), b.to_string()))
            .collect();
        put("house", "", encode(&house));
        drop(digests);
        let written = states.len();
        let seq = self.persist(vec![Write::RecoveryPoint {
            format: RECOVERY_POINT_FORMAT,
            at_ms: self.now().timestamp_millis(),
            states,
        }]);
        self.operations_since_point.store(0, Ordering::Relaxed);
        drop(quiet);
        let pause_us = started.elapsed().as_micros() as u64;
        metrics::histogram!("spendgate_recovery_point_pause_seconds").record(pause_us as f64 / 1e6);
        self.pending(
            PointSaved {
                states_written: written,
                states_unchanged: unchanged,
                pause_us,
            },
            seq,
        )
    }

    /// Store writes queued since the last recovery point: what a restart would replay.
    pub fn operations_since_point(&self) -> u64 {
        self.operations_since_point.load(Ordering::Relaxed)
    }

    /// Puts saved states back (start-up, before the log after the point is replayed).
    pub(super) fn restore_point(
        &mut self,
        states: Vec<(String, String, Vec<u8>)>,
    ) -> Result<(), PointError> {
        let mut digests = self.point_digests.lock();
        for (kind, id, bytes) in states {
            let fail = |error| PointError {
                kind: kind.clone(),
                id: id.clone(),
                error,
            };
            match kind.as_str() {
                "card" => {
                    let p: CardPoint = postcard::from_bytes(&bytes).map_err(fail)?;
                    if let Some(card) = self.cards.get(&id) {
                        let mut c = card.lock();
                        p.restore(&mut c);
                        c.point_digest = digest(&bytes);
                    }
                    continue;
                }
                "cardholder" | "program" => {
                    let v: VelocityState = postcard::from_bytes(&bytes).map_err(fail)?;
                    let map = if kind == "program" {
                        &self.program_velocity
                    } else {
                        &self.holder_velocity
                    };
                    map.insert(
                        id.clone(),
                        std::sync::Arc::new(super::SharedVelocity::new(v)),
                    );
                }
                "house" => {
                    let v: Vec<(String, String)> = postcard::from_bytes(&bytes).map_err(fail)?;
                    let mut house = self.house.lock();
                    for (account, amount) in v {
                        let amount = Decimal::from_str_exact(&amount)
                            .map_err(|_| fail(postcard::Error::DeserializeBadEncoding))?;
                        house.insert(crate::ledger::AccountId(account), amount);
                    }
                }
                // A kind this version does not know is someone else's: leave it.
                _ => continue,
            }
            digests.insert(format!("{kind}/{id}"), digest(&bytes));
        }
        Ok(())
    }
}

impl<'a> CardPointOut<'a> {
    fn of(c: &'a CardState) -> CardPointOut<'a> {
        CardPointOut {
            posted: c.account.posted,
            forced: c.account.forced,
            clock_ms: c.clock_ms,
            velocity: &c.velocity,
            activity: &c.activity,
            last_seen: c.last_seen,
            countries_seen: &c.countries_seen,
        }
    }
}

impl CardPoint {
    fn restore(self, c: &mut CardState) {
        c.account.posted = self.posted;
        c.account.forced = self.forced;
        c.clock_ms = c.clock_ms.max(self.clock_ms);
        c.velocity = self.velocity;
        c.activity = self.activity;
        c.last_seen = self.last_seen;
        c.countries_seen = self.countries_seen;
    }
}
