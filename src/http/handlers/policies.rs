//! The loaded policies: list, reload, stored versions and rollback.

use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{to_json, ApiResult};
use crate::http::dto::{PolicyInfo, RollbackPolicy};
use crate::http::extract::{checked_id, Admin, AnyKey, Body, PathId};
use crate::http::problem::{Problem, ProblemBody};
use crate::http::Shared;
use crate::policy::PolicySource;
use crate::service::{PolicyActivation, Rejection};

#[utoipa::path(get, path = "/v1/policies", tag = "policies", responses((status = 200, body = Vec<PolicyInfo>)))]
pub async fn list_policies(State(s): State<Shared>, _: AnyKey) -> ApiResult {
    let set = s.engine.policies();
    let list: Vec<PolicyInfo> = set
        .policies
        .values()
        .map(|p| PolicyInfo {
            name: p.name.clone(),
            version: p.version.clone(),
            file: crate::http::server::relative(&s.config.rules_dir, &p.file)
                .display()
                .to_string(),
            currency: p.currency,
            timezone: p.timezone.to_string(),
            rules: p.rules.len(),
            tests: p.tests.len(),
        })
        .collect();
    Ok(to_json(StatusCode::OK, &list))
}

#[utoipa::path(post, path = "/v1/policies/reload", tag = "policies",
    responses((status = 200, description = "validated, tested and swapped in"), (status = 422, description = "refused; the old policies stay live", body = ProblemBody)))]
pub async fn reload(State(s): State<Shared>, _: Admin) -> ApiResult {
    let state = s.clone();
    match tokio::task::spawn_blocking(move || state.reload("admin")).await {
        Ok(Ok(versions)) => {
            let v: Vec<_> = versions
                .into_iter()
                .map(|(name, version)| serde_json::json!({"name": name, "version": version}))
                .collect();
            Ok(to_json(
                StatusCode::OK,
                &serde_json::json!({ "reloaded": v }),
            ))
        }
        Ok(Err(errors)) => Err(Problem::with_full_detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_policy",
            errors.join("\n"),
        )),
        Err(_) => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "reload failed",
        )),
    }
}

#[utoipa::path(get, path = "/v1/policies/{id}/versions", tag = "policies",
    params(("id" = String, Path, description = "policy name")),
    responses((status = 200, description = "every time a version went live, newest first", body = Vec<PolicyActivation>)))]
pub async fn versions(State(s): State<Shared>, _: Admin, PathId(id): PathId) -> ApiResult {
    let state = s.clone();
    let v = tokio::task::spawn_blocking(move || state.engine.policy_versions(&id))
        .await
        .map_err(|_| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "read failed")
        })??;
    Ok(to_json(StatusCode::OK, &v))
}

#[utoipa::path(get, path = "/v1/policies/{id}/versions/{version}", tag = "policies",
    params(("id" = String, Path, description = "policy name"), ("version" = String, Path, description = "version hash")),
    responses((status = 200, description = "the file's text and its scripts", body = PolicySource)))]
pub async fn version(
    State(s): State<Shared>,
    _: Admin,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult {
    checked_id("the policy name", &id)?;
    checked_id("the version", &version)?;
    let state = s.clone();
    let v = tokio::task::spawn_blocking(move || state.engine.policy_source(&id, &version))
        .await
        .map_err(|_| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "read failed")
        })??;
    Ok(to_json(StatusCode::OK, &v))
}

#[utoipa::path(post, path = "/v1/policies/{id}/rollback", tag = "policies",
    params(("id" = String, Path, description = "policy name")),
    request_body = RollbackPolicy,
    responses((status = 200, description = "compiled, tested and live"), (status = 422, description = "refused; the live version stays", body = ProblemBody)))]
pub async fn rollback(
    State(s): State<Shared>,
    _: Admin,
    PathId(id): PathId,
    Body(b): Body<RollbackPolicy>,
) -> ApiResult {
    let state = s.clone();
    let (policy, version) = (id.clone(), b.version.clone());
    tokio::task::spawn_blocking(move || {
        let compiled = state.engine.stored_policy(&policy, &version)?;
        // The same gate as a reload: the version's embedded tests pass or nothing changes.
        let failed: Vec<String> = crate::policy_tests::run_policy_tests(&compiled)
            .into_iter()
            .filter(|r| !r.passed)
            .map(|r| format!("test `{}` fails: {}", r.name, r.message))
            .collect();
        if !failed.is_empty() {
            return Err(Rejection::InvalidPolicy(failed.join("\n")));
        }
        state.engine.activate_policy(compiled, "admin rollback")
    })
    .await
    .map_err(|_| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "rollback failed",
        )
    })??;
    Ok(to_json(
        StatusCode::OK,
        &serde_json::json!({ "policy": id, "version": b.version, "live": true }),
    ))
}
