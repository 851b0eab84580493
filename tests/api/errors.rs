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

/// Issue #8.16/#8.17: ids are bounded and checked before any lookup or log; a card number
/// in an id, a request id or an idempotency key is refused; other media types are 415;
/// problem details never echo long input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_checked_at_the_edge_and_card_numbers_never_get_in() {
    let mut s = Server::start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let long = "c".repeat(5000);
    // An authorization with a 5 000-character card id: a format-error decision, shortened.
    let (st, text, v) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&key),
            None,
            Some(auth("long1", &long, "10.00", "5411")),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["response_code"], "30", "{text}");
    assert!(
        text.len() < 1_000,
        "the long id is not echoed: {} bytes",
        text.len()
    );
    // A card number as an authorization id, a card id, a path id, an idempotency key.
    let pan = "4111111111111111";
    let (st, _, v) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&key),
            None,
            Some(auth(pan, &card, "10.00", "5411")),
        )
        .await;
    assert_eq!(
        (st, v["type"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/problems/card_number_in_id")
        )
    );
    let (st, text, v) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&key),
            None,
            Some(auth("p2", pan, "10.00", "5411")),
        )
        .await;
    assert_eq!(v["type"], "/problems/card_number_in_id", "{st} {text}");
    assert!(!text.contains(pan));
    let (_, _, v) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{pan}"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(v["type"], "/problems/card_number_in_id");
    let (_, _, v) = s
        .call(
            Method::POST,
            &format!("/v1/cards/{card}/fund"),
            Some(&key),
            Some(&format!("fund-{pan}")),
            Some(json!({"amount": "1.00"})),
        )
        .await;
    assert_eq!(v["type"], "/problems/card_number_in_id");
    let r = s
        .client
        .get(format!("http://{}/healthz", s.addr))
        .header("x-request-id", pan)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (_, _, v) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{long}"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(v["type"], "/problems/invalid_id");
    // Not JSON: 415, nothing changed.
    let r = s
        .client
        .post(format!("http://{}/v1/cards/{card}/fund", s.addr))
        .bearer_auth(&key)
        .header("idempotency-key", "form-1")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=5.00")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
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
    // Nothing of the card number reached the store.
    s.stop().await;
    let db = std::fs::read(s.data.join(spendgate::store::DB_FILE)).unwrap();
    let wal = std::fs::read(s.data.join(format!("{}-wal", spendgate::store::DB_FILE)))
        .unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!bytes.windows(pan.len()).any(|w| w == pan.as_bytes()));
    }
}
