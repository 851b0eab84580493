//! Inputs of a decision: the authorization request and the card as the core sees it.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::{CardStatus, Channel, Expiry, KycStatus, LatLon, Merchant, TxnType};
use crate::money::Currency;
use crate::velocity::{ActivityLog, VelocityState};

/// An authorization request from the processor's hook.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// The processor's authorization id; also the idempotency key.
    pub id: String,
    pub card_id: String,
    /// Major units as a decimal string ("25.00"), parsed exactly.
    #[serde(with = "crate::money::amount_str")]
    #[schema(value_type = String, example = "25.00")]
    pub amount: Decimal,
    #[schema(value_type = String, example = "NGN")]
    pub currency: Currency,
    pub merchant: Merchant,
    pub channel: Channel,
    #[serde(rename = "type")]
    pub txn_type: TxnType,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub timestamp: Option<DateTime<Utc>>,
    #[serde(default)]
    pub partial_ok: bool,
}

/// A located, approved transaction: the anchor for impossible-travel checks.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LastSeen {
    pub at_ms: i64,
    pub location: LatLon,
}

/// Everything the pure core may know about a card, borrowed from the service's state
/// while the card's lock is held.
#[derive(Debug, Clone, Copy)]
pub struct CardView<'a> {
    pub card_id: &'a str,
    pub status: CardStatus,
    pub expiry: Option<Expiry>,
    pub kyc: KycStatus,
    pub cardholder_blocked: bool,
    pub currency: Currency,
    /// Spendable balance in card currency; `None` when funds are not tracked.
    pub available: Option<Decimal>,
    pub card_velocity: &'a VelocityState,
    pub cardholder_velocity: Option<&'a VelocityState>,
    pub program_velocity: Option<&'a VelocityState>,
    pub last_seen: Option<LastSeen>,
    pub activity: &'a ActivityLog,
    /// The newest approval in each country.
    pub countries_seen: &'a [(crate::domain::Country, i64)],
    /// The card's own spending controls, compiled to card-scope rules.
    pub controls: Option<&'a crate::policy::CompiledPolicy>,
}
