//! A card's in-memory state and how a decision's effects change it.

use std::sync::Arc;

use rust_decimal::Decimal;

use crate::decision::{CardStatus, CardView, Decision, Expiry, KycStatus, LastSeen};
use crate::money::Currency;
use crate::policy::{CompiledPolicy, Counts, VelocityScope};
use crate::velocity::{ActivityLog, VelocityState};

/// Everything the engine keeps per card. Lives behind one lock per card.
#[derive(Debug, Clone)]
pub struct CardState {
    pub card_id: String,
    pub cardholder_id: String,
    /// Name of the program policy that governs this card.
    pub policy: String,
    pub status: CardStatus,
    pub expiry: Option<Expiry>,
    pub kyc: KycStatus,
    pub cardholder_blocked: bool,
    pub currency: Currency,
    /// Spendable balance; `None` when funds are not tracked.
    pub available: Option<Decimal>,
    pub velocity: VelocityState,
    pub activity: ActivityLog,
    pub last_seen: Option<LastSeen>,
    pub controls: Option<Arc<CompiledPolicy>>,
}

impl CardState {
    pub fn new(card_id: &str, cardholder_id: &str, policy: &str, currency: Currency) -> CardState {
        CardState {
            card_id: card_id.to_string(),
            cardholder_id: cardholder_id.to_string(),
            policy: policy.to_string(),
            status: CardStatus::Active,
            expiry: None,
            kyc: KycStatus::Verified,
            cardholder_blocked: false,
            currency,
            available: None,
            velocity: VelocityState::default(),
            activity: ActivityLog::default(),
            last_seen: None,
            controls: None,
        }
    }

    pub fn view<'a>(
        &'a self,
        cardholder: Option<&'a VelocityState>,
        program: Option<&'a VelocityState>,
    ) -> CardView<'a> {
        CardView {
            card_id: &self.card_id,
            status: self.status,
            expiry: self.expiry,
            kyc: self.kyc,
            cardholder_blocked: self.cardholder_blocked,
            currency: self.currency,
            available: self.available,
            card_velocity: &self.velocity,
            cardholder_velocity: cardholder,
            program_velocity: program,
            last_seen: self.last_seen,
            activity: &self.activity,
            controls: self.controls.as_deref(),
        }
    }

    /// Applies a decision's effects. Must run under the same lock as the `decide` that
    /// produced it, so that no other decision saw the state in between.
    pub fn apply(
        &mut self,
        d: &Decision,
        mut cardholder: Option<&mut VelocityState>,
        mut program: Option<&mut VelocityState>,
    ) {
        let e = &d.effects;
        let counts = if d.approved {
            Counts::Approved
        } else {
            Counts::Declined
        };
        for v in e.velocity.iter().filter(|v| v.counts == counts) {
            let state = match v.scope {
                VelocityScope::Card | VelocityScope::CardMerchant => Some(&mut self.velocity),
                VelocityScope::Cardholder => cardholder.as_deref_mut(),
                VelocityScope::Program => program.as_deref_mut(),
            };
            if let Some(s) = state {
                s.record(v.key, v.start_ms, e.at_ms, v.amount, e.auth_key);
            }
        }
        if let Some(a) = e.activity {
            self.activity.push(a);
        }
        if d.approved {
            if let Some(location) = e.location {
                // Never move the anchor backwards in time.
                if self.last_seen.is_none_or(|l| l.at_ms <= e.at_ms) {
                    self.last_seen = Some(LastSeen {
                        at_ms: e.at_ms,
                        location,
                    });
                }
            }
            if let Some(avail) = self.available.as_mut() {
                *avail -= d.amount_approved;
                assert!(
                    *avail >= Decimal::ZERO,
                    "an approval never takes the balance negative"
                );
            }
        }
    }

    /// Gives back velocity capacity (and funds) for a reversed or expired authorization.
    pub fn reverse(
        &mut self,
        auth_id: &str,
        ratio: Decimal,
        amount_card: Decimal,
        cardholder: Option<&mut VelocityState>,
        program: Option<&mut VelocityState>,
    ) -> usize {
        let key = crate::velocity::key_hash(&[auth_id.as_bytes()]);
        let mut n = self.velocity.reverse(key, ratio);
        if let Some(s) = cardholder {
            n += s.reverse(key, ratio);
        }
        if let Some(s) = program {
            n += s.reverse(key, ratio);
        }
        if let Some(a) = self.available.as_mut() {
            *a += amount_card;
        }
        n
    }
}
