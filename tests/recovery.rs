//! Start-up from a recovery point: the saved states plus the log after them rebuild
//! exactly what a full replay of the whole log rebuilds, and nothing before the point is
//! read again.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::ops::{first_difference, issue, observe, op, run, Op};
use common::{fresh_clock, rules};
use proptest::prelude::*;
use rusqlite::Connection;
use spendgate::service::{Engine, EngineConfig};
use spendgate::store::{Durability, Store, DB_FILE};

fn open(dir: &Path) -> Engine {
    let (store, snapshot) = Store::open(dir, Durability::Off).unwrap();
    Engine::open(rules(), Arc::new(store), snapshot, EngineConfig::default())
        .unwrap()
        .with_clock(fresh_clock())
}

fn copy_store(from: &Path, to: &Path) {
    std::fs::copy(from.join(DB_FILE), to.join(DB_FILE)).unwrap();
}

#[test]
fn a_restart_reads_the_recovery_point_not_the_history_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let cards;
    let before;
    let now;
    {
        let e = open(dir.path());
        cards = issue(&e, 4);
        let mut ops: Vec<Op> = (0..60)
            .map(|i| Op::Authorize {
                card: i % 4,
                cents: 500 + 37 * i as i64,
                online: i % 3 == 0,
                abroad: i % 5 == 0,
            })
            .collect();
        ops.extend((0..20).map(|i| Op::Capture {
            auth: i,
            percent: 100,
        }));
        ops.extend((20..30).map(|auth| Op::Reverse { auth }));
        ops.push(Op::Point);
        // The tail after the point: replayed on top of it.
        ops.extend((0..8).map(|i| Op::Authorize {
            card: i % 4,
            cents: 900,
            online: true,
            abroad: false,
        }));
        ops.push(Op::Capture {
            auth: 61,
            percent: 50,
        });
        ops.push(Op::Reverse { auth: 62 });
        now = run(&e, &cards, &ops);
        before = observe(&e, &cards, now);
        e.store().unwrap().close();
    }
    // Everything before the point is made unreadable: a start-up that read it would fail.
    let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let (d, r, t): (i64, i64, i64) = c
        .query_row(
            "SELECT decision_seq, release_seq, transfer_seq FROM recovery_point",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(
        d >= 60 && r > 0 && t > 0,
        "the point cuts the log: {d} {r} {t}"
    );
    let spoiled = c
        .execute("UPDATE decision_log SET body = x'ff' WHERE seq <= ?1", [d])
        .unwrap();
    assert_eq!(spoiled as i64, d);
    c.execute(
        "UPDATE velocity_releases SET ratio = 'x' WHERE seq <= ?1",
        [r],
    )
    .unwrap();
    c.execute(
        "UPDATE postings SET amount = 'x' WHERE transfer_id IN (SELECT id FROM transfers WHERE seq <= ?1)",
        [t],
    )
    .unwrap();
    drop(c);
    let e = open(dir.path());
    assert_eq!(observe(&e, &cards, now), before);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Wherever the points fall in any sequence of operations, a restart from the last
    /// point rebuilds the same state as a full replay of the log.
    #[test]
    fn a_restart_from_a_recovery_point_equals_a_full_replay(ops in proptest::collection::vec(op(), 1..70)) {
        let dir = tempfile::tempdir().unwrap();
        let full = tempfile::tempdir().unwrap();
        let cards;
        let live;
        let now;
        {
            let e = open(dir.path());
            cards = issue(&e, 4);
            now = run(&e, &cards, &ops);
            live = observe(&e, &cards, now);
            e.store().unwrap().close();
        }
        copy_store(dir.path(), full.path());
        Connection::open(full.path().join(DB_FILE))
            .unwrap()
            .execute_batch("DELETE FROM recovery_point; DELETE FROM recovery_states;")
            .unwrap();
        // Each engine is observed before the next is opened: `at` moves the newest clock.
        let replayed = observe(&open(full.path()), &cards, now);
        prop_assert_eq!(first_difference(&replayed, &live), None, "full replay");
        let from_point = observe(&open(dir.path()), &cards, now);
        prop_assert_eq!(first_difference(&from_point, &live), None, "from the point");
    }
}

#[test]
fn after_a_restart_a_retried_authorization_replays_once_stored_ids_are_indexed() {
    let dir = tempfile::tempdir().unwrap();
    common::ops::retries_replay_after_a_restart(|| open(dir.path()));
}
