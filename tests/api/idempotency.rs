use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_replays_conflicts_and_races() {
    let s = Server::start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let k = Some(key.as_str());
    let (_, first, _) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            k,
            None,
            Some(auth("i1", &card, "700.00", "5411")),
        )
        .await;
    let (_, second, _) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            k,
            None,
            Some(auth("i1", &card, "700.00", "5411")),
        )
        .await;
    assert_eq!(first, second, "byte for byte");
    let (st, _, v) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            k,
            None,
            Some(auth("i1", &card, "701.00", "5411")),
        )
        .await;
    assert_eq!(
        (st, v["type"].as_str()),
        (StatusCode::CONFLICT, Some("/problems/idempotency_conflict"))
    );
    let (_, f1, _) = s
        .call(
            Method::POST,
            &format!("/v1/cards/{card}/fund"),
            k,
            Some("fund-x"),
            Some(json!({"amount": "10.00"})),
        )
        .await;
    let (_, f2, _) = s
        .call(
            Method::POST,
            &format!("/v1/cards/{card}/fund"),
            k,
            Some("fund-x"),
            Some(json!({"amount": "10.00"})),
        )
        .await;
    assert_eq!(f1, f2);
    let (st, _, _) = s
        .call(
            Method::POST,
            &format!("/v1/cards/{card}/fund"),
            k,
            Some("fund-x"),
            Some(json!({"amount": "11.00"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    // Twenty concurrent duplicates: one execution, twenty identical answers.
    let s = Arc::new(s);
    let mut hs = Vec::new();
    for _ in 0..20 {
        let (s, key, card) = (s.clone(), key.clone(), card.clone());
        hs.push(tokio::spawn(async move {
            s.call(
                Method::POST,
                &format!("/v1/cards/{card}/fund"),
                Some(&key),
                Some("race"),
                Some(json!({"amount": "5.00"})),
            )
            .await
            .1
        }));
    }
    let mut bodies = Vec::new();
    for h in hs {
        bodies.push(h.await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    let (_, _, b) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card}/balance"),
            k,
            None,
            None,
        )
        .await;
    assert_eq!(b["posted"], "100015.00", "10.00 once and 5.00 once");
    let mut s = Arc::try_unwrap(s).ok().unwrap();
    s.stop().await;
}
