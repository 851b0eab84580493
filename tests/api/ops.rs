use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_and_openapi_in_step_with_routes() {
    let mut s = Server::start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let r = s
        .client
        .post(format!("http://{}/v1/authorizations", s.addr))
        .bearer_auth(&key)
        .header("x-request-id", "req-decision-1")
        .header("content-type", "application/json")
        .body(auth("m1", &card, "10.00", "5411").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-decision-1");
    let r = s
        .client
        .get(format!("http://{}/healthz", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("x-request-id"));
    let r = s
        .client
        .get(format!("http://{}/readyz", s.addr))
        .header("x-request-id", "req-abc-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-request-id"],
        "req-abc-1",
        "a caller's request id is kept"
    );
    let m = s
        .client
        .get(format!("http://{}/metrics", s.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "spendgate_decisions_total",
        "spendgate_decision_latency_seconds_bucket",
        "spendgate_store_queue_depth",
        "spendgate_store_commit_seconds_bucket",
        "spendgate_store_decisions_compressed",
        "spendgate_store_record_dictionaries",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    let doc: Value = s
        .client
        .get(format!("http://{}/openapi.json", s.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut routed: Vec<(String, String)> = spendgate::http::routes()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    routed.sort();
    assert_eq!(
        documented, routed,
        "OpenAPI and router name the same routes"
    );
    // The request id is in the decision record too, across a restart.
    s.stop().await;
    let mut again = Server::start_with(config(&s.data, Path::new("rules")), None).await;
    let (_, _, h) = again
        .call(
            Method::GET,
            &format!("/v1/cards/{card}/transactions"),
            Some(&key),
            None,
            None,
        )
        .await;
    let m1 = h["authorizations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["authorization_id"] == "m1")
        .unwrap();
    assert_eq!(m1["request_id"], "req-decision-1", "{m1}");
    again.stop().await;
}

/// Every route answers the problems its contract declares, as the document says: no key
/// → 401; the other kind of key → 403; a keyed mutation without Idempotency-Key → 400; a
/// JSON route sent text → 415 (and nothing changes). Each status seen is declared for that
/// operation in `/openapi.json`, as `application/problem+json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_the_problems_its_contract_declares() {
    use spendgate::http::Access;
    let mut s = Server::start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let doc: serde_json::Value = s
        .client
        .get(format!("http://{}/openapi.json", s.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for r in spendgate::http::routes() {
        let c = r.contract;
        let path = r
            .path
            .replace(
                "{id}",
                if r.path.starts_with("/v1/programs") {
                    "ng"
                } else {
                    &card
                },
            )
            .replace("{program}", "ng")
            .replace("{processor}", "lithic");
        let method = Method::from_bytes(r.method.to_uppercase().as_bytes()).unwrap();
        let op = &doc["paths"][r.path][r.method];
        let declared = |status: StatusCode| {
            op["responses"][status.as_u16().to_string()]["content"]["application/problem+json"]
                .is_object()
        };
        let send = |bearer: Option<&str>, idem: Option<&str>, ctype: &str| {
            let mut q = s
                .client
                .request(method.clone(), format!("http://{}{path}", s.addr))
                .header("content-type", ctype)
                .body("{}");
            if let Some(k) = bearer {
                q = q.bearer_auth(k);
            }
            if let Some(i) = idem {
                q = q.header("idempotency-key", i);
            }
            q.send()
        };
        if c.access == Access::Public {
            assert!(op["security"].as_array().unwrap().is_empty(), "{path}");
            continue;
        }
        assert!(
            !op["security"].as_array().unwrap().is_empty(),
            "{path} declares its key"
        );
        let r401 = send(None, Some("k-401"), "application/json").await.unwrap();
        assert_eq!(r401.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(declared(StatusCode::UNAUTHORIZED), "{path} declares 401");
        let own = if c.access == Access::Admin {
            ADMIN
        } else {
            key.as_str()
        };
        if matches!(c.access, Access::Program | Access::Hook | Access::Admin) {
            let other = if c.access == Access::Admin {
                key.as_str()
            } else {
                ADMIN
            };
            let r403 = send(Some(other), Some("k-403"), "application/json")
                .await
                .unwrap();
            assert_eq!(r403.status(), StatusCode::FORBIDDEN, "{path}");
            assert!(declared(StatusCode::FORBIDDEN), "{path} declares 403");
        }
        if c.idempotency_key {
            let r400 = send(Some(own), None, "application/json").await.unwrap();
            assert_eq!(r400.status(), StatusCode::BAD_REQUEST, "{path}");
            let p: serde_json::Value = r400.json().await.unwrap();
            assert_eq!(p["type"], "/problems/missing_idempotency_key", "{path}");
            assert!(declared(StatusCode::BAD_REQUEST), "{path} declares 400");
            let h = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "Idempotency-Key")
                .unwrap_or_else(|| panic!("{path} declares Idempotency-Key"));
            assert_eq!(h["required"], true);
        }
        if c.json_body {
            let r415 = send(Some(own), Some("k-415"), "text/plain").await.unwrap();
            assert_eq!(r415.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}");
            assert!(
                declared(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                "{path} declares 415"
            );
        }
        checked += 1;
    }
    assert!(checked >= 20, "{checked} keyed routes checked");
    // None of it changed the card.
    let (_, _, b) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card}/balance"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(b["posted"], "100000.00");
    s.stop().await;
}
