//! Marqeta Gateway JIT Funding: a transaction whose `gpa_order.jit_funding` asks us to
//! fund it; answered 200 with the `jit_funding` echoed (approve, or a lower `amount` for
//! a partial approval) or 402 with a `decline_reason` (processor-hooks.md §3;
//! Marqeta's swagger `jit_funding_api`, `jit_program_response`). Amounts are decimal
//! major units (`1.91`). The same hook carries the follow-ups, by `jit_funding.method`:
//! clearings, reversals, refunds, stand-ins and balance inquiries.

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    currency, from_major_number, Answer, AuthRequest, HookError, MerchantFields, Message, Outcome,
    Parsed,
};
use crate::domain::Channel;

#[derive(Deserialize)]
struct Transaction {
    card_token: Option<String>,
    currency_code: Option<String>,
    gpa_order: Option<GpaOrder>,
    card_acceptor: Option<CardAcceptor>,
    pos: Option<Pos>,
    transaction_metadata: Option<TransactionMetadata>,
}

#[derive(Deserialize)]
struct GpaOrder {
    currency_code: Option<String>,
    jit_funding: Value,
}

#[derive(Deserialize)]
struct JitFunding {
    token: String,
    method: String,
    amount: serde_json::Number,
    original_jit_funding_token: Option<String>,
}

#[derive(Deserialize)]
struct CardAcceptor {
    mid: Option<String>,
    mcc: Option<String>,
    name: Option<String>,
    country_code: Option<String>,
    /// Some sandbox messages send `country` instead of `country_code`.
    country: Option<String>,
}

#[derive(Deserialize, Default)]
struct Pos {
    pan_entry_mode: Option<String>,
    card_presence: Option<bool>,
    partial_approval_capable: Option<bool>,
    country_code: Option<String>,
}

#[derive(Deserialize)]
struct TransactionMetadata {
    payment_channel: Option<String>,
}

/// What a JIT method asks of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Decide { capture: bool },
    Capture,
    Reversal,
    Refund,
    Advice,
    Balance,
    Informational,
}

/// The `pgfs.` methods (Marqeta's swagger lists 50): decisions, then the follow-ups
/// mapped to our captures, reversals, refunds and stand-in advices; the rest (disputes,
/// direct deposits, adjustments, chargebacks, network loads) are informational.
fn kind(method: &str) -> Kind {
    let m = method.strip_prefix("pgfs.").unwrap_or(method);
    match m {
        "authorization"
        | "authorization.incremental"
        | "authorization.cashback"
        | "authorization.quasi.cash"
        | "authorization.account_verification"
        | "pindebit"
        | "pindebit.authorization"
        | "pindebit.cashback"
        | "pindebit.quasi.cash"
        | "billpayment"
        | "atm.withdrawal"
        | "pindebit.atm.withdrawal" => Kind::Decide { capture: false },
        "auth_plus_capture" => Kind::Decide { capture: true },
        "authorization.clearing"
        | "authorization.capture"
        | "pindebit.authorization.clearing"
        | "atm.clearing.withdrawal"
        | "authorization.clearing.quasi.cash"
        | "billpayment.capture" => Kind::Capture,
        "authorization.reversal" | "pindebit.authorization.reversal" | "billpayment.reversal" => {
            Kind::Reversal
        }
        "refund" | "pindebit.refund" | "refund.authorization.clearing" => Kind::Refund,
        "authorization.standin"
        | "auth_plus_capture.standin"
        | "authorization.advice"
        | "force_capture" => Kind::Advice,
        "balanceinquiry" | "pindebit.balanceinquiry" => Kind::Balance,
        _ => Kind::Informational,
    }
}

pub fn parse(body: &[u8]) -> Result<Parsed, HookError> {
    let t: Transaction = serde_json::from_slice(body)?;
    let order = t
        .gpa_order
        .ok_or_else(|| HookError("`gpa_order.jit_funding` is required".into()))?;
    let echo = order.jit_funding.clone();
    let jit: JitFunding = serde_json::from_value(order.jit_funding).map_err(|e| {
        HookError(format!(
            "`gpa_order.jit_funding` needs token, method and amount: {e}"
        ))
    })?;
    let code = order
        .currency_code
        .or(t.currency_code)
        .ok_or_else(|| HookError("`gpa_order.currency_code` is required".into()))?;
    let cur = currency(&code)?;
    let amount = from_major_number(&jit.amount, cur)?;
    if amount < Decimal::ZERO {
        return Err(HookError(
            "`jit_funding.amount` must not be negative".into(),
        ));
    }
    let card_token = || {
        t.card_token
            .clone()
            .ok_or_else(|| HookError("`card_token` is required".into()))
    };
    let original = || {
        jit.original_jit_funding_token.clone().ok_or_else(|| {
            HookError(format!(
                "`{}` needs `original_jit_funding_token`",
                jit.method
            ))
        })
    };
    let message = match kind(&jit.method) {
        Kind::Decide { capture } => {
            let a = t.card_acceptor.as_ref();
            let pos = t.pos.unwrap_or_default();
            let merchant = MerchantFields {
                id: a.and_then(|a| a.mid.as_deref()),
                name: a.and_then(|a| a.name.as_deref()),
                mcc: a.and_then(|a| a.mcc.as_deref()),
                country: a
                    .and_then(|a| a.country_code.as_deref().or(a.country.as_deref()))
                    .or(pos.country_code.as_deref()),
            }
            .to_merchant()?;
            let channel = if jit.method.contains("atm.") {
                Channel::Atm
            } else {
                channel(
                    &pos,
                    t.transaction_metadata
                        .and_then(|m| m.payment_channel)
                        .as_deref(),
                )
            };
            let verification = jit.method.ends_with("account_verification");
            let mut r = AuthRequest::new(
                card_token()?,
                jit.token,
                amount,
                cur,
                merchant,
                channel,
                pos.partial_approval_capable.unwrap_or(false),
            )
            .captured_on_approval(capture);
            if verification {
                r.authorization.txn_type = crate::domain::TxnType::Verification;
            }
            Message::Authorize(r)
        }
        Kind::Capture => Message::Capture {
            authorization_id: original()?,
            id: jit.token,
            amount,
            // Marqeta may clear in several parts; what is left expires with the hold.
            is_final: false,
        },
        Kind::Reversal => Message::Reversal {
            authorization_id: original()?,
            id: jit.token,
            amount: Some(amount),
        },
        Kind::Refund => Message::Refund {
            card_token: card_token()?,
            authorization_id: jit.original_jit_funding_token.clone(),
            id: jit.token,
            amount,
            currency: cur,
        },
        Kind::Advice => Message::Advice {
            card_token: card_token()?,
            id: jit.token,
            amount,
            currency: cur,
        },
        Kind::Balance => Message::BalanceInquiry {
            card_token: card_token()?,
        },
        Kind::Informational => Message::Informational { kind: jit.method },
    };
    Ok(Parsed { message, echo })
}

/// `transaction_metadata.payment_channel` (`ECOMMERCE`, `ATM`, `MAIL`, `PHONE`, `MOTO`,
/// `OTHER`) and the point of sale's entry mode.
fn channel(pos: &Pos, payment_channel: Option<&str>) -> Channel {
    match payment_channel {
        Some("ATM") => Channel::Atm,
        Some("ECOMMERCE") => Channel::Ecommerce,
        Some("MAIL") | Some("PHONE") | Some("MOTO") => Channel::Moto,
        _ => match pos.pan_entry_mode.as_deref() {
            Some("CONTACTLESS") | Some("NFC") => Channel::Contactless,
            _ if pos.card_presence == Some(true) => Channel::Pos,
            _ => Channel::Ecommerce,
        },
    }
}

/// Our DE39 decline codes in Marqeta's 21 `decline_reason` values.
pub fn decline_reason(code: &str) -> &'static str {
    match code {
        "51" => "INSUFFICIENT_FUNDS",
        "61" => "AMOUNT_LIMIT_EXCEEDED",
        "65" => "TRANSACTION_COUNT_LIMIT_EXCEEDED",
        "59" => "SUSPECTED_FRAUD",
        "13" => "INVALID_AMOUNT",
        "14" | "41" | "43" => "INVALID_CARD",
        "54" => "EXPIRED_CARD",
        "46" => "CLOSED_ACCOUNT",
        "62" | "78" => "CARD_NOT_ACTIVE",
        // 05, 12, 30, 57, 91, 93, 96.
        _ => "TRANSACTION_NOT_PERMITTED",
    }
}

/// A decimal amount as the JSON number Marqeta sends (`1.91`).
fn number(d: Decimal) -> Value {
    serde_json::from_str(&d.normalize().to_string()).unwrap_or(Value::Null)
}

pub fn answer(parsed: &Parsed, outcome: &Outcome) -> Answer {
    let mut jit = parsed.echo.clone();
    match outcome {
        Outcome::Decision {
            approved: false,
            code,
            ..
        } => {
            jit["decline_reason"] = json!(decline_reason(code));
            return Answer {
                status: 402,
                headers: vec![],
                body: json!({"jit_funding": jit}),
            };
        }
        Outcome::Decision {
            code,
            amount_approved,
            ..
        } if code == "10" => {
            jit["amount"] = number(*amount_approved);
        }
        Outcome::Balance {
            currency,
            available,
            posted,
        } => {
            let c = currency.code();
            jit["balances"] = json!({c: {
                "currency_code": c,
                "available_balance": number(*available),
                "ledger_balance": number(*posted),
                "credit_balance": 0,
                "pending_credits": 0,
            }});
        }
        _ => {}
    }
    Answer::ok(json!({"jit_funding": jit}))
}
