//! Three `spendgate serve` processes on one PostgreSQL database, under load through all
//! three: the owner is killed (SIGKILL), a standby takes over; the new owner is paused
//! (SIGSTOP) past its lease, the third takes over, and the paused one, resumed, stops
//! without writing. No acknowledged write is lost, no card is overspent, `ledger verify`
//! is clean, and each takeover comes within the lease time plus start-up.
//!
//! The policy is the permissive one of the crash test (`tests/fixtures/stress`): cards run
//! out of money, not out of velocity, so overspending is what the load would find.
//!
//! Needs `SPENDGATE_TEST_POSTGRES` (see tests/postgres.rs); without it, says it did NOT
//! run and passes.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::instance::{post, set_up_program, status, wait_owner, Instance, LEASE_MS};
use common::pg::{base_url, fresh_schema};
use rust_decimal::Decimal;

const CARDS: usize = 8;
const FUNDED: &str = "60.00";

/// A schema of its own and the first instance on it, serving as the owner.
async fn first_owner(
    base: String,
    name: &str,
) -> (String, tempfile::TempDir, reqwest::Client, Instance) {
    // The postgres client blocks: never on the test's runtime threads.
    let url = tokio::task::spawn_blocking(move || fresh_schema(&base))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let owner = Instance::start(&url, dir.path(), name);
    wait_owner(&client, &[&owner], Duration::from_secs(60)).await;
    (url, dir, client, owner)
}

/// What the load was told: approvals and top-ups, each with the phase it came in.
#[derive(Default)]
struct Acknowledged {
    approvals: Vec<(usize, String, String, Decimal)>,
    top_ups: Vec<(usize, String, String, Decimal)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_fail_over_without_losing_or_overspending() {
    let Some(base) = base_url() else { return };
    let (url, dir, client, first) = first_owner(base, "first").await;
    let second = Instance::start(&url, dir.path(), "second");
    let third = Instance::start(&url, dir.path(), "third");
    // A standby answers once it knows the owner (its 503 names it).
    for i in [&second, &third] {
        let started = Instant::now();
        loop {
            let r = client.get(i.url("/readyz")).send().await;
            if r.is_ok_and(|r| r.headers().contains_key("spendgate-owner")) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "standby never found the owner"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Set up through a standby: forwarded to the owner.
    let (key, cards) = set_up_program(&client, &second.url(""), "p", CARDS, FUNDED).await;

    // Load through all three instances until told to stop.
    let ports = [first.port, second.port, third.port];
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let mut load = Vec::new();
    for worker in 0..6usize {
        let (client, key, cards) = (client.clone(), key.clone(), cards.clone());
        let (phase, stop, acked) = (phase.clone(), stop.clone(), acked.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let port = ports[(worker + n) % ports.len()];
                let card = &cards[(worker * 7 + n * 3) % cards.len()];
                let at = phase.load(Ordering::SeqCst);
                if n % 5 == 0 {
                    let amount = Decimal::new(((worker * 31 + n * 17) % 2_000 + 500) as i64, 2);
                    let k = format!("t{worker}-{n}");
                    let r = post(
                        &client,
                        format!("http://127.0.0.1:{port}/v1/cards/{card}/fund"),
                        &key,
                        Some(&k),
                        serde_json::json!({"amount": amount.to_string()}),
                    )
                    .await;
                    if let Ok((201, body)) = r {
                        let transfer = body["transfer_id"].as_str().unwrap().to_string();
                        acked
                            .lock()
                            .unwrap()
                            .top_ups
                            .push((at, card.clone(), transfer, amount));
                    }
                    continue;
                }
                let amount = Decimal::new(((worker * 13 + n * 29) % 1_500 + 500) as i64, 2);
                let id = format!("a{worker}-{n}");
                let r = post(
                    &client,
                    format!("http://127.0.0.1:{port}/v1/authorizations"),
                    &key,
                    None,
                    serde_json::json!({"id": id, "card_id": card, "amount": amount.to_string(),
                        "currency": "USD", "merchant": {"id": format!("m{}", n % 50), "mcc": "5411",
                        "country": "NG"}, "channel": "ecommerce", "type": "purchase"}),
                )
                .await;
                if let Ok((200, body)) = r {
                    if body["approved"] == serde_json::Value::Bool(true) {
                        acked
                            .lock()
                            .unwrap()
                            .approvals
                            .push((at, card.clone(), id, amount));
                    }
                }
            }
        }));
    }

    // 1. The owner dies.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut first = first;
    first.child.kill().unwrap();
    let killed = Instant::now();
    phase.store(1, Ordering::SeqCst);
    let owner = wait_owner(
        &client,
        &[&second, &third],
        Duration::from_millis(LEASE_MS + 15_000),
    )
    .await;
    let first_takeover = killed.elapsed();
    let [mut paused, last] = if owner == 0 {
        [second, third]
    } else {
        [third, second]
    };

    // 2. The new owner is paused past its lease, with a request waiting in its socket.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    paused.signal("-STOP");
    let stopped = Instant::now();
    phase.store(2, Ordering::SeqCst);
    let stuck = {
        let (client, key, card) = (client.clone(), key.clone(), cards[0].clone());
        let url = paused.url(&format!("/v1/cards/{card}/fund"));
        tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(key)
                .header("idempotency-key", "while-paused")
                .timeout(Duration::from_secs(30))
                .json(&serde_json::json!({"amount": "7.77"}))
                .send()
                .await;
            r.map(|r| r.status().as_u16())
        })
    };
    wait_owner(
        &client,
        &[&last],
        Duration::from_millis(2 * LEASE_MS + 15_000),
    )
    .await;
    let second_takeover = stopped.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    paused.signal("-CONT");
    // The resumed old owner finds its lease gone and stops; it never writes again.
    let mut paused_exit = None;
    let resumed = Instant::now();
    while resumed.elapsed() < Duration::from_secs(15) && paused_exit.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        paused_exit = paused.child.try_wait().unwrap();
    }
    let paused_exit = paused_exit.expect("the resumed old owner kept running");
    assert!(!paused_exit.success(), "{paused_exit:?}");
    let log = paused.log_text();
    assert!(
        // Its renewal found the lease gone, or its batch was fenced, or the database
        // ended the transaction it was paused in (and with it the session).
        [
            "taken over",
            "fenced",
            "idle-in-transaction",
            "connection closed"
        ]
        .iter()
        .any(|why| log.contains(why)),
        "{log}"
    );
    let stuck = stuck.await.unwrap();
    assert!(
        !matches!(stuck, Ok(200..=299)),
        "the paused owner acknowledged: {stuck:?}"
    );

    // 3. The third instance serves on.
    phase.store(3, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    for p in 0..=3 {
        let n = acked.approvals.iter().filter(|a| a.0 == p).count();
        if p != 2 {
            assert!(n > 0, "no approval acknowledged in phase {p}");
        }
    }

    // Every acknowledged write is in the store; nothing else was added by the old owner.
    let snapshot = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut db = spendgate::store::postgres::connect(&url).unwrap();
            spendgate::store::load_snapshot(&mut db).unwrap()
        })
        .await
        .unwrap()
    };
    let holds: std::collections::HashSet<(String, String)> = snapshot
        .ledger
        .holds
        .iter()
        .map(|h| (h.card_id.clone(), h.auth_id.clone()))
        .collect();
    for (phase, card, id, _) in &acked.approvals {
        assert!(
            holds.contains(&(card.clone(), id.clone())),
            "approval {id} (phase {phase}) lost"
        );
    }
    let transfers: HashMap<&str, &spendgate::ledger::Transfer> = snapshot
        .ledger
        .transfers
        .iter()
        .map(|t| (t.id.as_str(), t))
        .collect();
    for (phase, _, id, _) in &acked.top_ups {
        assert!(
            transfers.contains_key(id.as_str()),
            "top-up {id} (phase {phase}) lost"
        );
    }
    assert!(
        !snapshot
            .idempotency
            .iter()
            .any(|(_, k, _, _)| k == "while-paused"),
        "the paused owner's write landed"
    );
    // No card spent more than it was given.
    for card in &cards {
        let funded: Decimal = snapshot
            .ledger
            .transfers
            .iter()
            .flat_map(|t| &t.postings)
            .filter(|p| p.account.as_str() == format!("card:{card}") && p.amount > Decimal::ZERO)
            .map(|p| p.amount)
            .sum();
        let approved: Decimal = acked
            .approvals
            .iter()
            .filter(|a| &a.1 == card)
            .map(|a| a.3)
            .sum();
        assert!(
            approved <= funded,
            "card {card}: approved {approved} of {funded}"
        );
        let r = client
            .get(last.url(&format!("/v1/cards/{card}/balance")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let b: serde_json::Value = r.json().await.unwrap();
        let available: Decimal = b["available"].as_str().unwrap().parse().unwrap();
        assert!(available >= Decimal::ZERO, "card {card}: {b}");
    }
    let verify = Command::new(env!("CARGO_BIN_EXE_spendgate"))
        .args(["ledger", "verify", "--data", &url])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    let lease = Duration::from_millis(LEASE_MS);
    assert!(
        first_takeover < lease + Duration::from_secs(10),
        "{first_takeover:?}"
    );
    // The owner renews every third of its lease: stopped just after a renewal, its lease
    // still had at least two thirds to run.
    assert!(
        second_takeover >= lease * 2 / 3,
        "taken over before the lease expired: {second_takeover:?}"
    );
    assert!(
        second_takeover < lease + Duration::from_secs(10),
        "{second_takeover:?}"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "failover: lease {LEASE_MS} ms; owner killed → served again after {} ms; owner paused → \
         served again after {} ms; {} approvals and {} top-ups acknowledged, all stored",
        first_takeover.as_millis(),
        second_takeover.as_millis(),
        acked.approvals.len(),
        acked.top_ups.len()
    );
}

/// A standby stopped by SIGTERM drains and exits cleanly (its lease connection owns a
/// runtime of its own, which once panicked when dropped on the server's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_stops_cleanly_on_sigterm() {
    let Some(base) = base_url() else { return };
    let (url, dir, client, owner) = first_owner(base, "owner").await;
    let mut standby = Instance::start(&url, dir.path(), "standby");
    let started = Instant::now();
    while status(&client, &standby.url("/healthz")).await != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "standby never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    standby.signal("-TERM");
    let stopping = Instant::now();
    let exit = loop {
        if let Some(s) = standby.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(15),
            "the standby kept running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = standby.log_text();
    assert!(exit.success(), "{exit:?}: {log}");
    assert!(!log.contains("panicked"), "{log}");
    // The owner never noticed.
    assert_eq!(status(&client, &owner.url("/readyz")).await, Some(200));
}
