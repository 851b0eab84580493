//! The route table and the OpenAPI 3.1 document. `routes()` is the single list the
//! router is built from; the document is generated from the handlers' annotations, and a
//! test checks that both name the same (method, path) pairs.

use axum::routing::{delete, get, patch, post, put, MethodRouter};
use utoipa::OpenApi;

use super::contract::{complete, Access, Contract};
use super::handlers::{authorizations, cards, funding, hooks, ops, policies, programs, webhooks};
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
        hooks::put_hook,
        hooks::list_hooks,
        hooks::delete_hook,
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
        hooks::set_card_token,
        funding::fund_card,
        funding::withdraw_card,
        cards::balance,
        cards::limits,
        cards::transactions,
        authorizations::authorize,
        authorizations::simulate,
        authorizations::capture,
        authorizations::reversal,
        authorizations::advice,
        authorizations::refund,
        hooks::processor_hook,
        webhooks::create_endpoint,
        webhooks::list_endpoints,
        webhooks::get_endpoint,
        webhooks::update_endpoint,
        webhooks::delete_endpoint,
        webhooks::rotate_secret,
        webhooks::deliveries,
        webhooks::retry_delivery,
        webhooks::set_alerts,
        webhooks::get_alerts,
        policies::list_policies,
        policies::reload,
        policies::versions,
        policies::version,
        policies::rollback,
        ops::healthz,
        ops::readyz,
        ops::metrics_endpoint,
        ops::openapi_json
    ),
    components(schemas(
        ProblemBody,
        crate::processors::Processor,
        crate::service::events::Event
    ))
)]
pub struct ApiDoc;

/// The OpenAPI 3.1 document as JSON: generated from the handlers' annotations, then
/// completed with every route's contract (keys, headers, problem answers).
pub fn openapi() -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let contracts: Vec<(&str, &str, Contract)> = routes()
        .into_iter()
        .map(|r| (r.method, r.path, r.contract))
        .collect();
    complete(&mut doc, &contracts);
    add_webhooks(&mut doc);
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// The events spendgate sends, as OpenAPI 3.1 `webhooks`: one per type, each body an
/// `Event` (its `type` constrained to the known types).
fn add_webhooks(doc: &mut serde_json::Value) {
    use crate::service::events::EVENT_TYPES;
    use serde_json::json;
    if let Some(t) = doc["components"]["schemas"]["Event"]["properties"].get_mut("type") {
        t["enum"] = json!(EVENT_TYPES);
    }
    let hooks: serde_json::Map<String, serde_json::Value> = EVENT_TYPES
        .iter()
        .map(|kind| {
            (
                (*kind).to_string(),
                json!({"post": {
                    "summary": kind,
                    "description": "Sent to every enabled endpoint of the program that wants this type; signed with Standard Webhooks (`webhook-id` = the event id, `webhook-timestamp`, `webhook-signature`). At least once: receivers deduplicate by id.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Event"}}}},
                    "responses": {"2XX": {"description": "received; anything else (or no answer within the timeout) is retried"}}
                }}),
            )
        })
        .collect();
    doc["webhooks"] = serde_json::Value::Object(hooks);
}

/// One route: method, path, handler and what it requires (see [`Contract`]).
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub handler: MethodRouter<Shared>,
    pub contract: Contract,
}

/// Every route. The router is built from this list, and the document completed from it.
pub fn routes() -> Vec<Route> {
    use Access::*;
    let r = |method, path, handler, contract| Route {
        method,
        path,
        handler,
        contract,
    };
    vec![
        r(
            "post",
            "/v1/programs",
            post(programs::create_program),
            Contract::new(Admin).json(),
        ),
        r(
            "post",
            "/v1/programs/{id}/api_keys",
            post(programs::create_api_key),
            Contract::new(Admin).path_id(),
        ),
        r(
            "put",
            "/v1/programs/{id}/hooks/{processor}",
            put(hooks::put_hook),
            Contract::new(Admin).json().path_id(),
        ),
        r(
            "get",
            "/v1/programs/{id}/hooks",
            get(hooks::list_hooks),
            Contract::new(Admin).path_id(),
        ),
        r(
            "delete",
            "/v1/programs/{id}/hooks/{processor}",
            delete(hooks::delete_hook),
            Contract::new(Admin).path_id(),
        ),
        r(
            "post",
            "/v1/programs/{id}/deposits",
            post(funding::deposit),
            Contract::new(Program).idempotent().json().path_id(),
        ),
        r(
            "post",
            "/v1/cardholders",
            post(cards::create_cardholder),
            Contract::new(Program).idempotent().json(),
        ),
        r(
            "patch",
            "/v1/cardholders/{id}",
            patch(cards::update_cardholder),
            Contract::new(Program).idempotent().json().path_id(),
        ),
        r(
            "post",
            "/v1/cards",
            post(cards::create_card),
            Contract::new(Program).idempotent().json(),
        ),
        r(
            "get",
            "/v1/cards/{id}",
            get(cards::get_card),
            Contract::new(Program).path_id(),
        ),
        r(
            "post",
            "/v1/cards/{id}/activate",
            post(cards::activate_card),
            Contract::new(Program).idempotent().path_id(),
        ),
        r(
            "post",
            "/v1/cards/{id}/freeze",
            post(cards::freeze_card),
            Contract::new(Program).idempotent().path_id(),
        ),
        r(
            "post",
            "/v1/cards/{id}/unfreeze",
            post(cards::unfreeze_card),
            Contract::new(Program).idempotent().path_id(),
        ),
        r(
            "post",
            "/v1/cards/{id}/terminate",
            post(cards::terminate_card),
            Contract::new(Program).idempotent().path_id(),
        ),
        r(
            "post",
            "/v1/cards/{id}/report_lost",
            post(cards::report_lost),
            Contract::new(Program).idempotent().path_id(),
        ),
        r(
            "post",
            "/v1/cards/{id}/report_stolen",
            post(cards::report_stolen),
            Contract::new(Program).idempotent().path_id(),
        ),
        r(
            "put",
            "/v1/cards/{id}/controls",
            put(cards::set_controls),
            Contract::new(Program).idempotent().json().path_id(),
        ),
        r(
            "put",
            "/v1/cards/{id}/processor_card_token",
            put(hooks::set_card_token),
            Contract::new(Program).idempotent().json().path_id(),
        ),
        r(
            "post",
            "/v1/cards/{id}/fund",
            post(funding::fund_card),
            Contract::new(Program).idempotent().json().path_id(),
        ),
        r(
            "post",
            "/v1/cards/{id}/withdraw",
            post(funding::withdraw_card),
            Contract::new(Program).idempotent().json().path_id(),
        ),
        r(
            "get",
            "/v1/cards/{id}/balance",
            get(cards::balance),
            Contract::new(Program).path_id(),
        ),
        r(
            "get",
            "/v1/cards/{id}/limits",
            get(cards::limits),
            Contract::new(Program).path_id(),
        ),
        r(
            "get",
            "/v1/cards/{id}/transactions",
            get(cards::transactions),
            Contract::new(Program).path_id(),
        ),
        r(
            "post",
            "/v1/authorizations",
            post(authorizations::authorize),
            Contract::new(Hook).json(),
        ),
        r(
            "post",
            "/v1/simulate",
            post(authorizations::simulate),
            Contract::new(Program).json(),
        ),
        r(
            "post",
            "/v1/authorizations/{id}/captures",
            post(authorizations::capture),
            Contract::new(Hook).idempotent().json().path_id(),
        ),
        r(
            "post",
            "/v1/authorizations/{id}/reversals",
            post(authorizations::reversal),
            Contract::new(Hook).idempotent().json().path_id(),
        ),
        r(
            "post",
            "/v1/advices",
            post(authorizations::advice),
            Contract::new(Hook).json(),
        ),
        r(
            "post",
            "/v1/refunds",
            post(authorizations::refund),
            Contract::new(Hook).json(),
        ),
        r(
            "post",
            "/v1/hooks/{program}/{processor}",
            post(hooks::processor_hook).layer(axum::extract::DefaultBodyLimit::max(
                hooks::HOOK_BODY_BYTES_MAX,
            )),
            Contract::new(Processor),
        ),
        r(
            "post",
            "/v1/webhook_endpoints",
            post(webhooks::create_endpoint),
            Contract::new(Program).json(),
        ),
        r(
            "get",
            "/v1/webhook_endpoints",
            get(webhooks::list_endpoints),
            Contract::new(Program),
        ),
        r(
            "get",
            "/v1/webhook_endpoints/{id}",
            get(webhooks::get_endpoint),
            Contract::new(Program).path_id(),
        ),
        r(
            "patch",
            "/v1/webhook_endpoints/{id}",
            patch(webhooks::update_endpoint),
            Contract::new(Program).json().path_id(),
        ),
        r(
            "delete",
            "/v1/webhook_endpoints/{id}",
            delete(webhooks::delete_endpoint),
            Contract::new(Program).path_id(),
        ),
        r(
            "post",
            "/v1/webhook_endpoints/{id}/rotate_secret",
            post(webhooks::rotate_secret),
            Contract::new(Program).path_id(),
        ),
        r(
            "get",
            "/v1/webhook_endpoints/{id}/deliveries",
            get(webhooks::deliveries),
            Contract::new(Program).path_id(),
        ),
        r(
            "post",
            "/v1/webhook_endpoints/{id}/deliveries/{event_id}/retry",
            post(webhooks::retry_delivery),
            Contract::new(Program).path_id(),
        ),
        r(
            "put",
            "/v1/alerts",
            put(webhooks::set_alerts),
            Contract::new(Program).json(),
        ),
        r(
            "get",
            "/v1/alerts",
            get(webhooks::get_alerts),
            Contract::new(Program),
        ),
        r(
            "get",
            "/v1/policies",
            get(policies::list_policies),
            Contract::new(AnyKey),
        ),
        r(
            "post",
            "/v1/policies/reload",
            post(policies::reload),
            Contract::new(Admin),
        ),
        r(
            "get",
            "/v1/policies/{id}/versions",
            get(policies::versions),
            Contract::new(Admin).path_id(),
        ),
        r(
            "get",
            "/v1/policies/{id}/versions/{version}",
            get(policies::version),
            Contract::new(Admin).path_id(),
        ),
        r(
            "post",
            "/v1/policies/{id}/rollback",
            post(policies::rollback),
            Contract::new(Admin).path_id().json(),
        ),
        r("get", "/healthz", get(ops::healthz), Contract::public()),
        r("get", "/readyz", get(ops::readyz), Contract::public()),
        r(
            "get",
            "/metrics",
            get(ops::metrics_endpoint),
            Contract::public(),
        ),
        r(
            "get",
            "/openapi.json",
            get(ops::openapi_json),
            Contract::public(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn nulls(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Null => out.push(at.to_string()),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| nulls(x, &format!("{at}/{i}"), out)),
            Value::Object(o) => o
                .iter()
                .for_each(|(k, x)| nulls(x, &format!("{at}/{k}"), out)),
            _ => {}
        }
    }

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                    out.push(r.to_string());
                }
                o.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_event_type_is_a_documented_webhook() {
        let doc: Value = serde_json::from_str(&super::openapi()).unwrap();
        for kind in crate::service::events::EVENT_TYPES {
            assert_eq!(
                doc["webhooks"][kind]["post"]["requestBody"]["content"]["application/json"]
                    ["schema"]["$ref"],
                "#/components/schemas/Event"
            );
        }
        assert!(
            doc["components"]["schemas"]["Event"]["properties"]["type"]["enum"]
                .as_array()
                .unwrap()
                .contains(&"balance.low".into())
        );
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        let doc: Value = serde_json::from_str(&super::openapi()).unwrap();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} does not resolve"
            );
        }
    }

    #[test]
    fn the_document_has_no_null_and_problems_only_as_problem_json() {
        let text = super::openapi();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let mut found = Vec::new();
        nulls(&doc, "", &mut found);
        assert!(found.is_empty(), "null at {found:?}");
        let mut plain = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, r) in op["responses"].as_object().unwrap() {
                    if r["content"]["application/json"]["schema"]["$ref"]
                        == "#/components/schemas/ProblemBody"
                    {
                        plain.push(format!("{method} {path} {status}"));
                    }
                }
            }
        }
        assert!(plain.is_empty(), "problems as plain JSON: {plain:?}");
        assert_eq!(
            doc["components"]["securitySchemes"]["admin"]["scheme"],
            "bearer"
        );
        // A created card's id leads to the card's operations; ids are constrained.
        let links = &doc["paths"]["/v1/cards"]["post"]["responses"]["201"]["links"];
        assert_eq!(links["get_card"]["parameters"]["id"], "$response.body#/id");
        let id = &doc["components"]["schemas"]["CreateCard"]["properties"]["cardholder_id"];
        assert_eq!(id["maxLength"], 64);
        let currency = &doc["components"]["schemas"]["Deposit"]["properties"]["currency"];
        assert!(currency["enum"].as_array().unwrap().contains(&"NGN".into()));
    }
}
