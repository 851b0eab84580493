//! Stripe Issuing real-time authorizations: the `issuing_authorization.request` event in,
//! `{"approved": …}` with a `Stripe-Version` header out (processor-hooks.md §2;
//! stripe/stripe-python `issuing/_authorization.py`). Amounts are integer minor units of
//! the card currency in `pending_request`; currencies are lowercase; countries alpha-2.
//! `issuing_transaction.created` on the same endpoint captures or refunds (docs.stripe.com
//! "Issuing transactions": captures negative, refunds positive, `authorization` may be
//! null).

use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    currency, from_minor, to_minor, Answer, AuthRequest, HookError, MerchantFields, Message,
    Outcome, Parsed,
};
use crate::domain::Channel;

/// Answered when neither the event nor the hook's configuration names a version.
pub const STRIPE_VERSION_DEFAULT: &str = "2024-06-20";

/// The event envelope; `T` is what `data.object` is read as (skipped first, to learn
/// the type without building a tree of the whole body).
#[derive(Deserialize)]
struct Event<T> {
    #[serde(rename = "type")]
    kind: String,
    api_version: Option<String>,
    data: Option<Data<T>>,
}

#[derive(Deserialize)]
struct Data<T> {
    object: T,
}

#[derive(Deserialize)]
struct IssuingAuthorization {
    id: String,
    card: CardRef,
    pending_request: Option<PendingRequest>,
    merchant_data: Option<MerchantData>,
    authorization_method: Option<String>,
    card_presence: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CardRef {
    Object { id: String },
    Id(String),
}

#[derive(Deserialize)]
struct PendingRequest {
    amount: i64,
    currency: String,
    #[serde(default)]
    is_amount_controllable: bool,
}

#[derive(Deserialize)]
struct MerchantData {
    category_code: Option<String>,
    country: Option<String>,
    name: Option<String>,
    network_id: Option<String>,
}

const REQUEST: &str = "issuing_authorization.request";
/// A capture or refund on an authorization (when the endpoint also receives it).
const TRANSACTION: &str = "issuing_transaction.created";

/// `issuing.transaction`: amounts signed as they move the issuer's balance (a capture
/// negative, a refund positive), in the card currency's minor units.
#[derive(Deserialize)]
struct IssuingTransaction {
    id: String,
    amount: i64,
    currency: String,
    authorization: Option<String>,
    card: CardRef,
    #[serde(rename = "type")]
    kind: String,
}

fn transaction(body: &[u8], echo: Value) -> Result<Parsed, HookError> {
    let e: Event<IssuingTransaction> = serde_json::from_slice(body).map_err(|err| {
        HookError(format!(
            "`data.object` is not an issuing transaction: {err}"
        ))
    })?;
    let t = e
        .data
        .ok_or_else(|| HookError("`data.object` is required".into()))?
        .object;
    let cur = currency(&t.currency)?;
    let amount = from_minor(t.amount.checked_abs().unwrap_or(i64::MAX), cur);
    let card_token = match t.card {
        CardRef::Object { id } | CardRef::Id(id) => id,
    };
    let message = match (t.kind.as_str(), t.authorization) {
        // Stripe may capture in parts (multi-capture): what is left expires with the hold.
        ("capture" | "cash_withdrawal", Some(authorization_id)) => Message::Capture {
            id: t.id,
            authorization_id,
            amount,
            is_final: false,
        },
        // A force capture, without an authorization: posted as a stand-in advice.
        ("capture" | "cash_withdrawal", None) => Message::Advice {
            id: t.id,
            card_token,
            amount,
            currency: cur,
        },
        ("refund", authorization_id) => Message::Refund {
            id: t.id,
            card_token,
            authorization_id,
            amount,
            currency: cur,
        },
        (other, _) => Message::Informational {
            kind: format!("issuing_transaction {other}"),
        },
    };
    Ok(Parsed { message, echo })
}

pub fn parse(body: &[u8]) -> Result<Parsed, HookError> {
    let e: Event<serde::de::IgnoredAny> = serde_json::from_slice(body)?;
    let echo = e.api_version.clone().map_or(Value::Null, Value::String);
    if e.kind == TRANSACTION {
        return transaction(body, echo);
    }
    if e.kind != REQUEST {
        return Ok(Parsed {
            message: Message::Informational { kind: e.kind },
            echo,
        });
    }
    let e: Event<IssuingAuthorization> = serde_json::from_slice(body).map_err(|err| {
        HookError(format!(
            "`data.object` is not an issuing authorization: {err}"
        ))
    })?;
    let a = e
        .data
        .ok_or_else(|| HookError("`data.object` is required".into()))?
        .object;
    let p = a
        .pending_request
        .ok_or_else(|| HookError("`pending_request` is null: nothing to decide".into()))?;
    if p.amount < 0 {
        return Err(HookError(
            "`pending_request.amount` must not be negative".into(),
        ));
    }
    let cur = currency(&p.currency)?;
    let amount = from_minor(p.amount, cur);
    let m = a.merchant_data.as_ref();
    let merchant = MerchantFields {
        id: m.and_then(|m| m.network_id.as_deref()),
        name: m.and_then(|m| m.name.as_deref()),
        mcc: m.and_then(|m| m.category_code.as_deref()),
        country: m.and_then(|m| m.country.as_deref()),
    }
    .to_merchant()?;
    let channel = channel(
        a.authorization_method.as_deref(),
        a.card_presence.as_deref(),
        merchant.mcc.value(),
    );
    let card_token = match a.card {
        CardRef::Object { id } | CardRef::Id(id) => id,
    };
    Ok(Parsed {
        message: Message::Authorize(AuthRequest::new(
            card_token,
            a.id,
            amount,
            cur,
            merchant,
            channel,
            p.is_amount_controllable,
        )),
        echo,
    })
}

/// `authorization_method` (`chip`, `contactless`, `keyed_in`, `online`, `swipe`) and
/// `card_presence`; cash at an ATM by its MCC.
fn channel(method: Option<&str>, presence: Option<&str>, mcc: u16) -> Channel {
    match method {
        _ if mcc == 6011 => Channel::Atm,
        Some("contactless") => Channel::Contactless,
        Some("chip") | Some("swipe") => Channel::Pos,
        Some("keyed_in") if presence == Some("present") => Channel::Pos,
        Some("keyed_in") => Channel::Moto,
        _ => Channel::Ecommerce,
    }
}

pub fn answer(parsed: &Parsed, outcome: &Outcome) -> Answer {
    let version = parsed.echo.as_str().map(str::to_string);
    let mut a = match outcome {
        Outcome::Decision {
            approved,
            code,
            rule,
            amount_approved,
            currency,
            ..
        } => {
            // Stripe takes no reason; metadata keeps ours on the authorization.
            let mut metadata = json!({"spendgate_code": code});
            if let Some(r) = rule {
                metadata["spendgate_rule"] = json!(r);
            }
            let mut body = json!({"approved": approved, "metadata": metadata});
            let controllable =
                matches!(&parsed.message, Message::Authorize(r) if r.authorization.partial_ok);
            if *approved && code == "10" && controllable {
                body["amount"] = json!(to_minor(*amount_approved, *currency));
            }
            Answer::ok(body)
        }
        Outcome::Balance { .. } | Outcome::Done => Answer::ok(json!({"received": true})),
    };
    if let Some(v) = version {
        a.headers.push(("Stripe-Version", v));
    }
    a
}
