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

/// Issue #8.1: an authorization id used by one program is free for every other program,
/// and nobody learns that it was used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_ids_belong_to_their_program() {
    let mut s = Server::start().await;
    let (ka, card_a) = s.tenant("alpha", "NGN").await;
    let (kb, card_b) = s.tenant("beta", "NGN").await;
    let post = |key: String, body: Value| {
        let s = &s;
        async move {
            s.call(
                Method::POST,
                "/v1/authorizations",
                Some(&key),
                None,
                Some(body),
            )
            .await
        }
    };
    let (_, _, a1) = post(ka.clone(), auth("shared-1", &card_a, "1000.00", "5411")).await;
    assert_eq!(
        (a1["response_code"].as_str(), a1["card_id"].as_str()),
        (Some("00"), Some(card_a.as_str()))
    );
    // B uses the same id: its own decision on its own card, not A's answer, not a 409.
    let (st, _, b1) = post(kb.clone(), auth("shared-1", &card_b, "2500.00", "5411")).await;
    assert_eq!(st, StatusCode::OK, "{b1}");
    assert_eq!(b1["card_id"].as_str(), Some(card_b.as_str()));
    assert_eq!(b1["amount_approved"], "2500.00");
    assert_eq!(b1["available_after"], "97500.00");
    // B claims an id first; A's later authorization with it is A's own.
    let (_, _, b2) = post(kb.clone(), auth("shared-2", &card_b, "10.00", "5411")).await;
    assert_eq!(b2["response_code"], "00");
    let (st, _, a2) = post(ka.clone(), auth("shared-2", &card_a, "20.00", "5411")).await;
    assert_eq!(st, StatusCode::OK, "{a2}");
    assert_eq!(
        (a2["response_code"].as_str(), a2["amount_approved"].as_str()),
        (Some("00"), Some("20.00"))
    );
    // Captures and reversals reach only the caller's own authorization.
    let (st, _, cap) = s
        .call(
            Method::POST,
            "/v1/authorizations/shared-1/captures",
            Some(&ka),
            Some("cap"),
            Some(json!({"amount": "1000.00"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{cap}");
    assert_eq!(cap["card_id"].as_str(), Some(card_a.as_str()));
    let (_, _, rev) = s
        .call(
            Method::POST,
            "/v1/authorizations/shared-2/reversals",
            Some(&kb),
            Some("rev"),
            Some(json!({})),
        )
        .await;
    assert_eq!(rev["matched"], true);
    let (_, _, bal_b) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card_b}/balance"),
            Some(&kb),
            None,
            None,
        )
        .await;
    assert_eq!(
        (bal_b["pending"].as_str(), bal_b["posted"].as_str()),
        (Some("2500.00"), Some("100000.00"))
    );
    let (_, _, bal_a) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card_a}/balance"),
            Some(&ka),
            None,
            None,
        )
        .await;
    assert_eq!(
        (bal_a["pending"].as_str(), bal_a["posted"].as_str()),
        (Some("20.00"), Some("99000.00"))
    );
    // After a restart the ids are still each program's own.
    s.stop().await;
    let data = s.data.clone();
    let again = Server::start_with(config(&data, Path::new("rules")), None).await;
    let (_, _, replay) = again
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&kb),
            None,
            Some(auth("shared-1", &card_b, "2500.00", "5411")),
        )
        .await;
    assert_eq!(replay, b1, "B's own answer is replayed");
    let mut again = again;
    again.stop().await;
}

/// A policy with a program-wide and a cardholder-wide budget, shared by two programs.
const BUDGETS: &str = r#"
policy: shared-budgets
currency: NGN
timezone: Africa/Lagos
rules:
  - id: program_budget
    velocity: { window: 1h, amount_max: 100.00, scope: program }
    decline: "61"
  - id: holder_budget
    velocity: { window: 1h, amount_max: 150.00, scope: cardholder }
    decline: "61"
"#;

/// Issue #8.2: scope `program` counts the program, not every program on the policy; and
/// cardholder windows are the program's own too (both programs have a holder `holder`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_and_cardholder_windows_count_each_program_alone() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_with(dir.path(), &[("budgets.yaml", BUDGETS)]);
    let mut s = Server::start_with(config(&dir.path().join("data"), &rules), None).await;
    let (ka, card_a) = s.tenant_on("alpha", "NGN", "shared-budgets").await;
    let (kb, card_b) = s.tenant_on("beta", "NGN", "shared-budgets").await;
    let code = |v: &Value| v["response_code"].as_str().unwrap_or_default().to_string();
    let (_, _, a) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&ka),
            None,
            Some(auth("a1", &card_a, "80.00", "5411")),
        )
        .await;
    assert_eq!(code(&a), "00", "{a}");
    let (_, _, b) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&kb),
            None,
            Some(auth("b1", &card_b, "80.00", "5411")),
        )
        .await;
    assert_eq!(
        code(&b),
        "00",
        "another program's spend never declines this one: {b}"
    );
    // Within one program the budget holds.
    let (_, _, a2) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&ka),
            None,
            Some(auth("a2", &card_a, "30.00", "5411")),
        )
        .await;
    assert_eq!(
        (code(&a2), a2["rule"].as_str()),
        ("61".to_string(), Some("program_budget"))
    );
    s.stop().await;
}
