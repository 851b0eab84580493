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
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    routed.sort();
    assert_eq!(
        documented, routed,
        "OpenAPI and router name the same routes"
    );
    s.stop().await;
    // The request id is in the decision record too.
    let conn = rusqlite::Connection::open(s.data.join(spendgate::store::DB_FILE)).unwrap();
    let rid: String = conn
        .query_row(
            "SELECT request_id FROM decisions WHERE auth_id = 'm1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rid, "req-decision-1");
}
