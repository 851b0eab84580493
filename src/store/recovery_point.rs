//! Recovery points: the engine's derived state (balances, velocity windows, activity,
//! travel anchors) saved at a consistent cut of the log, so start-up reads the point and
//! replays only what was written after it, not all history.
//!
//! The engine writes a point while no operation is changing memory, through the same
//! writer queue as everything else; the writer stamps it with the highest decision,
//! velocity-release and transfer sequence committed before it. Rows after those
//! sequences are the tail that start-up replays on top of the saved states.

use super::sql::{params, Backend, Db};
use super::StoreError;

/// The encoding of saved states the engine writes and reads (bumped when it changes).
pub const RECOVERY_POINT_FORMAT: u32 = 1;

/// One entity's saved state: `kind` is `card`, `cardholder`, `program` or `house`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedState {
    pub kind: &'static str,
    pub id: String,
    pub state: Vec<u8>,
}

/// Where the saved states stand in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cut {
    /// The engine's encoding of the states; a point in another format is ignored (full
    /// replay) rather than misread.
    pub format: u32,
    pub at_ms: i64,
    pub decision_seq: i64,
    pub release_seq: i64,
    pub transfer_seq: i64,
}

/// A saved point as read back at start-up.
#[derive(Debug, Clone, Default)]
pub struct LoadedPoint {
    pub cut: Cut,
    /// (kind, id, state)
    pub states: Vec<(String, String, Vec<u8>)>,
}

/// Writes changed states and moves the cut to everything committed so far (inside the
/// writer's transaction, so the cut and the states are one atomic change).
pub(super) fn write(
    c: &mut dyn Db,
    format: u32,
    at_ms: i64,
    states: &[SavedState],
) -> Result<(), StoreError> {
    for s in states {
        c.execute(
            "INSERT INTO recovery_states (kind, id, state) VALUES (?1, ?2, ?3)
             ON CONFLICT (kind, id) DO UPDATE SET state = excluded.state",
            params![s.kind, &s.id, &s.state],
        )?;
    }
    // SQLite's sequence also counts decisions of the version 2–4 table (see `schema`).
    let decision_seq = match c.backend() {
        Backend::Sqlite => {
            "(SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'decision_log')"
        }
        Backend::Postgres => "(SELECT coalesce(max(seq), 0) FROM decision_log)",
    };
    c.execute(
        &format!(
            "INSERT INTO recovery_point (id, format, at_ms, decision_seq, release_seq, transfer_seq)
             VALUES (1, ?1, ?2, {decision_seq},
                     (SELECT coalesce(max(seq), 0) FROM velocity_releases),
                     (SELECT coalesce(max(seq), 0) FROM transfers))
             ON CONFLICT (id) DO UPDATE SET format = excluded.format, at_ms = excluded.at_ms,
                 decision_seq = excluded.decision_seq, release_seq = excluded.release_seq,
                 transfer_seq = excluded.transfer_seq"
        ),
        params![format, at_ms],
    )?;
    Ok(())
}

/// The saved point, if any.
pub fn load(conn: &mut dyn Db) -> Result<Option<LoadedPoint>, StoreError> {
    let cut = conn.row(
        "SELECT format, at_ms, decision_seq, release_seq, transfer_seq FROM recovery_point WHERE id = 1",
        &[],
        |r| {
            Ok(Cut {
                format: u32::try_from(r.get::<i64>(0)?)
                    .map_err(|_| StoreError::Corrupt("recovery point format".into()))?,
                at_ms: r.get(1)?,
                decision_seq: r.get(2)?,
                release_seq: r.get(3)?,
                transfer_seq: r.get(4)?,
            })
        },
    )?;
    let Some(cut) = cut else {
        return Ok(None);
    };
    let states = conn.rows("SELECT kind, id, state FROM recovery_states", &[], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    Ok(Some(LoadedPoint { cut, states }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_cuts_the_log_at_what_was_committed_before_it() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&c).unwrap();
        assert!(load(&mut c).unwrap().is_none());
        c.execute_batch(
            "INSERT INTO velocity_releases (card_id, auth_id, ratio, at_ms) VALUES ('c', 'a', '1', 5);
             INSERT INTO transfers (id, kind, reference, fx_rate, forced, at_ms) VALUES ('t1', 'fund', '', NULL, 0, 1);
             INSERT INTO transfers (id, kind, reference, fx_rate, forced, at_ms) VALUES ('t2', 'fund', '', NULL, 0, 1);",
        )
        .unwrap();
        let s = SavedState {
            kind: "card",
            id: "c".into(),
            state: vec![1, 2, 3],
        };
        write(&mut c, 1, 42, std::slice::from_ref(&s)).unwrap();
        let p = load(&mut c).unwrap().unwrap();
        assert_eq!(
            p.cut,
            Cut {
                format: 1,
                at_ms: 42,
                decision_seq: 0,
                release_seq: 1,
                transfer_seq: 2
            }
        );
        assert_eq!(p.states, vec![("card".into(), "c".into(), vec![1, 2, 3])]);
        // A later point replaces the state and moves the cut.
        let s2 = SavedState {
            state: vec![9],
            ..s
        };
        c.execute_batch("INSERT INTO transfers (id, kind, reference, fx_rate, forced, at_ms) VALUES ('t3', 'fund', '', NULL, 0, 2);").unwrap();
        write(&mut c, 1, 43, &[s2]).unwrap();
        let p = load(&mut c).unwrap().unwrap();
        assert_eq!(p.cut.transfer_seq, 3);
        assert_eq!(p.states, vec![("card".into(), "c".into(), vec![9])]);
    }
}
