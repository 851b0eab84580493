//! Cardholders and cards: issue, read, lifecycle, controls, balance, history.

use axum::extract::State;
use axum::http::StatusCode;

use super::{respond, to_json, ApiResult};
use crate::decision::KycStatus;
use crate::http::dto::{CreateCard, CreateCardholder, Transactions, UpdateCardholder};
use crate::http::extract::{Body, IdemKey, OwnedCard, PathId, Tenant};
use crate::http::problem::{Problem, ProblemBody};
use crate::http::Shared;
use crate::issuing::{CardAction, Cardholder, SpendingControls};
use crate::service::responses::{Balance, CardResponse};
use crate::service::{CardLimit, NewCard};

fn no_cardholder(id: &str) -> Problem {
    Problem::not_found("cardholder_not_found", format!("unknown cardholder `{id}`"))
}

#[utoipa::path(post, path = "/v1/cardholders", tag = "cards", request_body = CreateCardholder,
    responses((status = 201, body = Cardholder), (status = 409, body = ProblemBody)))]
pub async fn create_cardholder(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    IdemKey(key): IdemKey,
    Body(b): Body<CreateCardholder>,
) -> ApiResult {
    let h = Cardholder {
        id: b.id,
        program,
        name: b.name,
        kyc: b.kyc.unwrap_or(KycStatus::Pending),
        blocked: b.blocked,
    };
    respond(StatusCode::CREATED, s.engine.create_cardholder(&key, h)).await
}

#[utoipa::path(patch, path = "/v1/cardholders/{id}", tag = "cards", params(("id" = String, Path)), request_body = UpdateCardholder,
    responses((status = 200, body = Cardholder), (status = 404, body = ProblemBody)))]
pub async fn update_cardholder(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    IdemKey(key): IdemKey,
    PathId(id): PathId,
    Body(b): Body<UpdateCardholder>,
) -> ApiResult {
    if s.engine.cardholder(&program, &id).is_none() {
        return Err(no_cardholder(&id));
    }
    let r = s
        .engine
        .update_cardholder(&key, &program, &id, b.kyc, b.blocked);
    respond(StatusCode::OK, r).await
}

#[utoipa::path(post, path = "/v1/cards", tag = "cards", request_body = CreateCard,
    responses((status = 201, body = CardResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
pub async fn create_card(
    State(s): State<Shared>,
    Tenant(program): Tenant,
    IdemKey(key): IdemKey,
    Body(b): Body<CreateCard>,
) -> ApiResult {
    if s.engine.cardholder(&program, &b.cardholder_id).is_none() {
        return Err(no_cardholder(&b.cardholder_id));
    }
    let new = NewCard {
        program,
        cardholder_id: b.cardholder_id,
        kind: b.kind,
        currency: b.currency,
        controls: b.controls,
        active: b.active,
        expiry: b.expiry,
        processor_card_token: b.processor_card_token,
    };
    respond(StatusCode::CREATED, s.engine.issue_card(&key, new)).await
}

#[utoipa::path(get, path = "/v1/cards/{id}", tag = "cards", params(("id" = String, Path)),
    responses((status = 200, body = CardResponse), (status = 404, body = ProblemBody)))]
pub async fn get_card(State(s): State<Shared>, card: OwnedCard) -> ApiResult {
    Ok(to_json(StatusCode::OK, &s.engine.get_card(&card.id)?))
}

async fn card_action(s: Shared, key: String, card: OwnedCard, action: CardAction) -> ApiResult {
    respond(StatusCode::OK, s.engine.card_action(&key, &card.id, action)).await
}

macro_rules! action_route {
    ($fn_name:ident, $path:literal, $action:expr) => {
        #[utoipa::path(post, path = $path, tag = "cards", params(("id" = String, Path)),
            responses((status = 200, body = CardResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
        pub async fn $fn_name(
            State(s): State<Shared>,
            IdemKey(key): IdemKey,
            card: OwnedCard,
        ) -> ApiResult {
            card_action(s, key, card, $action).await
        }
    };
}
action_route!(
    activate_card,
    "/v1/cards/{id}/activate",
    CardAction::Activate
);
action_route!(freeze_card, "/v1/cards/{id}/freeze", CardAction::Freeze);
action_route!(
    unfreeze_card,
    "/v1/cards/{id}/unfreeze",
    CardAction::Unfreeze
);
action_route!(
    terminate_card,
    "/v1/cards/{id}/terminate",
    CardAction::Terminate
);
action_route!(
    report_lost,
    "/v1/cards/{id}/report_lost",
    CardAction::ReportLost
);
action_route!(
    report_stolen,
    "/v1/cards/{id}/report_stolen",
    CardAction::ReportStolen
);

#[utoipa::path(put, path = "/v1/cards/{id}/controls", tag = "cards", params(("id" = String, Path)), request_body = SpendingControls,
    responses((status = 200, body = CardResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
pub async fn set_controls(
    State(s): State<Shared>,
    IdemKey(key): IdemKey,
    card: OwnedCard,
    Body(c): Body<SpendingControls>,
) -> ApiResult {
    respond(StatusCode::OK, s.engine.set_controls(&key, &card.id, c)).await
}

#[utoipa::path(get, path = "/v1/cards/{id}/balance", tag = "cards", params(("id" = String, Path)),
    responses((status = 200, body = Balance), (status = 404, body = ProblemBody)))]
pub async fn balance(State(s): State<Shared>, card: OwnedCard) -> ApiResult {
    Ok(to_json(StatusCode::OK, &s.engine.balance(&card.id)?))
}

#[utoipa::path(get, path = "/v1/cards/{id}/limits", tag = "cards", params(("id" = String, Path)),
    responses((status = 200, description = "every velocity rule on the card: used, left, and when capacity comes back", body = Vec<CardLimit>), (status = 404, body = ProblemBody)))]
pub async fn limits(State(s): State<Shared>, card: OwnedCard) -> ApiResult {
    Ok(to_json(
        StatusCode::OK,
        &s.engine.card_limits(None, &card.id)?,
    ))
}

#[utoipa::path(get, path = "/v1/cards/{id}/transactions", tag = "cards", params(("id" = String, Path)),
    responses((status = 200, body = Transactions), (status = 404, body = ProblemBody), (status = 503, body = ProblemBody)))]
pub async fn transactions(State(s): State<Shared>, card: OwnedCard) -> ApiResult {
    let engine = s.engine.clone();
    let id = card.id.clone();
    // A SQLite read: off the async runtime.
    let history = tokio::task::spawn_blocking(move || engine.card_history(&id))
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "shutting down",
            )
        })??;
    let t = Transactions {
        card_id: card.id,
        authorizations: history.decisions,
        transfers: history.transfers,
    };
    Ok(to_json(StatusCode::OK, &t))
}
