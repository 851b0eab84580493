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
use spendgate::store::{load_snapshot, DB_FILE};

const KILLS: usize = 50;

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
    let mut total_acks = 0;
    for round in 0..KILLS {
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
            .stderr(Stdio::null())
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
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: the process died by itself"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        for line in rx.try_iter() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let ["ACK", id, card, state] = parts.as_slice() {
                acked.insert(id.to_string(), (card.to_string(), state.to_string()));
                total_acks += 1;
            }
        }

        let conn =
            Connection::open_with_flags(dir.path().join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let snapshot = load_snapshot(&conn).unwrap();
        let report = verify(&snapshot.ledger);
        assert!(report.ok(), "round {round}: {:?}", report.violations);
        let decisions: HashMap<&str, bool> = snapshot
            .decisions
            .iter()
            .map(|d| (d.auth_id.as_str(), d.approved))
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
    }
    assert!(
        total_acks > KILLS,
        "the load produced acknowledged approvals ({total_acks})"
    );
}
