//! Issuing: programs, cardholders, cards, their lifecycle, and card-level spending
//! controls compiled into card-scope rules of the policy engine.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::{CardStatus, Channel, Country, Expiry, KycStatus, Mcc};
use crate::money::{check_precision, Currency, FxTable};
use crate::policy::{compile_policy, CompiledPolicy};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Program {
    pub id: String,
    /// The policy (by name) that governs the program's cards.
    pub policy: String,
    /// Default card currency.
    #[schema(value_type = String)]
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cardholder {
    pub id: String,
    pub program: String,
    pub name: String,
    pub kyc: KycStatus,
    pub blocked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CardKind {
    Virtual,
    Physical,
}

/// A card as issued: the durable, non-balance part of a card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardRecord {
    pub id: String,
    pub program: String,
    pub cardholder_id: String,
    pub kind: CardKind,
    pub currency: Currency,
    pub last4: String,
    pub expiry: Expiry,
    pub status: CardStatus,
    #[serde(default)]
    pub controls: Option<SpendingControls>,
    /// The processor's token for this card (Lithic `card.token`, Stripe `ic_…`, Marqeta
    /// `card_token`, Adyen payment instrument id): unique within the program.
    #[serde(default)]
    pub processor_card_token: Option<String>,
}

/// Lifecycle actions on a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardAction {
    Activate,
    Freeze,
    Unfreeze,
    ReportLost,
    ReportStolen,
    Terminate,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action:?} a card that is {from}")]
pub struct TransitionError {
    pub from: CardStatus,
    pub action: CardAction,
}

/// The only valid status changes.
pub fn transition(from: CardStatus, action: CardAction) -> Result<CardStatus, TransitionError> {
    use CardAction as A;
    use CardStatus as S;
    let to = match (from, action) {
        (S::Inactive, A::Activate) => S::Active,
        (S::Active, A::Freeze) => S::Frozen,
        (S::Frozen, A::Unfreeze) => S::Active,
        (S::Active | S::Frozen | S::Inactive, A::ReportLost) => S::Lost,
        (S::Active | S::Frozen | S::Inactive, A::ReportStolen) => S::Stolen,
        (S::Inactive | S::Active | S::Frozen | S::Lost | S::Stolen, A::Terminate) => S::Terminated,
        _ => return Err(TransitionError { from, action }),
    };
    Ok(to)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitInterval {
    PerAuthorization,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    AllTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendingLimit {
    /// In the card currency, as a decimal string.
    #[serde(with = "crate::money::amount_str")]
    #[schema(value_type = String, example = "200.00")]
    pub amount: Decimal,
    pub interval: LimitInterval,
}

/// Card-level controls, like Stripe's `spending_controls`. Each becomes a card-scope
/// rule, evaluated after the program's policy; the most restrictive wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendingControls {
    #[serde(default)]
    pub spending_limits: Vec<SpendingLimit>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_categories: Option<Vec<Mcc>>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub blocked_categories: Vec<Mcc>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_countries: Option<Vec<Country>>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub blocked_countries: Vec<Country>,
    #[serde(default)]
    pub allowed_channels: Option<Vec<Channel>>,
}

fn join<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(|x| format!("\"{x}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SpendingControls {
    pub fn is_empty(&self) -> bool {
        *self == SpendingControls::default()
    }

    /// Renders the controls as a policy and compiles it through the same validator as
    /// analysts' files, so card controls and policies share one semantics.
    pub fn compile(
        &self,
        currency: Currency,
        timezone: chrono_tz::Tz,
        fx: Arc<FxTable>,
    ) -> Result<CompiledPolicy, String> {
        if self.spending_limits.len() > 16 {
            return Err("at most 16 spending limits".into());
        }
        let mut y = String::new();
        let _ = writeln!(
            y,
            "policy: card-controls\ncurrency: {currency}\ntimezone: {timezone}\nrules:"
        );
        for (i, l) in self.spending_limits.iter().enumerate() {
            if l.amount <= Decimal::ZERO {
                return Err(format!("spending_limits[{i}].amount must be positive"));
            }
            check_precision(l.amount, currency)
                .map_err(|e| format!("spending_limits[{i}].amount: {e}"))?;
            let window = match l.interval {
                LimitInterval::PerAuthorization => {
                    let _ = writeln!(y, "  - id: card_limit_{i}_per_authorization\n    limit: {{ amount_max: \"{}\" }}", l.amount);
                    continue;
                }
                LimitInterval::Daily => "calendar_day",
                LimitInterval::Weekly => "calendar_week",
                LimitInterval::Monthly => "calendar_month",
                LimitInterval::Yearly => "calendar_year",
                LimitInterval::AllTime => "lifetime",
            };
            let _ = writeln!(
                y,
                "  - id: card_limit_{i}_{window}\n    velocity: {{ window: {window}, amount_max: \"{}\" }}",
                l.amount
            );
        }
        if let Some(a) = &self.allowed_categories {
            if a.is_empty() {
                return Err("allowed_categories is empty: use freeze to stop all spending".into());
            }
            let _ = writeln!(
                y,
                "  - id: card_allowed_categories\n    unless: {{ mcc: [{}] }}\n    decline: \"57\"",
                join(a)
            );
        }
        if !self.blocked_categories.is_empty() {
            let _ = writeln!(
                y,
                "  - id: card_blocked_categories\n    when: {{ mcc: [{}] }}\n    decline: \"57\"",
                join(&self.blocked_categories)
            );
        }
        if let Some(a) = &self.allowed_countries {
            if a.is_empty() {
                return Err("allowed_countries is empty: use freeze to stop all spending".into());
            }
            let _ = writeln!(
                y,
                "  - id: card_allowed_countries\n    countries: {{ allow: [{}] }}",
                join(a)
            );
        }
        if !self.blocked_countries.is_empty() {
            let _ = writeln!(
                y,
                "  - id: card_blocked_countries\n    countries: {{ deny: [{}] }}",
                join(&self.blocked_countries)
            );
        }
        if let Some(a) = &self.allowed_channels {
            if a.is_empty() {
                return Err("allowed_channels is empty: use freeze to stop all spending".into());
            }
            let _ = writeln!(y, "  - id: card_allowed_channels\n    unless: {{ channel: [{}] }}\n    decline: \"57\"", join(a));
        }
        compile_policy(Path::new("card-controls"), &y, fx, &|_| {
            Err(std::io::Error::other("controls have no scripts"))
        })
        .map_err(|e| {
            e.iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        assert_eq!(
            transition(CardStatus::Inactive, CardAction::Activate),
            Ok(CardStatus::Active)
        );
        assert_eq!(
            transition(CardStatus::Active, CardAction::Freeze),
            Ok(CardStatus::Frozen)
        );
        assert_eq!(
            transition(CardStatus::Frozen, CardAction::Unfreeze),
            Ok(CardStatus::Active)
        );
        assert!(transition(CardStatus::Active, CardAction::Unfreeze).is_err());
        assert!(transition(CardStatus::Terminated, CardAction::Activate).is_err());
        assert!(transition(CardStatus::Lost, CardAction::Unfreeze).is_err());
        assert_eq!(
            transition(CardStatus::Stolen, CardAction::Terminate),
            Ok(CardStatus::Terminated)
        );
    }

    #[test]
    fn controls_compile_to_card_rules() {
        let c: SpendingControls = serde_json::from_str(
            r#"{"spending_limits":[{"amount":"50.00","interval":"per_authorization"},{"amount":"200.00","interval":"daily"}],
                "blocked_categories":["7995"],"allowed_countries":["NG","GH"],"allowed_channels":["pos","ecommerce"]}"#,
        )
        .unwrap();
        let p = c
            .compile(
                Currency::USD,
                chrono_tz::Africa::Lagos,
                Arc::new(FxTable::default()),
            )
            .unwrap();
        let ids: Vec<_> = p.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "card_limit_0_per_authorization",
                "card_limit_1_calendar_day",
                "card_blocked_categories",
                "card_allowed_countries",
                "card_allowed_channels"
            ]
        );
        let bad = SpendingControls {
            spending_limits: vec![SpendingLimit {
                amount: "1.001".parse().unwrap(),
                interval: LimitInterval::Daily,
            }],
            ..Default::default()
        };
        assert!(bad
            .compile(Currency::USD, chrono_tz::UTC, Arc::new(FxTable::default()))
            .is_err());
        assert!(
            serde_json::from_str::<SpendingControls>(r#"{"blocked_categories":["79"]}"#).is_err()
        );
        assert!(serde_json::from_str::<SpendingControls>(r#"{"nope":1}"#).is_err());
    }
}
