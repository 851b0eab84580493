//! Crash safety: SIGKILL a process under durable load at random moments, many times; after
//! each kill every approval it acknowledged must be in the store and the ledger must verify.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use spendgate::ledger::verify::verify;
use spendgate::ledger::HoldStatus;
use spendgate::service::decision_record::decode;
use spendgate::store::{load_snapshot, DB_FILE};

/// Kills per run: 50 in CI, `SPENDGATE_KILLS=1000` for the long run.
fn kills() -> usize {
    std::env::var("SPENDGATE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

/// xorshift: deterministic per seed, printed so a failure can be replayed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    // (card, state) per acknowledged authorization id.
    let mut acked: HashMap<String, (String, String)> = HashMap::new();
    // (scope, key) of every other acknowledged operation: top-ups, refunds, card actions.
    let mut done: Vec<(String, String)> = Vec::new();
    let mut total_acks = 0;
    let kills = kills();
    let logs = tempfile::tempdir().unwrap();
    let stderr_path = logs.path().join("stress.err");
    for round in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_spendgate"))
            .args([
                "stress",
                "--rules",
                "tests/fixtures/stress",
                "--policy",
                "stress",
                "--cards",
                "8",
                "--threads",
                "3",
                "--data",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("stress started");
        assert!(ready.starts_with("READY"), "round {round}: {ready}");
        let run_ms = 5 + next(&mut seed) % 120;
        let until = Instant::now() + Duration::from_millis(run_ms);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(status) = child.try_wait().unwrap() {
            let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("round {round}: the process died by itself ({status}): {err}");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        for line in rx.try_iter() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["ACK", id, card, state] => {
                    acked.insert(id.to_string(), (card.to_string(), state.to_string()));
                    total_acks += 1;
                }
                ["DONE", scope, key] => done.push((scope.to_string(), key.to_string())),
                _ => {}
            }
        }

        let mut conn =
            Connection::open_with_flags(dir.path().join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let snapshot = load_snapshot(&mut conn).unwrap();
        let report = verify(&snapshot.ledger);
        assert!(report.ok(), "round {round}: {:?}", report.violations);
        let decisions: HashMap<String, bool> = snapshot
            .decisions
            .iter()
            .map(|d| {
                let d = decode(d).unwrap();
                (d.auth_id, d.approved)
            })
            .collect();
        let holds: HashMap<&str, HoldStatus> = snapshot
            .ledger
            .holds
            .iter()
            .map(|h| (h.auth_id.as_str(), h.status))
            .collect();
        for (id, (_card, state)) in &acked {
            assert_eq!(
                decisions.get(id.as_str()),
                Some(&true),
                "round {round}: acknowledged approval {id} is missing"
            );
            let status = holds.get(id.as_str()).copied();
            match state.as_str() {
                "captured" => assert_eq!(
                    status,
                    Some(HoldStatus::Posted),
                    "round {round}: capture of {id} lost"
                ),
                "reversed" => assert_eq!(
                    status,
                    Some(HoldStatus::Voided),
                    "round {round}: reversal of {id} lost"
                ),
                _ => assert!(status.is_some(), "round {round}: hold of {id} lost"),
            }
        }
        let stored: std::collections::HashSet<(&str, &str)> = snapshot
            .idempotency
            .iter()
            .map(|(scope, key, ..)| (scope.as_str(), key.as_str()))
            .collect();
        for (scope, key) in &done {
            assert!(
                stored.contains(&(scope.as_str(), key.as_str())),
                "round {round}: acknowledged {scope} `{key}` is missing"
            );
        }
    }
    let kinds: std::collections::BTreeSet<&str> = done.iter().map(|(s, _)| s.as_str()).collect();
    eprintln!(
        "{total_acks} acknowledged authorizations and {} other operations ({kinds:?}) survived {kills} kills",
        done.len()
    );
    assert!(
        total_acks > kills,
        "the load produced acknowledged approvals ({total_acks})"
    );
}

/// A `spendgate serve` process on a free port of its own; killed with SIGKILL on drop.
struct Serve {
    child: std::process::Child,
    base: String,
}

impl Serve {
    fn start(data: &std::path::Path, deadline_ms: u64) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_spendgate"))
            .arg("serve")
            .env("SPENDGATE_DATA", data)
            .env("SPENDGATE_RULES", "rules")
            .env("SPENDGATE_ADDR", "127.0.0.1:0")
            .env("SPENDGATE_ADMIN_KEY", ADMIN)
            .env("SPENDGATE_DEADLINE_MS", deadline_ms.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("serve logs its address").unwrap();
            if let Some(i) = line.find("\"addr\":\"") {
                let rest = &line[i + 8..];
                break rest[..rest.find('"').unwrap()].to_string();
            }
        };
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Serve {
            child,
            base: format!("http://{addr}"),
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ADMIN: &str = "crash-admin-key-0123456789";

fn call(
    rt: &tokio::runtime::Runtime,
    base: &str,
    path: &str,
    key: &str,
    idem: Option<&str>,
    body: serde_json::Value,
) -> serde_json::Value {
    rt.block_on(async {
        let mut r = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(i) = idem {
            r = r.header("idempotency-key", i);
        }
        r.send().await.unwrap().json().await.unwrap()
    })
}

/// Issue #8.8: a 91 for a missed deadline (and the void of its hold) is durable before it
/// is answered: killed right after the 91, the restarted server replays the 91 to a retry
/// and holds nothing.
#[test]
fn a_deadline_91_is_durable_before_it_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut card = String::new();
    let mut key = String::new();
    for round in 0..5 {
        let s = Serve::start(dir.path(), 0);
        if round == 0 {
            use serde_json::json;
            call(
                &rt,
                &s.base,
                "/v1/programs",
                ADMIN,
                None,
                json!({"id": "ng", "policy": "consumer-prepaid-africa", "currency": "NGN"}),
            );
            key = call(
                &rt,
                &s.base,
                "/v1/programs/ng/api_keys",
                ADMIN,
                None,
                json!(null),
            )["api_key"]
                .as_str()
                .unwrap()
                .to_string();
            call(
                &rt,
                &s.base,
                "/v1/programs/ng/deposits",
                &key,
                Some("d"),
                json!({"amount": "1000000.00", "currency": "NGN"}),
            );
            call(
                &rt,
                &s.base,
                "/v1/cardholders",
                &key,
                Some("h"),
                json!({"id": "h", "name": "Ada Obi", "kyc": "verified"}),
            );
            card = call(
                &rt,
                &s.base,
                "/v1/cards",
                &key,
                Some("c"),
                json!({"cardholder_id": "h", "kind": "virtual"}),
            )["id"]
                .as_str()
                .unwrap()
                .to_string();
            call(
                &rt,
                &s.base,
                &format!("/v1/cards/{card}/fund"),
                &key,
                Some("f"),
                json!({"amount": "100000.00"}),
            );
        }
        let txn = serde_json::json!({"id": format!("late-{round}"), "card_id": card, "amount": "5000.00", "currency": "NGN",
            "merchant": {"id": "m1", "mcc": "5411", "country": "NG"}, "channel": "pos", "type": "purchase"});
        let a = call(&rt, &s.base, "/v1/authorizations", &key, None, txn.clone());
        assert_eq!(a["response_code"], "91", "{a}");
        drop(s); // SIGKILL right after the answer
        let s = Serve::start(dir.path(), 1_500);
        let again = call(&rt, &s.base, "/v1/authorizations", &key, None, txn);
        assert_eq!(again["response_code"], "91", "round {round}: {again}");
        drop(s);
    }
    let mut conn =
        Connection::open_with_flags(dir.path().join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let snap = load_snapshot(&mut conn).unwrap();
    assert!(
        snap.ledger
            .holds
            .iter()
            .all(|h| h.status != HoldStatus::Pending),
        "no hold left behind"
    );
    let r = verify(&snap.ledger);
    assert!(r.ok(), "{:?}", r.violations);
}
