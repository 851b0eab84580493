//! Lithic Auth Stream Access (ASA): `card_authorization.approval_request` in, `result`
//! out (processor-hooks.md §1; lithic-com/lithic-openapi `authorization`,
//! `asa-response`). Amounts are integer cents of the cardholder currency.

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    currency, from_minor, to_minor, Answer, AuthRequest, HookError, MerchantFields, Message,
    Outcome, Parsed,
};
use crate::domain::Channel;

#[derive(Deserialize)]
struct Asa {
    event_type: Option<String>,
    token: Option<String>,
    status: Option<String>,
    amount: Option<i64>,
    authorization_amount: Option<i64>,
    cardholder_currency: Option<String>,
    amounts: Option<Amounts>,
    merchant: Option<LithicMerchant>,
    card: Option<Card>,
    pos: Option<Pos>,
}

#[derive(Deserialize)]
struct Amounts {
    cardholder: Option<AmountIn>,
}

#[derive(Deserialize)]
struct AmountIn {
    amount: i64,
    currency: String,
}

#[derive(Deserialize)]
struct LithicMerchant {
    acceptor_id: Option<String>,
    descriptor: Option<String>,
    mcc: Option<String>,
    country: Option<String>,
}

#[derive(Deserialize)]
struct Card {
    token: String,
}

#[derive(Deserialize, Default)]
struct Pos {
    entry_mode: Option<EntryMode>,
    terminal: Option<Terminal>,
}

#[derive(Deserialize, Default)]
struct EntryMode {
    card: Option<String>,
    cardholder: Option<String>,
    pan: Option<String>,
}

#[derive(Deserialize, Default)]
struct Terminal {
    #[serde(rename = "type")]
    kind: Option<String>,
    partial_approval_capable: Option<bool>,
}

const APPROVAL_REQUEST: &str = "card_authorization.approval_request";

pub fn parse(body: &[u8]) -> Result<Parsed, HookError> {
    let a: Asa = serde_json::from_slice(body)?;
    let echo = a.token.clone().map_or(Value::Null, Value::String);
    let event = a.event_type.as_deref().unwrap_or(APPROVAL_REQUEST);
    if event != APPROVAL_REQUEST {
        return Ok(Parsed {
            message: Message::Informational {
                kind: event.to_string(),
            },
            echo: Value::Null,
        });
    }
    let token = a
        .token
        .clone()
        .ok_or_else(|| HookError("`token` is required".into()))?;
    let card_token = a
        .card
        .as_ref()
        .map(|c| c.token.clone())
        .ok_or_else(|| HookError("`card.token` is required".into()))?;
    let status = a.status.as_deref().unwrap_or("AUTHORIZATION");
    let message = match status {
        "BALANCE_INQUIRY" => Message::BalanceInquiry { card_token },
        // Money to the card: Lithic asks only with credit decisioning; never declined.
        "CREDIT_AUTHORIZATION" | "FINANCIAL_CREDIT_AUTHORIZATION" => Message::Informational {
            kind: status.to_string(),
        },
        "AUTHORIZATION" | "FINANCIAL_AUTHORIZATION" => {
            let (minor, code) = match &a.amounts.as_ref().and_then(|x| x.cardholder.as_ref()) {
                Some(c) => (c.amount, c.currency.as_str()),
                None => (
                    a.authorization_amount
                        .or(a.amount)
                        .ok_or_else(|| HookError("`amount` is required".into()))?,
                    a.cardholder_currency.as_deref().unwrap_or("USD"),
                ),
            };
            let cur = currency(code)?;
            if minor < 0 {
                return Err(HookError("`amount` must not be negative".into()));
            }
            let amount = from_minor(minor, cur);
            let m = a.merchant.as_ref();
            let merchant = MerchantFields {
                id: m.and_then(|m| m.acceptor_id.as_deref()),
                name: m.and_then(|m| m.descriptor.as_deref()),
                mcc: m.and_then(|m| m.mcc.as_deref()),
                country: m.and_then(|m| m.country.as_deref()),
            }
            .to_merchant()?;
            let pos = a.pos.unwrap_or_default();
            let channel = channel(&pos);
            let partial_ok = pos
                .terminal
                .as_ref()
                .and_then(|t| t.partial_approval_capable)
                .unwrap_or(false);
            Message::Authorize(
                AuthRequest::new(
                    card_token, token, amount, cur, merchant, channel, partial_ok,
                )
                .captured_on_approval(status == "FINANCIAL_AUTHORIZATION"),
            )
        }
        other => return Err(HookError(format!("unknown ASA status `{other}`"))),
    };
    Ok(Parsed { message, echo })
}

/// How the card was presented, from `pos.terminal.type` and `pos.entry_mode`. Without
/// point-of-sale data the card is taken as not present (the stricter assumption).
fn channel(pos: &Pos) -> Channel {
    let e = pos.entry_mode.as_ref();
    let pan = e.and_then(|e| e.pan.as_deref()).unwrap_or("");
    let holder = e.and_then(|e| e.cardholder.as_deref()).unwrap_or("");
    let card = e.and_then(|e| e.card.as_deref()).unwrap_or("NOT_PRESENT");
    if pos.terminal.as_ref().and_then(|t| t.kind.as_deref()) == Some("ATM") {
        Channel::Atm
    } else if pan == "CONTACTLESS" {
        Channel::Contactless
    } else if matches!(holder, "MAIL_ORDER" | "TELEPHONE_ORDER") {
        Channel::Moto
    } else if card == "PRESENT" && !matches!(pan, "ECOMMERCE" | "CREDENTIAL_ON_FILE") {
        Channel::Pos
    } else {
        Channel::Ecommerce
    }
}

/// Our DE39 decline codes in ASA's eight decline results (an off-list value would also
/// decline, but as `CUSTOM_ASA_RESULT`, which tells the issuer nothing).
pub fn decline_result(code: &str) -> &'static str {
    match code {
        "51" => "INSUFFICIENT_FUNDS",
        "61" | "65" => "VELOCITY_EXCEEDED",
        "59" | "05" => "SUSPECTED_FRAUD",
        "14" | "41" | "43" | "46" | "54" | "62" | "78" => "CARD_PAUSED",
        // 12, 13, 30, 57, 91, 93, 96: the transaction cannot go through here.
        _ => "UNAUTHORIZED_MERCHANT",
    }
}

pub fn answer(parsed: &Parsed, outcome: &Outcome) -> Answer {
    let token = &parsed.echo;
    match outcome {
        Outcome::Decision {
            approved,
            code,
            amount_approved,
            currency,
            ..
        } => {
            if !approved {
                return Answer::ok(json!({"result": decline_result(code), "token": token}));
            }
            let mut body = json!({"result": "APPROVED", "token": token});
            if code == "10" {
                body["approved_amount"] = json!(to_minor(*amount_approved, *currency));
            }
            Answer::ok(body)
        }
        Outcome::Balance {
            currency,
            available,
            posted,
        } => Answer::ok(json!({
            "result": "APPROVED",
            "token": token,
            "balance": {"amount": to_minor(*posted, *currency), "available": to_minor((*available).max(Decimal::ZERO), *currency)}
        })),
        Outcome::Done if token.is_null() => Answer::ok(json!({})),
        Outcome::Done => Answer::ok(json!({"result": "APPROVED", "token": token})),
    }
}
