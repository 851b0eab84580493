use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_see_or_touch_each_other() {
    let mut s = Server::start().await;
    let (ka, card_a) = s.tenant("alpha", "NGN").await;
    let (kb, _card_b) = s.tenant("beta", "NGN").await;
    let (_, _, a) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&ka),
            None,
            Some(auth("ta1", &card_a, "1000.00", "5411")),
        )
        .await;
    assert_eq!(a["response_code"], "00");
    for (m, path) in [
        (Method::GET, format!("/v1/cards/{card_a}")),
        (Method::GET, format!("/v1/cards/{card_a}/balance")),
        (Method::POST, format!("/v1/cards/{card_a}/freeze")),
    ] {
        let (st, _, v) = s.call(m, &path, Some(&kb), Some("x"), None).await;
        assert_eq!(
            (st, v["type"].as_str()),
            (StatusCode::NOT_FOUND, Some("/problems/card_not_found")),
            "{path}"
        );
    }
    let (_, _, d) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&kb),
            None,
            Some(auth("tb1", &card_a, "1000.00", "5411")),
        )
        .await;
    assert_eq!(
        d["response_code"], "14",
        "another tenant's card is an unknown card"
    );
    let (st, _, _) = s
        .call(
            Method::POST,
            "/v1/authorizations/ta1/captures",
            Some(&kb),
            Some("steal"),
            Some(json!({"amount": "1000.00"})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, _, r) = s
        .call(
            Method::POST,
            "/v1/authorizations/ta1/reversals",
            Some(&kb),
            Some("steal2"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r["matched"], false);
    // A reversal by another tenant for an id not seen yet must not void A's authorization.
    let (_, _, early) = s
        .call(
            Method::POST,
            "/v1/authorizations/future-1/reversals",
            Some(&kb),
            Some("pre"),
            Some(json!({})),
        )
        .await;
    assert_eq!(early["matched"], false);
    let (_, _, f) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&ka),
            None,
            Some(auth("future-1", &card_a, "500.00", "5411")),
        )
        .await;
    assert_eq!(f["response_code"], "00");
    assert!(!f["trace"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["rule"] == "reversal"));
    let (_, _, b) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card_a}/balance"),
            Some(&ka),
            None,
            None,
        )
        .await;
    assert_eq!(
        (b["posted"].as_str(), b["pending"].as_str()),
        (Some("100000.00"), Some("1500.00")),
        "B touched nothing: A's two holds stand"
    );
    s.stop().await;
}
