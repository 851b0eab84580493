//! Double-entry ledger: accounts, transfers of balanced postings, and two-phase holds.
//!
//! Sign convention: a posting's amount is added to its account's balance; every transfer
//! sums to zero per currency, so all balances of a currency sum to zero. A card account's
//! positive balance is money the cardholder holds; `external:*` goes negative as money
//! enters the system. Holds are pending debits on a card account: available = posted −
//! pending, and never below zero except through flagged forced posts.

mod card;
pub mod verify;

pub use card::{
    CaptureResult, CardAccount, ExpiredHold, ReversalResult, RESOLVED_HOLD_RETENTION_MS,
};

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::money::Currency;

/// Days after which an unresolved hold expires, unless configured otherwise.
pub const HOLD_EXPIRY_DAYS_DEFAULT: u32 = 7;
/// Over-capture allowed above the authorized amount, in basis points (10%).
pub const OVER_CAPTURE_BPS_DEFAULT: u32 = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountId(pub String);

impl AccountId {
    pub fn card(card_id: &str) -> AccountId {
        AccountId(format!("card:{card_id}"))
    }
    pub fn funding(program: &str, c: Currency) -> AccountId {
        AccountId(format!("funding:{program}:{c}"))
    }
    pub fn settlement(c: Currency) -> AccountId {
        AccountId(format!("settlement:{c}"))
    }
    pub fn fx(c: Currency) -> AccountId {
        AccountId(format!("fx:{c}"))
    }
    pub fn external(c: Currency) -> AccountId {
        AccountId(format!("external:{c}"))
    }
    pub fn is_card(&self) -> bool {
        self.0.starts_with("card:")
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub account: AccountId,
    pub currency: Currency,
    /// Added to the account's balance (negative = debit).
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// External money into a program's funding account.
    Deposit,
    /// Funding account → card (top-up).
    TopUp,
    /// Card → funding account (cash-out of the card balance).
    Withdrawal,
    /// Remaining balance of a terminated card back to the funding account.
    Termination,
    /// A hold posted (fully or partly) to network settlement.
    Capture,
    /// Settlement → card.
    Refund,
    /// Posted without a hold from a stand-in advice; may take a card negative.
    ForcedPost,
}

impl TransferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Deposit => "deposit",
            TransferKind::TopUp => "top_up",
            TransferKind::Withdrawal => "withdrawal",
            TransferKind::Termination => "termination",
            TransferKind::Capture => "capture",
            TransferKind::Refund => "refund",
            TransferKind::ForcedPost => "forced_post",
        }
    }
    pub fn parse(s: &str) -> Option<TransferKind> {
        [
            TransferKind::Deposit,
            TransferKind::TopUp,
            TransferKind::Withdrawal,
            TransferKind::Termination,
            TransferKind::Capture,
            TransferKind::Refund,
            TransferKind::ForcedPost,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A balanced set of postings, written once and never changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Unique id: the operation's idempotency key, prefixed by its kind.
    pub id: String,
    pub kind: TransferKind,
    /// The authorization (or other object) this transfer belongs to.
    pub reference: String,
    pub postings: SmallVec<[Posting; 4]>,
    /// FX rate applied (card currency per unit of transaction currency), if any.
    pub fx_rate: Option<Decimal>,
    /// True for forced posts, which may take a card below zero.
    pub forced: bool,
    pub at_ms: i64,
}

impl Transfer {
    /// Sums per currency; a valid transfer has every sum zero.
    pub fn imbalance(&self) -> Vec<(Currency, Decimal)> {
        let mut sums: Vec<(Currency, Decimal)> = Vec::new();
        for p in &self.postings {
            match sums.iter_mut().find(|(c, _)| *c == p.currency) {
                Some((_, s)) => *s += p.amount,
                None => sums.push((p.currency, p.amount)),
            }
        }
        sums.retain(|(_, s)| !s.is_zero());
        sums
    }

    pub fn posting(&self, account: &AccountId) -> Decimal {
        self.postings
            .iter()
            .filter(|p| &p.account == account)
            .map(|p| p.amount)
            .sum()
    }

    /// A two-leg transfer in one currency.
    #[allow(clippy::too_many_arguments)]
    pub fn simple(
        id: String,
        kind: TransferKind,
        reference: &str,
        from: AccountId,
        to: AccountId,
        amount: Decimal,
        currency: Currency,
        at_ms: i64,
    ) -> Transfer {
        let t = Transfer {
            id,
            kind,
            reference: reference.to_string(),
            postings: smallvec::smallvec![
                Posting {
                    account: from,
                    currency,
                    amount: -amount
                },
                Posting {
                    account: to,
                    currency,
                    amount
                },
            ],
            fx_rate: None,
            forced: false,
            at_ms,
        };
        assert!(t.imbalance().is_empty(), "transfers balance");
        t
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    Pending,
    Posted,
    Voided,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Pending => "pending",
            HoldStatus::Posted => "posted",
            HoldStatus::Voided => "voided",
            HoldStatus::Expired => "expired",
        }
    }
    pub fn parse(s: &str) -> Option<HoldStatus> {
        match s {
            "pending" => Some(HoldStatus::Pending),
            "posted" => Some(HoldStatus::Posted),
            "voided" => Some(HoldStatus::Voided),
            "expired" => Some(HoldStatus::Expired),
            _ => None,
        }
    }
}

/// A two-phase transfer: reserved at authorization, then posted, voided or expired,
/// each exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub auth_id: String,
    pub card_id: String,
    pub card_currency: Currency,
    /// Still reserved, in card currency.
    pub pending: Decimal,
    /// Authorized, in card currency.
    pub authorized: Decimal,
    /// Captured so far, in card currency.
    pub captured: Decimal,
    /// Captured so far, in transaction currency (so partial captures convert
    /// cumulatively and add up to exactly what was authorized).
    pub captured_txn: Decimal,
    /// Refunded against this hold's captures, in card currency.
    pub refunded: Decimal,
    /// Authorized, in transaction currency.
    pub txn_amount: Decimal,
    pub txn_currency: Currency,
    /// Card-currency units per transaction-currency unit (with spread).
    pub fx_rate: Decimal,
    pub status: HoldStatus,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub resolved_ms: Option<i64>,
}

/// Typed errors of ledger operations; an operation that fails changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("amount must be positive")]
    NonPositiveAmount,
    #[error("{0}")]
    Money(#[from] crate::money::MoneyError),
    #[error("card is terminated")]
    CardTerminated,
    #[error("no authorization `{0}` on this card")]
    UnknownAuthorization(String),
    #[error("authorization `{auth_id}` is already {status:?}")]
    HoldNotPending { auth_id: String, status: HoldStatus },
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
    #[error("currency {got} does not match {expected}")]
    CurrencyMismatch { expected: Currency, got: Currency },
    #[error("card still has {0} pending hold(s); reverse or capture them first")]
    PendingHolds(usize),
}

/// Checks an operation amount: positive and exact for its currency.
pub fn check_amount(amount: Decimal, currency: Currency) -> Result<(), LedgerError> {
    if amount <= Decimal::ZERO {
        return Err(LedgerError::NonPositiveAmount);
    }
    crate::money::check_precision(amount, currency)?;
    Ok(())
}
