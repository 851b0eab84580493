//! Money in and out: program deposits, card top-ups and withdrawals.

use axum::extract::State;
use axum::http::StatusCode;

use super::{respond, ApiResult};
use crate::http::dto::{AmountBody, Deposit};
use crate::http::extract::{amount, Body, IdemKey, OwnedCard, PathId, Tenant};
use crate::http::problem::{Problem, ProblemBody};
use crate::http::Shared;
use crate::ledger::TransferKind;
use crate::service::responses::TransferResponse;

#[utoipa::path(post, path = "/v1/programs/{id}/deposits", tag = "funding", params(("id" = String, Path)), request_body = Deposit,
    responses((status = 201, body = TransferResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
pub async fn deposit(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    IdemKey(key): IdemKey,
    PathId(id): PathId,
    Body(b): Body<Deposit>,
) -> ApiResult {
    if program != id {
        return Err(Problem::not_found(
            "program_not_found",
            format!("unknown program `{id}`"),
        ));
    }
    let r = s
        .engine
        .deposit(&key, &program, amount(&b.amount)?, b.currency);
    respond(StatusCode::CREATED, r).await
}

#[utoipa::path(post, path = "/v1/cards/{id}/fund", tag = "funding", params(("id" = String, Path)), request_body = AmountBody,
    responses((status = 201, body = TransferResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
pub async fn fund_card(
    State(s): State<Shared>,
    IdemKey(key): IdemKey,
    card: OwnedCard,
    Body(b): Body<AmountBody>,
) -> ApiResult {
    let r = s
        .engine
        .move_funds(&key, &card.id, TransferKind::TopUp, amount(&b.amount)?);
    respond(StatusCode::CREATED, r).await
}

#[utoipa::path(post, path = "/v1/cards/{id}/withdraw", tag = "funding", params(("id" = String, Path)), request_body = AmountBody,
    responses((status = 201, body = TransferResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
pub async fn withdraw_card(
    State(s): State<Shared>,
    IdemKey(key): IdemKey,
    card: OwnedCard,
    Body(b): Body<AmountBody>,
) -> ApiResult {
    let r = s
        .engine
        .move_funds(&key, &card.id, TransferKind::Withdrawal, amount(&b.amount)?);
    respond(StatusCode::CREATED, r).await
}
