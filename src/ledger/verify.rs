//! The ledger's invariants, checked over everything a store holds
//! (`spendgate ledger verify`, and the property and crash tests).

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;

use super::{AccountId, Hold, HoldStatus, Transfer};
use crate::money::Currency;

/// What the ledger holds, as loaded from a store.
#[derive(Debug, Clone, Default)]
pub struct LedgerSnapshot {
    pub transfers: Vec<Transfer>,
    pub holds: Vec<Hold>,
    /// (card id, authorization id, event) for every hold resolution recorded: `posted`,
    /// `voided`, `expired`. Authorization ids are unique per card, not globally.
    pub hold_resolutions: Vec<(String, String, HoldStatus)>,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub transfers: usize,
    pub accounts: usize,
    pub holds_pending: usize,
    pub holds_resolved: usize,
    /// Sum of all balances per currency (zero when the ledger is sound).
    pub totals: BTreeMap<Currency, Decimal>,
    /// Value held in card accounts per currency.
    pub card_balances: BTreeMap<Currency, Decimal>,
    pub violations: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

pub fn verify(s: &LedgerSnapshot) -> VerifyReport {
    let mut r = VerifyReport {
        transfers: s.transfers.len(),
        ..VerifyReport::default()
    };
    let mut balances: BTreeMap<(AccountId, Currency), Decimal> = BTreeMap::new();
    let mut forced_cards: BTreeSet<AccountId> = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for t in &s.transfers {
        if !ids.insert(&t.id) {
            r.violations
                .push(format!("transfer {} is recorded twice", t.id));
        }
        for (c, sum) in t.imbalance() {
            r.violations.push(format!(
                "transfer {} does not balance: {c} sums to {sum}",
                t.id
            ));
        }
        for p in &t.postings {
            *balances.entry((p.account.clone(), p.currency)).or_default() += p.amount;
            if t.forced && p.account.is_card() {
                forced_cards.insert(p.account.clone());
            }
        }
    }
    r.accounts = balances.len();
    for ((account, c), b) in &balances {
        *r.totals.entry(*c).or_default() += *b;
        if account.is_card() {
            *r.card_balances.entry(*c).or_default() += *b;
        }
    }
    for (c, total) in &r.totals {
        if !total.is_zero() {
            r.violations
                .push(format!("balances in {c} sum to {total}, not zero"));
        }
    }
    let mut pending: BTreeMap<AccountId, Decimal> = BTreeMap::new();
    for h in &s.holds {
        if h.pending < Decimal::ZERO || h.captured < Decimal::ZERO || h.refunded > h.captured {
            r.violations
                .push(format!("hold {} has inconsistent amounts", h.auth_id));
        }
        match h.status {
            HoldStatus::Pending => {
                r.holds_pending += 1;
                *pending.entry(AccountId::card(&h.card_id)).or_default() += h.pending;
            }
            _ => {
                r.holds_resolved += 1;
                if !h.pending.is_zero() {
                    r.violations.push(format!(
                        "hold {} is {:?} but still holds {}",
                        h.auth_id, h.status, h.pending
                    ));
                }
            }
        }
    }
    let mut resolutions: BTreeMap<(&str, &str), Vec<HoldStatus>> = BTreeMap::new();
    for (card, auth, ev) in &s.hold_resolutions {
        resolutions
            .entry((card.as_str(), auth.as_str()))
            .or_default()
            .push(*ev);
    }
    for h in &s.holds {
        let events = resolutions
            .get(&(h.card_id.as_str(), h.auth_id.as_str()))
            .map_or(0, |v| v.len());
        match (h.status, events) {
            (HoldStatus::Pending, 0) => {}
            (HoldStatus::Pending, n) => r.violations.push(format!(
                "hold {} is pending but was resolved {n} time(s)",
                h.auth_id
            )),
            (_, 1) => {}
            (s, n) => r.violations.push(format!(
                "hold {} is {s:?} and was resolved {n} times",
                h.auth_id
            )),
        }
    }
    for ((account, c), posted) in &balances {
        if !account.is_card() {
            continue;
        }
        let available = *posted - pending.get(account).copied().unwrap_or_default();
        if available < Decimal::ZERO && !forced_cards.contains(account) {
            r.violations.push(format!(
                "{account} has available {available} {c} below zero without a forced post"
            ));
        }
    }
    for (account, p) in &pending {
        if !balances.keys().any(|(a, _)| a == account) && !p.is_zero() {
            r.violations
                .push(format!("{account} holds {p} with no balance"));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{CardAccount, TransferKind};

    #[test]
    fn sound_ledger_verifies_and_broken_ones_do_not() {
        let mut c = CardAccount::new("c1", Currency::USD);
        let funding = AccountId::funding("p", Currency::USD);
        let deposit = Transfer::simple(
            "deposit:1".into(),
            TransferKind::Deposit,
            "p",
            AccountId::external(Currency::USD),
            funding.clone(),
            "100".parse().unwrap(),
            Currency::USD,
            0,
        );
        let top = c
            .transfer_with_funding("t", TransferKind::TopUp, funding, "60".parse().unwrap(), 0)
            .unwrap();
        let hold = c.place_hold(
            "a1",
            "10".parse().unwrap(),
            "10".parse().unwrap(),
            Currency::USD,
            Decimal::ONE,
            0,
            7,
        );
        let mut s = LedgerSnapshot {
            transfers: vec![deposit, top],
            holds: vec![hold],
            hold_resolutions: vec![],
        };
        let r = verify(&s);
        assert!(r.ok(), "{:?}", r.violations);
        assert_eq!(
            r.card_balances[&Currency::USD],
            "60".parse::<Decimal>().unwrap()
        );

        s.hold_resolutions
            .push(("c1".into(), "a1".into(), HoldStatus::Voided));
        assert!(!verify(&s).ok(), "pending hold with a resolution");
        s.hold_resolutions.clear();
        s.transfers[1].postings[0].amount = "-59".parse().unwrap();
        let r = verify(&s);
        assert!(
            r.violations.iter().any(|v| v.contains("does not balance")),
            "{:?}",
            r.violations
        );
    }
}
