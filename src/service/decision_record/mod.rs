//! The stored form of a decision: two postcard records, each behind a format byte.
//!
//! - `answer`: what the caller was told, less the two ids the body holds and what the
//!   answer repeats (`answer`). A missed deadline replaces it in place with its 91.
//! - `body`: what a replay of the decision needs: the request as received, the HTTP
//!   request id, and the effects on velocity windows, the activity log and the travel
//!   anchor, packed (window starts as offsets from the decision time, the common amount
//!   once, keys as fixed 8 bytes).
//!
//! The response JSON, the request hash and the history row are derived from them, so a
//! retry after a restart gets the original answer byte for byte. Postcard writes enum
//! variants by index and fields by position: variants and fields are only ever appended,
//! and a change of layout takes a new format byte.

use serde::{Deserialize, Serialize};

use super::effects::{CodecError, EffectsRecord};
use super::idempotency::authorization_digest;
use super::responses::AuthorizationResponse;
use crate::decision::{Authorization, Effects};
use crate::store::{id_hash, DecisionHistory, DecisionWrite, LegacyDecision, StoredDecision};

mod answer;
mod packed;

use answer::Answer;
#[cfg(test)]
use packed::merchant_key;
use packed::{PackedEffects, PackedEffectsV1};

const BODY_FORMAT: u8 = 2;
/// Velocity entries as a list of structs (`packed::PackedEffectsV1`); still read.
const BODY_FORMAT_V1: u8 = 1;

/// A stored decision, decoded.
#[derive(Debug, Clone)]
pub struct DecodedDecision {
    pub auth_id: String,
    pub card_id: String,
    pub at_ms: i64,
    pub approved: bool,
    /// The request id of the HTTP call that asked (empty in-process).
    pub request_id: String,
    pub effects: Effects,
    source: Source,
}

/// See [`DecodedDecision::outcome`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOutcome {
    pub approved: bool,
    pub response_code: String,
    pub reason: String,
    pub rule: Option<String>,
    pub amount_approved: String,
    pub available_after: Option<String>,
}

#[derive(Debug, Clone)]
enum Source {
    Record {
        request: Box<Authorization>,
        answer: Box<Answer>,
    },
    Legacy(Box<LegacyDecision>),
}

/// The two records of a decision, ready for the store.
pub fn encode(
    txn: &Authorization,
    request_id: &str,
    effects: &Effects,
    response: &AuthorizationResponse,
) -> DecisionWrite {
    encode_with_request(txn, &request_bytes(txn), request_id, effects, response)
}

/// [`encode`] with the request already encoded ([`request_bytes`], which the
/// authorization's digest was taken of): the body is the same bytes as the `BodyRef`
/// layout's, since postcard writes a struct as its fields one after the other.
pub fn encode_with_request(
    txn: &Authorization,
    request: &[u8],
    request_id: &str,
    effects: &Effects,
    response: &AuthorizationResponse,
) -> DecisionWrite {
    let mut body = Vec::with_capacity(16 + request.len() + 128);
    body.push(BODY_FORMAT);
    // Plain fields always serialize.
    postcard::to_io(&effects.at_ms, &mut body).expect("postcard writes to a Vec");
    body.extend_from_slice(request);
    postcard::to_io(
        &(RequestId::of(request_id), PackedEffects::of(effects, txn)),
        &mut body,
    )
    .expect("postcard writes to a Vec");
    DecisionWrite {
        auth_hash: id_hash(&txn.id),
        card_hash: id_hash(&txn.card_id),
        answer: encode_answer(response),
        body,
    }
}

/// The request's compact encoding, exactly as its record's body holds it: what an
/// authorization's idempotency digest is taken of.
pub fn request_bytes(txn: &Authorization) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    postcard::to_io(txn, &mut out).expect("postcard writes to a Vec");
    out
}

/// The answer record alone (a deadline's 91 replaces a decision's answer).
pub fn encode_answer(r: &AuthorizationResponse) -> Vec<u8> {
    answer::encode(r)
}

#[cfg(test)]
fn framed(format: u8, value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(format);
    // Plain fields always serialize.
    postcard::to_io(value, &mut out).expect("postcard writes to a Vec");
    out
}

fn unframed<'a, T: Deserialize<'a>>(
    what: &str,
    format: u8,
    bytes: &'a [u8],
) -> Result<T, CodecError> {
    match bytes.split_first() {
        Some((&f, rest)) if f == format => {
            postcard::from_bytes(rest).map_err(|e| CodecError::Syntax(format!("{what}: {e}")))
        }
        Some((f, _)) => Err(CodecError::Syntax(format!("{what}: unknown format {f}"))),
        None => Err(CodecError::Syntax(format!("{what}: empty"))),
    }
}

/// When a stored decision was made, read without decoding the rest.
pub fn at_ms(d: &StoredDecision) -> Result<i64, CodecError> {
    #[derive(Deserialize)]
    struct Head {
        at_ms: i64,
    }
    match d {
        // Postcard reads a prefix and leaves the rest.
        StoredDecision::Record { body, .. } => {
            // Both body formats begin with it.
            let format = match body.first() {
                Some(&BODY_FORMAT_V1) => BODY_FORMAT_V1,
                _ => BODY_FORMAT,
            };
            unframed::<Head>("body", format, body).map(|h| h.at_ms)
        }
        StoredDecision::Legacy(l) => Ok(l.at_ms),
    }
}

/// Decodes a stored decision of either generation. The answer, its request hash and the
/// history row are derived on demand (start-up replays many and answers few).
pub fn decode(d: &StoredDecision) -> Result<DecodedDecision, CodecError> {
    match d {
        StoredDecision::Record { answer, body } => {
            let a = answer::decode(answer)?;
            let (b, effects) = match body.first() {
                Some(&BODY_FORMAT_V1) => {
                    unframed::<Body<PackedEffectsV1>>("body", BODY_FORMAT_V1, body)?.unpacked()?
                }
                _ => unframed::<Body>("body", BODY_FORMAT, body)?.unpacked()?,
            };
            Ok(DecodedDecision {
                auth_id: b.request.id.clone(),
                card_id: b.request.card_id.clone(),
                at_ms: b.at_ms,
                approved: a.approved,
                request_id: b.request_id.text(),
                effects,
                source: Source::Record {
                    request: Box::new(b.request),
                    answer: Box::new(a),
                },
            })
        }
        StoredDecision::Legacy(l) => Ok(DecodedDecision {
            auth_id: l.auth_id.clone(),
            card_id: l.card_id.clone(),
            at_ms: l.at_ms,
            approved: l.approved,
            request_id: l.request_id.clone(),
            effects: EffectsRecord::decode(&l.effects)?.to_effects()?,
            source: Source::Legacy(l.clone()),
        }),
    }
}

impl DecodedDecision {
    /// The request as received (decisions stored before version 5 did not keep it).
    pub fn request(&self) -> Option<&Authorization> {
        match &self.source {
            Source::Record { request, .. } => Some(request),
            Source::Legacy(_) => None,
        }
    }

    /// What was answered, in short: (approved, response code, rule, amount approved in
    /// the card currency, available balance afterwards).
    pub fn outcome(&self) -> StoredOutcome {
        match &self.source {
            Source::Record { answer, .. } => StoredOutcome {
                approved: answer.approved,
                response_code: answer.response_code.clone(),
                reason: answer.reason.clone(),
                rule: answer.rule.clone(),
                amount_approved: answer.amount_approved.clone(),
                available_after: answer.available_after.clone(),
            },
            Source::Legacy(l) => {
                let r: Option<AuthorizationResponse> = serde_json::from_str(&l.response).ok();
                StoredOutcome {
                    approved: l.approved,
                    response_code: l.response_code.clone(),
                    reason: l.reason.clone(),
                    rule: l.rule.clone(),
                    amount_approved: l.amount_approved.clone(),
                    available_after: r.and_then(|r| r.available_after),
                }
            }
        }
    }

    /// The request's idempotency digest (the form stored with its answer).
    pub fn request_hash(&self) -> String {
        match &self.source {
            Source::Record { request, .. } => authorization_digest(request),
            Source::Legacy(l) => l.request_hash.clone(),
        }
    }

    /// The answer, serialized exactly as it was sent.
    pub fn response(&self) -> String {
        match &self.source {
            Source::Record { request, answer } => {
                answer_json(&request.id, &request.card_id, answer.as_ref().clone())
            }
            Source::Legacy(l) => l.response.clone(),
        }
    }

    pub fn history(&self) -> DecisionHistory {
        match &self.source {
            Source::Record { request, answer } => DecisionHistory {
                authorization_id: request.id.clone(),
                at_ms: self.at_ms,
                approved: answer.approved,
                response_code: answer.response_code.clone(),
                reason: answer.reason.clone(),
                rule: answer.rule.clone(),
                amount: request.amount.to_string(),
                currency: request.currency.code().to_string(),
                amount_approved: answer.amount_approved.clone(),
                request_id: self.request_id.clone(),
            },
            Source::Legacy(l) => DecisionHistory {
                authorization_id: l.auth_id.clone(),
                at_ms: l.at_ms,
                approved: l.approved,
                response_code: l.response_code.clone(),
                reason: l.reason.clone(),
                rule: l.rule.clone(),
                amount: l.amount.clone(),
                currency: l.currency.clone(),
                amount_approved: l.amount_approved.clone(),
                request_id: l.request_id.clone(),
            },
        }
    }
}

/// An authorization's answer, serialized exactly as it was sent, from its answer record
/// (`DecisionWrite::answer`) and the two ids the record leaves to the request.
pub fn response_of_answer(
    auth_id: &str,
    card_id: &str,
    answer: &[u8],
) -> Result<String, CodecError> {
    let a = answer::decode(answer)?;
    Ok(answer_json(auth_id, card_id, a))
}

fn answer_json(auth_id: &str, card_id: &str, a: Answer) -> String {
    serde_json::to_string(&a.into_response(auth_id, card_id)).unwrap_or_default()
}

/// Test fixtures: records copied from stores as hex.
#[cfg(test)]
fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// The body's layout; `encode_with_request` writes the same bytes field by field.
/// `at_ms` first: start-up orders decisions by it before decoding the rest.
#[cfg(test)]
#[derive(Serialize)]
struct BodyRef<'a> {
    at_ms: i64,
    request: &'a Authorization,
    request_id: RequestId,
    effects: PackedEffects,
}

#[derive(Deserialize)]
struct Body<E = PackedEffects> {
    at_ms: i64,
    request: Authorization,
    request_id: RequestId,
    effects: E,
}

impl<V: packed::Entries> Body<PackedEffects<V>> {
    /// The effects unpacked, and the rest.
    fn unpacked(self) -> Result<(Body<()>, Effects), CodecError> {
        let effects = self.effects.unpack(self.at_ms, &self.request)?;
        let rest = Body {
            at_ms: self.at_ms,
            request: self.request,
            request_id: self.request_id,
            effects: (),
        };
        Ok((rest, effects))
    }
}

/// Request ids are usually 32 lowercase hex digits: those take 16 bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum RequestId {
    Hex([u8; 16]),
    Text(String),
}

impl RequestId {
    fn of(s: &str) -> RequestId {
        let hex = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        match u128::from_str_radix(s, 16) {
            Ok(v) if hex => RequestId::Hex(v.to_be_bytes()),
            _ => RequestId::Text(s.to_string()),
        }
    }

    fn text(&self) -> String {
        match self {
            RequestId::Hex(b) => format!("{:032x}", u128::from_be_bytes(*b)),
            RequestId::Text(s) => s.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::TraceLine;
    use crate::decision::VelocityEffect;
    use crate::domain::{Channel, Mcc, Merchant, TxnType};
    use crate::domain::{Country, Counts, LatLon, VelocityScope};
    use crate::money::Currency;
    use crate::velocity::{key_hash, Activity};
    use rust_decimal::Decimal;

    fn txn() -> Authorization {
        Authorization {
            id: "auth_7f3a".into(),
            card_id: "card_7b1dc38e9d5345f3bf892f4c".into(),
            amount: Decimal::new(45000, 2),
            currency: Currency::NGN,
            merchant: Merchant {
                id: "m-1".into(),
                name: "Shoprite Lekki".into(),
                mcc: Mcc::parse("5411").unwrap(),
                country: Country::parse("NG").unwrap(),
                location: Some(LatLon {
                    lat: 6.44,
                    lon: 3.47,
                }),
            },
            channel: Channel::Pos,
            txn_type: TxnType::Purchase,
            timestamp: Some("2026-06-03T09:12:00Z".parse().unwrap()),
            partial_ok: true,
        }
    }

    fn effects(t: &Authorization) -> Effects {
        let at_ms = 1_795_808_555_976;
        let mut e = Effects {
            auth_key: key_hash(&[t.id.as_bytes()]),
            at_ms,
            location: Some(LatLon {
                lat: 6.44,
                lon: 3.47,
            }),
            location_at_ms: at_ms - 5_000,
            activity: Some(Activity {
                at_ms,
                amount: Decimal::new(30, 2),
                approved: false,
                country: Country::parse("NG").unwrap(),
                merchant: u64::MAX - 3,
            }),
            ..Effects::default()
        };
        for (scope, amount, counts) in [
            (VelocityScope::Card, Decimal::new(30, 2), Counts::Approved),
            (
                VelocityScope::Cardholder,
                Decimal::new(3, 1),
                Counts::Approved,
            ),
            (VelocityScope::Program, Decimal::ZERO, Counts::Declined),
            (
                VelocityScope::CardMerchant,
                Decimal::new(77, 0),
                Counts::Approved,
            ),
        ] {
            e.velocity.push(VelocityEffect {
                scope,
                key: key_hash(&[format!("{scope:?}").as_bytes()]),
                start_ms: at_ms - 86_400_000 + 1,
                amount,
                counts,
            });
        }
        e
    }

    fn response(t: &Authorization) -> AuthorizationResponse {
        AuthorizationResponse {
            authorization_id: t.id.clone(),
            card_id: t.card_id.clone(),
            approved: false,
            response_code: "61".into(),
            reason: "exceeds_amount_limit".into(),
            rule: Some("single_purchase_cap".into()),
            amount_approved: "0.00".into(),
            currency: Currency::NGN,
            fx_rate: Some("0.00066".into()),
            available_after: Some("998650.00".into()),
            flags: vec!["new_merchant".into()],
            score: 15,
            policy_version: "c6d91bceede5".into(),
            trace: vec![TraceLine {
                rule: "single_purchase_cap".into(),
                outcome: "declined 61".into(),
                detail: "450.00 > 400.00".into(),
            }],
            latency_us: 29,
        }
    }

    #[test]
    fn a_body_from_the_encoded_request_is_the_body_the_struct_encodes() {
        let t = txn();
        let e = effects(&t);
        let whole = framed(
            BODY_FORMAT,
            &BodyRef {
                at_ms: e.at_ms,
                request: &t,
                request_id: RequestId::of("a07e4d44c3e144f68e46eb7d86643d9d"),
                effects: PackedEffects::of(&e, &t),
            },
        );
        let w = encode(&t, "a07e4d44c3e144f68e46eb7d86643d9d", &e, &response(&t));
        assert_eq!(w.body, whole);
    }

    #[test]
    fn a_decision_decodes_to_the_exact_answer_request_hash_and_effects() {
        let t = txn();
        let e = effects(&t);
        let r = response(&t);
        let w = encode(&t, "a07e4d44c3e144f68e46eb7d86643d9d", &e, &r);
        let d = decode(&StoredDecision::Record {
            answer: w.answer,
            body: w.body,
        })
        .unwrap();
        assert_eq!(d.response(), serde_json::to_string(&r).unwrap());
        assert_eq!(d.request_hash(), authorization_digest(&t));
        assert_eq!(d.request_id, "a07e4d44c3e144f68e46eb7d86643d9d");
        assert_eq!(
            (d.auth_id.as_str(), d.card_id.as_str()),
            (&*t.id, &*t.card_id)
        );
        assert_eq!(d.effects.velocity.as_slice(), e.velocity.as_slice());
        // Scales survive: 0.30 and 0.3 are the same number but print differently.
        assert_eq!(d.effects.velocity[1].amount.to_string(), "0.3");
        assert_eq!(d.effects.velocity[0].amount.to_string(), "0.30");
        assert_eq!(d.effects.activity, e.activity);
        assert_eq!(
            (
                d.effects.location,
                d.effects.location_at_ms,
                d.effects.auth_key
            ),
            (e.location, e.location_at_ms, e.auth_key)
        );
        assert_eq!(d.history().amount, "450.00");
        assert_eq!(d.history().rule.as_deref(), Some("single_purchase_cap"));
        assert_eq!(
            at_ms(&StoredDecision::Record {
                answer: vec![],
                body: encode(&t, "", &e, &r).body
            })
            .unwrap(),
            e.at_ms
        );
    }

    #[test]
    fn request_ids_that_are_not_hex_keep_their_text() {
        for id in [
            "",
            "req-1",
            "A07E4D44C3E144F68E46EB7D86643D9D",
            "0x7e4d44c3e144f68e46eb7d86643d9d",
        ] {
            assert_eq!(RequestId::of(id).text(), id);
        }
        assert!(matches!(
            RequestId::of("00000000000000000000000000000001"),
            RequestId::Hex(_)
        ));
        assert_eq!(
            RequestId::of("00000000000000000000000000000001").text(),
            "00000000000000000000000000000001"
        );
    }

    #[test]
    fn an_approval_with_nine_windows_takes_a_few_hundred_bytes() {
        let t = txn();
        let mut e = effects(&t);
        e.velocity = (0..9)
            .map(|i| VelocityEffect {
                scope: VelocityScope::Card,
                key: key_hash(&[&[i]]),
                start_ms: e.at_ms - 86_400_000 + 1,
                amount: Decimal::new(30, 2),
                counts: Counts::Approved,
            })
            .collect();
        if let Some(a) = e.activity.as_mut() {
            a.merchant = merchant_key(&t);
        }
        let mut r = response(&t);
        (r.approved, r.response_code, r.reason) = (true, "00".into(), "approved".into());
        (r.rule, r.fx_rate, r.amount_approved) = (None, None, "450.00".into());
        r.trace.clear();
        r.flags.clear();
        let w = encode(&t, "a07e4d44c3e144f68e46eb7d86643d9d", &e, &r);
        let bytes = w.answer.len() + w.body.len();
        // The JSON answer and effects this replaces took ≈ 1 460 bytes; here the request
        // is ≈ 120 bytes, the nine windows ≈ 126 (a 64-bit key each).
        assert!(bytes <= 340, "{bytes} bytes");
    }

    #[test]
    fn an_unknown_format_is_an_error_not_a_guess() {
        let t = txn();
        let w = encode(&t, "", &effects(&t), &response(&t));
        let mut body = w.body.clone();
        body[0] = 9;
        assert!(decode(&StoredDecision::Record {
            answer: w.answer.clone(),
            body
        })
        .is_err());
        assert!(decode(&StoredDecision::Record {
            answer: w.answer,
            body: w.body[..w.body.len() - 3].to_vec()
        })
        .is_err());
    }
}
