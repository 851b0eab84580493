use super::support::*;

const LOOSE: [&str; 9] = [
    "1e3", "1E2", "1_000", "+10.00", " 10.00", "10.00 ", ".5", "10.", "-5.00",
];

/// Issue #8.5: one exact parser for every amount on every endpoint; a loose amount is a
/// clear error and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loose_amounts_are_refused_on_every_endpoint() {
    let mut s = Server::start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let (_, _, a) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&key),
            None,
            Some(auth("ok1", &card, "100.00", "5411")),
        )
        .await;
    assert_eq!(a["response_code"], "00");
    let balance = format!("/v1/cards/{card}/balance");
    let before = s
        .call(Method::GET, &balance, Some(&key), None, None)
        .await
        .2;
    for (i, bad) in LOOSE.iter().enumerate() {
        let (st, text, _) = s
            .call(
                Method::POST,
                "/v1/authorizations",
                Some(&key),
                None,
                Some(auth(&format!("bad{i}"), &card, bad, "5411")),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "authorization {bad:?}: {text}");
        for (path, body) in [
            (format!("/v1/cards/{card}/fund"), json!({"amount": bad})),
            (format!("/v1/cards/{card}/withdraw"), json!({"amount": bad})),
            (
                "/v1/programs/ng/deposits".to_string(),
                json!({"amount": bad, "currency": "NGN"}),
            ),
            (
                "/v1/authorizations/ok1/captures".to_string(),
                json!({"amount": bad}),
            ),
            (
                "/v1/authorizations/ok1/reversals".to_string(),
                json!({"amount": bad}),
            ),
        ] {
            let (st, text, v) = s
                .call(
                    Method::POST,
                    &path,
                    Some(&key),
                    Some(&format!("k{i}{path}")),
                    Some(body),
                )
                .await;
            assert_eq!(
                (st, v["type"].as_str()),
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Some("/problems/invalid_amount")
                ),
                "{path} {bad:?}: {text}"
            );
        }
    }
    let after = s
        .call(Method::GET, &balance, Some(&key), None, None)
        .await
        .2;
    assert_eq!(after, before, "nothing changed");
    s.stop().await;
}

/// Issue #8.7: amounts beyond any real transaction are a typed 422, never a panic or an
/// overflow in a balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_amounts_are_a_typed_error_never_a_panic() {
    let mut s = Server::start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let huge = "79228162514264337593543950335";
    for (path, body) in [
        (
            "/v1/programs/ng/deposits".to_string(),
            json!({"amount": huge, "currency": "NGN"}),
        ),
        (format!("/v1/cards/{card}/fund"), json!({"amount": huge})),
        (
            "/v1/programs/ng/deposits".to_string(),
            json!({"amount": "1000000000000000.00", "currency": "NGN"}),
        ),
    ] {
        let (st, text, v) = s
            .call(Method::POST, &path, Some(&key), Some(&path), Some(body))
            .await;
        assert_eq!(
            (st, v["type"].as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("/problems/amount_overflow")
            ),
            "{path}: {text}"
        );
    }
    // The largest amount accepted, many times over, still adds up exactly.
    for i in 0..3 {
        let (st, text, _) = s
            .call(
                Method::POST,
                "/v1/programs/ng/deposits",
                Some(&key),
                Some(&format!("max{i}")),
                Some(json!({"amount": "999999999999999.99", "currency": "NGN"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{text}");
    }
    let (st, _, _) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&key),
            None,
            Some(auth("big", &card, huge, "5411")),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _, _) = s.call(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}
