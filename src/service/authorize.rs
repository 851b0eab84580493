//! The authorization path: one entry point (`authorize`) that takes the card's lock,
//! runs the pure `decide()`, applies its effects and places the hold in the same critical
//! section, and queues the decision for the store; plus `abandon_authorization` for a
//! missed deadline and `simulate` (decide with no effects).

use std::sync::Arc;
use std::time::Instant;

use super::decision_record;
use super::idempotency::{authorization_digest, Kept, RequestDigest};
use super::responses::{authorization_response, step_decline, AuthorizationResponse};
use super::shared_velocity::decide_then_record;
use super::{Engine, Pending, Rejection};
use crate::decision::{Authorization, DecisionSummary, TraceLine};
use crate::domain::VelocityScope;
use crate::store::{id_hash, Write};

/// The reason given (and recorded) for an approval whose reversal had already arrived.
pub const REVERSED_FIRST: &str = "reversed_before_authorization";

/// Who is asking: the tenant whose cards are visible (None in-process: every card, and
/// the authorization id is scoped to the card's program) and the caller's request id,
/// recorded with the decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthContext<'a> {
    pub tenant: Option<&'a str>,
    pub request_id: &'a str,
}

/// The answer to an authorization, serialized, plus what the caller may want to log.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub json: Arc<str>,
    pub approved: bool,
    pub response_code: String,
    pub rule: Option<String>,
    pub replayed: bool,
}

impl Engine {
    /// Whether deciding `txn` may read the store: its id is not among the answers in
    /// memory and older answers exist only in the store (after a restart from a
    /// recovery point, or once answers were evicted). Such a read is a round trip on
    /// PostgreSQL, which callers keep off async workers.
    pub fn authorization_may_block(&self, txn: &Authorization, ctx: &AuthContext) -> bool {
        // Cheapest first: nothing is looked up until answers have left memory.
        self.store.is_some()
            && self.idem.is_partial()
            && self.stored_ids.may_be_stored(&txn.id)
            && self
                .idem
                .would_ask_store("authorization", &self.authorization_key(txn, ctx))
    }

    /// Decides an authorization, places its hold and queues both for the store. The
    /// processor's authorization id is the idempotency key. A card of another tenant is
    /// as unknown as a card that does not exist (code 14), and is never touched.
    pub fn authorize(
        &self,
        txn: &Authorization,
        ctx: &AuthContext,
    ) -> Result<Pending<Authorized>, Rejection> {
        let started = Instant::now();
        let mut out = None;
        let key = self.authorization_key(txn, ctx);
        let json = || serde_json::to_vec(txn).unwrap_or_default();
        let request = decision_record::request_bytes(txn);
        let digest = RequestDigest::new(&request, &json);
        let card_id = Some(txn.card_id.as_str());
        let pending = self.idempotent_digest("authorization", &key, &digest, card_id, || {
            let Ok(card) = self.card_for(ctx.tenant, &txn.card_id) else {
                let r = step_decline(
                    txn,
                    "14",
                    "card_not_found",
                    "card",
                    "no such card",
                    started.elapsed().as_micros() as u64,
                );
                out = Some((false, "14".to_string(), None));
                return Ok((r, vec![], None));
            };
            let policies = self.policies.load();
            let mut c = card.lock_arc();
            let now = self.now_for(&mut c);
            let policy = policies
                .get(&c.policy)
                .cloned()
                .ok_or_else(|| Rejection::UnknownPolicy(c.policy.clone()))?;
            let uses =
                |s| policy.has_scope(s) || c.controls.as_ref().is_some_and(|p| p.has_scope(s));
            let holder = uses(VelocityScope::Cardholder)
                .then(|| Self::shared(&self.holder_velocity, &c.cardholder_id));
            let program = uses(VelocityScope::Program)
                .then(|| Self::shared(&self.program_velocity, &c.program));
            // The shared scopes are locked exclusively only to record (see `shared_velocity`).
            let (d, hold) = decide_then_record(
                &mut *c,
                holder.as_deref(),
                program.as_deref(),
                |c, h, p| c.decide(&policy, txn, now, h, p),
                |c, d, h, p| {
                    let hold = c.record(&d, txn, h, p, self.config.hold_expiry_days);
                    (d, hold)
                },
            );
            let mut writes = Vec::new();
            let mut voided_early = false;
            if let Some(h) = hold {
                self.index_authorization(key.clone(), c.card_id.clone());
                writes.push(Write::Hold(h));
                // The processor reversed this authorization before we saw it: void the
                // hold now, so the money is not reserved for a transaction that is gone.
                let reversed = self.early_reversals.remove(&key).is_some();
                if reversed {
                    voided_early =
                        self.void_hold(&mut c, &txn.id, now.timestamp_millis(), &mut writes);
                }
            }
            let controls = c.controls.clone();
            let mut response = authorization_response(
                txn,
                &d,
                &policy,
                controls.as_deref(),
                c.available(),
                started,
            );
            if voided_early {
                // Approved, and already reversed: the answer and the record both say so.
                response.reason = REVERSED_FIRST.into();
                response.trace.push(TraceLine {
                    rule: "reversal".into(),
                    outcome: "hold voided".into(),
                    detail: "a reversal for this authorization arrived before it".into(),
                });
            }
            let record = decision_record::encode_with_request(
                txn,
                &request,
                ctx.request_id,
                &d.effects,
                &response,
            );
            writes.insert(0, Write::Decision(Box::new(record)));
            out = Some((d.approved, d.response_code.to_string(), d.rule.clone()));
            Ok((response, writes, Some(c)))
        })?;
        let seq = pending.seq;
        let json = pending.value;
        let a = match out {
            Some((approved, response_code, rule)) => Authorized {
                json,
                approved,
                response_code,
                rule,
                replayed: false,
            },
            None => {
                let r: AuthorizationResponse = serde_json::from_str(&json)
                    .map_err(|e| Rejection::InvalidRequest(e.to_string()))?;
                Authorized {
                    json,
                    approved: r.approved,
                    response_code: r.response_code,
                    rule: r.rule,
                    replayed: true,
                }
            }
        };
        Ok(self.pending(a, seq))
    }

    /// Answers 91 for an authorization whose decision missed its deadline and voids the
    /// hold it placed, so a late decision never leaves money reserved. The 91 answer
    /// replaces the stored one: a retry gets 91 too.
    pub fn abandon_authorization(
        &self,
        txn: &Authorization,
        ctx: &AuthContext,
    ) -> Pending<Arc<str>> {
        let key = self.authorization_key(txn, ctx);
        let hash = authorization_digest(txn);
        let mut writes = Vec::new();
        let mut guard = None;
        let mut at_ms = self.now().timestamp_millis();
        let response = step_decline(
            txn,
            "91",
            "deadline_exceeded",
            "deadline",
            "the decision missed its deadline; any hold was voided",
            0,
        );
        let json: Arc<str> = serde_json::to_string(&response).unwrap_or_default().into();
        let quiet = self.quiet.read_recursive();
        if let Ok(card) = self.card_for(ctx.tenant, &txn.card_id) {
            let mut c = card.lock_arc();
            at_ms = self.now_for(&mut c).timestamp_millis();
            self.void_hold(&mut c, &txn.id, at_ms, &mut writes);
            // The stored decision says what the caller was told: 91.
            writes.push(Write::DecisionAnswered {
                auth_hash: id_hash(&txn.id),
                card_hash: id_hash(&c.card_id),
                answer: decision_record::encode_answer(&response),
            });
            // Receivers were told of the decision; now of what the caller was told.
            let events = self.operation_events("authorization", &json, Some(&mut c), &writes);
            writes.extend(events);
            guard = Some(c);
        }
        writes.push(Write::Idempotency {
            scope: "authorization",
            key: key.clone(),
            request_hash: hash.clone(),
            response: json.clone(),
            at_ms,
        });
        let seq = self.persist(writes);
        self.idem.finish(
            "authorization",
            &key,
            &hash,
            Kept::Json(json.clone()),
            seq,
            self.durable_seq(),
        );
        drop(guard);
        drop(quiet);
        self.pending(json, seq)
    }

    /// Decides without any effect (no counters, no hold, nothing stored): `/v1/simulate`.
    pub fn simulate(
        &self,
        txn: &Authorization,
        tenant: Option<&str>,
    ) -> Result<DecisionSummary, Rejection> {
        self.read_card(tenant, &txn.card_id, |c, policy, holder, program, now| {
            let d = crate::decision::decide(policy, &c.view(holder, program), txn, now);
            DecisionSummary::new(&d, policy, c.controls.as_deref())
        })
    }

    /// Runs `f` on a card (of `tenant`, when given) under its lock, with its policy, its
    /// holder's and program's shared windows and the time: reads that change nothing
    /// (`simulate`, `limits`).
    pub(super) fn read_card<R>(
        &self,
        tenant: Option<&str>,
        card_id: &str,
        f: impl FnOnce(
            &super::CardState,
            &crate::policy::CompiledPolicy,
            Option<&crate::velocity::VelocityState>,
            Option<&crate::velocity::VelocityState>,
            chrono::DateTime<chrono::Utc>,
        ) -> R,
    ) -> Result<R, Rejection> {
        let card = self.card_for(tenant, card_id)?;
        let policies = self.policies.load();
        let mut c = card.lock();
        let now = self.now_for(&mut c);
        let policy = policies
            .get(&c.policy)
            .cloned()
            .ok_or_else(|| Rejection::UnknownPolicy(c.policy.clone()))?;
        let holder = self
            .holder_velocity
            .get(&c.cardholder_id)
            .map(|h| h.clone());
        let program = self.program_velocity.get(&c.program).map(|p| p.clone());
        let hg = holder.as_ref().map(|h| h.read().0);
        let pg = program.as_ref().map(|p| p.read().0);
        Ok(f(&c, &policy, hg.as_deref(), pg.as_deref(), now))
    }
}

impl Engine {
    /// The authorization's id scoped to its program: the caller's, or in-process the
    /// card's (an unknown card's id is scoped to no program).
    fn authorization_key(&self, txn: &Authorization, ctx: &AuthContext) -> String {
        match ctx.tenant {
            Some(t) => super::auth_key(t, &txn.id),
            None => super::auth_key(
                &self.card_program(&txn.card_id).unwrap_or_default(),
                &txn.id,
            ),
        }
    }
}
