use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_signatures_are_required_when_configured() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let (new, old) = (
        b"new-secret-0123456789abcdef".to_vec(),
        b"old-secret-0123456789abcdef".to_vec(),
    );
    let mut c = config(&dir.path().join("data"), Path::new("rules"));
    let b64 = |k: &[u8]| {
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(k)
        )
    };
    c.hook_secrets = vec![b64(&new), b64(&old)];
    let mut s = Server::start_with(c, Some(dir)).await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let body = auth("s1", &card, "100.00", "5411").to_string();
    let now = chrono::Utc::now().timestamp();
    let post = |headers: Vec<(&'static str, String)>, body: String| {
        let mut r = s
            .client
            .post(format!("http://{}/v1/authorizations", s.addr))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body);
        for (h, v) in headers {
            r = r.header(h, v);
        }
        r.send()
    };
    let kind = |t: &str| {
        serde_json::from_str::<Value>(t).unwrap()["type"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let r = post(vec![], body.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        kind(&r.text().await.unwrap()),
        "/problems/invalid_signature"
    );
    let r = post(signed(&new, "msg-1", &body, now), body.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let first = r.text().await.unwrap();
    // Issue #8.10: a retry (same webhook-id, same body) gets the original answer.
    let r = post(signed(&new, "msg-1", &body, now), body.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), first);
    let r = post(signed(&new, "msg-2", &body, now - 301), body.clone())
        .await
        .unwrap();
    assert_eq!(
        kind(&r.text().await.unwrap()),
        "/problems/invalid_signature",
        "outside the 5-minute tolerance"
    );
    let r = post(
        signed(b"some-other-secret-0123456789", "msg-3", &body, now),
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let tampered = body.replace("100.00", "900.00");
    let r = post(signed(&new, "msg-4", &body, now), tampered)
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "signature over a different body"
    );
    let r = post(signed(&old, "msg-5", &body, now), body.clone())
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the previous secret is accepted during rotation"
    );
    // Issue #8.7: a crafted timestamp is refused, never a panic (the server keeps serving).
    for ts in [i64::MIN, i64::MAX, -1] {
        let r = post(signed(&new, "msg-x", &body, ts), body.clone())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "timestamp {ts}");
    }
    let r = post(signed(&new, "msg-6", &body, now), body.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "still serving");
    s.stop().await;
}

/// Issue #8.10: signed captures are idempotent by their webhook-id: a retry (or a replay
/// with another Idempotency-Key) replays the original answer, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_hook_retries_replay_the_original_answer_across_restarts() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let secret = b"hook-secret-0123456789abcdef".to_vec();
    let mut c = config(&dir.path().join("data"), Path::new("rules"));
    c.hook_secrets = vec![format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(&secret)
    )];
    let mut s = Server::start_with(c.clone(), None).await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let send = |s: &Server, path: String, id: &str, body: String, idem: &str| {
        let now = chrono::Utc::now().timestamp();
        let mut r = s
            .client
            .post(format!("http://{}{path}", s.addr))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .header("idempotency-key", idem)
            .body(body.clone());
        for (h, v) in signed(&secret, id, &body, now) {
            r = r.header(h, v);
        }
        r.send()
    };
    let body = auth("h1", &card, "1000.00", "5411").to_string();
    let r = send(&s, "/v1/authorizations".into(), "wh-a", body, "x")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cap = json!({"amount": "400.00", "final": false}).to_string();
    let path = "/v1/authorizations/h1/captures".to_string();
    let r = send(&s, path.clone(), "wh-c", cap.clone(), "k1")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let first = r.text().await.unwrap();
    let r = send(&s, path.clone(), "wh-c", cap.clone(), "k2")
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        first,
        "a replay cannot capture twice"
    );
    s.stop().await;
    let mut s = Server::start_with(c, None).await;
    let r = send(&s, path.clone(), "wh-c", cap.clone(), "k3")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.text().await.unwrap(),
        first,
        "the retry after a restart too"
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
        (Some("99600.00"), Some("600.00"))
    );
    s.stop().await;
    drop(dir);
}
