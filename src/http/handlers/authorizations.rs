//! The processor-facing hooks: authorizations (with the decision deadline), simulate,
//! captures, reversals, stand-in advices, refunds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;

use super::{json, respond, to_json, ApiResult};
use crate::decision::{Authorization, DecisionSummary};
use crate::http::dto::{AdviceBody, CallerIds, CaptureBody, RefundBody, ReversalBody};
use crate::http::extract::{amount, own_auth, own_card, Body, Hook, IdemKey, PathId, Tenant};
use crate::http::problem::{Problem, ProblemBody};
use crate::http::{RequestId, Shared};
use crate::service::responses::{
    format_error, AuthorizationResponse, HoldResponse, ReversalResponse, TransferResponse,
};
use crate::service::AuthContext;

#[utoipa::path(post, path = "/v1/authorizations", tag = "authorizations", request_body = Authorization,
    responses((status = 200, description = "a decision: approved or declined with its ISO 8583 code", body = AuthorizationResponse),
        (status = 400, body = ProblemBody), (status = 401, body = ProblemBody), (status = 409, body = ProblemBody)))]
pub async fn authorize(
    State(s): State<Shared>,
    rid: Option<axum::Extension<RequestId>>,
    hook: Hook<Authorization>,
) -> ApiResult {
    let arrival = Instant::now();
    let request_id = rid.map(|r| r.0 .0).unwrap_or_default();
    let budget = Duration::from_millis(s.config.deadline_ms);
    let answer = decide_within(&s, &hook.body, &hook.program, &request_id, budget, arrival).await?;
    Ok(json(StatusCode::OK, answer))
}

/// Decides `txn` for `program` within `budget` from `arrival` and answers the decision's
/// JSON once durable (or, past the budget, a durable 91). Malformed ids are a
/// format-error decision (30) before any lookup, log or write; a decision that is not
/// durable in time is answered 91 and its hold voided, durably. Shared by our own hook
/// and the processor adapters.
pub async fn decide_within(
    s: &Shared,
    txn: &Authorization,
    program: &str,
    request_id: &str,
    budget: Duration,
    arrival: Instant,
) -> Result<Arc<str>, Problem> {
    for (field, id) in txn.ids() {
        if let Err(e) = crate::domain::check_id(id) {
            let r = format_error(txn, &format!("{field} {e}"));
            metrics::counter!("spendgate_decisions_total", "code" => "30", "rule" => "")
                .increment(1);
            return Ok(serde_json::to_string(&r).unwrap_or_default().into());
        }
    }
    let ctx = AuthContext {
        tenant: Some(program),
        request_id,
    };
    let may_block = s.engine.authorization_may_block(txn, &ctx);
    let pending = if may_block {
        let (txn, program, request_id) = (txn.clone(), program.to_string(), request_id.to_string());
        super::on_engine(s, true, move |s| {
            let ctx = AuthContext {
                tenant: Some(&program),
                request_id: &request_id,
            };
            s.engine.authorize(&txn, &ctx)
        })
        .await?
    } else {
        s.engine.authorize(txn, &ctx)?
    };
    let replayed = pending.peek().replayed;
    let remaining = budget.saturating_sub(arrival.elapsed());
    let on_time = if replayed {
        // A replayed answer is the answer: it is never turned into a 91.
        Some(pending.durable().await)
    } else {
        tokio::time::timeout(remaining, pending.durable())
            .await
            .ok()
            .filter(|_| arrival.elapsed() <= budget)
    };
    let (body, code, rule) = match on_time {
        Some(a) => (a.json, a.response_code, a.rule),
        None => {
            // Too late: answer 91 and void whatever hold the decision placed, durably.
            metrics::counter!("spendgate_deadline_missed_total").increment(1);
            let json = s.engine.abandon_authorization(txn, &ctx).durable().await;
            (json, "91".to_string(), None)
        }
    };
    let latency = arrival.elapsed();
    metrics::counter!("spendgate_decisions_total", "code" => code.clone(), "rule" => rule.clone().unwrap_or_default()).increment(1);
    metrics::histogram!("spendgate_decision_latency_seconds").record(latency.as_secs_f64());
    tracing::info!(request_id = %request_id, card = %txn.card_id, authorization = %txn.id, code = %code, rule = ?rule, replayed, latency_us = latency.as_micros() as u64, "decision");
    Ok(body)
}

#[utoipa::path(post, path = "/v1/simulate", tag = "authorizations", request_body = Authorization,
    responses((status = 200, description = "the decision with every rule traced; nothing is changed or stored", body = DecisionSummary),
        (status = 404, body = ProblemBody)))]
pub async fn simulate(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    Body(txn): Body<Authorization>,
) -> ApiResult {
    let d = s.engine.simulate(&txn, Some(&program))?;
    Ok(to_json(StatusCode::OK, &d))
}

#[utoipa::path(post, path = "/v1/authorizations/{id}/captures", tag = "authorizations", params(("id" = String, Path)), request_body = CaptureBody,
    responses((status = 201, body = HoldResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
pub async fn capture(
    State(s): State<Shared>,
    IdemKey(key): IdemKey,
    PathId(id): PathId,
    hook: Hook<CaptureBody>,
) -> ApiResult {
    let b = hook.body;
    let amount = amount(&b.amount)?;
    let program = hook.program;
    let may_block = s.engine.authorization_may_read_store(&program, &id);
    let r = super::on_engine(&s, may_block, move |s| {
        own_auth(s, &program, &id)?;
        Ok::<_, Problem>(s.engine.capture(&program, &key, &id, amount, b.is_final))
    })
    .await?;
    respond(StatusCode::CREATED, r).await
}

#[utoipa::path(post, path = "/v1/authorizations/{id}/reversals", tag = "authorizations", params(("id" = String, Path)), request_body = ReversalBody,
    responses((status = 201, description = "matched: false when the authorization is unknown (recorded and answered)", body = ReversalResponse),
        (status = 422, body = ProblemBody)))]
pub async fn reversal(
    State(s): State<Shared>,
    IdemKey(key): IdemKey,
    PathId(id): PathId,
    hook: Hook<ReversalBody>,
) -> ApiResult {
    let a = hook.body.amount.as_deref().map(amount).transpose()?;
    let program = hook.program;
    let may_block = s.engine.authorization_may_read_store(&program, &id);
    // Another tenant's authorization with this id is as unknown as one never made.
    let r = super::on_engine(&s, may_block, move |s| {
        s.engine.reverse(&program, &key, &id, a)
    })
    .await;
    respond(StatusCode::CREATED, r).await
}

#[utoipa::path(post, path = "/v1/advices", tag = "authorizations", request_body = AdviceBody,
    responses((status = 201, description = "a stand-in advice posted; may take the card negative", body = TransferResponse), (status = 404, body = ProblemBody)))]
pub async fn advice(State(s): State<Shared>, hook: Hook<AdviceBody>) -> ApiResult {
    let b = hook.body;
    own_card(&s, &hook.program, &b.card_id)?;
    let key = format!("{}/{}", hook.program, b.id);
    let r = s
        .engine
        .advice(&key, &b.card_id, amount(&b.amount)?, b.currency);
    respond(StatusCode::CREATED, r).await
}

#[utoipa::path(post, path = "/v1/refunds", tag = "authorizations", request_body = RefundBody,
    responses((status = 201, body = TransferResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
pub async fn refund(State(s): State<Shared>, hook: Hook<RefundBody>) -> ApiResult {
    let b = hook.body;
    own_card(&s, &hook.program, &b.card_id)?;
    if let Some(a) = &b.authorization_id {
        own_auth(&s, &hook.program, a)?;
    }
    let key = format!("{}/{}", hook.program, b.id);
    let r = s.engine.refund(
        &key,
        &b.card_id,
        b.authorization_id.as_deref(),
        amount(&b.amount)?,
        b.currency,
    );
    respond(StatusCode::CREATED, r).await
}
