//! A card's prepaid account and its holds. Every operation validates first and mutates
//! only when it cannot fail, so a rejected operation changes nothing.

use std::collections::HashMap;

use rust_decimal::{Decimal, RoundingStrategy};
use smallvec::{smallvec, SmallVec};

use super::{
    check_amount, AccountId, Hold, HoldStatus, LedgerError, Posting, Transfer, TransferKind,
};
use crate::money::Currency;

/// Resolved holds older than this are dropped from memory (they stay in the store).
pub const RESOLVED_HOLD_RETENTION_MS: i64 = 90 * 86_400_000;
/// A card's hold map is pruned once it holds this many.
pub const HOLDS_IN_MEMORY_MIN: usize = 64;

#[derive(Debug, Clone)]
pub struct CardAccount {
    pub card_id: String,
    pub currency: Currency,
    /// Posted balance.
    pub posted: Decimal,
    /// Sum of pending holds.
    pub pending: Decimal,
    /// Pending holds and captured ones from the last 90 days (voided and expired holds
    /// leave at the next pruning).
    pub holds: HashMap<String, Hold>,
    /// Set once a forced post has touched this account.
    pub forced: bool,
    /// The map is pruned when it reaches this size (doubling keeps pruning amortized).
    prune_at: usize,
}

#[derive(Debug, Clone)]
pub struct CaptureResult {
    pub transfer: Transfer,
    pub hold: Hold,
    /// Pending amount released without being captured (final capture below the hold),
    /// as a fraction of the authorized amount: velocity capacity to give back.
    pub released_ratio: Decimal,
}

#[derive(Debug, Clone)]
pub struct ReversalResult {
    pub hold: Hold,
    pub released: Decimal,
    pub released_ratio: Decimal,
}

#[derive(Debug, Clone)]
pub struct ExpiredHold {
    pub hold: Hold,
    pub released_ratio: Decimal,
}

/// Postings that move `amount_card` out of the card and `txn_amount` into network
/// settlement, through the FX accounts when the currencies differ. A refund uses the
/// same legs negated.
fn charge_postings(
    card: AccountId,
    card_ccy: Currency,
    amount_card: Decimal,
    txn_ccy: Currency,
    txn_amount: Decimal,
) -> SmallVec<[Posting; 4]> {
    if txn_ccy == card_ccy {
        smallvec![
            Posting {
                account: card,
                currency: card_ccy,
                amount: -amount_card
            },
            Posting {
                account: AccountId::settlement(card_ccy),
                currency: card_ccy,
                amount: amount_card
            },
        ]
    } else {
        smallvec![
            Posting {
                account: card,
                currency: card_ccy,
                amount: -amount_card
            },
            Posting {
                account: AccountId::fx(card_ccy),
                currency: card_ccy,
                amount: amount_card
            },
            Posting {
                account: AccountId::fx(txn_ccy),
                currency: txn_ccy,
                amount: -txn_amount
            },
            Posting {
                account: AccountId::settlement(txn_ccy),
                currency: txn_ccy,
                amount: txn_amount
            },
        ]
    }
}

fn round(amount: Decimal, c: Currency) -> Decimal {
    amount.round_dp_with_strategy(c.exponent(), RoundingStrategy::MidpointNearestEven)
}

impl Hold {
    /// Converts a transaction-currency amount at this hold's rate; the full amount maps
    /// to exactly what was authorized.
    pub fn to_card(&self, txn_amount: Decimal) -> Decimal {
        if txn_amount == self.txn_amount {
            return self.authorized;
        }
        round(txn_amount * self.fx_rate, self.card_currency)
    }

    /// The card amount of capturing `txn_amount` more: converted cumulatively, so that
    /// partial captures in another currency add up exactly to the converted
    /// authorization (each capture takes the remainder its rounding leaves).
    pub fn capture_to_card(&self, txn_amount: Decimal) -> Decimal {
        let total = |x: Decimal| {
            if x.is_zero() {
                Decimal::ZERO
            } else if x == self.txn_amount {
                self.authorized
            } else {
                round(x * self.fx_rate, self.card_currency)
            }
        };
        total(self.captured_txn + txn_amount) - total(self.captured_txn)
    }

    fn ratio(&self, amount_card: Decimal) -> Decimal {
        if self.authorized.is_zero() {
            return Decimal::ONE;
        }
        (amount_card / self.authorized).min(Decimal::ONE)
    }
}

impl CardAccount {
    pub fn new(card_id: &str, currency: Currency) -> CardAccount {
        CardAccount {
            card_id: card_id.to_string(),
            currency,
            posted: Decimal::ZERO,
            pending: Decimal::ZERO,
            holds: HashMap::new(),
            forced: false,
            prune_at: HOLDS_IN_MEMORY_MIN,
        }
    }

    pub fn account_id(&self) -> AccountId {
        AccountId::card(&self.card_id)
    }

    pub fn available(&self) -> Decimal {
        self.posted - self.pending
    }

    pub fn pending_holds(&self) -> usize {
        self.holds
            .values()
            .filter(|h| h.status == HoldStatus::Pending)
            .count()
    }

    fn apply(&mut self, t: &Transfer) {
        self.posted += t.posting(&self.account_id());
    }

    /// Reserves an approved authorization. The decision already checked funds.
    #[allow(clippy::too_many_arguments)]
    pub fn place_hold(
        &mut self,
        auth_id: &str,
        amount_card: Decimal,
        txn_amount: Decimal,
        txn_currency: Currency,
        fx_rate: Decimal,
        now_ms: i64,
        expiry_days: u32,
    ) -> Hold {
        assert!(
            amount_card <= self.available(),
            "approval within available balance"
        );
        assert!(
            !self.holds.contains_key(auth_id),
            "one hold per authorization id"
        );
        // Keep memory bounded: only pending holds and recently captured ones (which refunds
        // may still draw on) stay; voided and expired holds can take nothing more and go
        // at once. All remain in the store.
        if self.holds.len() >= self.prune_at {
            self.holds.retain(|_, h| Self::keep_in_memory(h, now_ms));
            self.prune_at = (self.holds.len() * 2).max(HOLDS_IN_MEMORY_MIN);
        }
        let hold = Hold {
            auth_id: auth_id.to_string(),
            card_id: self.card_id.clone(),
            card_currency: self.currency,
            pending: amount_card,
            authorized: amount_card,
            captured: Decimal::ZERO,
            captured_txn: Decimal::ZERO,
            refunded: Decimal::ZERO,
            txn_amount,
            txn_currency,
            fx_rate,
            status: HoldStatus::Pending,
            created_ms: now_ms,
            expires_ms: now_ms + i64::from(expiry_days) * 86_400_000,
            resolved_ms: None,
        };
        self.pending += amount_card;
        self.holds.insert(auth_id.to_string(), hold.clone());
        hold
    }

    fn pending_hold(&self, auth_id: &str) -> Result<&Hold, LedgerError> {
        let h = self
            .holds
            .get(auth_id)
            .ok_or_else(|| LedgerError::UnknownAuthorization(auth_id.to_string()))?;
        if h.status != HoldStatus::Pending {
            return Err(LedgerError::HoldNotPending {
                auth_id: auth_id.to_string(),
                status: h.status,
            });
        }
        Ok(h)
    }

    /// Posts (part of) a hold. `txn_amount` is in the authorization's currency; a final
    /// capture releases whatever remains held.
    pub fn capture(
        &mut self,
        capture_id: &str,
        auth_id: &str,
        txn_amount: Decimal,
        is_final: bool,
        over_capture_bps: u32,
        now_ms: i64,
    ) -> Result<CaptureResult, LedgerError> {
        let h = self.pending_hold(auth_id)?;
        check_amount(txn_amount, h.txn_currency)?;
        let amount_card = h.capture_to_card(txn_amount);
        let tolerance = Decimal::ONE + Decimal::new(i64::from(over_capture_bps), 4);
        // The tolerance applies to what is still authorized: a reversed part is gone.
        let still_authorized = h.captured + h.pending;
        let allowed = round(still_authorized * tolerance, self.currency) - h.captured;
        if amount_card > allowed || amount_card.is_zero() {
            return Err(LedgerError::CaptureExceedsHold {
                requested: amount_card,
                allowed,
            });
        }
        let from_hold = amount_card.min(h.pending);
        let excess = amount_card - from_hold;
        if excess > self.available() {
            return Err(LedgerError::InsufficientFunds {
                requested: excess,
                available: self.available(),
            });
        }
        let card_ccy = self.currency;
        let (txn_ccy, fx_rate) = (h.txn_currency, h.fx_rate);
        let postings = charge_postings(
            self.account_id(),
            card_ccy,
            amount_card,
            txn_ccy,
            txn_amount,
        );
        let transfer = Transfer {
            id: format!("capture:{capture_id}"),
            kind: TransferKind::Capture,
            reference: auth_id.to_string(),
            postings,
            fx_rate: (txn_ccy != card_ccy).then_some(fx_rate),
            forced: false,
            at_ms: now_ms,
        };
        assert!(
            transfer.imbalance().is_empty(),
            "capture balances per currency"
        );
        // Validated: now mutate.
        let h = self.holds.get_mut(auth_id).expect("checked above");
        h.captured += amount_card;
        h.captured_txn += txn_amount;
        h.pending -= from_hold;
        let mut released = Decimal::ZERO;
        if is_final || h.pending.is_zero() {
            released = h.pending;
            h.pending = Decimal::ZERO;
            h.status = HoldStatus::Posted;
            h.resolved_ms = Some(now_ms);
        }
        let released_ratio = h.ratio(released);
        let hold = h.clone();
        self.pending -= from_hold + released;
        self.apply(&transfer);
        Ok(CaptureResult {
            transfer,
            hold,
            released_ratio,
        })
    }

    /// Releases (part of) a hold. `txn_amount` None reverses everything still held.
    pub fn reverse(
        &mut self,
        auth_id: &str,
        txn_amount: Option<Decimal>,
        now_ms: i64,
    ) -> Result<ReversalResult, LedgerError> {
        let h = self.pending_hold(auth_id)?;
        let amount_card = match txn_amount {
            None => h.pending,
            Some(a) => {
                check_amount(a, h.txn_currency)?;
                h.to_card(a)
            }
        };
        if amount_card > h.pending {
            return Err(LedgerError::ReversalExceedsHold {
                requested: amount_card,
                pending: h.pending,
            });
        }
        let h = self.holds.get_mut(auth_id).expect("checked above");
        h.pending -= amount_card;
        if h.pending.is_zero() {
            h.status = if h.captured.is_zero() {
                HoldStatus::Voided
            } else {
                HoldStatus::Posted
            };
            h.resolved_ms = Some(now_ms);
        }
        let released_ratio = h.ratio(amount_card);
        let hold = h.clone();
        self.pending -= amount_card;
        Ok(ReversalResult {
            hold,
            released: amount_card,
            released_ratio,
        })
    }

    /// Expires every pending hold whose time has come, each exactly once.
    pub fn expire(&mut self, now_ms: i64) -> Vec<ExpiredHold> {
        let mut out = Vec::new();
        for h in self.holds.values_mut() {
            if h.status == HoldStatus::Pending && h.expires_ms <= now_ms {
                let released = h.pending;
                let released_ratio = h.ratio(released);
                h.pending = Decimal::ZERO;
                h.status = HoldStatus::Expired;
                h.resolved_ms = Some(now_ms);
                self.pending -= released;
                out.push(ExpiredHold {
                    hold: h.clone(),
                    released_ratio,
                });
            }
        }
        out.sort_by(|a, b| a.hold.auth_id.cmp(&b.hold.auth_id));
        out
    }

    /// Credits a refund: linked to an authorization (at most what it captured, in its
    /// currency and at its rate) or unlinked (in card currency).
    pub fn refund(
        &mut self,
        refund_id: &str,
        linked: Option<&str>,
        amount: Decimal,
        currency: Currency,
        now_ms: i64,
    ) -> Result<(Transfer, Option<Hold>), LedgerError> {
        let (amount_card, txn_ccy, rate) = match linked {
            Some(auth_id) => {
                let h = self
                    .holds
                    .get(auth_id)
                    .ok_or_else(|| LedgerError::UnknownAuthorization(auth_id.to_string()))?;
                if currency != h.txn_currency {
                    return Err(LedgerError::CurrencyMismatch {
                        expected: h.txn_currency,
                        got: currency,
                    });
                }
                check_amount(amount, currency)?;
                let amount_card = h.to_card(amount);
                let refundable = h.captured - h.refunded;
                if amount_card > refundable {
                    return Err(LedgerError::RefundExceedsCaptured {
                        requested: amount_card,
                        refundable,
                    });
                }
                (amount_card, h.txn_currency, h.fx_rate)
            }
            None => {
                if currency != self.currency {
                    return Err(LedgerError::CurrencyMismatch {
                        expected: self.currency,
                        got: currency,
                    });
                }
                check_amount(amount, currency)?;
                (amount, self.currency, Decimal::ONE)
            }
        };
        let card_ccy = self.currency;
        // A refund reverses a charge's legs.
        let mut postings =
            charge_postings(self.account_id(), card_ccy, amount_card, txn_ccy, amount);
        for p in postings.iter_mut() {
            p.amount = -p.amount;
        }
        let transfer = Transfer {
            id: format!("refund:{refund_id}"),
            kind: TransferKind::Refund,
            reference: linked.unwrap_or(refund_id).to_string(),
            postings,
            fx_rate: (txn_ccy != card_ccy).then_some(rate),
            forced: false,
            at_ms: now_ms,
        };
        assert!(
            transfer.imbalance().is_empty(),
            "refund balances per currency"
        );
        let hold = linked.and_then(|a| self.holds.get_mut(a)).map(|h| {
            h.refunded += amount_card;
            h.clone()
        });
        self.apply(&transfer);
        Ok((transfer, hold))
    }

    /// Posts a stand-in advice without a hold. May take the balance below zero.
    pub fn forced_post(
        &mut self,
        advice_id: &str,
        amount_card: Decimal,
        txn_amount: Decimal,
        txn_currency: Currency,
        fx_rate: Decimal,
        now_ms: i64,
    ) -> Result<Transfer, LedgerError> {
        check_amount(txn_amount, txn_currency)?;
        check_amount(amount_card, self.currency)?;
        let card_ccy = self.currency;
        let postings = charge_postings(
            self.account_id(),
            card_ccy,
            amount_card,
            txn_currency,
            txn_amount,
        );
        let transfer = Transfer {
            id: format!("advice:{advice_id}"),
            kind: TransferKind::ForcedPost,
            reference: advice_id.to_string(),
            postings,
            fx_rate: (txn_currency != card_ccy).then_some(fx_rate),
            forced: true,
            at_ms: now_ms,
        };
        assert!(transfer.imbalance().is_empty());
        self.forced = true;
        self.apply(&transfer);
        Ok(transfer)
    }

    /// Moves money between this card and its program's funding account. The caller
    /// checks the funding account's balance for top-ups.
    pub fn transfer_with_funding(
        &mut self,
        id: &str,
        kind: TransferKind,
        funding: AccountId,
        amount: Decimal,
        now_ms: i64,
    ) -> Result<Transfer, LedgerError> {
        check_amount(amount, self.currency)?;
        let (from, to) = match kind {
            TransferKind::TopUp => (funding, self.account_id()),
            TransferKind::Withdrawal | TransferKind::Termination => {
                if amount > self.available() {
                    return Err(LedgerError::InsufficientFunds {
                        requested: amount,
                        available: self.available(),
                    });
                }
                (self.account_id(), funding)
            }
            other => panic!("{other:?} is not a funding transfer"),
        };
        let t = Transfer::simple(
            format!("{}:{id}", kind.as_str()),
            kind,
            &self.card_id,
            from,
            to,
            amount,
            self.currency,
            now_ms,
        );
        self.apply(&t);
        Ok(t)
    }

    /// Rebuilds balances from the store: a transfer's posting on this card.
    pub fn replay_transfer(&mut self, t: &Transfer) {
        self.apply(t);
        if t.forced {
            self.forced = true;
        }
    }

    /// Rebuilds a hold from the store.
    pub fn replay_hold(&mut self, h: Hold) {
        if h.status == HoldStatus::Pending {
            self.pending += h.pending;
        }
        // A voided or expired hold can take nothing more: it stays in the store only.
        // (Captured ones age out with the live clock, when the map is next pruned.)
        if matches!(h.status, HoldStatus::Pending | HoldStatus::Posted) {
            self.holds.insert(h.auth_id.clone(), h);
        }
    }

    /// Whether a hold is still worth keeping in memory: pending, or posted (captured)
    /// within [`RESOLVED_HOLD_RETENTION_MS`] so that refunds can draw on it.
    fn keep_in_memory(h: &Hold, now_ms: i64) -> bool {
        match h.status {
            HoldStatus::Pending => true,
            HoldStatus::Posted => h
                .resolved_ms
                .is_none_or(|r| now_ms.saturating_sub(r) < RESOLVED_HOLD_RETENTION_MS),
            HoldStatus::Voided | HoldStatus::Expired => false,
        }
    }
}

#[cfg(test)]
#[path = "card_tests.rs"]
mod tests;
