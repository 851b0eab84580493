//! The loaded policies: list and reload.

use axum::extract::State;
use axum::http::StatusCode;

use super::{to_json, ApiResult};
use crate::http::dto::PolicyInfo;
use crate::http::extract::{Admin, AnyKey};
use crate::http::problem::{Problem, ProblemBody};
use crate::http::Shared;

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
    match tokio::task::spawn_blocking(move || state.reload()).await {
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
