//! Programs and their API keys (admin).

use axum::extract::State;
use axum::http::StatusCode;

use super::{respond, to_json, ApiResult};
use crate::http::dto::{ApiKeyCreated, CreateProgram};
use crate::http::extract::{Admin, Body, PathId};
use crate::http::problem::ProblemBody;
use crate::http::Shared;
use crate::issuing::Program;

#[utoipa::path(post, path = "/v1/programs", tag = "admin", request_body = CreateProgram,
    responses((status = 201, body = Program), (status = 401, body = ProblemBody), (status = 422, body = ProblemBody)))]
pub async fn create_program(
    State(s): State<Shared>,
    _: Admin,
    Body(b): Body<CreateProgram>,
) -> ApiResult {
    let p = Program {
        id: b.id,
        policy: b.policy,
        currency: b.currency,
    };
    respond(StatusCode::CREATED, s.engine.create_program(p)).await
}

#[utoipa::path(post, path = "/v1/programs/{id}/api_keys", tag = "admin", params(("id" = String, Path)),
    responses((status = 201, body = ApiKeyCreated), (status = 404, body = ProblemBody)))]
pub async fn create_api_key(State(s): State<Shared>, _: Admin, PathId(id): PathId) -> ApiResult {
    let key = s.engine.create_api_key(&id)?.durable().await;
    let created = ApiKeyCreated {
        program: id,
        api_key: key,
    };
    Ok(to_json(StatusCode::CREATED, &created))
}
