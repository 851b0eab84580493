//! Orchestration: per-card locks around the pure core, and the effects it asks for.
//!
//! Lock order is always card → cardholder → program, so two authorizations can never
//! deadlock, and a card's decision and its effects happen in one critical section.

mod card;

pub use card::CardState;

use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use parking_lot::Mutex;
use rust_decimal::Decimal;

use crate::decision::{decide, Authorization, Decision};
use crate::policy::{CompiledPolicy, PolicySet, VelocityScope};
use crate::velocity::VelocityState;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceError {
    #[error("unknown card `{0}`")]
    UnknownCard(String),
    #[error("card `{0}` already exists")]
    CardExists(String),
    #[error("card refers to unknown policy `{0}`")]
    UnknownPolicy(String),
}

/// The result of an authorization with the policy snapshot that decided it.
pub struct Authorized {
    pub decision: Decision,
    pub policy: Arc<CompiledPolicy>,
    pub controls: Option<Arc<CompiledPolicy>>,
}

type Shared<T> = Arc<Mutex<T>>;

/// Live state: cards, shared velocity scopes, and the current policies.
pub struct Engine {
    cards: DashMap<String, Shared<CardState>>,
    cardholders: DashMap<String, Shared<VelocityState>>,
    programs: DashMap<String, Shared<VelocityState>>,
    policies: ArcSwap<PolicySet>,
}

impl Engine {
    pub fn new(policies: PolicySet) -> Engine {
        Engine {
            cards: DashMap::new(),
            cardholders: DashMap::new(),
            programs: DashMap::new(),
            policies: ArcSwap::from_pointee(policies),
        }
    }

    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    /// Swaps in new policies; decisions in flight finish on the snapshot they took.
    pub fn replace_policies(&self, p: PolicySet) {
        self.policies.store(Arc::new(p));
    }

    pub fn add_card(&self, card: CardState) -> Result<(), ServiceError> {
        if self.policies.load().get(&card.policy).is_none() {
            return Err(ServiceError::UnknownPolicy(card.policy));
        }
        match self.cards.entry(card.card_id.clone()) {
            dashmap::Entry::Occupied(_) => Err(ServiceError::CardExists(card.card_id)),
            dashmap::Entry::Vacant(v) => {
                v.insert(Arc::new(Mutex::new(card)));
                Ok(())
            }
        }
    }

    pub fn card(&self, card_id: &str) -> Option<Shared<CardState>> {
        self.cards.get(card_id).map(|c| c.clone())
    }

    /// Runs `f` on the card under its lock.
    pub fn with_card<R>(
        &self,
        card_id: &str,
        f: impl FnOnce(&mut CardState) -> R,
    ) -> Result<R, ServiceError> {
        let c = self
            .card(card_id)
            .ok_or_else(|| ServiceError::UnknownCard(card_id.to_string()))?;
        let mut g = c.lock();
        Ok(f(&mut g))
    }

    fn shared(map: &DashMap<String, Shared<VelocityState>>, key: &str) -> Shared<VelocityState> {
        if let Some(s) = map.get(key) {
            return s.clone();
        }
        map.entry(key.to_string()).or_default().clone()
    }

    /// Decides and applies effects atomically under the card's lock. An unknown card is
    /// `Err`; the caller answers 14.
    pub fn authorize(
        &self,
        txn: &Authorization,
        now: DateTime<Utc>,
    ) -> Result<Authorized, ServiceError> {
        let card = self
            .card(&txn.card_id)
            .ok_or_else(|| ServiceError::UnknownCard(txn.card_id.clone()))?;
        let policies = self.policies.load();
        let mut c = card.lock();
        let policy = policies
            .get(&c.policy)
            .cloned()
            .ok_or_else(|| ServiceError::UnknownPolicy(c.policy.clone()))?;
        let uses = |s| policy.has_scope(s) || c.controls.as_ref().is_some_and(|p| p.has_scope(s));
        let holder = uses(VelocityScope::Cardholder)
            .then(|| Self::shared(&self.cardholders, &c.cardholder_id));
        let program =
            uses(VelocityScope::Program).then(|| Self::shared(&self.programs, &policy.name));
        let mut holder_guard = holder.as_ref().map(|h| h.lock());
        let mut program_guard = program.as_ref().map(|p| p.lock());
        let decision = {
            let view = c.view(holder_guard.as_deref(), program_guard.as_deref());
            decide(&policy, &view, txn, now)
        };
        c.apply(
            &decision,
            holder_guard.as_deref_mut(),
            program_guard.as_deref_mut(),
        );
        Ok(Authorized {
            decision,
            controls: c.controls.clone(),
            policy,
        })
    }

    /// Gives back capacity for a reversed authorization (full when `ratio` is 1).
    pub fn reverse(
        &self,
        card_id: &str,
        auth_id: &str,
        ratio: Decimal,
        amount_card: Decimal,
    ) -> Result<usize, ServiceError> {
        let card = self
            .card(card_id)
            .ok_or_else(|| ServiceError::UnknownCard(card_id.to_string()))?;
        let mut c = card.lock();
        let holder = self.cardholders.get(&c.cardholder_id).map(|h| h.clone());
        let program = self.programs.get(&c.policy).map(|p| p.clone());
        let mut hg = holder.as_ref().map(|h| h.lock());
        let mut pg = program.as_ref().map(|p| p.lock());
        Ok(c.reverse(
            auth_id,
            ratio,
            amount_card,
            hg.as_deref_mut(),
            pg.as_deref_mut(),
        ))
    }

    pub fn card_count(&self) -> usize {
        self.cards.len()
    }
}
