//! Adyen Issuing relayed authorisation: `balancePlatform.authorisation.relayed` in,
//! `authorisationDecision` out (processor-hooks.md §4; Adyen/adyen-openapi
//! `BalancePlatformRelayedAuthorisationNotification-v4.json`). Amounts are signed
//! integer minor units (a debit is negative); countries alpha-3. Adyen has no partial
//! approval and no list of refusal reasons: ours is sent as free text.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    currency, from_minor, Answer, AuthRequest, HookError, MerchantFields, Message, Outcome, Parsed,
};
use crate::domain::Channel;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Relayed {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
    amount: Option<AmountIn>,
    merchant_data: Option<MerchantData>,
    payment_instrument: Option<PaymentInstrument>,
    processing_type: Option<String>,
    entry_mode: Option<String>,
    reference: Option<String>,
}

#[derive(Deserialize)]
struct AmountIn {
    currency: String,
    value: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MerchantData {
    mcc: Option<String>,
    merchant_id: Option<String>,
    name_location: Option<NameLocation>,
}

#[derive(Deserialize)]
struct NameLocation {
    country: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct PaymentInstrument {
    id: String,
}

const RELAYED: &str = "balancePlatform.authorisation.relayed";

pub fn parse(body: &[u8]) -> Result<Parsed, HookError> {
    let r: Relayed = serde_json::from_slice(body)?;
    let echo = r.reference.clone().map_or(Value::Null, Value::String);
    let kind = r.kind.as_deref().unwrap_or(RELAYED);
    if kind != RELAYED {
        return Ok(Parsed {
            message: Message::Informational {
                kind: kind.to_string(),
            },
            echo,
        });
    }
    let id = r.id.ok_or_else(|| HookError("`id` is required".into()))?;
    let card_token = r
        .payment_instrument
        .map(|p| p.id)
        .ok_or_else(|| HookError("`paymentInstrument.id` is required".into()))?;
    let a = r
        .amount
        .ok_or_else(|| HookError("`amount` is required".into()))?;
    let cur = currency(&a.currency)?;
    if a.value > 0 {
        // Money to the card (a refund's authorisation): nothing to decline.
        return Ok(Parsed {
            message: Message::Informational {
                kind: "credit".into(),
            },
            echo,
        });
    }
    let amount = from_minor(
        a.value
            .checked_neg()
            .ok_or_else(|| HookError("`amount.value` out of range".into()))?,
        cur,
    );
    let m = r.merchant_data.as_ref();
    let nl = m.and_then(|m| m.name_location.as_ref());
    let merchant = MerchantFields {
        id: m.and_then(|m| m.merchant_id.as_deref()),
        name: nl.and_then(|n| n.name.as_deref()),
        mcc: m.and_then(|m| m.mcc.as_deref()),
        country: nl.and_then(|n| n.country.as_deref()),
    }
    .to_merchant()?;
    let channel = channel(r.processing_type.as_deref(), r.entry_mode.as_deref());
    Ok(Parsed {
        // Adyen's schema has no partial approval.
        message: Message::Authorize(AuthRequest::new(
            card_token, id, amount, cur, merchant, channel, false,
        )),
        echo,
    })
}

/// `processingType` (`atmWithdraw`, `ecommerce`, `moto`, `pos`, `token`, …) and
/// `entryMode` (`contactless`, `chip`, `magstripe`, `manual`, …).
fn channel(processing: Option<&str>, entry: Option<&str>) -> Channel {
    match (processing, entry) {
        (Some("atmWithdraw") | Some("balanceInquiry"), _) => Channel::Atm,
        (_, Some("contactless")) => Channel::Contactless,
        (Some("moto"), _) => Channel::Moto,
        (Some("pos"), _) | (_, Some("chip") | Some("magstripe")) => Channel::Pos,
        _ => Channel::Ecommerce,
    }
}

pub fn answer(parsed: &Parsed, outcome: &Outcome) -> Answer {
    let mut body = match outcome {
        Outcome::Decision { approved: true, .. } => {
            json!({"authorisationDecision": {"status": "Authorised"}})
        }
        Outcome::Decision { code, rule, .. } => {
            let meaning =
                crate::domain::ResponseCode::parse(code).map_or("declined", |c| c.meaning());
            let why = match rule {
                Some(r) => format!("{code} {meaning} (rule {r})"),
                None => format!("{code} {meaning}"),
            };
            json!({"authorisationDecision": {"status": "Refused", "refusalReason": why}})
        }
        Outcome::Balance { .. } | Outcome::Done => {
            if matches!(parsed.message, Message::Informational { ref kind } if kind == "credit") {
                json!({"authorisationDecision": {"status": "Authorised"}})
            } else {
                return Answer::ok(json!({"notificationResponse": "[accepted]"}));
            }
        }
    };
    if let Value::String(r) = &parsed.echo {
        body["reference"] = json!(r);
    }
    Answer::ok(body)
}
