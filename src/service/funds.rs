//! Money in and out: deposits into a program's funding account, top-ups and withdrawals
//! between the funding account and a card.

use std::sync::Arc;

use rust_decimal::Decimal;

use super::responses::transfer_response;
use super::{apply_house, live, Engine, Pending, Rejection};
use crate::ledger::{check_amount, AccountId, Transfer, TransferKind};
use crate::money::Currency;
use crate::store::Write;

impl Engine {
    /// External money into a program's funding account.
    pub fn deposit(
        &self,
        key: &str,
        program: &str,
        amount: Decimal,
        currency: Currency,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        self.idempotent(
            "deposit",
            key,
            &(program, amount.to_string(), currency),
            || {
                if !self.programs.contains_key(program) {
                    return Err(Rejection::UnknownProgram(program.to_string()));
                }
                check_amount(amount, currency)?;
                let funding = AccountId::funding(program, currency);
                let t = Transfer::simple(
                    format!("deposit:{program}:{key}"),
                    TransferKind::Deposit,
                    program,
                    AccountId::external(currency),
                    funding.clone(),
                    amount,
                    currency,
                    self.now().timestamp_millis(),
                );
                let mut house = self.house.lock();
                apply_house(&mut house, &t);
                let after = house.get(&funding).copied().unwrap_or_default();
                let response = transfer_response(&t, &funding, after, currency);
                Ok((response, vec![Write::Transfer(t)], None))
            },
        )
    }

    /// Top-up (program funding → card) or withdrawal (card → program funding).
    pub fn move_funds(
        &self,
        key: &str,
        card_id: &str,
        kind: TransferKind,
        amount: Decimal,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        let scope = if kind == TransferKind::TopUp {
            "fund"
        } else {
            "withdraw"
        };
        self.idempotent(scope, key, &(card_id, amount.to_string()), || {
            let card = self
                .card(card_id)
                .ok_or_else(|| Rejection::UnknownCard(card_id.to_string()))?;
            let mut c = live(&card)?;
            let now = self.now_for(&mut c);
            let program = self
                .card_program(card_id)
                .ok_or_else(|| Rejection::UnknownCard(card_id.to_string()))?;
            let funding = AccountId::funding(&program, c.currency);
            check_amount(amount, c.currency)?;
            let mut house = self.house.lock();
            if kind == TransferKind::TopUp {
                let available = house.get(&funding).copied().unwrap_or_default();
                if amount > available {
                    return Err(Rejection::InsufficientProgramFunds {
                        requested: amount,
                        available,
                    });
                }
            }
            let t = c.account.transfer_with_funding(
                &format!("{card_id}:{key}"),
                kind,
                funding,
                amount,
                now.timestamp_millis(),
            )?;
            apply_house(&mut house, &t);
            let response = transfer_response(
                &t,
                &c.account.account_id(),
                c.account.available(),
                c.currency,
            );
            Ok((response, vec![Write::Transfer(t)], Some(c)))
        })
    }
}
