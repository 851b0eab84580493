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
            p.push((413, "body larger than allowed (`body_too_large`)"));
            p.push((415, "body not JSON (`unsupported_media_type`)"));
        }
        if keyed {
            p.push((
                422,
                "a business rule refused it (`invalid_amount`, `insufficient_funds`, `capture_exceeds_hold`, `card_number_in_id`, …)",
            ));
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

/// Writes every route's contract into the generated document: security schemes and
/// requirements, required headers, and each possible problem answer as
/// `application/problem+json`.
pub fn complete(doc: &mut Value, routes: &[(&str, &str, Contract)]) {
    doc["components"]["securitySchemes"] = json!({
        "admin": {"type": "http", "scheme": "bearer", "description": "The operator's admin key (`SPENDGATE_ADMIN_KEY`)."},
        "program": {"type": "http", "scheme": "bearer", "description": "A program's API key (`POST /v1/programs/{id}/api_keys`)."}
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
                    params.push(header(name, false, what, json!({"type": "string", "maxLength": 1024})));
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
            "201", "400", "401", "403", "404", "409", "413", "415", "422", "429",
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
