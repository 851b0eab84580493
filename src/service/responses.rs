//! What operations answer, serialized once and replayed byte for byte on retries.

use serde::{Deserialize, Serialize};

use crate::decision::TraceLine;
use crate::issuing::{CardKind, SpendingControls};
use crate::ledger::HoldStatus;
use crate::money::Currency;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuthorizationResponse {
    pub authorization_id: String,
    pub card_id: String,
    pub approved: bool,
    pub response_code: String,
    pub reason: String,
    pub rule: Option<String>,
    /// In the card currency.
    pub amount_approved: String,
    #[schema(value_type = String)]
    pub currency: Currency,
    /// Card-currency units per transaction-currency unit, when converted.
    pub fx_rate: Option<String>,
    pub available_after: Option<String>,
    pub flags: Vec<String>,
    pub score: i64,
    pub policy_version: String,
    /// Rules that did something (declined, flagged, scored, shadow, errored); rules that
    /// passed, did not apply or could not be evaluated are left out (`/v1/simulate` shows
    /// every rule).
    pub trace: Vec<TraceLine>,
    /// Time spent deciding, in microseconds (the commit wait is not included).
    pub latency_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Balance {
    #[schema(value_type = String)]
    pub currency: Currency,
    pub posted: String,
    pub pending: String,
    pub available: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CardResponse {
    pub id: String,
    pub program: String,
    pub cardholder_id: String,
    pub kind: CardKind,
    #[schema(value_type = String)]
    pub currency: Currency,
    pub last4: String,
    pub expiry: String,
    pub status: String,
    pub controls: Option<SpendingControls>,
    pub balance: Balance,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransferResponse {
    pub transfer_id: String,
    pub kind: String,
    pub account: String,
    pub amount: String,
    #[schema(value_type = String)]
    pub currency: Currency,
    /// The card's (or funding account's) available balance afterwards.
    pub available_after: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HoldResponse {
    pub authorization_id: String,
    pub card_id: String,
    /// Amount of this operation in the card currency.
    pub amount: String,
    #[schema(value_type = String)]
    pub currency: Currency,
    pub hold_status: HoldStatus,
    pub pending: String,
    pub captured: String,
    pub available_after: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReversalResponse {
    pub authorization_id: String,
    /// False when the authorization was unknown: the reversal is recorded and answered.
    pub matched: bool,
    pub released: Option<String>,
    pub hold_status: Option<HoldStatus>,
    pub available_after: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExpiryReport {
    pub expired: Vec<String>,
}
