//! Events out, against a real receiver: a local HTTP server that records what it gets
//! and answers what the test tells it to (500s first, then 200).

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::HeaderMap;
use parking_lot::Mutex;

use super::support::*;

/// A webhook receiver on an ephemeral port: fails the first `fail_first` calls with
/// 500, then answers 200; keeps every call's headers and body.
pub struct Receiver {
    pub url: String,
    pub calls: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    seen: Arc<AtomicUsize>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        let calls: Arc<Mutex<Vec<(HeaderMap, String)>>> = Arc::default();
        let seen: Arc<AtomicUsize> = Arc::default();
        let (c, n) = (calls.clone(), seen.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (c, n) = (c.clone(), n.clone());
                async move {
                    if n.fetch_add(1, Ordering::SeqCst) < fail_first {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    c.lock().push((headers, body));
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, calls, seen }
    }

    pub fn attempts(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// The delivered events' bodies, once `n` have arrived (or after 10 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Value> {
        for _ in 0..500 {
            if self.calls.lock().len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.calls
            .lock()
            .iter()
            .map(|(_, b)| serde_json::from_str(b).unwrap())
            .collect()
    }
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir.path().join("data"), Path::new("rules"));
    c.webhooks.retry_base_ms = 50;
    // The receivers listen on 127.0.0.1.
    c.engine.webhook_private_urls = true;
    c.webhooks.poll_ms = 20;
    Server::start_with(c, Some(dir)).await
}

async fn endpoint(s: &Server, key: &str, url: &str, types: Value) -> (String, String) {
    let (st, text, v) = s
        .call(
            Method::POST,
            "/v1/webhook_endpoints",
            Some(key),
            None,
            Some(json!({"url": url, "event_types": types, "description": "test receiver"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{text}");
    (
        v["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

async fn post(s: &Server, key: &str, path: &str, idem: &str, body: Value) -> Value {
    let (st, text, v) = s
        .call(Method::POST, path, Some(key), Some(idem), Some(body))
        .await;
    assert!(st.is_success(), "{path}: {text}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_gets_every_event_signed_in_order_per_card_after_retries() {
    let mut s = start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let (other_key, other_card) = s.tenant("gh", "NGN").await;
    // The receiver fails its first two calls: those deliveries are retried.
    let rx = Receiver::start(2).await;
    let other_rx = Receiver::start(0).await;
    let (id, secret) = endpoint(&s, &key, &rx.url, json!([])).await;
    endpoint(
        &s,
        &other_key,
        &other_rx.url,
        json!(["card.status_changed"]),
    )
    .await;
    // The funded card holds 100 000; alert below 20 000.
    let (st, _, _) = s
        .call(
            Method::PUT,
            "/v1/alerts",
            Some(&key),
            None,
            Some(json!({"balance_low": {"NGN": "20000.00"}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);

    post(
        &s,
        &key,
        "/v1/authorizations",
        "-",
        auth("a1", &card, "30000.00", "5411"),
    )
    .await;
    post(
        &s,
        &key,
        "/v1/authorizations",
        "-",
        auth("a2", &card, "30000.00", "5411"),
    )
    .await;
    // 40 000 left, then 10 000: below the threshold once.
    post(
        &s,
        &key,
        "/v1/authorizations",
        "-",
        auth("a3", &card, "30000.00", "5412"),
    )
    .await;
    let declined = post(
        &s,
        &key,
        "/v1/authorizations",
        "-",
        auth("a4", &card, "90000.00", "5411"),
    )
    .await;
    assert_eq!(declined["response_code"], "51");
    post(
        &s,
        &key,
        "/v1/authorizations/a1/captures",
        "cap-1",
        json!({"amount": "30000.00"}),
    )
    .await;
    post(
        &s,
        &key,
        "/v1/authorizations/a2/reversals",
        "rev-1",
        json!({}),
    )
    .await;
    // Back above (40 000), then below again: a second crossing, a second alert.
    post(
        &s,
        &key,
        &format!("/v1/cards/{card}/withdraw"),
        "w-1",
        json!({"amount": "35000.00"}),
    )
    .await;
    post(
        &s,
        &key,
        &format!("/v1/cards/{card}/freeze"),
        "f-1",
        json!({}),
    )
    .await;
    // Another program's activity reaches only its own endpoint.
    post(
        &s,
        &other_key,
        "/v1/authorizations",
        "-",
        auth("a1", &other_card, "100.00", "5411"),
    )
    .await;

    let expected = [
        "authorization.approved",
        "authorization.approved",
        "authorization.approved",
        "balance.low",
        "authorization.declined",
        "authorization.captured",
        "authorization.reversed",
        "card.withdrawn",
        "balance.low",
        "card.status_changed",
    ];
    let events = rx.wait_for(expected.len()).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, expected, "every event, in order for the card");
    assert!(
        rx.attempts() >= expected.len() + 2,
        "the two 500s were retried"
    );
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    for e in &events {
        assert_eq!(e["program"], "ng");
        assert_eq!(e["card_id"], card.as_str());
        assert!(!e.to_string().contains("4111"), "no card number");
    }
    assert_eq!(events[4]["data"]["response_code"], "51");
    assert_eq!(events[3]["data"]["available"], "10000.00");
    assert_eq!(events[9]["data"]["status"], "frozen");
    // Signatures verify with the Standard Webhooks algorithm and the secret shown once.
    let wh = standardwebhooks::Webhook::new(&secret).unwrap();
    for (headers, body) in rx.calls.lock().iter() {
        wh.verify(body.as_bytes(), headers)
            .expect("signature verifies");
        let id = headers["webhook-id"].to_str().unwrap();
        assert!(body.contains(id), "webhook-id is the event id");
    }
    // The other program's endpoint got only its own card's status change: nothing here.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        other_rx.calls.lock().is_empty(),
        "no event of another program"
    );

    // The deliveries API: the first event took more than one attempt, all delivered.
    let (_, _, v) = s
        .call(
            Method::GET,
            &format!("/v1/webhook_endpoints/{id}/deliveries"),
            Some(&key),
            None,
            None,
        )
        .await;
    let rows = v["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len());
    assert!(rows
        .iter()
        .all(|r| r["status"] == "delivered" && r["last_status"] == 200));
    assert!(rows.iter().any(|r| r["attempts"].as_i64().unwrap() > 1));
    let (st, _, _) = s
        .call(
            Method::GET,
            &format!("/v1/webhook_endpoints/{id}/deliveries"),
            Some(&other_key),
            None,
            None,
        )
        .await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "another program's endpoint is not there"
    );

    // A delivery asked again is sent again, same id.
    let first = events[0]["id"].as_str().unwrap().to_string();
    let (st, _, _) = s
        .call(
            Method::POST,
            &format!("/v1/webhook_endpoints/{id}/deliveries/{first}/retry"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let again = rx.wait_for(expected.len() + 1).await;
    assert_eq!(again.last().unwrap()["id"], first.as_str());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_rotate_their_secret_and_a_disabled_one_gets_nothing() {
    let mut s = start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let rx = Receiver::start(0).await;
    let (id, old) = endpoint(&s, &key, &rx.url, json!(["card.funded"])).await;
    let (st, _, v) = s
        .call(
            Method::POST,
            &format!("/v1/webhook_endpoints/{id}/rotate_secret"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let new = v["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let (_, text, _) = s
        .call(Method::GET, "/v1/webhook_endpoints", Some(&key), None, None)
        .await;
    assert!(
        !text.contains(&new[6..]) && !text.contains(&old[6..]),
        "secrets are never listed"
    );
    post(
        &s,
        &key,
        &format!("/v1/cards/{card}/fund"),
        "f-2",
        json!({"amount": "10.00"}),
    )
    .await;
    rx.wait_for(1).await;
    {
        let calls = rx.calls.lock();
        let (headers, body) = &calls[0];
        // Both secrets verify during the overlap.
        for secret in [&old, &new] {
            standardwebhooks::Webhook::new(secret)
                .unwrap()
                .verify(body.as_bytes(), headers)
                .expect("each valid secret verifies");
        }
    }
    let (st, _, _) = s
        .call(
            Method::PATCH,
            &format!("/v1/webhook_endpoints/{id}"),
            Some(&key),
            None,
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    post(
        &s,
        &key,
        &format!("/v1/cards/{card}/fund"),
        "f-3",
        json!({"amount": "10.00"}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        rx.calls.lock().len(),
        1,
        "a disabled endpoint is sent nothing"
    );
    let (st, _, v) = s
        .call(
            Method::POST,
            "/v1/webhook_endpoints",
            Some(&key),
            None,
            Some(json!({"url": "ftp://x", "event_types": []})),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (st, _, _) = s
        .call(
            Method::POST,
            "/v1/webhook_endpoints",
            Some(&key),
            None,
            Some(json!({"url": rx.url, "event_types": ["card.exploded"]})),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velocity_limit_near_fires_once_when_a_window_reaches_the_share() {
    let mut s = start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let rx = Receiver::start(0).await;
    endpoint(&s, &key, &rx.url, json!(["velocity.limit_near"])).await;
    let (st, text, _) = s
        .call(
            Method::PUT,
            "/v1/alerts",
            Some(&key),
            None,
            Some(json!({"velocity_near_percent": 80})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    // daily_spend allows 20 approvals a day: the 16th reaches 80 %.
    for i in 1..=18 {
        let v = post(
            &s,
            &key,
            "/v1/authorizations",
            "-",
            auth(&format!("v{i}"), &card, "100.00", "5411"),
        )
        .await;
        assert_eq!(v["approved"], true, "{v}");
    }
    rx.wait_for(1).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let events: Vec<Value> = rx
        .calls
        .lock()
        .iter()
        .map(|(_, b)| serde_json::from_str(b).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "once per crossing: {events:?}");
    let d = &events[0]["data"];
    assert_eq!(
        (
            d["rule"].as_str(),
            d["count_used"].as_u64(),
            d["count_max"].as_u64()
        ),
        (Some("daily_spend"), Some(16), Some(20))
    );
    let (st, _, _) = s
        .call(
            Method::PUT,
            "/v1/alerts",
            Some(&key),
            None,
            Some(json!({"velocity_near_percent": 0})),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funding_low_fires_once_per_crossing_and_rearms_above() {
    let mut s = start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let rx = Receiver::start(0).await;
    endpoint(&s, &key, &rx.url, json!(["program.funding_low"])).await;
    // The program deposited 10 000 000 and funded the card with 100 000.
    let (st, _, _) = s
        .call(
            Method::PUT,
            "/v1/alerts",
            Some(&key),
            None,
            Some(json!({"funding_low": {"NGN": "9900000.00"}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    post(
        &s,
        &key,
        &format!("/v1/cards/{card}/fund"),
        "f-1",
        json!({"amount": "10.00"}),
    )
    .await;
    post(
        &s,
        &key,
        &format!("/v1/cards/{card}/fund"),
        "f-2",
        json!({"amount": "10.00"}),
    )
    .await;
    post(
        &s,
        &key,
        "/v1/programs/ng/deposits",
        "d-2",
        json!({"amount": "100.00", "currency": "NGN"}),
    )
    .await;
    post(
        &s,
        &key,
        &format!("/v1/cards/{card}/fund"),
        "f-3",
        json!({"amount": "100.00"}),
    )
    .await;
    let events = rx.wait_for(2).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let n = rx.calls.lock().len();
    assert_eq!(n, 2, "below, back above, below again: {events:?}");
    assert_eq!(events[0]["data"]["balance"], "9899990.00");
    assert_eq!(events[1]["data"]["balance"], "9899980.00");
    assert!(
        events[0]["card_id"].is_null(),
        "a program's event names no card"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_deadline_is_reported_as_the_91_the_caller_was_told() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir.path().join("data"), Path::new("rules"));
    c.webhooks.poll_ms = 20;
    c.engine.webhook_private_urls = true;
    c.deadline_ms = 0;
    let mut s = Server::start_with(c, Some(dir)).await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let rx = Receiver::start(0).await;
    endpoint(
        &s,
        &key,
        &rx.url,
        json!(["authorization.approved", "authorization.declined"]),
    )
    .await;
    let v = post(
        &s,
        &key,
        "/v1/authorizations",
        "-",
        auth("late", &card, "500.00", "5411"),
    )
    .await;
    assert_eq!(v["response_code"], "91");
    let events = rx.wait_for(2).await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "authorization.declined", "{events:?}");
    assert_eq!(last["data"]["response_code"], "91");
    assert_eq!(last["data"]["authorization_id"], "late");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_delays_no_other_endpoint() {
    let mut s = start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let dead = Receiver::start(usize::MAX).await;
    let live = Receiver::start(0).await;
    let (dead_id, _) = endpoint(&s, &key, &dead.url, json!(["card.funded"])).await;
    endpoint(&s, &key, &live.url, json!(["card.funded"])).await;
    for i in 0..5 {
        post(
            &s,
            &key,
            &format!("/v1/cards/{card}/fund"),
            &format!("f-{i}"),
            json!({"amount": "1.00"}),
        )
        .await;
    }
    assert_eq!(
        live.wait_for(5).await.len(),
        5,
        "the live endpoint got everything"
    );
    assert!(dead.attempts() >= 1 && dead.calls.lock().is_empty());
    let (_, _, v) = s
        .call(
            Method::GET,
            &format!("/v1/webhook_endpoints/{dead_id}/deliveries"),
            Some(&key),
            None,
            None,
        )
        .await;
    let rows = v["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["status"] == "pending"), "{v}");
    s.stop().await;
}
