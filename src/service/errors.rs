//! Why the engine refuses an operation: one variant per business reason, with its
//! facts. A decline is not here (it is an answer); HTTP alone maps these to statuses
//! and problem types.

use rust_decimal::Decimal;

use crate::domain::CardStatus;
use crate::issuing::{CardAction, TransitionError};
use crate::ledger::{HoldStatus, LedgerError};
use crate::money::{Currency, MoneyError};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("unknown card `{0}`")]
    UnknownCard(String),
    #[error("unknown cardholder `{0}`")]
    UnknownCardholder(String),
    #[error("unknown program `{0}`")]
    UnknownProgram(String),
    #[error("unknown policy `{0}`")]
    UnknownPolicy(String),
    #[error("no authorization `{0}`")]
    UnknownAuthorization(String),
    #[error("policy `{policy}` has no stored version{}", version.as_ref().map(|v| format!(" `{v}`")).unwrap_or_default())]
    UnknownPolicyVersion {
        policy: String,
        version: Option<String>,
    },
    #[error("the policy version was refused:\n{0}")]
    InvalidPolicy(String),
    #[error("{what} `{id}` already exists")]
    AlreadyExists { what: &'static str, id: String },
    #[error("this idempotency key was used with a different request")]
    IdempotencyConflict,
    #[error("{0}")]
    InvalidRequest(String),
    #[error("invalid controls: {0}")]
    InvalidControls(String),

    #[error("amount must be positive")]
    NonPositiveAmount,
    #[error("`{0}` is not a decimal amount")]
    NotADecimal(String),
    #[error("{amount} has more than {exponent} fraction digits allowed for {currency}")]
    TooPrecise {
        amount: String,
        currency: Currency,
        exponent: u32,
    },
    #[error("unknown currency `{0}`")]
    UnknownCurrency(String),
    #[error("amount overflow")]
    AmountOverflow,
    #[error("no FX rate from {from} to {to}")]
    NoFxRate { from: Currency, to: Currency },
    #[error("currency {got} does not match {expected}")]
    CurrencyMismatch { expected: Currency, got: Currency },

    #[error("insufficient funds: {requested} requested, {available} available")]
    InsufficientFunds {
        requested: Decimal,
        available: Decimal,
    },
    #[error("program funding account holds {available}, {requested} requested")]
    InsufficientProgramFunds {
        requested: Decimal,
        available: Decimal,
    },
    #[error("capture of {requested} exceeds the hold's {allowed} (authorized plus over-capture tolerance)")]
    CaptureExceedsHold {
        requested: Decimal,
        allowed: Decimal,
    },
    #[error("reversal of {requested} exceeds the {pending} still held")]
    ReversalExceedsHold {
        requested: Decimal,
        pending: Decimal,
    },
    #[error("refund of {requested} exceeds the {refundable} captured and not yet refunded")]
    RefundExceedsCaptured {
        requested: Decimal,
        refundable: Decimal,
    },
    #[error("authorization `{auth_id}` is already {status:?}")]
    HoldNotPending { auth_id: String, status: HoldStatus },

    #[error("card is terminated")]
    CardTerminated,
    #[error("card still has {0} pending hold(s); reverse or capture them first")]
    PendingHolds(usize),
    #[error(
        "card balance is {0}; fund it to zero before terminating, or its debt would be written off"
    )]
    NegativeBalance(Decimal),
    #[error("cannot {action:?} a card that is {from}")]
    InvalidTransition {
        from: CardStatus,
        action: CardAction,
    },

    #[error("the transaction history could not be read")]
    HistoryUnavailable,

    #[error("unknown webhook endpoint `{0}`")]
    UnknownWebhookEndpoint(String),

    #[error("no delivery of event `{0}` to this endpoint")]
    UnknownDelivery(String),
}

impl From<MoneyError> for Rejection {
    fn from(e: MoneyError) -> Rejection {
        match e {
            MoneyError::UnknownCurrency(c) => Rejection::UnknownCurrency(c),
            MoneyError::NotADecimal(s) => Rejection::NotADecimal(s),
            MoneyError::TooPrecise {
                amount,
                currency,
                exponent,
            } => Rejection::TooPrecise {
                amount,
                currency,
                exponent,
            },
            MoneyError::Overflow => Rejection::AmountOverflow,
            MoneyError::NoRate { from, to } => Rejection::NoFxRate { from, to },
        }
    }
}

impl From<LedgerError> for Rejection {
    fn from(e: LedgerError) -> Rejection {
        match e {
            LedgerError::NonPositiveAmount => Rejection::NonPositiveAmount,
            LedgerError::Money(m) => m.into(),
            LedgerError::CardTerminated => Rejection::CardTerminated,
            LedgerError::UnknownAuthorization(a) => Rejection::UnknownAuthorization(a),
            LedgerError::HoldNotPending { auth_id, status } => {
                Rejection::HoldNotPending { auth_id, status }
            }
            LedgerError::CaptureExceedsHold { requested, allowed } => {
                Rejection::CaptureExceedsHold { requested, allowed }
            }
            LedgerError::ReversalExceedsHold { requested, pending } => {
                Rejection::ReversalExceedsHold { requested, pending }
            }
            LedgerError::RefundExceedsCaptured {
                requested,
                refundable,
            } => Rejection::RefundExceedsCaptured {
                requested,
                refundable,
            },
            LedgerError::InsufficientFunds {
                requested,
                available,
            } => Rejection::InsufficientFunds {
                requested,
                available,
            },
            LedgerError::InsufficientProgramFunds {
                requested,
                available,
            } => Rejection::InsufficientProgramFunds {
                requested,
                available,
            },
            LedgerError::CurrencyMismatch { expected, got } => {
                Rejection::CurrencyMismatch { expected, got }
            }
            LedgerError::PendingHolds(n) => Rejection::PendingHolds(n),
        }
    }
}

impl From<TransitionError> for Rejection {
    fn from(e: TransitionError) -> Rejection {
        Rejection::InvalidTransition {
            from: e.from,
            action: e.action,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_errors_keep_their_reason_and_facts() {
        let r: Rejection = LedgerError::CaptureExceedsHold {
            requested: Decimal::new(1100, 0),
            allowed: Decimal::new(110, 0),
        }
        .into();
        assert_eq!(
            r,
            Rejection::CaptureExceedsHold {
                requested: Decimal::new(1100, 0),
                allowed: Decimal::new(110, 0)
            }
        );
        let r: Rejection = LedgerError::Money(MoneyError::Overflow).into();
        assert_eq!(r, Rejection::AmountOverflow);
    }
}
