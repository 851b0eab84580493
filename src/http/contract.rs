//! What each route requires and can answer, beyond its handler's annotation: which key
//! (security scheme), which headers, and which problem answers its extractors produce.
//! The route table carries a [`Contract`] per route, and [`complete`] writes it into the
//! generated OpenAPI document, so the document and the router cannot drift apart.

use serde_json::{json, Map, Value};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key (health, readiness, metrics, this document).
    Public,
    /// The operator's admin key.
    Admin,
    /// A program's API key (the tenant); rate limited per program.
    Program,
    /// A program's API key, plus the Standard Webhooks signature headers when hook secrets
    /// are configured (a processor's hook).
    Hook,
    /// Either key.
    AnyKey,
    /// A processor's own authentication, configured per program and processor: Lithic's
    /// Standard Webhooks signature, `Stripe-Signature`, HTTP Basic (Marqeta), HTTP Basic
    /// and `HmacSignature` (Adyen).
    Processor,
}

/// A route's requirements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contract {
    pub access: Access,
    /// An `Idempotency-Key` header is required (a hook may send `webhook-id` instead).
    pub idempotency_key: bool,
    /// The route reads a JSON body.
    pub json_body: bool,
    /// The route names a resource in its path (`{id}`).
    pub path_id: bool,
}

impl Contract {
    pub const fn public() -> Contract {
        Contract {
            access: Access::Public,
            idempotency_key: false,
            json_body: false,
            path_id: false,
        }
    }
    pub const fn new(access: Access) -> Contract {
        Contract {
            access,
            ..Contract::public()
        }
    }
    pub const fn idempotent(self) -> Contract {
        Contract {
            idempotency_key: true,
            ..self
        }
    }
    pub const fn json(self) -> Contract {
        Contract {
            json_body: true,
            ..self
        }
    }
    pub const fn path_id(self) -> Contract {
        Contract {
            path_id: true,
            ..self
        }
    }

    /// Every status this route can answer with a problem, and why.
    pub fn problems(&self) -> Vec<(u16, &'static str)> {
        let mut p = Vec::new();
        let keyed = self.access != Access::Public;
        if keyed || self.json_body || self.idempotency_key || self.path_id {
            p.push((
                400,
                "malformed request: body, id, path or Idempotency-Key (`invalid_body`, `invalid_id`, `invalid_path`, `missing_idempotency_key`, `invalid_idempotency_key`)",
            ));
        }
        if keyed {
            p.push((
                401,
                "missing or unknown API key, or a bad hook signature (`unauthorized`)",
            ));
        }
        if matches!(self.access, Access::Program | Access::Hook | Access::Admin) {
            p.push((403, "the other kind of key (`forbidden`)"));
        }
        if self.path_id || keyed {
            p.push((
                404,
                "no such resource for this caller (`card_not_found`, `program_not_found`, …)",
            ));
        }
        if self.idempotency_key || self.json_body {
            p.push((
                409,
                "the Idempotency-Key was used with another request, or the resource exists (`idempotency_conflict`, `already_exists`)",
            ));
        }
        if self.json_body {
            p.push((
                408,
                "the body did not arrive within `read_timeout_ms` (`body_timeout`)",
            ));
            p.push((413, "body larger than allowed (`body_too_large`)"));
            p.push((415, "body not JSON (`unsupported_media_type`)"));
        }
        if keyed {
            p.push((
                422,
                "a business rule refused it (`invalid_amount`, `insufficient_funds`, `capture_exceeds_hold`, `card_number_in_id`, …)",
            ));
        }
        if self.access == Access::Processor {
            return vec![
                (400, "unreadable hook body (`invalid_hook_payload`); Stripe: bad signature (`invalid_signature`)"),
                (401, "the processor's authentication does not match, or no such hook (`invalid_signature`)"),
                (404, "no such processor (`route_not_found`)"),
                (408, "the body did not arrive within `read_timeout_ms` (`body_timeout`)"),
                (413, "body larger than allowed (`body_too_large`)"),
                (429, "the program's request rate is over its quota (`rate_limited`)"),
            ];
        }
        if matches!(self.access, Access::Program | Access::Hook) {
            p.push((
                429,
                "the program's request rate is over its quota (`rate_limited`)",
            ));
        }
        p
    }
}

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemBody"}}}
    })
}

fn header(name: &str, required: bool, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "header", "required": required, "description": description, "schema": schema})
}

/// Constraints the server enforces on request fields, by field name: what a client
/// must send for a request to be well formed (ids, amounts, codes).
fn constraint(field: &str) -> Option<Value> {
    let id = json!({"minLength": 1, "maxLength": crate::domain::ID_LEN_MAX, "pattern": "^[!-~]+$",
        "description": "1 to 64 printable ASCII characters; never a card number"});
    let amount = json!({
        "pattern": format!("^[0-9]{{1,{}}}(\\.[0-9]{{1,{}}})?$", crate::money::AMOUNT_INTEGER_DIGITS_MAX,
            // Beyond 28 significant digits no decimal is exact; minor units stop far sooner.
            28 - crate::money::AMOUNT_INTEGER_DIGITS_MAX),
        "description": "a positive decimal in major units, at most the currency's minor units"});
    let currencies: Vec<&str> = crate::money::Currency::all().map(|c| c.code()).collect();
    let countries: Vec<String> = crate::domain::Country::all()
        .map(|c| c.as_str().to_string())
        .collect();
    Some(match field {
        "id"
        | "card_id"
        | "cardholder_id"
        | "authorization_id"
        | "processor_card_token"
        | "event_id" => id,
        "velocity_near_percent" => json!({"minimum": 1, "maximum": 100}),
        "amount" | "amount_max" => amount,
        "currency" => json!({"enum": currencies}),
        "country" | "allowed_countries" | "blocked_countries" => json!({"enum": countries}),
        "mcc" | "allowed_categories" | "blocked_categories" => json!({"pattern": "^[0-9]{4}$"}),
        // Alert thresholds: currency code → amount.
        "balance_low" | "funding_low" => {
            json!({"propertyNames": {"enum": currencies}, "additionalProperties": {"type": "string", "pattern": amount["pattern"]}})
        }
        "expiry" => json!({"pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$"}),
        "name" => json!({"minLength": 1, "maxLength": 128}),
        "policy" => json!({"minLength": 1, "maxLength": crate::domain::ID_LEN_MAX}),
        "timestamp" => json!({"format": "date-time"}),
        "version" => json!({"pattern": "^[0-9a-f]{12}$",
            "description": "a policy version: 12 lowercase hex digits of its content hash"}),
        _ => return None,
    })
}

/// Adds `c` to a property schema: to the string itself, to its array's items, or to the
/// string branch of a nullable type.
fn constrain(prop: &mut Value, c: &Value) {
    let is = |t: &str| {
        prop["type"] == t
            || prop["type"]
                .as_array()
                .is_some_and(|a| a.contains(&json!(t)))
    };
    if is("integer") {
        if let (Some(p), Some(c)) = (prop.as_object_mut(), c.as_object()) {
            p.extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        return;
    }
    if prop["type"] == "object" {
        if let (Some(p), Some(c)) = (prop.as_object_mut(), c.as_object()) {
            p.extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        return;
    }
    if prop["type"] == "array"
        || prop["type"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("array")))
    {
        if let Some(items) = prop.get_mut("items") {
            constrain(items, c);
        }
        return;
    }
    let is_string = prop["type"] == "string"
        || prop["type"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("string")));
    if let (true, Some(p), Some(c)) = (is_string, prop.as_object_mut(), c.as_object()) {
        for (k, v) in c {
            if k == "description" && p.contains_key("description") {
                continue;
            }
            p.insert(k.clone(), v.clone());
        }
    }
}

/// The request bodies' schemas, and every schema they reference, get the constraints the
/// server enforces; path ids too. Response schemas are left as they are.
fn constrain_requests(doc: &mut Value) {
    let mut pending: Vec<String> = Vec::new();
    let refs = |v: &Value, out: &mut Vec<String>| {
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                        out.push(r.trim_start_matches("#/components/schemas/").to_string());
                    }
                    o.values().for_each(|x| walk(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        walk(v, out)
    };
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|i| i.values_mut())
        {
            if let Some(body) = op.get("requestBody") {
                refs(body, &mut pending);
            }
            for p in op
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let name = p["name"].as_str().unwrap_or_default().to_string();
                if p["in"] == "path" && matches!(name.as_str(), "id" | "version" | "event_id") {
                    if let Some(c) = constraint(&name) {
                        constrain(&mut p["schema"], &c);
                    }
                }
            }
        }
    }
    let mut done = std::collections::BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !done.insert(name.clone()) {
            continue;
        }
        let schema = &mut doc["components"]["schemas"][&name];
        refs(schema, &mut pending);
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            for (field, prop) in props.iter_mut() {
                if let Some(c) = constraint(field) {
                    constrain(prop, &c);
                }
            }
        }
    }
}

/// Where a created resource's id goes next: (method, path, status, the id in the answer,
/// operations that take it as their `{id}`). Clients and stateful testers follow these.
const LINKS: &[(&str, &str, &str, &str, &[&str])] = &[
    (
        "post",
        "/v1/cards",
        "201",
        "$response.body#/id",
        &[
            "get_card",
            "balance",
            "transactions",
            "activate_card",
            "freeze_card",
            "unfreeze_card",
            "terminate_card",
            "report_lost",
            "report_stolen",
            "set_controls",
            "fund_card",
            "withdraw_card",
        ],
    ),
    (
        "post",
        "/v1/cardholders",
        "201",
        "$response.body#/id",
        &["update_cardholder"],
    ),
    (
        "post",
        "/v1/programs",
        "201",
        "$response.body#/id",
        &["create_api_key"],
    ),
    (
        "post",
        "/v1/authorizations",
        "200",
        "$response.body#/authorization_id",
        &["capture", "reversal"],
    ),
];

fn add_links(doc: &mut Value) {
    for (method, path, status, id, targets) in LINKS {
        let response = &mut doc["paths"][*path][*method]["responses"][*status];
        if !response.is_object() {
            continue;
        }
        let links: Map<String, Value> = targets
            .iter()
            .map(|op| {
                (
                    (*op).to_string(),
                    json!({"operationId": op, "parameters": {"id": id}}),
                )
            })
            .collect();
        response["links"] = Value::Object(links);
    }
}

/// Writes every route's contract into the generated document: security schemes and
/// requirements, required headers, and each possible problem answer as
/// `application/problem+json`.
pub fn complete(doc: &mut Value, routes: &[(&str, &str, Contract)]) {
    constrain_requests(doc);
    add_links(doc);
    doc["components"]["securitySchemes"] = json!({
        "admin": {"type": "http", "scheme": "bearer", "description": "The operator's admin key (`SPENDGATE_ADMIN_KEY`)."},
        "program": {"type": "http", "scheme": "bearer", "description": "A program's API key (`POST /v1/programs/{id}/api_keys`)."},
        "processor_basic": {"type": "http", "scheme": "basic", "description": "Marqeta and Adyen: the HTTP Basic credentials set with `PUT /v1/programs/{id}/hooks/{processor}` (Adyen also signs the body: `HmacSignature`)."},
        "processor_signature": {"type": "apiKey", "in": "header", "name": "webhook-signature", "description": "Lithic: Standard Webhooks `webhook-id`/`webhook-timestamp`/`webhook-signature`; Stripe: `Stripe-Signature` (`t=…,v1=…`). Secrets set with `PUT /v1/programs/{id}/hooks/{processor}`."}
    });
    if let Some(t) = doc["components"]["schemas"]["ProblemBody"]["properties"].get_mut("type") {
        t["pattern"] = json!("^/problems/[a-z_]+$");
        t["description"] = json!("stable: clients match on it");
    }
    // Problems are never plain JSON, whatever a handler's annotation said.
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|i| i.values_mut())
        {
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            for c in responses
                .values_mut()
                .filter_map(|r| r.get_mut("content"))
                .filter_map(Value::as_object_mut)
            {
                let is_problem = c
                    .get("application/json")
                    .is_some_and(|j| j["schema"]["$ref"] == "#/components/schemas/ProblemBody");
                if is_problem {
                    if let Some(v) = c.remove("application/json") {
                        c.insert("application/problem+json".into(), v);
                    }
                }
            }
        }
    }
    for (method, path, c) in routes {
        let Some(op) = doc["paths"][*path][*method].as_object_mut() else {
            continue;
        };
        let security = match c.access {
            Access::Public => json!([]),
            Access::Admin => json!([{"admin": []}]),
            Access::Program | Access::Hook => json!([{"program": []}]),
            Access::AnyKey => json!([{"admin": []}, {"program": []}]),
            Access::Processor => json!([{"processor_basic": []}, {"processor_signature": []}]),
        };
        op.insert("security".into(), security);
        let params = op
            .entry("parameters")
            .or_insert_with(|| Value::Array(vec![]));
        if let Some(params) = params.as_array_mut() {
            if c.idempotency_key {
                params.push(header(
                    "Idempotency-Key",
                    true,
                    "Makes a retry safe: the same key and body replay the first answer; the same key with another body is 409. A signed hook may send `webhook-id` instead.",
                    json!({"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[!-~]+$"}),
                ));
            }
            if c.access == Access::Hook {
                for (name, what) in [
                    ("webhook-id", "Standard Webhooks message id (required when hook secrets are configured; the idempotency key of a signed hook)"),
                    ("webhook-timestamp", "Standard Webhooks timestamp, Unix seconds, within 5 minutes"),
                    ("webhook-signature", "Standard Webhooks `v1,<base64 HMAC-SHA256>` over `id.timestamp.body`"),
                ] {
                    // Unconstrained: without hook secrets the server ignores these headers.
                    params.push(header(name, false, what, json!({"type": "string"})));
                }
            }
        }
        let responses = op
            .entry("responses")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(responses) = responses.as_object_mut() {
            for (status, why) in c.problems() {
                responses.insert(status.to_string(), problem_response(why));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyed_json_route_declares_its_key_headers_and_problems() {
        let mut doc =
            json!({"paths": {"/v1/x": {"post": {"responses": {"201": {"description": "ok"}}}}}});
        let c = Contract::new(Access::Program).idempotent().json();
        complete(&mut doc, &[("post", "/v1/x", c)]);
        let op = &doc["paths"]["/v1/x"]["post"];
        assert_eq!(op["security"], json!([{"program": []}]));
        assert_eq!(op["parameters"][0]["name"], "Idempotency-Key");
        assert_eq!(op["parameters"][0]["required"], true);
        for s in [
            "201", "400", "401", "403", "404", "408", "409", "413", "415", "422", "429",
        ] {
            assert!(op["responses"][s].is_object(), "{s} declared");
        }
        assert!(op["responses"]["415"]["content"]["application/problem+json"].is_object());
        assert_eq!(
            doc["components"]["securitySchemes"]["program"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn a_public_route_has_no_key_and_no_problems() {
        assert!(Contract::public().problems().is_empty());
        let mut doc = json!({"paths": {"/healthz": {"get": {"responses": {}}}}});
        complete(&mut doc, &[("get", "/healthz", Contract::public())]);
        assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([]));
    }
}
