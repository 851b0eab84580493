//! Programs, cardholders, cards: issue, lifecycle, spending controls, and API keys.

use std::sync::Arc;

use chrono::Datelike;
use parking_lot::Mutex;
use rust_decimal::Decimal;

use super::responses::{balance, CardResponse};
use super::{holder_key, live, valid_id, Engine, Pending, Rejection};
use crate::domain::shard::{key_for_shard, shard_of_program};
use crate::domain::{CardStatus, Expiry, KycStatus};
use crate::issuing::{
    transition, CardAction, CardKind, CardRecord, Cardholder, Program, SpendingControls,
};
use crate::ledger::{AccountId, TransferKind};
use crate::money::Currency;
use crate::policy::CompiledPolicy;
use crate::service::CardState;
use crate::store::Write;

/// What a new card is issued with.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewCard {
    pub program: String,
    pub cardholder_id: String,
    pub kind: CardKind,
    /// Defaults to the program's currency.
    pub currency: Option<Currency>,
    pub controls: Option<SpendingControls>,
    pub active: bool,
    /// `YYYY-MM`; defaults to three years from the month of issue.
    pub expiry: Option<String>,
    /// The processor's token for the card, unique within the program.
    pub processor_card_token: Option<String>,
}

/// A card is issued for at most this many months.
pub const CARD_VALIDITY_MONTHS_MAX: i64 = 120;
/// A card issued without an expiry is valid for this many years.
const CARD_VALIDITY_YEARS_DEFAULT: i32 = 3;

impl Engine {
    pub fn create_program(&self, p: Program) -> Result<Pending<Arc<str>>, Rejection> {
        let key = p.id.clone();
        self.idempotent("program", &key, &p, || {
            if self.policies.load().get(&p.policy).is_none() {
                return Err(Rejection::UnknownPolicy(p.policy.clone()));
            }
            if !valid_id(&p.id) {
                return Err(Rejection::InvalidRequest(
                    "program id must be 1 to 64 of a-z, 0-9, _ and -".into(),
                ));
            }
            let shard = shard_of_program(&p.id, self.config.shards);
            if shard != self.config.shard {
                // The front door routes by the same function; only a caller going round it
                // gets here, and the program would be unreachable in this shard.
                return Err(Rejection::InvalidRequest(format!(
                    "program `{}` belongs to shard {shard}; this instance's engine serves shard {}",
                    p.id, self.config.shard
                )));
            }
            if self.programs.contains_key(&p.id) {
                return Err(Rejection::AlreadyExists {
                    what: "program",
                    id: p.id.clone(),
                });
            }
            self.programs.insert(p.id.clone(), p.clone());
            Ok((p.clone(), vec![Write::Program(p.clone())], None))
        })
    }

    pub fn program(&self, id: &str) -> Option<Program> {
        self.programs.get(id).map(|p| p.clone())
    }

    pub fn create_cardholder(
        &self,
        key: &str,
        h: Cardholder,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        self.idempotent("cardholder", key, &h, || {
            if !self.programs.contains_key(&h.program) {
                return Err(Rejection::UnknownProgram(h.program.clone()));
            }
            if !valid_id(&h.id) || h.name.is_empty() || h.name.len() > 128 {
                return Err(Rejection::InvalidRequest(
                    "cardholder id must be 1 to 64 of a-z, 0-9, _ and -; name 1 to 128 characters"
                        .into(),
                ));
            }
            match self.cardholders.entry(holder_key(&h.program, &h.id)) {
                dashmap::Entry::Occupied(_) => {
                    return Err(Rejection::AlreadyExists {
                        what: "cardholder",
                        id: h.id.clone(),
                    })
                }
                dashmap::Entry::Vacant(v) => {
                    v.insert(h.clone());
                }
            }
            Ok((h.clone(), vec![Write::Cardholder(h.clone())], None))
        })
    }

    /// A cardholder of a program (ids are scoped to their program).
    pub fn cardholder(&self, program: &str, id: &str) -> Option<Cardholder> {
        self.cardholders
            .get(&holder_key(program, id))
            .map(|h| h.clone())
    }

    /// Changes KYC status or the blocked flag, and every card of the holder with it.
    pub fn update_cardholder(
        &self,
        key: &str,
        program: &str,
        id: &str,
        kyc: Option<KycStatus>,
        blocked: Option<bool>,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        self.idempotent(
            "cardholder_update",
            key,
            &(program, id, kyc, blocked),
            || {
                let mut h = self
                    .cardholder(program, id)
                    .ok_or_else(|| Rejection::UnknownCardholder(id.to_string()))?;
                if let Some(k) = kyc {
                    h.kyc = k;
                }
                if let Some(b) = blocked {
                    h.blocked = b;
                }
                let hk = holder_key(&h.program, &h.id);
                self.cardholders.insert(hk.clone(), h.clone());
                for c in self.cards.iter() {
                    let mut g = c.lock();
                    if g.cardholder_id == hk {
                        g.kyc = h.kyc;
                        g.cardholder_blocked = h.blocked;
                    }
                }
                Ok((h.clone(), vec![Write::Cardholder(h)], None))
            },
        )
    }

    fn compile_controls(
        &self,
        policy: &str,
        currency: Currency,
        c: &SpendingControls,
    ) -> Result<Option<Arc<CompiledPolicy>>, Rejection> {
        if c.is_empty() {
            return Ok(None);
        }
        let set = self.policies.load();
        let p = set
            .get(policy)
            .ok_or_else(|| Rejection::UnknownPolicy(policy.to_string()))?;
        c.compile(currency, p.timezone, set.fx.clone())
            .map(|p| Some(Arc::new(p)))
            .map_err(Rejection::InvalidControls)
    }

    /// The in-memory state of a stored card.
    pub(super) fn state_for(&self, r: &CardRecord) -> Result<CardState, Rejection> {
        let program = self
            .program(&r.program)
            .ok_or_else(|| Rejection::UnknownProgram(r.program.clone()))?;
        let holder = self
            .cardholder(&r.program, &r.cardholder_id)
            .ok_or_else(|| Rejection::UnknownCardholder(r.cardholder_id.clone()))?;
        // In memory the holder is `program/id`, which also keys cardholder-scope velocity.
        let mut s = CardState::new(
            &r.id,
            &holder_key(&r.program, &r.cardholder_id),
            &program.policy,
            r.currency,
        );
        s.program = r.program.clone();
        s.status = r.status;
        s.expiry = Some(r.expiry);
        s.kyc = holder.kyc;
        s.cardholder_blocked = holder.blocked;
        s.funds_tracked = true;
        s.controls = match &r.controls {
            Some(c) => self.compile_controls(&program.policy, r.currency, c)?,
            None => None,
        };
        Ok(s)
    }

    /// Issues a card. The id is an opaque token; no card number is stored.
    pub fn issue_card(&self, key: &str, new: NewCard) -> Result<Pending<Arc<str>>, Rejection> {
        self.idempotent("card", key, &new, || {
            let p = self
                .program(&new.program)
                .ok_or_else(|| Rejection::UnknownProgram(new.program.clone()))?;
            let h = self
                .cardholder(&p.id, &new.cardholder_id)
                .ok_or_else(|| Rejection::UnknownCardholder(new.cardholder_id.clone()))?;
            let today = self.now();
            let expiry = match &new.expiry {
                None => Expiry {
                    year: today.year() + CARD_VALIDITY_YEARS_DEFAULT,
                    month: today.month(),
                },
                Some(s) => {
                    let e = Expiry::parse(s).map_err(Rejection::InvalidRequest)?;
                    let months = e.months_after(today);
                    if !(0..=CARD_VALIDITY_MONTHS_MAX).contains(&months) {
                        return Err(Rejection::InvalidRequest(format!(
                            "expiry {s} must be this month or later and at most {CARD_VALIDITY_MONTHS_MAX} months ahead"
                        )));
                    }
                    e
                }
            };
            // A token never contains what would pass for a card number (13+ digits in a
            // row passing Luhn): the edge refuses such ids, so one must never be issued.
            let token = loop {
                let t = self.ids.hex128();
                if !crate::domain::contains_card_number(&t[..24]) {
                    break t;
                }
            };
            let last4 = format!(
                "{:04}",
                u16::from_str_radix(&token[..4], 16).unwrap_or(0) % 10_000
            );
            let r = CardRecord {
                id: format!("card_{}", &token[..24]),
                program: p.id.clone(),
                cardholder_id: h.id.clone(),
                kind: new.kind,
                currency: new.currency.unwrap_or(p.currency),
                last4,
                expiry,
                status: if new.active {
                    CardStatus::Active
                } else {
                    CardStatus::Inactive
                },
                controls: new.controls.clone().filter(|c| !c.is_empty()),
                processor_card_token: new.processor_card_token.clone(),
            };
            let state = self.state_for(&r)?;
            if let Some(t) = &r.processor_card_token {
                self.claim_card_token(&r.program, t, &r.id)?;
            }
            let response = card_response(&r, &state);
            self.records.insert(r.id.clone(), r.clone());
            self.cards.insert(r.id.clone(), Arc::new(Mutex::new(state)));
            Ok((response, vec![Write::Card(r)], None))
        })
    }

    pub fn get_card(&self, card_id: &str) -> Result<CardResponse, Rejection> {
        let r = self.record(card_id)?;
        self.with_card(card_id, |s| card_response(&r, s))
    }

    fn record(&self, card_id: &str) -> Result<CardRecord, Rejection> {
        self.records
            .get(card_id)
            .map(|r| r.clone())
            .ok_or_else(|| Rejection::UnknownCard(card_id.to_string()))
    }

    pub fn card_program(&self, card_id: &str) -> Option<String> {
        self.records.get(card_id).map(|r| r.program.clone())
    }

    pub fn balance(&self, card_id: &str) -> Result<super::responses::Balance, Rejection> {
        self.with_card(card_id, |s| balance(s))
    }

    /// Lifecycle change; terminating returns the remaining balance to the funding account.
    pub fn card_action(
        &self,
        key: &str,
        card_id: &str,
        action: CardAction,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        self.idempotent("status", key, &(card_id, action), || {
            let card = self
                .card(card_id)
                .ok_or_else(|| Rejection::UnknownCard(card_id.to_string()))?;
            let mut c = card.lock_arc();
            let now = self.now_for(&mut c);
            let to = transition(c.status, action)?;
            let mut writes = Vec::new();
            let mut r = self.record(card_id)?;
            if to == CardStatus::Terminated {
                let pending = c.account.pending_holds();
                if pending > 0 {
                    return Err(Rejection::PendingHolds(pending));
                }
                let remaining = c.account.posted;
                // A debt (from a forced post) would vanish with the card: settle it first.
                if remaining < Decimal::ZERO {
                    return Err(Rejection::NegativeBalance(remaining));
                }
                if remaining > Decimal::ZERO {
                    let funding = AccountId::funding(&r.program, c.currency);
                    let mut house = self.house.lock();
                    let t = c.account.transfer_with_funding(
                        card_id,
                        TransferKind::Termination,
                        funding,
                        remaining,
                        now.timestamp_millis(),
                    )?;
                    super::apply_house(&mut house, &t);
                    writes.push(Write::Transfer(t));
                }
            }
            c.status = to;
            r.status = to;
            self.records.insert(card_id.to_string(), r.clone());
            let response = card_response(&r, &c);
            writes.push(Write::Card(r));
            Ok((response, writes, Some(c)))
        })
    }

    pub fn set_controls(
        &self,
        key: &str,
        card_id: &str,
        controls: SpendingControls,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        self.idempotent("controls", key, &(card_id, &controls), || {
            let card = self
                .card(card_id)
                .ok_or_else(|| Rejection::UnknownCard(card_id.to_string()))?;
            let mut c = live(&card)?;
            let compiled = self.compile_controls(&c.policy, c.currency, &controls)?;
            let mut r = self.record(card_id)?;
            r.controls = (!controls.is_empty()).then_some(controls.clone());
            c.controls = compiled;
            self.records.insert(card_id.to_string(), r.clone());
            let response = card_response(&r, &c);
            Ok((response, vec![Write::Card(r)], Some(c)))
        })
    }

    /// Creates an API key for a program. The key is returned once; only its SHA-256 is kept.
    pub fn create_api_key(&self, program: &str) -> Result<Pending<String>, Rejection> {
        if !self.programs.contains_key(program) {
            return Err(Rejection::UnknownProgram(program.to_string()));
        }
        let random = format!("{}{}", self.ids.hex128(), self.ids.hex128());
        let key = key_for_shard(&random, self.config.shard, self.config.shards);
        let hash = key_hash(&key);
        self.api_keys.insert(hash.clone(), program.to_string());
        let seq = self.persist(vec![Write::ApiKey {
            hash,
            program: program.to_string(),
            prefix: key[..11].to_string(),
            at_ms: self.now().timestamp_millis(),
        }]);
        Ok(self.pending(key, seq))
    }

    /// The program an API key belongs to.
    pub fn program_for_key(&self, key: &str) -> Option<String> {
        self.program_for_key_hash(&key_hash(key))
    }

    /// `program_for_key` for a key already hashed with [`key_hash`].
    pub fn program_for_key_hash(&self, key_hash: &str) -> Option<String> {
        self.api_keys.get(key_hash).map(|p| p.clone())
    }
}

/// How API keys (and the admin key) are kept and compared: the SHA-256 of the key, as
/// hex. Hashing costs about a microsecond on CPUs without SHA extensions, so a request's
/// key is hashed once for all its checks.
pub fn key_hash(key: &str) -> String {
    super::request_hash(key.as_bytes())
}

pub(super) fn card_response(r: &CardRecord, s: &CardState) -> CardResponse {
    CardResponse {
        id: r.id.clone(),
        program: r.program.clone(),
        cardholder_id: r.cardholder_id.clone(),
        kind: r.kind,
        currency: r.currency,
        last4: r.last4.clone(),
        expiry: format!("{:04}-{:02}", r.expiry.year, r.expiry.month),
        status: s.status.as_str().to_string(),
        controls: r.controls.clone(),
        processor_card_token: r.processor_card_token.clone(),
        balance: balance(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Ids;

    /// Ids whose first draws are all digits (and pass Luhn), then ordinary hex.
    struct DigitsFirst(std::sync::atomic::AtomicU32);

    impl Ids for DigitsFirst {
        fn hex128(&self) -> String {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < 3 {
                "4111111111111111".repeat(2)
            } else {
                "ab".repeat(16)
            }
        }
    }

    #[test]
    fn a_sharded_engine_takes_only_its_own_programs_and_its_keys_name_its_shard() {
        let set = crate::policy::load_policy_dir(std::path::Path::new("rules")).unwrap();
        let mut e = Engine::new(set);
        (e.config.shard, e.config.shards) = (1, 4);
        let program = |id: &str| Program {
            id: id.into(),
            policy: "consumer-prepaid-africa".into(),
            currency: Currency::USD,
        };
        let ids: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
        let mine = ids.iter().find(|p| shard_of_program(p, 4) == 1).unwrap();
        let other = ids.iter().find(|p| shard_of_program(p, 4) != 1).unwrap();
        match e.create_program(program(other)) {
            Err(Rejection::InvalidRequest(why)) => assert!(why.contains("shard"), "{why}"),
            Err(r) => panic!("refused for the wrong reason: {r:?}"),
            Ok(_) => panic!("took another shard's program"),
        }
        assert!(e.program(other).is_none());
        e.create_program(program(mine)).unwrap().wait();
        let key = e.create_api_key(mine).unwrap().wait();
        assert_eq!(crate::domain::shard::shard_of_key(&key, 4), Some(1));
        assert_eq!(e.program_for_key(&key).as_deref(), Some(mine.as_str()));
    }

    #[test]
    fn an_issued_card_token_never_looks_like_a_card_number() {
        let set = crate::policy::load_policy_dir(std::path::Path::new("rules")).unwrap();
        let e = Engine::new(set).with_ids(std::sync::Arc::new(DigitsFirst(Default::default())));
        e.create_program(Program {
            id: "p".into(),
            policy: "consumer-prepaid-africa".into(),
            currency: Currency::USD,
        })
        .unwrap()
        .wait();
        e.create_cardholder(
            "h",
            Cardholder {
                id: "h".into(),
                program: "p".into(),
                name: "Ada Obi".into(),
                kyc: KycStatus::Verified,
                blocked: false,
            },
        )
        .unwrap()
        .wait();
        let new = NewCard {
            program: "p".into(),
            cardholder_id: "h".into(),
            kind: CardKind::Virtual,
            currency: None,
            controls: None,
            active: true,
            expiry: None,
            processor_card_token: None,
        };
        let json = e.issue_card("c", new).unwrap().wait();
        let card: CardResponse = serde_json::from_str(&json).unwrap();
        assert!(
            !crate::domain::contains_card_number(&card.id),
            "{}",
            card.id
        );
    }
}
