//! The real server on an ephemeral port with a temporary data directory, driven over HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use spendgate::http::{build_state, serve, Config};
use tokio::sync::oneshot;

const ADMIN: &str = "test-admin-key-0123456789";

struct Server {
    addr: SocketAddr,
    client: Client,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
    data: PathBuf,
}

fn config(data: &Path, rules: &Path) -> Config {
    Config {
        addr: "127.0.0.1:0".into(),
        data_dir: data.to_path_buf(),
        rules_dir: rules.to_path_buf(),
        admin_key: Some(ADMIN.into()),
        ..Config::default()
    }
}

impl Server {
    async fn start_with(c: Config, dir: Option<tempfile::TempDir>) -> Server {
        let data = c.data_dir.clone();
        let state = tokio::task::spawn_blocking(move || build_state(c).unwrap())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            serve(state, listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            addr,
            client: Client::new(),
            stop: Some(tx),
            done: Some(done),
            _dir: dir,
            data,
        }
    }

    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let c = config(&dir.path().join("data"), Path::new("rules"));
        Server::start_with(c, Some(dir)).await
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(d) = self.done.take() {
            d.await.unwrap();
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        idem: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, String, Value) {
        let mut r = self
            .client
            .request(method, format!("http://{}{path}", self.addr));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        if let Some(i) = idem {
            r = r.header("idempotency-key", i);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let res = r.send().await.unwrap();
        let status = res.status();
        let ctype = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = res.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(ctype, "application/problem+json", "{status} {text}");
        }
        (status, text, v)
    }

    /// A program with an API key, funding, one verified cardholder and one funded card.
    async fn tenant(&self, program: &str, currency: &str) -> (String, String) {
        let (st, _, _) = self.call(Method::POST, "/v1/programs", Some(ADMIN), None, Some(json!({"id": program, "policy": "consumer-prepaid-africa", "currency": currency}))).await;
        assert_eq!(st, StatusCode::CREATED);
        let (st, _, v) = self
            .call(
                Method::POST,
                &format!("/v1/programs/{program}/api_keys"),
                Some(ADMIN),
                None,
                None,
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let key = v["api_key"].as_str().unwrap().to_string();
        let (st, _, _) = self
            .call(
                Method::POST,
                &format!("/v1/programs/{program}/deposits"),
                Some(&key),
                Some("dep"),
                Some(json!({"amount": "10000000.00", "currency": currency})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        // The same cardholder id in every program: ids are scoped to their program.
        let holder = "holder";
        let (st, _, _) = self
            .call(
                Method::POST,
                "/v1/cardholders",
                Some(&key),
                Some("h"),
                Some(json!({"id": holder, "name": "Kofi Boateng", "kyc": "verified"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let (st, _, v) = self
            .call(
                Method::POST,
                "/v1/cards",
                Some(&key),
                Some("c"),
                Some(json!({"cardholder_id": holder, "kind": "physical"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let card = v["id"].as_str().unwrap().to_string();
        let (st, _, _) = self
            .call(
                Method::POST,
                &format!("/v1/cards/{card}/fund"),
                Some(&key),
                Some("f"),
                Some(json!({"amount": "100000.00"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        (key, card)
    }
}

fn auth(id: &str, card: &str, amount: &str, mcc: &str) -> Value {
    json!({"id": id, "card_id": card, "amount": amount, "currency": "NGN",
           "merchant": {"id": format!("m-{id}"), "name": "Shoprite", "mcc": mcc, "country": "NG", "location": {"lat": 6.45, "lon": 3.4}},
           "channel": "pos", "type": "purchase"})
}

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

fn signed(secret: &[u8], id: &str, body: &str, ts: i64) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", ts.to_string()),
        (
            "webhook-signature",
            spendgate::http::security::sign(secret, id, ts, body.as_bytes()),
        ),
    ]
}

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
    let r = post(signed(&new, "msg-1", &body, now), body.clone())
        .await
        .unwrap();
    assert_eq!(
        kind(&r.text().await.unwrap()),
        "/problems/replayed_signature"
    );
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
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_traffic_swaps_atomically_or_keeps_the_old_policy() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join("scripts")).unwrap();
    std::fs::create_dir_all(rules.join("fx")).unwrap();
    for f in [
        "consumer_prepaid.yaml",
        "corporate_expense.yaml",
        "scripts/night_owl.rhai",
        "scripts/new_merchant_burst.rhai",
        "fx/rates.yaml",
    ] {
        std::fs::copy(Path::new("rules").join(f), rules.join(f)).unwrap();
    }
    let s = Arc::new(Server::start_with(config(&dir.path().join("data"), &rules), Some(dir)).await);
    let (key, card) = s.tenant("ng", "NGN").await;
    let (_, _, p) = s
        .call(Method::GET, "/v1/policies", Some(&key), None, None)
        .await;
    let v1 = p
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "consumer-prepaid-africa")
        .unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    let traffic = {
        let (s, key, card) = (s.clone(), key.clone(), card.clone());
        tokio::spawn(async move {
            let mut versions = std::collections::BTreeSet::new();
            for i in 0..150 {
                let (st, text, v) = s
                    .call(
                        Method::POST,
                        "/v1/authorizations",
                        Some(&key),
                        None,
                        Some(auth(&format!("rt{i}"), &card, "10.00", "5411")),
                    )
                    .await;
                assert_eq!(st, StatusCode::OK, "{text}");
                versions.insert(v["policy_version"].as_str().unwrap().to_string());
            }
            versions
        })
    };
    // A broken edit is refused with its errors; the old policy stays live.
    let original = std::fs::read_to_string(rules.join("consumer_prepaid.yaml")).unwrap();
    std::fs::write(
        rules.join("consumer_prepaid.yaml"),
        original.replace("decline: \"57\"", "decline: \"58\""),
    )
    .unwrap();
    let (st, text, v) = s
        .call(Method::POST, "/v1/policies/reload", Some(ADMIN), None, None)
        .await;
    assert_eq!(
        (st, v["type"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/problems/invalid_policy")
        ),
        "{text}"
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("`58` is not a response code"),
        "{text}"
    );
    // A valid edit whose embedded tests fail is refused too.
    std::fs::write(
        rules.join("consumer_prepaid.yaml"),
        original.replace("amount_max: 500.00", "amount_max: 5.00"),
    )
    .unwrap();
    let (st, text, _) = s
        .call(Method::POST, "/v1/policies/reload", Some(ADMIN), None, None)
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(text.contains("failed"), "{text}");
    // A good edit swaps in.
    std::fs::write(
        rules.join("consumer_prepaid.yaml"),
        original.replace(
            "Consumer prepaid cards in NG",
            "Consumer prepaid cards (v2) in NG",
        ),
    )
    .unwrap();
    let (st, text, _) = s
        .call(Method::POST, "/v1/policies/reload", Some(ADMIN), None, None)
        .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    let versions = traffic.await.unwrap();
    let (_, _, after) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&key),
            None,
            Some(auth("after", &card, "10.00", "5411")),
        )
        .await;
    let v2 = after["policy_version"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    assert!(
        versions.iter().all(|v| *v == v1 || *v == v2),
        "only whole policies ever decide: {versions:?}"
    );
    let (st, _, _) = s
        .call(Method::POST, "/v1/policies/reload", Some(&key), None, None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "program keys cannot reload");
    let mut s = Arc::try_unwrap(s).ok().unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_deadline_answers_91_and_leaves_no_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir.path().join("data"), Path::new("rules"));
    c.deadline_ms = 0;
    let mut s = Server::start_with(c, Some(dir)).await;
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
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_and_openapi_in_step_with_routes() {
    let mut s = Server::start().await;
    let (key, card) = s.tenant("ng", "NGN").await;
    let r = s
        .client
        .post(format!("http://{}/v1/authorizations", s.addr))
        .bearer_auth(&key)
        .header("x-request-id", "req-decision-1")
        .body(auth("m1", &card, "10.00", "5411").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-decision-1");
    let r = s
        .client
        .get(format!("http://{}/healthz", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("x-request-id"));
    let r = s
        .client
        .get(format!("http://{}/readyz", s.addr))
        .header("x-request-id", "req-abc-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-request-id"],
        "req-abc-1",
        "a caller's request id is kept"
    );
    let m = s
        .client
        .get(format!("http://{}/metrics", s.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "spendgate_decisions_total",
        "spendgate_decision_latency_seconds_bucket",
        "spendgate_store_queue_depth",
        "spendgate_store_commit_seconds_bucket",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    let doc: Value = s
        .client
        .get(format!("http://{}/openapi.json", s.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut routed: Vec<(String, String)> = spendgate::http::routes()
        .into_iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    routed.sort();
    assert_eq!(
        documented, routed,
        "OpenAPI and router name the same routes"
    );
    s.stop().await;
    // The request id is in the decision record too.
    let conn = rusqlite::Connection::open(s.data.join(spendgate::store::DB_FILE)).unwrap();
    let rid: String = conn
        .query_row(
            "SELECT request_id FROM decisions WHERE auth_id = 'm1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rid, "req-decision-1");
}
