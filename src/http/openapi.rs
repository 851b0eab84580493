//! The route table and the OpenAPI 3.1 document. `routes()` is the single list the
//! router is built from; the document is generated from the handlers' annotations, and a
//! test checks that both name the same (method, path) pairs.

use axum::routing::{get, patch, post, put, MethodRouter};
use utoipa::OpenApi;

use super::handlers::{authorizations, cards, funding, ops, policies, programs};
use super::problem::ProblemBody;
use super::Shared;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "spendgate",
        description = "Authorization decisions and spend controls for card issuers"
    ),
    paths(
        programs::create_program,
        programs::create_api_key,
        funding::deposit,
        cards::create_cardholder,
        cards::update_cardholder,
        cards::create_card,
        cards::get_card,
        cards::activate_card,
        cards::freeze_card,
        cards::unfreeze_card,
        cards::terminate_card,
        cards::report_lost,
        cards::report_stolen,
        cards::set_controls,
        funding::fund_card,
        funding::withdraw_card,
        cards::balance,
        cards::transactions,
        authorizations::authorize,
        authorizations::simulate,
        authorizations::capture,
        authorizations::reversal,
        authorizations::advice,
        authorizations::refund,
        policies::list_policies,
        policies::reload,
        ops::healthz,
        ops::readyz,
        ops::metrics_endpoint,
        ops::openapi_json
    ),
    components(schemas(ProblemBody))
)]
pub struct ApiDoc;

/// The OpenAPI 3.1 document as JSON.
pub fn openapi() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// Every route: (method, path, handler). The router is built from this list.
pub fn routes() -> Vec<(&'static str, &'static str, MethodRouter<Shared>)> {
    vec![
        ("post", "/v1/programs", post(programs::create_program)),
        (
            "post",
            "/v1/programs/{id}/api_keys",
            post(programs::create_api_key),
        ),
        ("post", "/v1/programs/{id}/deposits", post(funding::deposit)),
        ("post", "/v1/cardholders", post(cards::create_cardholder)),
        (
            "patch",
            "/v1/cardholders/{id}",
            patch(cards::update_cardholder),
        ),
        ("post", "/v1/cards", post(cards::create_card)),
        ("get", "/v1/cards/{id}", get(cards::get_card)),
        (
            "post",
            "/v1/cards/{id}/activate",
            post(cards::activate_card),
        ),
        ("post", "/v1/cards/{id}/freeze", post(cards::freeze_card)),
        (
            "post",
            "/v1/cards/{id}/unfreeze",
            post(cards::unfreeze_card),
        ),
        (
            "post",
            "/v1/cards/{id}/terminate",
            post(cards::terminate_card),
        ),
        (
            "post",
            "/v1/cards/{id}/report_lost",
            post(cards::report_lost),
        ),
        (
            "post",
            "/v1/cards/{id}/report_stolen",
            post(cards::report_stolen),
        ),
        ("put", "/v1/cards/{id}/controls", put(cards::set_controls)),
        ("post", "/v1/cards/{id}/fund", post(funding::fund_card)),
        (
            "post",
            "/v1/cards/{id}/withdraw",
            post(funding::withdraw_card),
        ),
        ("get", "/v1/cards/{id}/balance", get(cards::balance)),
        (
            "get",
            "/v1/cards/{id}/transactions",
            get(cards::transactions),
        ),
        (
            "post",
            "/v1/authorizations",
            post(authorizations::authorize),
        ),
        ("post", "/v1/simulate", post(authorizations::simulate)),
        (
            "post",
            "/v1/authorizations/{id}/captures",
            post(authorizations::capture),
        ),
        (
            "post",
            "/v1/authorizations/{id}/reversals",
            post(authorizations::reversal),
        ),
        ("post", "/v1/advices", post(authorizations::advice)),
        ("post", "/v1/refunds", post(authorizations::refund)),
        ("get", "/v1/policies", get(policies::list_policies)),
        ("post", "/v1/policies/reload", post(policies::reload)),
        ("get", "/healthz", get(ops::healthz)),
        ("get", "/readyz", get(ops::readyz)),
        ("get", "/metrics", get(ops::metrics_endpoint)),
        ("get", "/openapi.json", get(ops::openapi_json)),
    ]
}
