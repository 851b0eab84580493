//! What follows an approval: captures, reversals, refunds, stand-in advices, and hold
//! expiry; each gives velocity capacity back where the hold shrinks.

use std::sync::Arc;

use rust_decimal::Decimal;

use super::responses::{hold_response, money, transfer_response, ExpiryReport, ReversalResponse};
use super::{apply_house, live, CardState, Engine, Pending, Rejection, Shared};
use crate::ledger::{check_amount, HoldStatus};
use crate::money::Currency;
use crate::store::Write;

impl Engine {
    fn card_of_auth(&self, program: &str, auth_id: &str) -> Option<Shared<CardState>> {
        let card_id = self.card_id_of_auth(program, auth_id)?;
        self.card(&card_id)
    }

    /// The card an authorization of `program` placed its hold on: from the bounded index,
    /// else from the store (and back into the index).
    fn card_id_of_auth(&self, program: &str, auth_id: &str) -> Option<String> {
        let key = super::auth_key(program, auth_id);
        if let Some(c) = self.auth_index.get(&key) {
            return Some(c.clone());
        }
        let store = self.store.as_ref()?;
        let card_id = match store.card_of_authorization(program, auth_id) {
            Ok(c) => c?,
            Err(e) => crate::store::fail_stop(&format!("authorization lookup: {e}")),
        };
        self.index_authorization(key, card_id.clone());
        Some(card_id)
    }

    /// Remembers which card an authorization's hold is on, within the index's bound
    /// (the oldest entries give way; the store still knows them).
    pub(super) fn index_authorization(&self, key: String, card_id: String) {
        let mut order = self.auth_order.lock();
        if self.auth_index.insert(key.clone(), card_id).is_none() {
            order.push_back(key);
        }
        while order.len() > self.config.authorization_index_entries_max.max(1) {
            if let Some(old) = order.pop_front() {
                self.auth_index.remove(&old);
            }
        }
    }

    /// Whether an operation on this authorization (capture, reversal) may read the
    /// store: its card is not in the bounded index, or its idempotency key may be one
    /// only the store remembers. A round trip on PostgreSQL, which callers keep off
    /// async workers.
    pub fn authorization_may_read_store(&self, program: &str, auth_id: &str) -> bool {
        self.store.is_some()
            && (self.idem.is_partial()
                || !self
                    .auth_index
                    .contains_key(&super::auth_key(program, auth_id)))
    }

    /// Whether `program` placed an authorization with this id (another program's is as
    /// unknown as one never made).
    pub fn has_authorization(&self, program: &str, auth_id: &str) -> bool {
        self.card_id_of_auth(program, auth_id).is_some()
    }

    /// Releases everything an authorization still holds and records it; false when
    /// nothing was pending.
    pub(super) fn void_hold(
        &self,
        c: &mut CardState,
        auth_id: &str,
        at_ms: i64,
        writes: &mut Vec<Write>,
    ) -> bool {
        let Ok(r) = c.account.reverse(auth_id, None, at_ms) else {
            return false;
        };
        writes.push(Write::Hold(r.hold.clone()));
        writes.push(Write::HoldResolved {
            card_id: c.card_id.clone(),
            auth_id: auth_id.to_string(),
            status: r.hold.status,
            at_ms,
        });
        self.release(c, auth_id, r.released_ratio, at_ms, writes);
        true
    }

    /// Gives velocity capacity back in the card's windows and its shared scopes.
    pub(super) fn give_back(&self, c: &mut CardState, auth_id: &str, ratio: Decimal) {
        let holder = self
            .holder_velocity
            .get(&c.cardholder_id)
            .map(|h| h.clone());
        let program = self.program_velocity.get(&c.program).map(|p| p.clone());
        let mut hg = holder.as_ref().map(|h| h.write());
        let mut pg = program.as_ref().map(|p| p.write());
        c.release_velocity(auth_id, ratio, hg.as_deref_mut(), pg.as_deref_mut());
    }

    /// `give_back`, recorded for recovery.
    fn release(
        &self,
        c: &mut CardState,
        auth_id: &str,
        ratio: Decimal,
        at_ms: i64,
        writes: &mut Vec<Write>,
    ) {
        if ratio <= Decimal::ZERO {
            return;
        }
        self.give_back(c, auth_id, ratio);
        writes.push(Write::VelocityRelease {
            card_id: c.card_id.clone(),
            auth_id: auth_id.to_string(),
            ratio: ratio.to_string(),
            at_ms,
        });
    }

    /// The hold's writes, with its resolution when it is no longer pending.
    fn hold_writes(hold: &crate::ledger::Hold, at_ms: i64, writes: &mut Vec<Write>) {
        writes.push(Write::Hold(hold.clone()));
        if hold.status != HoldStatus::Pending {
            writes.push(Write::HoldResolved {
                card_id: hold.card_id.clone(),
                auth_id: hold.auth_id.clone(),
                status: hold.status,
                at_ms,
            });
        }
    }

    /// Captures (part of) one of `program`'s authorizations. `amount` is in the
    /// authorization's currency.
    pub fn capture(
        &self,
        program: &str,
        key: &str,
        auth_id: &str,
        amount: Decimal,
        is_final: bool,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        self.idempotent(
            "capture",
            &format!("{}:{key}", super::auth_key(program, auth_id)),
            &(auth_id, amount.to_string(), is_final),
            || {
                let card = self
                    .card_of_auth(program, auth_id)
                    .ok_or_else(|| Rejection::UnknownAuthorization(auth_id.to_string()))?;
                let mut c = live(&card)?;
                let at_ms = self.now_for(&mut c).timestamp_millis();
                let r = c.account.capture(
                    &format!("{auth_id}:{key}"),
                    auth_id,
                    amount,
                    is_final,
                    self.config.over_capture_bps,
                    at_ms,
                )?;
                apply_house(&mut self.house.lock(), &r.transfer);
                let mut writes = vec![Write::Transfer(r.transfer.clone())];
                Self::hold_writes(&r.hold, at_ms, &mut writes);
                self.release(&mut c, auth_id, r.released_ratio, at_ms, &mut writes);
                let response = hold_response(
                    &r.hold,
                    -r.transfer.posting(&c.account.account_id()),
                    c.account.available(),
                );
                Ok((response, writes, Some(c)))
            },
        )
    }

    /// Reverses (part of) one of `program`'s authorizations. An unknown authorization is
    /// recorded and answered (`matched: false`), so the processor's retries settle; if it
    /// arrives later (for this program) it is voided at once.
    pub fn reverse(
        &self,
        program: &str,
        key: &str,
        auth_id: &str,
        amount: Option<Decimal>,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        let scoped = super::auth_key(program, auth_id);
        self.idempotent(
            "reversal",
            &format!("{scoped}:{key}"),
            &(auth_id, amount.map(|a| a.to_string())),
            || {
                let Some(card) = self.card_of_auth(program, auth_id) else {
                    // Remembered, so that the authorization is voided if it arrives later.
                    self.remember_early_reversal(scoped.clone());
                    return Ok((ReversalResponse::unmatched(auth_id), vec![], None));
                };
                let mut c = live(&card)?;
                let at_ms = self.now_for(&mut c).timestamp_millis();
                let r = c.account.reverse(auth_id, amount, at_ms)?;
                let mut writes = Vec::new();
                Self::hold_writes(&r.hold, at_ms, &mut writes);
                self.release(&mut c, auth_id, r.released_ratio, at_ms, &mut writes);
                let response = ReversalResponse {
                    authorization_id: auth_id.to_string(),
                    matched: true,
                    released: Some(money(r.released, c.currency)),
                    hold_status: Some(r.hold.status),
                    available_after: Some(money(c.account.available(), c.currency)),
                };
                Ok((response, writes, Some(c)))
            },
        )
    }

    /// Credits a refund to a card, linked to an authorization or not.
    pub fn refund(
        &self,
        key: &str,
        card_id: &str,
        auth_id: Option<&str>,
        amount: Decimal,
        currency: Currency,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        self.idempotent(
            "refund",
            key,
            &(card_id, auth_id, amount.to_string(), currency),
            || {
                let card = self
                    .card(card_id)
                    .ok_or_else(|| Rejection::UnknownCard(card_id.to_string()))?;
                let mut c = live(&card)?;
                let at_ms = self.now_for(&mut c).timestamp_millis();
                let (t, hold) = c.account.refund(key, auth_id, amount, currency, at_ms)?;
                apply_house(&mut self.house.lock(), &t);
                let mut writes = vec![Write::Transfer(t.clone())];
                if let Some(h) = hold {
                    writes.push(Write::Hold(h));
                }
                let response = transfer_response(
                    &t,
                    &c.account.account_id(),
                    c.account.available(),
                    c.currency,
                );
                Ok((response, writes, Some(c)))
            },
        )
    }

    /// Posts a stand-in advice: the processor approved without us. Never declined;
    /// may take the balance negative, and the transfer is flagged as forced.
    pub fn advice(
        &self,
        key: &str,
        card_id: &str,
        amount: Decimal,
        currency: Currency,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        self.idempotent(
            "advice",
            key,
            &(card_id, amount.to_string(), currency),
            || {
                let card = self
                    .card(card_id)
                    .ok_or_else(|| Rejection::UnknownCard(card_id.to_string()))?;
                let mut c = live(&card)?;
                let at_ms = self.now_for(&mut c).timestamp_millis();
                check_amount(amount, currency)?;
                let fx = self.policies.load().fx.clone();
                let (amount_card, quote) = fx.convert_charge(amount, currency, c.currency)?;
                let t =
                    c.account
                        .forced_post(key, amount_card, amount, currency, quote.rate, at_ms)?;
                apply_house(&mut self.house.lock(), &t);
                let response = transfer_response(
                    &t,
                    &c.account.account_id(),
                    c.account.available(),
                    c.currency,
                );
                Ok((response, vec![Write::Transfer(t)], Some(c)))
            },
        )
    }

    /// Expires every hold past its expiry, each exactly once, giving capacity back.
    pub fn expire_holds(&self) -> Pending<ExpiryReport> {
        let mut expired = Vec::new();
        let mut last_seq = 0;
        let cards: Vec<Shared<CardState>> = self.cards.iter().map(|c| c.clone()).collect();
        for card in cards {
            let _quiet = self.quiet.read_recursive();
            let mut c = card.lock_arc();
            let at_ms = self.now_for(&mut c).timestamp_millis();
            let holds = c.account.expire(at_ms);
            if holds.is_empty() {
                continue;
            }
            let mut writes = Vec::new();
            for e in holds {
                Self::hold_writes(&e.hold, at_ms, &mut writes);
                self.release(
                    &mut c,
                    &e.hold.auth_id,
                    e.released_ratio,
                    at_ms,
                    &mut writes,
                );
                if self.has_webhook_endpoints() {
                    let data = serde_json::json!({"authorization_id": e.hold.auth_id, "card_id": c.card_id,
                        "status": e.hold.status, "currency": c.currency});
                    let card_id = c.card_id.clone();
                    writes.extend(self.event(
                        &c.program,
                        Some(&card_id),
                        "authorization.expired",
                        data,
                        at_ms,
                    ));
                }
                expired.push(e.hold.auth_id);
            }
            if self.has_webhook_endpoints() {
                let mut alerts = Vec::new();
                self.balance_alert(&mut c, at_ms, &mut alerts);
                writes.extend(alerts);
            }
            last_seq = self.persist(writes);
        }
        expired.sort();
        self.pending(ExpiryReport { expired }, last_seq)
    }
}
