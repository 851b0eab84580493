//! Velocity rules that a new policy version defines and the live one does not (a new
//! rule, or a redefined one: a rule's windows are keyed by its definition) would start
//! counting from zero, and a tightened limit would let a card spend its old allowance
//! again. Before such a version goes live, their windows are filled from the stored
//! decisions they cover, as if the rule had always been there: each stored request is
//! run through the new policy (the same `decide()`) on a scratch card state, and the new
//! rules' window updates are kept for the outcomes history recorded; history's releases
//! (reversals, expiries, under-captures) are applied to them at their times. The slow
//! part reads the store while the engine keeps deciding; the decisions committed
//! meanwhile are read again under the engine's gate, then everything is applied and the
//! version swapped in at once, and a recovery point keeps the result across restarts.
//! Lifetime windows are not rebuilt (the whole history would be read).

use std::collections::{HashMap, HashSet};

use rust_decimal::Decimal;

use super::decision_record;
use super::{CardState, Engine, Rejection};
use crate::decision::{decide, VelocityEffect};
use crate::policy::{Check, Counts, PolicySet, VelocityCheck, VelocityScope};
use crate::store::StoredDecision;
use crate::velocity::{key_hash, VelocityState, WindowSpec};

/// Decisions a little older than the oldest window start are read too: across cards,
/// the log's order is the decision time's only within the cards' clock skew.
const SCAN_SLACK_MS: i64 = 5 * 60_000;

/// One window update to apply to the live state.
struct Update {
    at_ms: i64,
    card_id: String,
    holder: String,
    program: String,
    auth_key: u64,
    effect: VelocityEffect,
}

/// Who a card is, for the scratch state.
#[derive(Clone)]
struct CardFacts {
    policy: String,
    holder: String,
    program: String,
    currency: crate::money::Currency,
}

#[derive(Default)]
struct Plan {
    updates: Vec<Update>,
    /// Keys of the rebuilt windows (merchant windows derived per merchant).
    keys: HashSet<u64>,
    scratch: HashMap<String, CardState>,
    holders: HashMap<String, VelocityState>,
    programs: HashMap<String, VelocityState>,
    facts: HashMap<String, Option<CardFacts>>,
    max_seq: i64,
}

fn velocity_keys(set: &PolicySet) -> HashSet<u64> {
    let mut keys = HashSet::new();
    for p in set.policies.values() {
        for r in &p.rules {
            if let Check::Velocity(v) = &r.check {
                keys.insert(v.key);
            }
        }
        for w in &p.history_windows {
            keys.insert(w.key_approved);
            keys.insert(w.key_declined);
        }
    }
    keys
}

/// The velocity rules of each policy of `new` whose windows the live set does not have.
fn fresh_rules(live: &PolicySet, new: &PolicySet) -> HashMap<String, Vec<VelocityCheck>> {
    let old = velocity_keys(live);
    let mut out: HashMap<String, Vec<VelocityCheck>> = HashMap::new();
    for p in new.policies.values() {
        for r in &p.rules {
            if let Check::Velocity(v) = &r.check {
                if !old.contains(&v.key) && v.window != WindowSpec::Lifetime {
                    out.entry(p.name.clone()).or_default().push(v.clone());
                }
            }
        }
    }
    out
}

impl Engine {
    /// Puts `new` live, after filling the windows of the velocity rules it adds or
    /// redefines from stored decisions (see the module). Returns the number of window
    /// updates applied.
    pub fn swap_policies(&self, new: PolicySet) -> Result<usize, Rejection> {
        let live = self.policies();
        let fresh = fresh_rules(&live, &new);
        let Some(store) = self.store.as_ref().filter(|_| !fresh.is_empty()) else {
            self.replace_policies(new);
            return Ok(0);
        };
        let now = self.now();
        let since_ms = fresh
            .iter()
            .flat_map(|(name, rules)| {
                let tz = new.get(name).map(|p| p.timezone);
                rules
                    .iter()
                    .filter_map(move |v| tz.map(|tz| v.window.start_ms(now, tz)))
            })
            .min()
            .unwrap_or(i64::MAX);
        let history = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "rebuilding velocity windows");
            Rejection::HistoryUnavailable
        };
        let mut scanned = store
            .recent_decisions(|d| {
                decision_record::at_ms(d).map_or(true, |at| at >= since_ms - SCAN_SLACK_MS)
            })
            .map_err(history)?;
        scanned.reverse();
        let mut plan = Plan::default();
        self.plan(&mut plan, &new, &fresh, scanned)?;
        // Under the gate: nothing changes state while the catch-up is read and applied.
        let _quiet = self.quiet.write();
        let tail = store.decisions_after(plan.max_seq).map_err(history)?;
        self.plan(&mut plan, &new, &fresh, tail)?;
        let releases = store
            .releases_since(since_ms - SCAN_SLACK_MS)
            .map_err(history)?;
        let n = self.apply_plan(plan, releases);
        self.replace_policies(new);
        drop(_quiet);
        if n > 0 {
            // The rebuilt windows are derived from no stored effect: a point keeps them.
            self.save_recovery_point().wait();
        }
        Ok(n)
    }

    fn plan(
        &self,
        plan: &mut Plan,
        new: &PolicySet,
        fresh: &HashMap<String, Vec<VelocityCheck>>,
        decisions: Vec<(i64, StoredDecision)>,
    ) -> Result<(), Rejection> {
        for (seq, stored) in decisions {
            plan.max_seq = plan.max_seq.max(seq);
            let d = decision_record::decode(&stored).map_err(|e| {
                tracing::error!(seq, error = %e, "a stored decision cannot be read");
                Rejection::HistoryUnavailable
            })?;
            let Some(request) = d.request() else {
                continue;
            };
            let facts = plan
                .facts
                .entry(d.card_id.clone())
                .or_insert_with(|| {
                    self.card(&d.card_id).map(|c| {
                        let c = c.lock();
                        CardFacts {
                            policy: c.policy.clone(),
                            holder: c.cardholder_id.clone(),
                            program: c.program.clone(),
                            currency: c.currency,
                        }
                    })
                })
                .clone();
            let Some(facts) = facts else { continue };
            let (Some(rules), Some(policy)) = (fresh.get(&facts.policy), new.get(&facts.policy))
            else {
                continue;
            };
            let merchant = key_hash(&[request.merchant.id.as_bytes()]);
            let keys: Vec<u64> = rules
                .iter()
                .map(|v| match v.scope {
                    VelocityScope::CardMerchant => {
                        key_hash(&[&v.key.to_le_bytes(), &merchant.to_le_bytes()])
                    }
                    _ => v.key,
                })
                .collect();
            let scratch = plan.scratch.entry(d.card_id.clone()).or_insert_with(|| {
                let mut s =
                    CardState::new(&d.card_id, &facts.holder, &facts.policy, facts.currency);
                s.program = facts.program.clone();
                s
            });
            let holder = plan.holders.entry(facts.holder.clone()).or_default();
            let program = plan.programs.entry(facts.program.clone()).or_default();
            let at = chrono::TimeZone::timestamp_millis_opt(&chrono::Utc, d.at_ms)
                .single()
                .unwrap_or_else(|| self.now());
            let decision = decide(
                policy,
                &scratch.view(Some(holder), Some(program)),
                request,
                at,
            );
            scratch.apply(d.approved, &decision.effects, Some(holder), Some(program));
            let counts = if d.approved {
                Counts::Approved
            } else {
                Counts::Declined
            };
            for e in decision
                .effects
                .velocity
                .iter()
                .filter(|e| e.counts == counts && keys.contains(&e.key))
            {
                plan.keys.insert(e.key);
                plan.updates.push(Update {
                    at_ms: d.at_ms,
                    card_id: d.card_id.clone(),
                    holder: facts.holder.clone(),
                    program: facts.program.clone(),
                    auth_key: decision.effects.auth_key,
                    effect: *e,
                });
            }
        }
        Ok(())
    }

    fn apply_plan(&self, plan: Plan, releases: Vec<(String, String, Decimal, i64)>) -> usize {
        let n = plan.updates.len();
        // Time order; within one millisecond updates before releases.
        let mut items: Vec<(i64, bool, usize)> = plan
            .updates
            .iter()
            .enumerate()
            .map(|(i, u)| (u.at_ms, false, i))
            .chain(releases.iter().enumerate().map(|(i, r)| (r.3, true, i)))
            .collect();
        items.sort_by_key(|&(at, is_release, _)| (at, is_release));
        for (_, is_release, i) in items {
            if is_release {
                let (card_id, auth_id, ratio, _) = &releases[i];
                let Some(card) = self.card(card_id) else {
                    continue;
                };
                let mut c = card.lock();
                let auth = key_hash(&[auth_id.as_bytes()]);
                let ratio = (*ratio).min(Decimal::ONE);
                if ratio <= Decimal::ZERO {
                    continue;
                }
                c.velocity.reverse_in(&plan.keys, auth, ratio);
                if let Some(h) = self.holder_velocity.get(&c.cardholder_id) {
                    h.write().reverse_in(&plan.keys, auth, ratio);
                }
                if let Some(p) = self.program_velocity.get(&c.program) {
                    p.write().reverse_in(&plan.keys, auth, ratio);
                }
                continue;
            }
            let u = &plan.updates[i];
            let e = &u.effect;
            match e.scope {
                VelocityScope::Card | VelocityScope::CardMerchant => {
                    if let Some(card) = self.card(&u.card_id) {
                        let mut c = card.lock();
                        if e.scope == VelocityScope::CardMerchant {
                            c.velocity
                                .record_merchant(e.key, e.start_ms, u.at_ms, e.amount, u.auth_key);
                        } else {
                            c.velocity
                                .record(e.key, e.start_ms, u.at_ms, e.amount, u.auth_key);
                        }
                    }
                }
                VelocityScope::Cardholder => Self::shared(&self.holder_velocity, &u.holder)
                    .write()
                    .record(e.key, e.start_ms, u.at_ms, e.amount, u.auth_key),
                VelocityScope::Program => Self::shared(&self.program_velocity, &u.program)
                    .write()
                    .record(e.key, e.start_ms, u.at_ms, e.amount, u.auth_key),
            }
        }
        n
    }
}
