//! Start-up: memory rebuilt from what the store loads (programs, holders, cards, the
//! recovery point's balances and velocity windows, the log after it, live holds, API
//! keys, recent idempotent answers, early reversals).

use std::sync::Arc;

use parking_lot::Mutex;
use rust_decimal::Decimal;

use super::decision_record;
use super::effects::CodecError;
use super::idempotency::Kept;
use super::responses::ReversalResponse;
use super::{auth_key, holder_key, Engine, Rejection};
use crate::domain::VelocityScope;
use crate::store::{Snapshot, StoredDecision};

/// Idempotency scopes restored from the store.
const SCOPES: [&str; 14] = [
    "authorization",
    "capture",
    "reversal",
    "refund",
    "advice",
    "fund",
    "withdraw",
    "deposit",
    "card",
    "cardholder",
    "program",
    "status",
    "controls",
    "cardholder_update",
];

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("stored state is inconsistent: {0}")]
    State(#[from] Rejection),
    #[error("stored decision {seq_index} of the log tail cannot be read: {error}")]
    Effects { seq_index: usize, error: CodecError },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Point(#[from] super::PointError),
    #[error("stored configuration cannot be read: {0}")]
    Corrupt(String),
}

impl Engine {
    /// Opens (creating if needed) the durable store in `dir` and rebuilds the engine
    /// from it. Every answer is fsynced before it is released.
    pub fn open_dir(
        policies: crate::policy::PolicySet,
        dir: &std::path::Path,
        config: super::EngineConfig,
        wal_bytes_max: u64,
    ) -> Result<Engine, RecoveryError> {
        let (store, snapshot) = crate::store::Store::open_with_wal_limit(
            dir,
            crate::store::Durability::Full,
            wal_bytes_max,
        )?;
        Engine::open(policies, Arc::new(store), snapshot, config)
    }
}

impl Engine {
    /// Opens a PostgreSQL store as the holder of `fence` and rebuilds the engine from it.
    /// Every answer is committed (and proven still to be the owner's) before it is
    /// released.
    pub fn open_postgres(
        policies: crate::policy::PolicySet,
        url: &str,
        fence: crate::store::lease::Fence,
        config: super::EngineConfig,
    ) -> Result<Engine, RecoveryError> {
        let (store, snapshot) = crate::store::Store::open_postgres(url, fence)?;
        Engine::open(policies, Arc::new(store), snapshot, config)
    }
}

impl Engine {
    pub(super) fn recover(&mut self, s: Snapshot) -> Result<(), RecoveryError> {
        for p in s.programs {
            self.programs.insert(p.id.clone(), p);
        }
        for h in s.cardholders {
            self.cardholders.insert(holder_key(&h.program, &h.id), h);
        }
        for r in s.cards {
            let state = self.state_for(&r)?;
            if let Some(t) = &r.processor_card_token {
                self.restore_card_token(&r.program, t, &r.id);
            }
            self.records.insert(r.id.clone(), r.clone());
            self.cards.insert(r.id.clone(), Arc::new(Mutex::new(state)));
        }
        // The recovery point's states, then the log after it (all of it without a point).
        if let Some(point) = s.point {
            self.restore_point(point.states)?;
        }
        let mut house = std::mem::take(&mut *self.house.lock());
        for t in &s.ledger.transfers {
            for p in &t.postings {
                if let Some(card_id) = p.account.as_str().strip_prefix("card:") {
                    if let Some(c) = self.card(card_id) {
                        c.lock().account.replay_transfer(t);
                    }
                } else {
                    *house.entry(p.account.clone()).or_insert(Decimal::ZERO) += p.amount;
                }
            }
        }
        *self.house.lock() = house;
        // Every authorization that placed a hold (the index itself is bounded).
        let mut held = std::collections::HashSet::new();
        for h in s.ledger.holds {
            if let Some(c) = self.card(&h.card_id) {
                let program = self.card_program(&h.card_id).unwrap_or_default();
                let key = auth_key(&program, &h.auth_id);
                held.insert(key.clone());
                self.index_authorization(key, h.card_id.clone());
                c.lock().account.replay_hold(h);
            }
        }
        // Decisions and velocity releases replay in time order, as they happened live (a
        // window's event cap merges its oldest events, so the order matters).
        let codec = |i: usize, error| RecoveryError::Effects {
            seq_index: i,
            error,
        };
        let mut order: Vec<(i64, usize, bool)> = Vec::with_capacity(s.decisions.len());
        for (i, d) in s.decisions.iter().enumerate() {
            order.push((
                decision_record::at_ms(d).map_err(|e| codec(i, e))?,
                i,
                false,
            ));
        }
        order.extend(
            s.velocity_releases
                .iter()
                .enumerate()
                .map(|(i, r)| (r.3, i, true)),
        );
        // Stable: within one millisecond a decision precedes the releases of its hold.
        order.sort_by_key(|&(at, _, is_release)| (at, is_release));
        // The newest answers go back into the idempotency cache (as many as it keeps);
        // older ones are answered from the store when asked for.
        let answers_from = s.decisions.len().saturating_sub(self.idem.capacity());
        let mut replayed = 0usize;
        for (_, i, is_release) in order {
            if is_release {
                let (card_id, auth_id, ratio, _) = &s.velocity_releases[i];
                if let Some(card) = self.card(card_id) {
                    self.give_back(&mut card.lock(), auth_id, *ratio);
                }
                continue;
            }
            let d = decision_record::decode(&s.decisions[i]).map_err(|e| codec(i, e))?;
            replayed += 1;
            if replayed > answers_from {
                // A retried authorization replays its stored answer after a restart too.
                let program = self.card_program(&d.card_id).unwrap_or_default();
                // A record stays a record (no JSON rendered at start); legacy rows kept
                // their JSON.
                let kept = match &s.decisions[i] {
                    StoredDecision::Record { answer, .. } => Kept::Decision {
                        card_id: d.card_id.as_str().into(),
                        answer: answer.as_slice().into(),
                    },
                    StoredDecision::Legacy(_) => Kept::Json(d.response().into()),
                };
                self.idem.restore(
                    "authorization",
                    auth_key(&program, &d.auth_id),
                    d.request_hash(),
                    kept,
                );
            }
            let Some(card) = self.card(&d.card_id) else {
                continue;
            };
            let e = d.effects;
            let mut c = card.lock_arc();
            c.clock_ms = c.clock_ms.max(d.at_ms);
            let uses_holder = e
                .velocity
                .iter()
                .any(|v| v.scope == VelocityScope::Cardholder);
            let uses_program = e.velocity.iter().any(|v| v.scope == VelocityScope::Program);
            let holder = uses_holder.then(|| Self::shared(&self.holder_velocity, &c.cardholder_id));
            let program = uses_program.then(|| Self::shared(&self.program_velocity, &c.program));
            let mut hg = holder.as_ref().map(|h| h.write());
            let mut pg = program.as_ref().map(|p| p.write());
            c.apply(d.approved, &e, hg.as_deref_mut(), pg.as_deref_mut());
        }
        for (hash, program) in s.api_keys {
            self.api_keys.insert(hash, program);
        }
        self.restore_outbox(&s.outbox)
            .map_err(RecoveryError::Corrupt)?;
        for (program, json) in &s.hook_configs {
            self.restore_hook_config(program, json)
                .map_err(|e| RecoveryError::Corrupt(format!("hook of {program}: {e}")))?;
        }
        for (_, key, _, response) in s
            .idempotency
            .iter()
            .filter(|(scope, ..)| scope == "reversal")
        {
            // Keys are `{program}/{authorization id}:{idempotency key}`.
            let Some((program, _)) = key.split_once('/') else {
                continue;
            };
            if let Ok(r) = serde_json::from_str::<ReversalResponse>(response) {
                let scoped = auth_key(program, &r.authorization_id);
                if !r.matched && !held.contains(&scoped) {
                    self.remember_early_reversal(scoped);
                }
            }
        }
        for (scope, key, hash, response) in s.idempotency {
            if let Some(sc) = SCOPES.iter().find(|x| **x == scope) {
                self.idem
                    .restore(sc, key, hash, Kept::Json(response.into()));
            }
        }
        self.arm_alerts();
        Ok(())
    }
}
