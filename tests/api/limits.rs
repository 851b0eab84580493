//! Issue 11.6: a card's limits say what is used, what is left and when capacity comes
//! back; a declined answer's trace says the same.

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_show_used_left_and_when_a_window_frees() {
    let mut s = Server::start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let before = chrono::Utc::now();
    for i in 0..3 {
        let (st, text, v) = s
            .call(
                Method::POST,
                "/v1/authorizations",
                Some(&key),
                None,
                Some(auth(&format!("l{i}"), &card, "15500.00", "5411")),
            )
            .await;
        assert_eq!(
            (st, v["approved"].as_bool()),
            (StatusCode::OK, Some(true)),
            "{text}"
        );
    }
    let (st, text, v) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card}/limits"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    let daily = v
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["rule"] == "daily_spend")
        .unwrap_or_else(|| panic!("{v}"));
    // 3 × 15 500 NGN at 1 550 NGN/USD = 30.00 USD of 1 000.00.
    assert_eq!(
        (
            daily["amount_used"].as_str(),
            daily["amount_left"].as_str(),
            daily["count_used"].as_u64(),
            daily["count_left"].as_u64()
        ),
        (Some("30.00"), Some("970.00"), Some(3), Some(17)),
        "{daily}"
    );
    // The first authorization leaves the 24 h window a day after it was made.
    let frees: chrono::DateTime<chrono::Utc> = daily["frees_at"].as_str().unwrap().parse().unwrap();
    let day = chrono::Duration::hours(24);
    assert!(
        frees >= before + day - chrono::Duration::seconds(1) && frees <= chrono::Utc::now() + day,
        "{frees}"
    );
    assert_eq!(
        (
            daily["frees_amount"].as_str(),
            daily["frees_count"].as_u64()
        ),
        (Some("10.00"), Some(1))
    );
    // A calendar window frees everything at its period's end.
    let atm = v
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["rule"] == "atm_daily")
        .unwrap();
    assert_eq!(
        (atm["count_used"].as_u64(), atm["frees_at"].is_null()),
        (Some(0), true),
        "nothing used, nothing to free: {atm}"
    );
    // Another program's key cannot read them.
    let (other, _) = s.tenant("gh", "GHS").await;
    let (st, _, _) = s
        .call(
            Method::GET,
            &format!("/v1/cards/{card}/limits"),
            Some(&other),
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // A decline explains itself the same way.
    let (_, text, d) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&key),
            None,
            Some(auth("l-big", &card, "1519000.00", "5411")),
        )
        .await;
    let line = d["trace"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["rule"] == "daily_spend")
        .unwrap_or_else(|| panic!("{text}"));
    let detail = line["detail"].as_str().unwrap();
    assert!(
        detail.contains("(970.00 left)") && detail.contains("frees 10.00 USD and 1 transaction at"),
        "{detail}"
    );
    s.stop().await;
}
