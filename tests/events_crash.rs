//! Events survive a crash: the real binary is killed with SIGKILL between an event's
//! commit and its delivery; after a restart the receiver gets the event, same id.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use parking_lot::Mutex;
use serde_json::{json, Value};

const ADMIN: &str = "events-crash-admin-key-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(data: &std::path::Path, config: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_spendgate"))
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--rules",
            "rules",
            "--config",
        ])
        .arg(config)
        .arg("--data")
        .arg(data)
        .env("SPENDGATE_ADMIN_KEY", ADMIN)
        .env("SPENDGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn ready(client: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not start");
}

async fn call(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
    idem: &str,
    body: Value,
) -> Value {
    let r = client
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .header("idempotency-key", idem)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_between_commit_and_delivery_loses_no_event() {
    // The receiver answers 500 until told otherwise, and records every attempt.
    let failing = Arc::new(AtomicBool::new(true));
    let attempts: Arc<Mutex<Vec<(HeaderMap, String, bool)>>> = Arc::default();
    let (f, a) = (failing.clone(), attempts.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let (f, a) = (f.clone(), a.clone());
            async move {
                let fail = f.load(Ordering::SeqCst);
                a.lock().push((headers, body, !fail));
                if fail {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "webhooks: { retry_base_ms: 100, retry_max_ms: 200, poll_ms: 20 }\nengine: { webhook_private_urls: true }\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut child = serve(&data, &config, port);
    ready(&client, &base).await;

    let admin = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    admin(
        "/v1/programs",
        json!({"id": "ng", "policy": "consumer-prepaid-africa", "currency": "NGN"}),
    )
    .await
    .unwrap();
    let key: Value = admin("/v1/programs/ng/api_keys", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["api_key"].as_str().unwrap().to_string();
    call(
        &client,
        &base,
        &key,
        "/v1/programs/ng/deposits",
        "d",
        json!({"amount": "1000.00", "currency": "NGN"}),
    )
    .await;
    call(
        &client,
        &base,
        &key,
        "/v1/cardholders",
        "h",
        json!({"id": "h", "name": "Ada Obi", "kyc": "verified"}),
    )
    .await;
    let card = call(
        &client,
        &base,
        &key,
        "/v1/cards",
        "c",
        json!({"cardholder_id": "h", "kind": "virtual"}),
    )
    .await;
    let card = card["id"].as_str().unwrap().to_string();
    let r = client
        .post(format!("{base}/v1/webhook_endpoints"))
        .bearer_auth(&key)
        .json(&json!({"url": hook, "event_types": ["card.funded"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The top-up is acknowledged: its event is committed with it.
    call(
        &client,
        &base,
        &key,
        &format!("/v1/cards/{card}/fund"),
        "f",
        json!({"amount": "50.00"}),
    )
    .await;
    // Once the receiver has refused it at least once, the process dies.
    for _ in 0..200 {
        if !attempts.lock().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_id = {
        let a = attempts.lock();
        assert!(!a.is_empty(), "an attempt was made before the kill");
        a[0].0["webhook-id"].to_str().unwrap().to_string()
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    failing.store(false, Ordering::SeqCst);
    let mut child = serve(&data, &config, port);
    ready(&client, &base).await;
    let mut delivered = None;
    for _ in 0..300 {
        delivered = attempts.lock().iter().find(|(_, _, ok)| *ok).cloned();
        if delivered.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (headers, body, _) = delivered.expect("delivered after the restart");
    assert_eq!(
        headers["webhook-id"].to_str().unwrap(),
        first_id,
        "the same event, same id"
    );
    let event: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["type"], "card.funded");
    assert_eq!(event["data"]["available_after"], "50.00");
    let ok = attempts.lock().iter().filter(|(_, _, ok)| *ok).count();
    assert_eq!(ok, 1, "delivered once, and only the one event");
}
