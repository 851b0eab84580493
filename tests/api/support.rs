//! The real server on an ephemeral port with a temporary data directory, and helpers to
//! drive it over HTTP.
#![allow(dead_code)]

use std::net::SocketAddr;
pub use std::path::{Path, PathBuf};
pub use std::sync::Arc;

pub use reqwest::{Client, Method, StatusCode};
pub use serde_json::{json, Value};
use spendgate::http::{build_state, serve, Config};
use tokio::sync::oneshot;

pub const ADMIN: &str = "test-admin-key-0123456789";

pub struct Server {
    pub addr: SocketAddr,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
    pub data: PathBuf,
}

pub fn config(data: &Path, rules: &Path) -> Config {
    Config {
        addr: "127.0.0.1:0".into(),
        data_dir: data.to_path_buf(),
        rules_dir: rules.to_path_buf(),
        admin_key: Some(ADMIN.into()),
        ..Config::default()
    }
}

impl Server {
    pub async fn start_with(c: Config, dir: Option<tempfile::TempDir>) -> Server {
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

    pub async fn start() -> Server {
        Server::start_configured(|_| {}).await
    }

    /// The shipped rules on a fresh data directory, with `change` made to the config.
    pub async fn start_configured(change: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&dir.path().join("data"), Path::new("rules"));
        change(&mut c);
        Server::start_with(c, Some(dir)).await
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(d) = self.done.take() {
            d.await.unwrap();
        }
    }

    pub async fn call(
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
    pub async fn tenant(&self, program: &str, currency: &str) -> (String, String) {
        self.tenant_on(program, currency, "consumer-prepaid-africa")
            .await
    }

    /// `tenant` on a given policy.
    pub async fn tenant_on(&self, program: &str, currency: &str, policy: &str) -> (String, String) {
        let (st, _, _) = self
            .call(
                Method::POST,
                "/v1/programs",
                Some(ADMIN),
                None,
                Some(json!({"id": program, "policy": policy, "currency": currency})),
            )
            .await;
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

pub fn auth(id: &str, card: &str, amount: &str, mcc: &str) -> Value {
    json!({"id": id, "card_id": card, "amount": amount, "currency": "NGN",
           "merchant": {"id": format!("m-{id}"), "name": "Shoprite", "mcc": mcc, "country": "NG", "location": {"lat": 6.45, "lon": 3.4}},
           "channel": "pos", "type": "purchase"})
}

pub fn signed(secret: &[u8], id: &str, body: &str, ts: i64) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", ts.to_string()),
        (
            "webhook-signature",
            spendgate::http::security::sign(secret, id, ts, body.as_bytes()),
        ),
    ]
}

/// A rules directory with the shipped rules plus `extra` policy files (name, YAML).
pub fn rules_with(dir: &Path, extra: &[(&str, &str)]) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(rules.join("scripts")).unwrap();
    std::fs::create_dir_all(rules.join("fx")).unwrap();
    for entry in std::fs::read_dir("rules").unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, rules.join(p.file_name().unwrap())).unwrap();
        }
    }
    for sub in ["scripts", "fx"] {
        for entry in std::fs::read_dir(Path::new("rules").join(sub)).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, rules.join(sub).join(p.file_name().unwrap())).unwrap();
        }
    }
    for (name, text) in extra {
        std::fs::write(rules.join(name), text).unwrap();
    }
    rules
}
