//! `spendgate serve` processes on a PostgreSQL test database, for the multi-instance
//! tests (tests/failover.rs, tests/shards.rs), and the HTTP calls they make.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "adm_failover_test_key_0123456789";
/// The lease the failover tests run with.
pub const LEASE_MS: u64 = 1_500;

/// The crash test's permissive policy: cards run out of money, not out of velocity.
pub fn stress_rules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stress")
}

/// One `spendgate serve` process; killed when dropped.
pub struct Instance {
    pub child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Instance {
    /// Unsharded, on the crash test's permissive policy.
    pub fn start(url: &str, dir: &Path, name: &str) -> Instance {
        Instance::launch(url, dir, name, &stress_rules(), 1, LEASE_MS)
    }

    /// `start` with its own rules directory, shard count and lease.
    pub fn launch(
        url: &str,
        dir: &Path,
        name: &str,
        rules: &Path,
        shards: u32,
        lease_ms: u64,
    ) -> Instance {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join(format!("{name}.log"));
        let data = dir.join(name);
        let child = Command::new(env!("CARGO_BIN_EXE_spendgate"))
            .args([
                "serve",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--store",
                url,
            ])
            .arg("--rules")
            .arg(rules)
            .env("SPENDGATE_SHARDS", shards.to_string())
            .env("SPENDGATE_ADMIN_KEY", ADMIN)
            .env("SPENDGATE_LEASE_MS", lease_ms.to_string())
            .env("SPENDGATE_DATA", &data)
            .env("SPENDGATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Instance { child, port, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn status(client: &reqwest::Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Waits until one of `instances` answers `/readyz` 200 (the owner); returns its index.
pub async fn wait_owner(
    client: &reqwest::Client,
    instances: &[&Instance],
    within: Duration,
) -> usize {
    let started = Instant::now();
    loop {
        for (i, inst) in instances.iter().enumerate() {
            if status(client, &inst.url("/readyz")).await == Some(200) {
                return i;
            }
        }
        assert!(
            started.elapsed() < within,
            "no instance became the owner within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn post(
    client: &reqwest::Client,
    url: String,
    auth: &str,
    key: Option<&str>,
    body: serde_json::Value,
) -> Result<(u16, serde_json::Value), String> {
    let mut req = client
        .post(url)
        .bearer_auth(auth)
        .timeout(Duration::from_secs(5))
        .json(&body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let r = req.send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let json = r.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// A program on the stress policy, set up through the instance at `base` (forwarded to
/// its owner as need be): a funded funding account and `cards` cards, one verified holder
/// each, topped up with `funded`. Its API key and card ids.
pub async fn set_up_program(
    client: &reqwest::Client,
    base: &str,
    program: &str,
    cards: usize,
    funded: &str,
) -> (String, Vec<String>) {
    let url = |p: &str| format!("{base}{p}");
    let (code, body) = post(
        client,
        url("/v1/programs"),
        ADMIN,
        None,
        serde_json::json!({"id": program, "policy": "stress", "currency": "USD"}),
    )
    .await
    .unwrap();
    assert_eq!(code, 201, "{body}");
    let (_, key) = post(
        client,
        url(&format!("/v1/programs/{program}/api_keys")),
        ADMIN,
        None,
        serde_json::json!({}),
    )
    .await
    .unwrap();
    let key = key["api_key"].as_str().expect("an API key").to_string();
    let (code, _) = post(
        client,
        url(&format!("/v1/programs/{program}/deposits")),
        &key,
        Some("dep"),
        serde_json::json!({"amount": "1000000.00", "currency": "USD"}),
    )
    .await
    .unwrap();
    assert_eq!(code, 201);
    let mut ids = Vec::new();
    for i in 0..cards {
        let (code, _) = post(
            client,
            url("/v1/cardholders"),
            &key,
            Some(&format!("h{i}")),
            serde_json::json!({"id": format!("h{i}"), "name": "Ama Mensah", "kyc": "verified"}),
        )
        .await
        .unwrap();
        assert_eq!(code, 201);
        let (code, card) = post(
            client,
            url("/v1/cards"),
            &key,
            Some(&format!("c{i}")),
            serde_json::json!({"cardholder_id": format!("h{i}"), "kind": "virtual"}),
        )
        .await
        .unwrap();
        assert_eq!(code, 201, "{card}");
        let id = card["id"].as_str().unwrap().to_string();
        let (code, _) = post(
            client,
            url(&format!("/v1/cards/{id}/fund")),
            &key,
            Some(&format!("f{i}")),
            serde_json::json!({"amount": funded}),
        )
        .await
        .unwrap();
        assert_eq!(code, 201);
        ids.push(id);
    }
    (key, ids)
}
