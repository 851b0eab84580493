//! A card's in-memory state and how a decision's effects change it.

use std::sync::Arc;

use rust_decimal::Decimal;

use crate::decision::{CardStatus, CardView, Country, Effects, Expiry, KycStatus, LastSeen};
use crate::ledger::CardAccount;
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
    /// The program the card belongs to: keys program-scope velocity and authorization
    /// ids (empty for cards built directly in tests and benches).
    pub program: String,
    pub status: CardStatus,
    pub expiry: Option<Expiry>,
    pub kyc: KycStatus,
    pub cardholder_blocked: bool,
    pub currency: Currency,
    /// The card's prepaid account: posted balance and holds.
    pub account: CardAccount,
    /// Whether decisions check funds (policy tests and pure-engine uses may not).
    pub funds_tracked: bool,
    pub velocity: VelocityState,
    pub activity: ActivityLog,
    pub last_seen: Option<LastSeen>,
    /// Below its program's `balance_low` threshold (a `balance.low` was reported for this
    /// crossing). Not stored: at start-up a card below is taken as already reported.
    pub balance_low: bool,
    /// Velocity rules (`source:rule`) at or past the program's `velocity_near_percent`
    /// (a `velocity.limit_near` was reported); at most one per rule.
    pub velocity_near: Vec<String>,
    /// The newest approval in each country (at most one entry per country), for scripts'
    /// `history.countries`.
    pub countries_seen: Vec<(Country, i64)>,
    pub controls: Option<Arc<CompiledPolicy>>,
    /// The latest engine time this card has seen (ms); its clock never runs backwards.
    pub clock_ms: i64,
    /// Digest of the state last saved in a recovery point (unchanged states are skipped).
    pub point_digest: [u8; 16],
}

impl CardState {
    pub fn new(card_id: &str, cardholder_id: &str, policy: &str, currency: Currency) -> CardState {
        CardState {
            card_id: card_id.to_string(),
            cardholder_id: cardholder_id.to_string(),
            policy: policy.to_string(),
            program: String::new(),
            status: CardStatus::Active,
            expiry: None,
            kyc: KycStatus::Verified,
            cardholder_blocked: false,
            currency,
            account: CardAccount::new(card_id, currency),
            funds_tracked: false,
            velocity: VelocityState::default(),
            activity: ActivityLog::default(),
            last_seen: None,
            balance_low: false,
            velocity_near: Vec::new(),
            countries_seen: Vec::new(),
            controls: None,
            clock_ms: i64::MIN,
            point_digest: [0; 16],
        }
    }

    pub fn available(&self) -> Option<Decimal> {
        self.funds_tracked.then(|| self.account.available())
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
            available: self.available(),
            card_velocity: &self.velocity,
            cardholder_velocity: cardholder,
            program_velocity: program,
            last_seen: self.last_seen,
            activity: &self.activity,
            countries_seen: &self.countries_seen,
            controls: self.controls.as_deref(),
        }
    }

    /// Applies a decision's effects (velocity windows, activity, location). Must run
    /// under the same lock as the `decide` that produced them; also replays stored
    /// decisions at start-up.
    pub fn apply(
        &mut self,
        approved: bool,
        e: &Effects,
        mut cardholder: Option<&mut VelocityState>,
        mut program: Option<&mut VelocityState>,
    ) {
        let counts = if approved {
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
            match (state, v.scope) {
                (Some(s), VelocityScope::CardMerchant) => {
                    s.record_merchant(v.key, v.start_ms, e.at_ms, v.amount, e.auth_key)
                }
                (Some(s), _) => s.record(v.key, v.start_ms, e.at_ms, v.amount, e.auth_key),
                (None, _) => {}
            }
        }
        if let Some(mut a) = e.activity {
            a.approved = approved;
            self.activity.push(a);
            if approved {
                match self
                    .countries_seen
                    .iter_mut()
                    .find(|(c, _)| *c == a.country)
                {
                    Some((_, at)) => *at = (*at).max(a.at_ms),
                    None => self.countries_seen.push((a.country, a.at_ms)),
                }
            }
        }
        if approved {
            if let Some(location) = e.location {
                // Never move the anchor backwards in time.
                let at_ms = e.location_at_ms;
                if self.last_seen.is_none_or(|l| l.at_ms <= at_ms) {
                    self.last_seen = Some(LastSeen { at_ms, location });
                }
            }
        }
    }

    /// Gives velocity capacity back for a reversed, expired or under-captured
    /// authorization. Returns the number of windows touched.
    pub fn release_velocity(
        &mut self,
        auth_id: &str,
        ratio: Decimal,
        cardholder: Option<&mut VelocityState>,
        program: Option<&mut VelocityState>,
    ) -> usize {
        if ratio <= Decimal::ZERO {
            return 0;
        }
        let ratio = ratio.min(Decimal::ONE);
        let key = crate::velocity::key_hash(&[auth_id.as_bytes()]);
        let mut n = self.velocity.reverse(key, ratio);
        if let Some(s) = cardholder {
            n += s.reverse(key, ratio);
        }
        if let Some(s) = program {
            n += s.reverse(key, ratio);
        }
        n
    }
}

impl CardState {
    /// Decides and applies everything in memory: effects, and the hold when funds are
    /// tracked. For callers that hold every state exclusively (policy tests, benches); the
    /// engine decides and records in two steps (`shared_velocity::decide_then_record`).
    pub fn authorize(
        &mut self,
        policy: &CompiledPolicy,
        txn: &crate::decision::Authorization,
        now: chrono::DateTime<chrono::Utc>,
        cardholder: Option<&mut VelocityState>,
        program: Option<&mut VelocityState>,
        hold_expiry_days: u32,
    ) -> (crate::decision::Decision, Option<crate::ledger::Hold>) {
        let d = self.decide(policy, txn, now, cardholder.as_deref(), program.as_deref());
        let hold = self.record(&d, txn, cardholder, program, hold_expiry_days);
        (d, hold)
    }

    /// The decision on `txn`, changing nothing.
    pub fn decide(
        &self,
        policy: &CompiledPolicy,
        txn: &crate::decision::Authorization,
        now: chrono::DateTime<chrono::Utc>,
        cardholder: Option<&VelocityState>,
        program: Option<&VelocityState>,
    ) -> crate::decision::Decision {
        crate::decision::decide(policy, &self.view(cardholder, program), txn, now)
    }

    /// Applies a decision's effects to the card and its shared scopes, and places its
    /// hold (approved and funds tracked).
    pub fn record(
        &mut self,
        d: &crate::decision::Decision,
        txn: &crate::decision::Authorization,
        cardholder: Option<&mut VelocityState>,
        program: Option<&mut VelocityState>,
        hold_expiry_days: u32,
    ) -> Option<crate::ledger::Hold> {
        self.apply(d.approved, &d.effects, cardholder, program);
        let mut hold = None;
        if d.approved
            && self.funds_tracked
            && txn.txn_type != crate::decision::TxnType::Verification
        {
            let rate = d.fx.map_or(Decimal::ONE, |q| q.rate);
            // A partial approval holds the approved share of the transaction amount.
            let txn_amount = if d.amount_approved == d.amount_card {
                txn.amount
            } else {
                (txn.amount * d.amount_approved / d.amount_card).round_dp_with_strategy(
                    txn.currency.exponent(),
                    rust_decimal::RoundingStrategy::ToZero,
                )
            };
            hold = Some(self.account.place_hold(
                &txn.id,
                d.amount_approved,
                txn_amount,
                txn.currency,
                rate,
                d.effects.at_ms,
                hold_expiry_days,
            ));
        }
        hold
    }
}
