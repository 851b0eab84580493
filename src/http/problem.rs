//! Errors as RFC 9457 `application/problem+json`, with stable types.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::Rejection;

/// Longest problem detail, in bytes.
const DETAIL_LEN_MAX: usize = 240;

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
        let mut detail: String = detail.into();
        // Details never echo long input back (a parser's message may quote it).
        if detail.len() > DETAIL_LEN_MAX {
            let cut = (0..=DETAIL_LEN_MAX)
                .rev()
                .find(|i| detail.is_char_boundary(*i))
                .unwrap_or(0);
            detail.truncate(cut);
            detail.push('…');
        }
        Problem {
            status,
            kind,
            detail,
        }
    }
    /// A problem whose detail is the server's own text (policy errors), kept whole.
    pub fn with_full_detail(
        status: StatusCode,
        kind: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
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

impl From<Rejection> for Problem {
    /// Every business reason has its own status and stable type; no catch-all.
    fn from(e: Rejection) -> Problem {
        use Rejection as R;
        use StatusCode as S;
        let (status, kind) = match &e {
            R::UnknownCard(_) => (S::NOT_FOUND, "card_not_found"),
            R::UnknownCardholder(_) => (S::NOT_FOUND, "cardholder_not_found"),
            R::UnknownProgram(_) => (S::NOT_FOUND, "program_not_found"),
            R::UnknownAuthorization(_) => (S::NOT_FOUND, "authorization_not_found"),
            R::UnknownPolicy(_) => (S::UNPROCESSABLE_ENTITY, "policy_not_found"),
            R::UnknownPolicyVersion { .. } => (S::NOT_FOUND, "policy_version_not_found"),
            R::InvalidPolicy(_) => (S::UNPROCESSABLE_ENTITY, "invalid_policy"),
            R::AlreadyExists { .. } => (S::CONFLICT, "already_exists"),
            R::IdempotencyConflict => (S::CONFLICT, "idempotency_conflict"),
            R::InvalidRequest(_) => (S::UNPROCESSABLE_ENTITY, "invalid_request"),
            R::InvalidControls(_) => (S::UNPROCESSABLE_ENTITY, "invalid_controls"),
            R::NonPositiveAmount | R::NotADecimal(_) | R::TooPrecise { .. } => {
                (S::UNPROCESSABLE_ENTITY, "invalid_amount")
            }
            R::UnknownCurrency(_) => (S::UNPROCESSABLE_ENTITY, "invalid_currency"),
            R::AmountOverflow => (S::UNPROCESSABLE_ENTITY, "amount_overflow"),
            R::NoFxRate { .. } => (S::UNPROCESSABLE_ENTITY, "fx_rate_unavailable"),
            R::CurrencyMismatch { .. } => (S::UNPROCESSABLE_ENTITY, "currency_mismatch"),
            R::InsufficientFunds { .. } | R::InsufficientProgramFunds { .. } => {
                (S::UNPROCESSABLE_ENTITY, "insufficient_funds")
            }
            R::CaptureExceedsHold { .. } => (S::UNPROCESSABLE_ENTITY, "capture_exceeds_hold"),
            R::ReversalExceedsHold { .. } => (S::UNPROCESSABLE_ENTITY, "reversal_exceeds_hold"),
            R::RefundExceedsCaptured { .. } => (S::UNPROCESSABLE_ENTITY, "refund_exceeds_captured"),
            R::HoldNotPending { .. } => (S::UNPROCESSABLE_ENTITY, "hold_not_pending"),
            R::CardTerminated => (S::UNPROCESSABLE_ENTITY, "card_terminated"),
            R::PendingHolds(_) => (S::UNPROCESSABLE_ENTITY, "pending_holds"),
            R::NegativeBalance(_) => (S::UNPROCESSABLE_ENTITY, "negative_balance"),
            R::InvalidTransition { .. } => (S::UNPROCESSABLE_ENTITY, "invalid_transition"),
            R::HistoryUnavailable => (S::SERVICE_UNAVAILABLE, "history_unavailable"),
            R::UnknownWebhookEndpoint(_) => (S::NOT_FOUND, "webhook_endpoint_not_found"),
            R::UnknownDelivery(_) => (S::NOT_FOUND, "delivery_not_found"),
        };
        Problem::new(status, kind, e.to_string())
    }
}
