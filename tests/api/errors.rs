use super::support::*;

/// (method, path, key, idempotency key, body, expected status, expected problem type)
type Case<'a> = (
    Method,
    String,
    Option<&'a str>,
    Option<&'a str>,
    Option<Value>,
    StatusCode,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_problem_json_and_changes_nothing() {
    let mut s = Server::start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let k = Some(key.as_str());
    let kind = |v: &Value| v["type"].as_str().unwrap_or_default().to_string();
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            format!("/v1/cards/{card}"),
            None,
            None,
            None,
            StatusCode::UNAUTHORIZED,
            "/problems/unauthorized",
        ),
        (
            Method::GET,
            format!("/v1/cards/{card}"),
            Some("sk_wrong"),
            None,
            None,
            StatusCode::UNAUTHORIZED,
            "/problems/unauthorized",
        ),
        (
            Method::GET,
            format!("/v1/cards/{card}"),
            Some(ADMIN),
            None,
            None,
            StatusCode::FORBIDDEN,
            "/problems/forbidden",
        ),
        (
            Method::POST,
            "/v1/programs".into(),
            k,
            None,
            Some(json!({"id": "x", "policy": "p", "currency": "NGN"})),
            StatusCode::FORBIDDEN,
            "/problems/forbidden",
        ),
        (
            Method::GET,
            "/v1/cards/card_missing".into(),
            k,
            None,
            None,
            StatusCode::NOT_FOUND,
            "/problems/card_not_found",
        ),
        (
            Method::POST,
            format!("/v1/cards/{card}/fund"),
            k,
            None,
            Some(json!({"amount": "1.00"})),
            StatusCode::BAD_REQUEST,
            "/problems/missing_idempotency_key",
        ),
        (
            Method::POST,
            format!("/v1/cards/{card}/fund"),
            k,
            Some("e1"),
            Some(json!({"amount": "1.001"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid_amount",
        ),
        (
            Method::POST,
            format!("/v1/cards/{card}/fund"),
            k,
            Some("e2"),
            Some(json!({"amount": "0"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid_amount",
        ),
        (
            Method::POST,
            format!("/v1/cards/{card}/fund"),
            k,
            Some("e3"),
            Some(json!({"amount": 5})),
            StatusCode::BAD_REQUEST,
            "/problems/invalid_body",
        ),
        (
            Method::POST,
            format!("/v1/cards/{card}/fund"),
            k,
            Some("e4"),
            Some(json!({"amount": "1.00", "extra": 1})),
            StatusCode::BAD_REQUEST,
            "/problems/invalid_body",
        ),
        (
            Method::POST,
            format!("/v1/cards/{card}/withdraw"),
            k,
            Some("e5"),
            Some(json!({"amount": "100000.01"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/insufficient_funds",
        ),
        (
            Method::POST,
            format!("/v1/cards/{card}/unfreeze"),
            k,
            Some("e6"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid_transition",
        ),
        (
            Method::PUT,
            format!("/v1/cards/{card}/controls"),
            k,
            Some("e7"),
            Some(json!({"blocked_categories": ["79"]})),
            StatusCode::BAD_REQUEST,
            "/problems/invalid_body",
        ),
        (
            Method::POST,
            "/v1/authorizations".into(),
            k,
            None,
            Some(json!({"id": "x", "card_id": card, "amount": 5, "currency": "NGN"})),
            StatusCode::BAD_REQUEST,
            "/problems/invalid_body",
        ),
        (
            Method::POST,
            "/v1/authorizations/nope/captures".into(),
            k,
            Some("e8"),
            Some(json!({"amount": "1.00"})),
            StatusCode::NOT_FOUND,
            "/problems/authorization_not_found",
        ),
        (
            Method::GET,
            "/v1/nothing-here".into(),
            k,
            None,
            None,
            StatusCode::NOT_FOUND,
            "/problems/route_not_found",
        ),
        (
            Method::DELETE,
            format!("/v1/cards/{card}"),
            k,
            None,
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "/problems/method_not_allowed",
        ),
    ];
    for (m, path, key, idem, body, status, problem) in cases {
        let (st, text, v) = s.call(m.clone(), &path, key, idem, body).await;
        assert_eq!(
            (st, kind(&v).as_str()),
            (status, problem),
            "{m} {path}: {text}"
        );
        assert!(
            !text.contains("sqlite") && !text.contains("panicked"),
            "no internals leak: {text}"
        );
    }
    // Bodies are bounded.
    let big = "x".repeat(16 * 1024);
    let (st, _, v) = s
        .call(
            Method::POST,
            "/v1/cardholders",
            k,
            Some("big"),
            Some(json!({"id": "h2", "name": big})),
        )
        .await;
    assert_eq!(
        (st, kind(&v).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "/problems/body_too_large")
    );
    // Nothing changed.
    let (_, _, b) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card}/balance"),
            k,
            None,
            None,
        )
        .await;
    assert_eq!(
        (b["posted"].as_str(), b["pending"].as_str()),
        (Some("100000.00"), Some("0.00"))
    );
    s.stop().await;
}
