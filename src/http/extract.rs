//! Extractors for what every handler needs before the engine: who calls (program key,
//! admin key), the idempotency key, a card or authorization the caller owns, a signed
//! processor hook, and a JSON body. Each refuses with problem+json, so a handler reads
//! as parse → engine → respond.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;

use super::dto::CallerIds;
use super::problem::Problem;
use super::Shared;
use crate::domain::{check_id, IdError};
use crate::money::parse_decimal;
use crate::service::Rejection;

/// Idempotency keys as callers send them (visible ASCII).
const IDEMPOTENCY_KEY_LEN_MAX: usize = 100;

fn bearer(headers: &HeaderMap) -> Result<&str, Problem> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Problem::unauthorized("missing `Authorization: Bearer <API key>`"))
}

/// The program a request acts for (a program API key; admin keys manage programs, not
/// cards). Rate-limited per program. Extracted once per request, then remembered.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

impl FromRequestParts<Shared> for Tenant {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<Tenant, Problem> {
        if let Some(t) = parts.extensions.get::<Tenant>() {
            return Ok(t.clone());
        }
        let key = crate::service::key_hash(bearer(&parts.headers)?);
        if s.is_admin_hash(&key) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "use a program API key for this call",
            ));
        }
        let program = s
            .engine
            .program_for_key_hash(&key)
            .ok_or_else(|| Problem::unauthorized("unknown API key"))?;
        s.rate.check(&program)?;
        let t = Tenant(program);
        parts.extensions.insert(t.clone());
        Ok(t)
    }
}

/// The admin key.
pub struct Admin;

impl FromRequestParts<Shared> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<Admin, Problem> {
        let key = crate::service::key_hash(bearer(&parts.headers)?);
        if s.is_admin_hash(&key) {
            Ok(Admin)
        } else if s.engine.program_for_key_hash(&key).is_some() {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this call needs the admin key",
            ))
        } else {
            Err(Problem::unauthorized("unknown API key"))
        }
    }
}

/// Any known key, admin or program (read-only calls such as listing policies).
pub struct AnyKey;

impl FromRequestParts<Shared> for AnyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<AnyKey, Problem> {
        let key = crate::service::key_hash(bearer(&parts.headers)?);
        if s.is_admin_hash(&key) || s.engine.program_for_key_hash(&key).is_some() {
            Ok(AnyKey)
        } else {
            Err(Problem::unauthorized("unknown API key"))
        }
    }
}

/// The idempotency key, namespaced by the caller's program: `Idempotency-Key`, or on a
/// signed hook the signed `webhook-id` (Standard Webhooks keeps it across retries), so a
/// replayed signed request can only ever replay its own answer.
pub struct IdemKey(pub String);

impl FromRequestParts<Shared> for IdemKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<IdemKey, Problem> {
        let Tenant(program) = Tenant::from_request_parts(parts, s).await?;
        if s.hooks.enabled() {
            if let Some(id) = parts
                .headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
            {
                checked_id("webhook-id", id)?;
                return Ok(IdemKey(format!("{program}/webhook:{id}")));
            }
        }
        let k = parts
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Problem::bad_request(
                    "missing_idempotency_key",
                    "mutating calls need an Idempotency-Key header",
                )
            })?;
        if crate::domain::contains_card_number(k) {
            return Err(card_number("Idempotency-Key"));
        }
        if k.is_empty()
            || k.len() > IDEMPOTENCY_KEY_LEN_MAX
            || !k.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Problem::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 100 visible ASCII characters",
            ));
        }
        Ok(IdemKey(format!("{program}/{k}")))
    }
}

/// The refusal of an id that looks like a card number (the number is never echoed).
pub fn card_number(field: &str) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "card_number_in_id",
        format!("{field} looks like a card number; send the card's token, never its number"),
    )
}

/// A caller's id checked at the edge: a card number is 422, anything else malformed 400;
/// neither echoes the input.
pub fn checked_id(field: &str, id: &str) -> Result<(), Problem> {
    match check_id(id) {
        Ok(()) => Ok(()),
        Err(IdError::CardNumber) => Err(card_number(field)),
        Err(e) => Err(Problem::bad_request("invalid_id", format!("{field} {e}"))),
    }
}

/// The `{id}` path segment, checked.
async fn path_id(parts: &mut Parts, s: &Shared) -> Result<String, Problem> {
    let id = Path::<String>::from_request_parts(parts, s)
        .await
        .map(|Path(id)| id)
        .map_err(|e| Problem::bad_request("invalid_path", e.body_text()))?;
    checked_id("the path id", &id)?;
    Ok(id)
}

/// A card (`{id}` in the path) of the caller's program; another tenant's card is just as
/// absent (404).
pub struct OwnedCard {
    pub id: String,
}

impl FromRequestParts<Shared> for OwnedCard {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<OwnedCard, Problem> {
        let Tenant(program) = Tenant::from_request_parts(parts, s).await?;
        let id = path_id(parts, s).await?;
        own_card(s, &program, &id)?;
        Ok(OwnedCard { id })
    }
}

/// A card of `program`, or 404.
pub fn own_card(s: &Shared, program: &str, card_id: &str) -> Result<(), Problem> {
    match s.engine.card_program(card_id) {
        Some(p) if p == program => Ok(()),
        _ => Err(Problem::not_found(
            "card_not_found",
            format!("unknown card `{card_id}`"),
        )),
    }
}

/// An authorization of `program`, or 404.
pub fn own_auth(s: &Shared, program: &str, auth_id: &str) -> Result<(), Problem> {
    if s.engine.has_authorization(program, auth_id) {
        Ok(())
    } else {
        Err(Problem::not_found(
            "authorization_not_found",
            format!("unknown authorization `{auth_id}`"),
        ))
    }
}

/// The `{id}` path segment, unchecked (for resources whose ownership the handler checks).
pub struct PathId(pub String);

impl FromRequestParts<Shared> for PathId {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<PathId, Problem> {
        path_id(parts, s).await.map(PathId)
    }
}

/// Parses a JSON body and checks the ids it carries.
fn parse<T: DeserializeOwned + CallerIds>(body: &Bytes) -> Result<T, Problem> {
    let v: T = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request("invalid_body", e.to_string()))?;
    for (field, id) in v.ids() {
        if T::FORMAT_ERRORS_ARE_DECISIONS {
            // Only a card number is refused here; the decision answers the rest (30).
            if crate::domain::contains_card_number(id) {
                return Err(card_number(field));
            }
        } else {
            checked_id(field, id)?;
        }
    }
    Ok(v)
}

/// JSON bodies only: anything else is 415 and changes nothing.
fn require_json(req: &Request) -> Result<(), Problem> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/json") || v.to_ascii_lowercase().ends_with("+json")
        });
    if json {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as `Content-Type: application/json`",
        ))
    }
}

/// The body, whole, within `read_timeout_ms` of starting to read it (a client that
/// trickles it would otherwise hold its connection and a request slot for ever).
async fn body_within_timeout(req: Request, s: &Shared) -> Result<Bytes, Problem> {
    let timeout = std::time::Duration::from_millis(s.config.read_timeout_ms);
    tokio::time::timeout(timeout, Bytes::from_request(req, s))
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    s.config.read_timeout_ms
                ),
            )
        })?
        .map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is larger than allowed",
                )
            } else {
                Problem::bad_request("invalid_body", e.body_text())
            }
        })
}

/// A processor's raw hook body (its own format, so no content-type check), read within
/// `read_timeout_ms`.
pub struct RawBody(pub Bytes);

impl FromRequest<Shared> for RawBody {
    type Rejection = Problem;

    async fn from_request(req: Request, s: &Shared) -> Result<RawBody, Problem> {
        body_within_timeout(req, s).await.map(RawBody)
    }
}

async fn body_bytes(req: Request, s: &Shared) -> Result<Bytes, Problem> {
    require_json(&req)?;
    body_within_timeout(req, s).await
}

/// A JSON body (unknown fields are refused by the types themselves).
pub struct Body<T>(pub T);

impl<T: DeserializeOwned + CallerIds> FromRequest<Shared> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, s: &Shared) -> Result<Body<T>, Problem> {
        let bytes = body_bytes(req, s).await?;
        parse(&bytes).map(Body)
    }
}

/// A processor hook: the caller's program, with the Standard Webhooks signature checked
/// over the raw body when hook secrets are configured, then the JSON body.
pub struct Hook<T> {
    pub program: String,
    pub body: T,
}

impl<T: DeserializeOwned + CallerIds> FromRequest<Shared> for Hook<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, s: &Shared) -> Result<Hook<T>, Problem> {
        let (mut parts, body) = req.into_parts();
        let Tenant(program) = Tenant::from_request_parts(&mut parts, s).await?;
        let headers = parts.headers.clone();
        let bytes = body_bytes(Request::from_parts(parts, body), s).await?;
        s.hooks
            .verify(&headers, &bytes, chrono::Utc::now().timestamp())?;
        Ok(Hook {
            program,
            body: parse(&bytes)?,
        })
    }
}

/// An exact decimal amount from a request string (422 `invalid_amount` or
/// `amount_overflow`, as the engine would say).
pub fn amount(s: &str) -> Result<Decimal, Problem> {
    parse_decimal(s).map_err(|e| Problem::from(Rejection::from(e)))
}
