//! The PostgreSQL store: the same operations leave the same state as on SQLite and
//! survive a restart; a writer whose lease moved is refused; three instances on one
//! database fail over under load (SIGKILL of the owner, then SIGSTOP of the next one
//! past its lease) without losing an acknowledged write or overspending a card.
//!
//! These need a database: `SPENDGATE_TEST_POSTGRES` set to a URL (`.ci/run` sets it to
//! the local server and creates a fresh database per run). Each test works in a schema of
//! its own. Without the variable each test prints that it did NOT run, and passes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ops::{first_difference, issue, observe, op, run};
use common::pg::{base_url, fresh_schema, lease};
use common::{fresh_clock, rules};
use proptest::prelude::*;
use spendgate::clock::SequentialIds;
use spendgate::cluster::{Fence, LeaseClient};
use spendgate::issuing::Program;
use spendgate::money::Currency;
use spendgate::service::{Engine, EngineConfig};
use spendgate::store::{Durability, Store, StoreError, Write};

fn open_pg(url: &str, fence: Fence) -> Engine {
    Engine::open_postgres(rules(), url, fence, EngineConfig::default())
        .unwrap()
        .with_clock(fresh_clock())
        .with_ids(Arc::new(SequentialIds::default()))
}

fn open_sqlite(dir: &std::path::Path) -> Engine {
    let (store, snapshot) = Store::open(dir, Durability::Off).unwrap();
    Engine::open(rules(), Arc::new(store), snapshot, EngineConfig::default())
        .unwrap()
        .with_clock(fresh_clock())
        .with_ids(Arc::new(SequentialIds::default()))
}

/// Everything stored, as text (money, holds, decisions, releases, idempotent answers).
/// Of a decision, what a replay reads: its answer also carries the decision's measured
/// latency, which no two runs share.
fn stored(mut snapshot: spendgate::store::Snapshot) -> String {
    // One expiry sweep visits cards in hash order, which differs between any two engines.
    snapshot
        .ledger
        .hold_resolutions
        .sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    snapshot
        .velocity_releases
        .sort_by(|a, b| (&a.0, &a.1, a.3).cmp(&(&b.0, &b.1, b.3)));
    let decisions: Vec<Vec<u8>> = snapshot
        .decisions
        .into_iter()
        .map(|d| match d {
            spendgate::store::StoredDecision::Record { body, .. } => body,
            spendgate::store::StoredDecision::Legacy(l) => l.effects.into_bytes(),
        })
        .collect();
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        snapshot.cards,
        snapshot.ledger,
        decisions,
        snapshot.velocity_releases,
        snapshot.idempotency,
        snapshot.programs
    )
}

fn snapshot_of_postgres(url: &str) -> spendgate::store::Snapshot {
    let mut db = spendgate::store::postgres::connect(url).unwrap();
    spendgate::store::load_snapshot(&mut db).unwrap()
}

/// The ids of the programs stored, in order.
fn program_ids(url: &str) -> Vec<String> {
    snapshot_of_postgres(url)
        .programs
        .into_iter()
        .map(|p| p.id)
        .collect()
}

fn snapshot_of_sqlite(dir: &std::path::Path) -> spendgate::store::Snapshot {
    let mut c = rusqlite::Connection::open(dir.join(spendgate::store::DB_FILE)).unwrap();
    spendgate::store::load_snapshot(&mut c).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Any sequence of operations stores the same rows on both backends, and a restart on
    /// PostgreSQL (from its recovery point and the log after it) rebuilds the same state.
    #[test]
    fn postgres_stores_what_sqlite_stores_and_restarts_the_same(
        ops in proptest::collection::vec(op(), 1..50)
    ) {
        let Some(base) = base_url() else { return Ok(()) };
        let url = fresh_schema(&base);
        let dir = tempfile::tempdir().unwrap();
        let (cards, now, on_sqlite) = {
            let e = open_sqlite(dir.path());
            let cards = issue(&e, 4);
            let now = run(&e, &cards, &ops);
            let seen = observe(&e, &cards, now);
            e.store().unwrap().close();
            (cards, now, seen)
        };
        let (mut client, fence) = lease(&url, "first", 60_000);
        let live = {
            let e = open_pg(&url, fence.clone());
            let pg_cards = issue(&e, 4);
            prop_assert_eq!(&pg_cards, &cards);
            prop_assert_eq!(run(&e, &cards, &ops), now);
            let seen = observe(&e, &cards, now);
            e.store().unwrap().close();
            seen
        };
        prop_assert_eq!(first_difference(&live, &on_sqlite), None, "postgres against sqlite");
        prop_assert_eq!(
            stored(snapshot_of_postgres(&url)),
            stored(snapshot_of_sqlite(dir.path()))
        );
        client.release(&fence).unwrap();
        let (_client, fence) = lease(&url, "second", 60_000);
        prop_assert_eq!(fence.epoch, 2);
        let restarted = observe(&open_pg(&url, fence), &cards, now);
        prop_assert_eq!(first_difference(&restarted, &live), None, "after a restart");
    }
}

fn program(id: &str) -> Write {
    Write::Program(Program {
        id: id.into(),
        policy: "consumer-prepaid-africa".into(),
        currency: Currency::USD,
    })
}

#[test]
fn a_writer_whose_lease_moved_is_refused_and_writes_nothing() {
    let Some(base) = base_url() else { return };
    let url = fresh_schema(&base);
    let (mut first, old) = lease(&url, "first", 300);
    let mut db = spendgate::store::postgres::connect(&url).unwrap();
    spendgate::store::commit(&mut db, Some(&old), &[program("before")]).unwrap();
    // Nobody can take a live lease.
    let mut second = LeaseClient::connect(&url, "second", "http://127.0.0.1:2", 300, 1).unwrap();
    assert!(second.try_acquire(0).unwrap().is_none());
    // The first owner pauses past its lease; the second takes over.
    std::thread::sleep(Duration::from_millis(450));
    let new = second
        .try_acquire(0)
        .unwrap()
        .expect("an expired lease is free");
    let holders = second.observe(1).unwrap().holders;
    assert_eq!(
        (new.epoch, holders[0].as_ref().unwrap().owner.as_str()),
        (old.epoch + 1, "second")
    );
    // The old owner wakes up: its batch is refused, its renewal finds the lease gone.
    match spendgate::store::commit(&mut db, Some(&old), &[program("after")]) {
        Err(StoreError::Fenced(why)) => assert!(why.contains("second"), "{why}"),
        other => panic!("an old epoch's commit must be fenced, got {other:?}"),
    }
    assert!(!first.renew(&old).unwrap());
    spendgate::store::commit(&mut db, Some(&new), &[program("new owner")]).unwrap();
    let ids = program_ids(&url);
    assert_eq!(ids, vec!["before", "new owner"]);
}

#[test]
fn a_takeover_waits_for_the_old_owners_batch_in_flight() {
    let Some(base) = base_url() else { return };
    let url = fresh_schema(&base);
    let (_first, old) = lease(&url, "first", 200);
    // The old owner's batch has proven its lease (and holds the lease row) when the
    // lease expires; a takeover must wait for that batch, never commit beside it.
    let mut db = spendgate::store::postgres::connect(&url).unwrap();
    // When the batch's writes were handed over: the batch had not committed before.
    // (Not when `commit` returned: on a busy machine the new owner may take the lease
    // between the old batch's commit and that thread's next look at the clock.)
    let written_at = Arc::new(std::sync::Mutex::new(None));
    let slow = std::thread::spawn({
        let written_at = written_at.clone();
        move || {
            let writes = [program("in flight")];
            // Writes are read after the fence check: a batch slower than the lease.
            let slow_writes = std::iter::once(()).flat_map(|()| {
                std::thread::sleep(Duration::from_millis(700));
                *written_at.lock().unwrap() = Some(Instant::now());
                writes.iter()
            });
            spendgate::store::commit(&mut db, Some(&old), slow_writes)
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut second = LeaseClient::connect(&url, "second", "http://127.0.0.1:2", 200, 1).unwrap();
    // Attempts behind the batch give up (lock timeout) and ask again.
    let (taken, taken_at) = loop {
        if let Ok(Some(f)) = second.try_acquire(0) {
            break (f, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let commit = slow.join().unwrap();
    assert!(commit.is_ok(), "{commit:?}");
    assert_eq!(taken.epoch, 2);
    let written_at = written_at
        .lock()
        .unwrap()
        .expect("the batch's writes were read");
    assert!(
        taken_at > written_at,
        "the lease moved while the old owner's batch was still in flight"
    );
    let ids = program_ids(&url);
    assert_eq!(ids, vec!["in flight"]);
}

#[test]
fn the_retention_sweep_deletes_only_expired_answers() {
    let Some(base) = base_url() else { return };
    let url = fresh_schema(&base);
    let (_client, fence) = lease(&url, "first", 60_000);
    let mut db = spendgate::store::postgres::connect(&url).unwrap();
    let answer = |key: &str, at_ms: i64| Write::Idempotency {
        scope: "fund",
        key: key.into(),
        request_hash: "h".into(),
        response: "{}".into(),
        at_ms,
    };
    let writes = [answer("old-1", 10), answer("old-2", 20), answer("new", 30)];
    spendgate::store::commit(&mut db, Some(&fence), &writes).unwrap();
    let sweep = Write::IdempotencySweep { before_ms: 25 };
    spendgate::store::commit(&mut db, Some(&fence), [&sweep]).unwrap();
    let keys: Vec<String> = snapshot_of_postgres(&url)
        .idempotency
        .into_iter()
        .map(|(_, k, _, _)| k)
        .collect();
    assert_eq!(keys, vec!["new"]);
}

/// The two schemas are written out separately (each in its own dialect); this keeps them
/// from drifting: every table and column a fresh SQLite store has, PostgreSQL has too.
#[test]
fn postgres_has_every_table_and_column_sqlite_has() {
    use spendgate::store::sql::Db;
    let Some(base) = base_url() else { return };
    let url = fresh_schema(&base);
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path(), Durability::Off).unwrap().0.close();
    let mut sqlite =
        rusqlite::Connection::open(dir.path().join(spendgate::store::DB_FILE)).unwrap();
    let db: &mut dyn Db = &mut sqlite;
    let sqlite_columns = db
        .rows(
            "SELECT m.name, c.name FROM sqlite_master m JOIN pragma_table_info(m.name) c
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY 1, 2",
            &[],
            |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
        )
        .unwrap();
    assert!(sqlite_columns.len() > 50, "{sqlite_columns:?}");
    let _ = lease(&url, "schema", 60_000); // connecting migrates
    let mut pg = spendgate::store::postgres::connect(&url).unwrap();
    let db: &mut dyn Db = &mut pg;
    let pg_columns: std::collections::HashSet<(String, String)> = db
        .rows(
            "SELECT table_name, column_name FROM information_schema.columns
             WHERE table_schema = current_schema()",
            &[],
            |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
        )
        .unwrap()
        .into_iter()
        .collect();
    let missing: Vec<_> = sqlite_columns
        .iter()
        .filter(|c| !pg_columns.contains(*c))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the PostgreSQL schema: {missing:?}"
    );
}

/// Writes go out pipelined with the COMMIT, which PostgreSQL answers as a rollback after a
/// failed statement: the batch must report the failure, and nothing of it may stay.
#[test]
fn a_failed_write_fails_its_whole_pipelined_batch() {
    let Some(base) = base_url() else { return };
    let url = fresh_schema(&base);
    let (_client, fence) = lease(&url, "first", 60_000);
    let mut db = spendgate::store::postgres::connect(&url).unwrap();
    let resolved = Write::HoldResolved {
        card_id: "c".into(),
        auth_id: "a".into(),
        status: spendgate::ledger::HoldStatus::Voided,
        at_ms: 1,
    };
    // A hold resolves once: the second resolution violates its unique key.
    let batch = [program("kept?"), resolved.clone(), resolved];
    match spendgate::store::commit(&mut db, Some(&fence), &batch) {
        Err(StoreError::Postgres(why)) => assert!(why.contains("23505"), "{why}"),
        other => panic!("a unique violation must fail the batch, got {other:?}"),
    }
    // The connection is usable again, and the failed batch left nothing.
    spendgate::store::commit(&mut db, Some(&fence), &[program("after")]).unwrap();
    assert_eq!(program_ids(&url), vec!["after"]);
    assert!(snapshot_of_postgres(&url)
        .ledger
        .hold_resolutions
        .is_empty());
}

/// A batch of hundreds of statements goes out as one pipeline; they must still run in
/// order (each transfer's postings reference it), and read back in that order.
#[test]
fn a_large_pipelined_batch_runs_in_order() {
    use rust_decimal::Decimal;
    use spendgate::ledger::{AccountId, Posting, Transfer, TransferKind};
    let Some(base) = base_url() else { return };
    let url = fresh_schema(&base);
    let (_client, fence) = lease(&url, "first", 60_000);
    let mut db = spendgate::store::postgres::connect(&url).unwrap();
    let transfers: Vec<Write> = (0..400)
        .map(|i| {
            let amount = Decimal::new(i + 1, 2);
            Write::Transfer(Transfer {
                id: format!("t{i:03}"),
                kind: TransferKind::TopUp,
                reference: "c".into(),
                postings: [
                    Posting {
                        account: AccountId("funding:p:USD".into()),
                        currency: Currency::USD,
                        amount: -amount,
                    },
                    Posting {
                        account: AccountId("card:c".into()),
                        currency: Currency::USD,
                        amount,
                    },
                ]
                .into_iter()
                .collect(),
                fx_rate: None,
                forced: false,
                at_ms: i,
            })
        })
        .collect();
    spendgate::store::commit(&mut db, Some(&fence), &transfers).unwrap();
    let stored = snapshot_of_postgres(&url).ledger.transfers;
    let ids: Vec<&str> = stored.iter().map(|t| t.id.as_str()).collect();
    let want: Vec<String> = (0..400).map(|i| format!("t{i:03}")).collect();
    assert_eq!(ids, want.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stored
        .iter()
        .all(|t| t.postings.len() == 2 && t.postings[0].amount < Decimal::ZERO));
}

#[test]
fn each_shard_has_its_own_tables_and_its_own_lease() {
    use spendgate::store::postgres;
    let Some(base) = base_url() else { return };
    let url = fresh_schema(&base);
    let mut one = LeaseClient::connect(&url, "one", "http://127.0.0.1:1", 60_000, 4).unwrap();
    let two_fence = one.try_acquire(2).unwrap().expect("shard 2 is free");
    // A held shard cannot be taken; a free one can, by anyone.
    let mut two = LeaseClient::connect(&url, "two", "http://127.0.0.1:2", 60_000, 4).unwrap();
    assert!(two.try_acquire(2).unwrap().is_none());
    assert!(two.try_acquire(3).unwrap().is_some());
    let view = two.observe(4).unwrap();
    let owners: Vec<Option<&str>> = view
        .holders
        .iter()
        .map(|h| h.as_ref().map(|h| h.owner.as_str()))
        .collect();
    assert_eq!(owners, vec![None, None, Some("one"), Some("two")]);
    assert_eq!(
        view.members,
        vec!["two".to_string()],
        "only `two` said it is alive"
    );
    // Shard 2's writes land in shard 2's tables only, not in shard 0's beside them.
    let mut db = postgres::connect_shard(&url, 2).unwrap();
    postgres::migrate(&mut db, 2).unwrap();
    spendgate::store::commit(&mut db, Some(&two_fence), &[program("in two")]).unwrap();
    let mut db = postgres::connect_shard(&url, 2).unwrap();
    let in_two = spendgate::store::load_snapshot(&mut db).unwrap().programs;
    assert_eq!(in_two.len(), 1);
    assert!(program_ids(&url).is_empty(), "shard 0 holds nothing");
    // The count is fixed at set-up: an instance started with another is refused.
    match LeaseClient::connect(&url, "three", "http://127.0.0.1:3", 60_000, 8) {
        Err(StoreError::Corrupt(why)) => assert!(why.contains("4 shard"), "{why}"),
        other => panic!("another shard count must be refused: {:?}", other.err()),
    }
    let mut db = postgres::connect(&url).unwrap();
    assert_eq!(postgres::shard_count(&mut db).unwrap(), 4);
}

/// After a start from a recovery point, an old authorization id is still replayed once
/// the stored ids are indexed (see `common::ops::retries_replay_after_a_restart`).
#[test]
fn after_a_restart_a_retried_authorization_replays_once_stored_ids_are_indexed() {
    let Some(base) = base_url() else { return };
    let url = fresh_schema(&base);
    let (_client, fence) = lease(&url, "owner", 60_000);
    common::ops::retries_replay_after_a_restart(|| open_pg(&url, fence.clone()));
}

/// Runs `f` on a thread: its result if it finished within `within`, else `None` (it is
/// left running: the caller releases what it waits on, then reads the result from the
/// returned receiver).
fn finishes_within<T: Send + 'static>(
    within: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (std::sync::mpsc::Receiver<T>, Option<T>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let got = rx.recv_timeout(within).ok();
    (rx, got)
}

#[test]
fn an_instance_joining_takes_no_lock_on_the_owners_tables() {
    use spendgate::store::sql::Db;
    let Some(base) = base_url() else { return };
    let url = fresh_schema(&base);
    let (_first, _fence) = lease(&url, "first", 5_000);
    // The owner's batch is open: it has written a decision (a table with indexes) and
    // not committed yet.
    let mut owner = spendgate::store::postgres::connect(&url).unwrap();
    // (One simple query, sent now: a transaction's statements would be queued.)
    owner
        .batch(
            "BEGIN; INSERT INTO decision_log (auth_hash, card_hash, answer, body)
             VALUES (1, 2, 'a', 'b')",
        )
        .unwrap();
    // Another instance starts on the same (current) schema: it must neither wait for
    // that batch nor hold anything the batch will wait for.
    let joining_url = url.clone();
    let (rx, joined) = finishes_within(Duration::from_secs(5), move || {
        LeaseClient::connect(&joining_url, "second", "http://127.0.0.1:2", 5_000, 1)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    owner.batch("COMMIT").unwrap();
    let waited = joined.is_none();
    let joined = joined.unwrap_or_else(|| rx.recv().unwrap());
    assert!(joined.is_ok(), "{joined:?}");
    assert!(
        !waited,
        "joining waited for the owner's open batch (it locked the owner's tables)"
    );
    let mut check = spendgate::store::postgres::connect(&url).unwrap();
    let check: &mut dyn Db = &mut check;
    let decisions: i64 = check
        .value("SELECT count(*) FROM decision_log", &[])
        .unwrap();
    assert_eq!(decisions, 1);
}

#[test]
fn a_batch_chosen_as_a_deadlock_victim_is_committed_again() {
    use spendgate::decision::KycStatus;
    use spendgate::issuing::Cardholder;
    use spendgate::store::sql::Db;
    let Some(base) = base_url() else { return };
    let url = fresh_schema(&base);
    let (_client, fence) = lease(&url, "first", 30_000);
    let (store, _) = Store::open_postgres(&url, fence).unwrap();
    // Another session (an operator's, a migration) holds `cardholders`, which the batch
    // writes second ...
    let mut other = spendgate::store::postgres::connect(&url).unwrap();
    other.begin().unwrap();
    other.batch("LOCK TABLE cardholders IN SHARE MODE").unwrap();
    let store = Arc::new(store);
    let batch = std::thread::spawn({
        let store = store.clone();
        move || {
            store.commit(vec![
                program("p1"),
                Write::Cardholder(Cardholder {
                    id: "ch1".into(),
                    program: "p1".into(),
                    name: "Ada".into(),
                    kyc: KycStatus::Verified,
                    blocked: false,
                }),
            ])
        }
    });
    // ... the batch waits for it, holding `programs` ...
    let mut watching = spendgate::store::postgres::connect(&url).unwrap();
    let watch: &mut dyn Db = &mut watching;
    let started = Instant::now();
    while watch
        .value::<i64>("SELECT count(*) FROM pg_locks WHERE NOT granted", &[])
        .unwrap()
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the batch never waited"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // ... and the other session now wants `programs`: a deadlock, whose victim is the
    // batch (it has waited longer, so its deadlock check runs first).
    other
        .batch("LOCK TABLE programs IN SHARE MODE")
        .expect("the batch, not this session, is the deadlock's victim");
    other.commit().unwrap();
    // The batch ran again and committed (before, the store stopped the process).
    batch.join().unwrap();
    drop(store);
    assert_eq!(program_ids(&url), vec!["p1"]);
    assert_eq!(snapshot_of_postgres(&url).cardholders.len(), 1);
}

/// Decision records the store compressed with a dictionary it trained on them
/// (`store::dictionary`) are kept with that dictionary on PostgreSQL too, and read back as
/// they were written by the instance that takes the lease over.
#[test]
fn postgres_keeps_compressed_records_with_their_dictionary_across_a_takeover() {
    use spendgate::store::sql::Db;
    use spendgate::store::{DecisionWrite, StoredDecision};
    let Some(base) = base_url() else { return };
    let url = fresh_schema(&base);
    let record = |i: u64, kind: &str| -> Vec<u8> {
        let mut r = vec![2u8];
        r.extend_from_slice(
            format!(
                "{kind} auth_{i:08x} card_{:016x} {}.00 NGN daily_spend decline 65 in 24h \
                 (card scope); frees at 2026-12-07",
                i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                i % 997
            )
            .as_bytes(),
        );
        r
    };
    let write = |i: u64| {
        Write::Decision(Box::new(DecisionWrite {
            auth_hash: i as i64,
            card_hash: (i % 7) as i64,
            answer: record(i, "answer"),
            body: record(i, "body"),
        }))
    };
    let mut watch = spendgate::store::postgres::connect(&url).unwrap();
    let mut compressed = || -> i64 {
        let w: &mut dyn Db = &mut watch;
        w.value(
            "SELECT count(*) FROM decision_log WHERE get_byte(answer, 0) = 240",
            &[],
        )
        .unwrap()
    };
    let (mut client, fence) = lease(&url, "first", 60_000);
    let (store, _) = Store::open_postgres(&url, fence.clone()).unwrap();
    let started = Instant::now();
    let mut n = 0u64;
    while compressed() < 100 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never compressed"
        );
        store.commit((n..n + 64).map(write).collect());
        n += 64;
    }
    store.close();
    client.release(&fence).unwrap();
    let want: Vec<StoredDecision> = (0..n)
        .map(|i| StoredDecision::Record {
            answer: record(i, "answer"),
            body: record(i, "body"),
        })
        .collect();
    let (_client, fence) = lease(&url, "second", 60_000);
    let (store, snapshot) = Store::open_postgres(&url, fence).unwrap();
    assert_eq!(snapshot.decisions, want);
    let read: Vec<_> = store
        .decisions_after(0)
        .unwrap()
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(read, want);
}
