use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_card_lifecycle() {
    let mut s = Server::start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let k = Some(key.as_str());
    let (st, _, a) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            k,
            None,
            Some(auth("a1", &card, "20000.00", "5411")),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (
            a["approved"].as_bool(),
            a["response_code"].as_str(),
            a["available_after"].as_str()
        ),
        (Some(true), Some("00"), Some("80000.00"))
    );
    let (st, _, c) = s
        .call(
            Method::POST,
            "/v1/authorizations/a1/captures",
            k,
            Some("cap1"),
            Some(json!({"amount": "20000.00"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    assert_eq!(c["hold_status"], "posted");
    let (_, _, a2) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            k,
            None,
            Some(auth("a2", &card, "5000.00", "5411")),
        )
        .await;
    assert_eq!(a2["response_code"], "00");
    let (st, _, r) = s
        .call(
            Method::POST,
            "/v1/authorizations/a2/reversals",
            k,
            Some("rev1"),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(
        (r["matched"].as_bool(), r["hold_status"].as_str()),
        (Some(true), Some("voided"))
    );
    let (_, _, gambling) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            k,
            None,
            Some(auth("a3", &card, "500.00", "7995")),
        )
        .await;
    assert_eq!(
        (
            gambling["response_code"].as_str(),
            gambling["rule"].as_str()
        ),
        (Some("57"), Some("no_gambling"))
    );
    assert!(gambling["trace"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["rule"] == "no_gambling"));
    let (st, _, _) = s
        .call(
            Method::POST,
            &format!("/v1/cards/{card}/freeze"),
            k,
            Some("fr"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, _, frozen) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            k,
            None,
            Some(auth("a4", &card, "500.00", "5411")),
        )
        .await;
    assert_eq!(
        (frozen["response_code"].as_str(), frozen["reason"].as_str()),
        (Some("62"), Some("card_frozen"))
    );
    let (st, _, _) = s
        .call(
            Method::POST,
            &format!("/v1/cards/{card}/unfreeze"),
            k,
            Some("unfr"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, b) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card}/balance"),
            k,
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (b["posted"].as_str(), b["pending"].as_str()),
        (Some("80000.00"), Some("0.00"))
    );
    let (st, _, t) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card}/transactions"),
            k,
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(t["authorizations"].as_array().unwrap().len(), 4);
    assert!(t["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["kind"] == "capture"));
    let (st, _, sim) = s
        .call(
            Method::POST,
            "/v1/simulate",
            k,
            None,
            Some(auth("sim", &card, "900000.00", "5411")),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(sim["response_code"], "61");
    assert!(
        sim["trace"].as_array().unwrap().len() > 20,
        "simulate traces every rule"
    );
    let (st, _, term) = s
        .call(
            Method::POST,
            &format!("/v1/cards/{card}/terminate"),
            k,
            Some("term"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (term["status"].as_str(), term["balance"]["posted"].as_str()),
        (Some("terminated"), Some("0.00"))
    );
    let (_, _, dead) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            k,
            None,
            Some(auth("a5", &card, "1.00", "5411")),
        )
        .await;
    assert_eq!(dead["response_code"], "46");
    s.stop().await;

    // Graceful shutdown flushed everything: a new server on the same data sees it all.
    let c = config(&s.data, Path::new("rules"));
    let mut again = Server::start_with(c, None).await;
    let (st, _, card_now) = again
        .call(Method::GET, &format!("/v1/cards/{card}"), k, None, None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(card_now["status"], "terminated");
    let (_, replay, _) = again
        .call(
            Method::POST,
            "/v1/authorizations",
            k,
            None,
            Some(auth("a1", &card, "20000.00", "5411")),
        )
        .await;
    assert!(
        replay.contains("\"response_code\":\"00\""),
        "the original answer is replayed after restart: {replay}"
    );
    again.stop().await;
}
