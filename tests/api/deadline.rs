use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_deadline_answers_91_and_leaves_no_hold() {
    let mut s = Server::start_configured(|c| c.deadline_ms = 0).await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let (_, first, v) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&key),
            None,
            Some(auth("late", &card, "5000.00", "5411")),
        )
        .await;
    assert_eq!(
        (v["response_code"].as_str(), v["reason"].as_str()),
        (Some("91"), Some("deadline_exceeded"))
    );
    let (_, again, _) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&key),
            None,
            Some(auth("late", &card, "5000.00", "5411")),
        )
        .await;
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        again["response_code"], "91",
        "a retry is not approved behind the processor's back: {first}"
    );
    let (_, _, b) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card}/balance"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(
        (b["posted"].as_str(), b["pending"].as_str()),
        (Some("100000.00"), Some("0.00"))
    );
    // Issue #8.9: the history says what the caller was told.
    let (_, _, h) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card}/transactions"),
            Some(&key),
            None,
            None,
        )
        .await;
    let late = h["authorizations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["authorization_id"] == "late")
        .unwrap();
    assert_eq!(
        (late["response_code"].as_str(), late["approved"].as_bool()),
        (Some("91"), Some(false)),
        "{late}"
    );
    s.stop().await;
}

/// Issue #8.9: an authorization whose reversal arrived first is answered and recorded as
/// such, and holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_reversed_first_says_so_in_answer_and_history() {
    let mut s = Server::start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let (_, _, r) = s
        .call(
            Method::POST,
            "/v1/authorizations/early/reversals",
            Some(&key),
            Some("r1"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r["matched"], false);
    let (_, _, a) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&key),
            None,
            Some(auth("early", &card, "700.00", "5411")),
        )
        .await;
    assert_eq!(
        (a["reason"].as_str(), a["available_after"].as_str()),
        (Some("reversed_before_authorization"), Some("100000.00")),
        "{a}"
    );
    let (_, _, h) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card}/transactions"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(
        h["authorizations"][0]["reason"], "reversed_before_authorization",
        "{h}"
    );
    s.stop().await;
}
