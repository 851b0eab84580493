//! Errors as RFC 9457 `application/problem+json`, with stable types.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::EngineError;

/// A problem answer. `kind` is stable: clients match on `type` = `/problems/{kind}`.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProblemBody {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            kind,
            detail: detail.into(),
        }
    }
    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, kind, detail)
    }
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
    pub fn not_found(kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, kind, detail)
    }
}

fn title(kind: &str) -> String {
    let mut t = kind.replace('_', " ");
    if let Some(f) = t.get_mut(0..1) {
        f.make_ascii_uppercase();
    }
    t
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            problem_type: format!("/problems/{}", self.kind),
            title: title(self.kind),
            status: self.status.as_u16(),
            detail: self.detail,
        };
        let json = serde_json::to_string(&body).unwrap_or_default();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            json,
        )
            .into_response()
    }
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Problem {
        let status = match &e {
            EngineError::UnknownCard(_)
            | EngineError::UnknownCardholder(_)
            | EngineError::UnknownProgram(_)
            | EngineError::UnknownAuthorization(_) => StatusCode::NOT_FOUND,
            EngineError::Exists(..) | EngineError::IdempotencyConflict => StatusCode::CONFLICT,
            EngineError::UnknownPolicy(_)
            | EngineError::Invalid(_)
            | EngineError::InvalidControls(_) => StatusCode::UNPROCESSABLE_ENTITY,
            EngineError::Ledger(_) | EngineError::Transition(_) | EngineError::Money(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        };
        Problem::new(status, e.kind(), e.to_string())
    }
}
