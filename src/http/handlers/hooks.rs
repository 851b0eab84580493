//! Processor hooks: `POST /v1/hooks/{program}/{processor}` takes Lithic, Stripe, Marqeta
//! or Adyen's own authorization hook, authenticated their way, translated
//! (`crate::processors`), decided or applied by the engine, and answered in their format.
//! The admin routes configure a program's hooks; the card route sets the processor's
//! token for a card.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;

use super::authorizations::decide_within;
use super::{respond, to_json, ApiResult};
use crate::http::dto::{CallerIds, ProcessorCardToken};
use crate::http::extract::{checked_id, Admin, Body, IdemKey, OwnedCard, RawBody};
use crate::http::problem::{Problem, ProblemBody};
use crate::http::{ProcessorAnswer, RequestId, Shared};
use crate::money::Currency;
use crate::processors::{
    stripe, unknown_card_id, Answer, Credentials, HookConfig, Message, Outcome, Parsed, Processor,
};
use crate::service::{Pending, Rejection};

/// Hook bodies are whole transaction objects (a Stripe event carries the card and its
/// cardholder): larger than our own API's bodies.
pub const HOOK_BODY_BYTES_MAX: usize = 64 * 1024;

fn processor(name: &str) -> Result<Processor, Problem> {
    Processor::parse(name).ok_or_else(|| {
        Problem::not_found(
            "route_not_found",
            "no such processor (lithic, stripe, marqeta, adyen)",
        )
    })
}

/// A call that failed authentication, answered as the processor expects a refused call:
/// Stripe's libraries answer 400, the others 401. An unknown program, or one without
/// this hook, is refused the same way, so nothing tells whether it exists.
fn refused(p: Processor, why: &str) -> Response {
    metrics::counter!("spendgate_hook_requests_total", "processor" => p.as_str(), "outcome" => "unauthorized").increment(1);
    tracing::warn!(processor = p.as_str(), why, "hook refused");
    let status = if p == Processor::Stripe {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::UNAUTHORIZED
    };
    Problem::new(
        status,
        "invalid_signature",
        "the hook's authentication does not match",
    )
    .into_response()
}

#[utoipa::path(post, path = "/v1/hooks/{program}/{processor}", tag = "processor hooks",
    params(("program" = String, Path, description = "the program whose hook this is"),
        ("processor" = Processor, Path)),
    request_body(content = Object, description = "the processor's own hook body: Lithic ASA, a Stripe `issuing_authorization.request` event, a Marqeta JIT Funding transaction, an Adyen relayed authorisation"),
    responses((status = 200, description = "the processor's answer (approve, decline, partial, balance, or received)", body = Object),
        (status = 402, description = "Marqeta: declined, with `jit_funding.decline_reason`", body = Object),
        (status = 400, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn processor_hook(
    State(s): State<Shared>,
    rid: Option<axum::Extension<RequestId>>,
    Path((program, name)): Path<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let arrival = Instant::now();
    let p = match processor(&name) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Some(cfg) = s.engine.hook_config(&program, p) else {
        return refused(p, "no hook configured for this program");
    };
    if let Err(e) = cfg.verify(&headers, &body, chrono::Utc::now().timestamp()) {
        return refused(p, &e.0);
    }
    if let Err(e) = s.rate.check(&program) {
        return e.into_response();
    }
    let parsed = match p.parse_message(&body) {
        Ok(m) => m,
        Err(e) => {
            metrics::counter!("spendgate_hook_requests_total", "processor" => p.as_str(), "outcome" => "invalid").increment(1);
            return Problem::bad_request("invalid_hook_payload", e.0).into_response();
        }
    };
    let request_id = rid.map(|r| r.0 .0).unwrap_or_default();
    let outcome = match run(&s, p, &program, &cfg, &parsed, &request_id, arrival).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let label = match &outcome {
        Outcome::Decision { approved: true, .. } => "approved",
        Outcome::Decision { .. } => "declined",
        Outcome::Balance { .. } => "balance",
        Outcome::Done => "follow_up",
    };
    metrics::counter!("spendgate_hook_requests_total", "processor" => p.as_str(), "outcome" => label).increment(1);
    let mut answer = p.answer(&parsed, &outcome);
    if p == Processor::Stripe && !answer.headers.iter().any(|(h, _)| *h == "Stripe-Version") {
        let v = cfg
            .stripe_version
            .clone()
            .unwrap_or_else(|| stripe::STRIPE_VERSION_DEFAULT.into());
        answer.headers.push(("Stripe-Version", v));
    }
    render(answer)
}

fn render(a: Answer) -> Response {
    let mut r = (
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK),
        [(header::CONTENT_TYPE, "application/json")],
        a.body.to_string(),
    )
        .into_response();
    r.extensions_mut().insert(ProcessorAnswer);
    for (name, value) in a.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, v);
        }
    }
    r
}

/// A follow-up (capture, reversal, refund, advice) is applied and made durable, never
/// declined: the processor has already moved the money. One the engine refuses (an
/// unknown authorization, a capture beyond its hold) is counted and logged for
/// reconciliation, and answered as received.
async fn follow_up(
    p: Processor,
    what: &'static str,
    r: Result<Pending<std::sync::Arc<str>>, Rejection>,
) {
    match r {
        Ok(pending) => {
            pending.durable().await;
            metrics::counter!("spendgate_hook_follow_ups_total", "processor" => p.as_str(), "kind" => what, "outcome" => "applied").increment(1);
        }
        Err(e) => {
            metrics::counter!("spendgate_hook_follow_ups_total", "processor" => p.as_str(), "kind" => what, "outcome" => "refused").increment(1);
            tracing::warn!(processor = p.as_str(), kind = what, error = %e, "hook follow-up not applied; reconcile");
        }
    }
}

async fn run(
    s: &Shared,
    p: Processor,
    program: &str,
    cfg: &HookConfig,
    parsed: &Parsed,
    request_id: &str,
    arrival: Instant,
) -> Result<Outcome, Problem> {
    let card = |token: &str| s.engine.card_for_token(program, token);
    // Keys are the processor's message ids, scoped to the program and processor.
    let key = |id: &str| format!("{program}/{}:{id}", p.as_str());
    match &parsed.message {
        Message::Authorize(req) => {
            let mut txn = req.authorization.clone();
            txn.card_id = card(&req.card_token).unwrap_or_else(|| unknown_card_id(&req.card_token));
            let budget = Duration::from_millis(cfg.deadline_ms);
            let answered = decide_within(s, &txn, program, request_id, budget, arrival).await?;
            let outcome = crate::processors::decision_outcome(&answered)
                .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.0))?;
            if let Outcome::Decision {
                approved: true,
                amount_approved,
                ..
            } = &outcome
            {
                if req.capture_on_approval {
                    // Single-message: the approval is also the clearing.
                    let r = s.engine.capture(
                        program,
                        &format!("{}:capture", p.as_str()),
                        &txn.id,
                        *amount_approved,
                        true,
                    );
                    follow_up(p, "capture", r).await;
                }
            }
            Ok(outcome)
        }
        Message::Capture {
            id,
            authorization_id,
            amount,
            is_final,
        } => {
            let r = s.engine.capture(
                program,
                &format!("{}:{id}", p.as_str()),
                authorization_id,
                *amount,
                *is_final,
            );
            follow_up(p, "capture", r).await;
            Ok(Outcome::Done)
        }
        Message::Reversal {
            id,
            authorization_id,
            amount,
        } => {
            let r = s.engine.reverse(
                program,
                &format!("{}:{id}", p.as_str()),
                authorization_id,
                *amount,
            );
            follow_up(p, "reversal", r).await;
            Ok(Outcome::Done)
        }
        Message::Refund {
            id,
            card_token,
            authorization_id,
            amount,
            currency,
        } => {
            let linked = authorization_id
                .as_deref()
                .filter(|a| s.engine.has_authorization(program, a));
            let r = match card(card_token) {
                Some(c) => s.engine.refund(&key(id), &c, linked, *amount, *currency),
                None => Err(Rejection::UnknownCard(card_token.clone())),
            };
            follow_up(p, "refund", r).await;
            Ok(Outcome::Done)
        }
        Message::Advice {
            id,
            card_token,
            amount,
            currency,
        } => {
            let r = match card(card_token) {
                Some(c) => s.engine.advice(&key(id), &c, *amount, *currency),
                None => Err(Rejection::UnknownCard(card_token.clone())),
            };
            follow_up(p, "advice", r).await;
            Ok(Outcome::Done)
        }
        Message::BalanceInquiry { card_token } => {
            let Some(c) = card(card_token) else {
                return Ok(Outcome::Decision {
                    approved: false,
                    code: "14".into(),
                    reason: "no such card".into(),
                    rule: None,
                    amount_approved: Decimal::ZERO,
                    currency: Currency::USD,
                    available: None,
                });
            };
            let b = s.engine.balance(&c)?;
            let dec = |s: &str| s.parse::<Decimal>().unwrap_or(Decimal::ZERO);
            Ok(Outcome::Balance {
                currency: b.currency,
                available: dec(&b.available),
                posted: dec(&b.posted),
            })
        }
        Message::Informational { kind } => {
            tracing::info!(processor = p.as_str(), kind = %kind, "hook message received (informational)");
            Ok(Outcome::Done)
        }
    }
}

/// `{id}` and `{processor}` of the admin hook routes, checked.
fn program_and_processor(id: &str, name: &str) -> Result<Processor, Problem> {
    checked_id("the path id", id)?;
    processor(name)
}

#[utoipa::path(put, path = "/v1/programs/{id}/hooks/{processor}", tag = "processor hooks",
    params(("id" = String, Path), ("processor" = Processor, Path)), request_body = Credentials,
    responses((status = 200, description = "the hook's configuration, secrets redacted", body = Object),
        (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
pub async fn put_hook(
    State(s): State<Shared>,
    _: Admin,
    Path((id, name)): Path<(String, String)>,
    Body(c): Body<Credentials>,
) -> ApiResult {
    let p = program_and_processor(&id, &name)?;
    let cfg = HookConfig::new(p, c)
        .map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_hook_config", e.0))?;
    let saved = s.engine.set_hook_config(&id, cfg)?.durable().await;
    Ok(to_json(StatusCode::OK, &saved.redacted(&id)))
}

#[utoipa::path(get, path = "/v1/programs/{id}/hooks", tag = "processor hooks", params(("id" = String, Path)),
    responses((status = 200, description = "the program's hooks, secrets redacted", body = Object), (status = 404, body = ProblemBody)))]
pub async fn list_hooks(State(s): State<Shared>, _: Admin, Path(id): Path<String>) -> ApiResult {
    checked_id("the path id", &id)?;
    if s.engine.program(&id).is_none() {
        return Err(Rejection::UnknownProgram(id).into());
    }
    let hooks: Vec<_> = s
        .engine
        .hook_configs(&id)
        .iter()
        .map(|c| c.redacted(&id))
        .collect();
    Ok(to_json(
        StatusCode::OK,
        &serde_json::json!({ "hooks": hooks }),
    ))
}

#[utoipa::path(delete, path = "/v1/programs/{id}/hooks/{processor}", tag = "processor hooks",
    params(("id" = String, Path), ("processor" = Processor, Path)),
    responses((status = 204, description = "removed: the processor's calls are refused from now on"), (status = 404, body = ProblemBody)))]
pub async fn delete_hook(
    State(s): State<Shared>,
    _: Admin,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult {
    let p = program_and_processor(&id, &name)?;
    if s.engine.hook_config(&id, p).is_none() {
        return Err(Problem::not_found(
            "hook_not_found",
            format!("program `{id}` has no {} hook", p.as_str()),
        ));
    }
    s.engine.delete_hook_config(&id, p)?.durable().await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(put, path = "/v1/cards/{id}/processor_card_token", tag = "cards", params(("id" = String, Path)), request_body = ProcessorCardToken,
    responses((status = 200, body = crate::service::responses::CardResponse), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
pub async fn set_card_token(
    State(s): State<Shared>,
    IdemKey(key): IdemKey,
    card: OwnedCard,
    Body(b): Body<ProcessorCardToken>,
) -> ApiResult {
    respond(
        StatusCode::OK,
        s.engine
            .set_processor_card_token(&key, &card.id, b.processor_card_token),
    )
    .await
}

impl CallerIds for Credentials {}
