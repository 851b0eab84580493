//! Request and response bodies of the HTTP API that are not the engine's own answers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::decision::KycStatus;
use crate::issuing::{CardKind, SpendingControls};
use crate::money::Currency;
use crate::service::{DecisionHistory, TransferHistory};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProgram {
    pub id: String,
    /// Name of a loaded policy.
    pub policy: String,
    #[schema(value_type = String, example = "NGN")]
    pub currency: Currency,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    pub program: String,
    /// Shown once; only its SHA-256 is stored.
    pub api_key: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deposit {
    #[schema(example = "1000000.00")]
    pub amount: String,
    #[schema(value_type = String, example = "NGN")]
    pub currency: Currency,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCardholder {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub kyc: Option<KycStatus>,
    #[serde(default)]
    pub blocked: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCardholder {
    pub kyc: Option<KycStatus>,
    pub blocked: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCard {
    pub cardholder_id: String,
    pub kind: CardKind,
    /// Defaults to the program's currency.
    #[schema(value_type = Option<String>)]
    pub currency: Option<Currency>,
    pub controls: Option<SpendingControls>,
    /// Issue active (default) or inactive.
    #[serde(default = "yes")]
    pub active: bool,
    /// `YYYY-MM`, valid through the end of that month; not past, at most 10 years ahead.
    /// Defaults to three years from the month of issue.
    #[schema(example = "2029-06")]
    pub expiry: Option<String>,
    /// The processor's token for this card (Lithic `card.token`, Stripe `ic_…`, Marqeta
    /// `card_token`, Adyen `paymentInstrument.id`); unique within the program.
    pub processor_card_token: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmountBody {
    /// In the card currency, a decimal string.
    #[schema(example = "5000.00")]
    pub amount: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureBody {
    /// In the authorization's currency.
    pub amount: String,
    /// A final capture releases whatever the hold still reserves (default true).
    #[serde(default = "yes", rename = "final")]
    pub is_final: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReversalBody {
    /// In the authorization's currency; omitted = everything still held.
    pub amount: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// The processor's refund id; also the idempotency key.
    pub id: String,
    pub card_id: String,
    pub authorization_id: Option<String>,
    pub amount: String,
    #[schema(value_type = String)]
    pub currency: Currency,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdviceBody {
    /// The processor's advice id; also the idempotency key.
    pub id: String,
    pub card_id: String,
    pub amount: String,
    #[schema(value_type = String)]
    pub currency: Currency,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyInfo {
    pub name: String,
    pub version: String,
    pub file: String,
    #[schema(value_type = String)]
    pub currency: Currency,
    pub timezone: String,
    pub rules: usize,
    pub tests: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Transactions {
    pub card_id: String,
    pub authorizations: Vec<DecisionHistory>,
    pub transfers: Vec<TransferHistory>,
}

/// The ids a request body carries, checked at the edge (bounded, printable, never a card
/// number) before anything is looked up, logged or stored.
pub trait CallerIds {
    fn ids(&self) -> Vec<(&'static str, &str)> {
        Vec::new()
    }
    /// An authorization answers a malformed id with a decision (30), not a problem.
    const FORMAT_ERRORS_ARE_DECISIONS: bool = false;
}

impl CallerIds for crate::decision::Authorization {
    fn ids(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("id", self.id.as_str()),
            ("card_id", self.card_id.as_str()),
            ("merchant.id", self.merchant.id.as_str()),
        ]
    }
    const FORMAT_ERRORS_ARE_DECISIONS: bool = true;
}

/// `POST /v1/policies/{id}/rollback`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackPolicy {
    /// A stored version of the policy (`GET /v1/policies/{id}/versions`).
    pub version: String,
}

impl CallerIds for RollbackPolicy {
    fn ids(&self) -> Vec<(&'static str, &str)> {
        vec![("version", self.version.as_str())]
    }
}

impl CallerIds for CreateProgram {
    fn ids(&self) -> Vec<(&'static str, &str)> {
        vec![("id", self.id.as_str())]
    }
}

impl CallerIds for CreateCardholder {
    fn ids(&self) -> Vec<(&'static str, &str)> {
        vec![("id", self.id.as_str())]
    }
}

impl CallerIds for CreateCard {
    fn ids(&self) -> Vec<(&'static str, &str)> {
        let mut ids = vec![("cardholder_id", self.cardholder_id.as_str())];
        if let Some(t) = &self.processor_card_token {
            ids.push(("processor_card_token", t.as_str()));
        }
        ids
    }
}

/// A card's processor token; `null` clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessorCardToken {
    pub processor_card_token: Option<String>,
}

impl CallerIds for ProcessorCardToken {
    fn ids(&self) -> Vec<(&'static str, &str)> {
        self.processor_card_token
            .as_deref()
            .map(|t| vec![("processor_card_token", t)])
            .unwrap_or_default()
    }
}

impl CallerIds for RefundBody {
    fn ids(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![("id", self.id.as_str()), ("card_id", self.card_id.as_str())];
        if let Some(a) = &self.authorization_id {
            v.push(("authorization_id", a.as_str()));
        }
        v
    }
}

impl CallerIds for AdviceBody {
    fn ids(&self) -> Vec<(&'static str, &str)> {
        vec![("id", self.id.as_str()), ("card_id", self.card_id.as_str())]
    }
}

impl CallerIds for Deposit {}
impl CallerIds for UpdateCardholder {}
impl CallerIds for AmountBody {}
impl CallerIds for CaptureBody {}
impl CallerIds for ReversalBody {}
impl CallerIds for SpendingControls {}
