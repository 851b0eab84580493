//! How a stored decision is found by its authorization or card (SQLite stores): key
//! tables in a file of their own (`spendgate-keys.db`), filled in bulk by a thread of
//! their own, off the commit path.
//!
//! Why: two random-keyed indexes on `decision_log` dirtied two index pages per decision,
//! ≈ 6.4 KB of the ≈ 17 KB each decision caused to be written. Here a key is
//! `(bucket, hash, low)` with `bucket = seq >> 16` and `low = seq & 0xffff`: new keys all
//! fall into the newest bucket, so a flush of thousands of them touches at most that
//! bucket's few hundred pages, however large the log. `hash` is the id hash's upper 32
//! bits (≈ 10 B per decision less on disk): a lookup compares the whole hash in the log's
//! row, so a shared prefix costs a row read, never a wrong answer.
//!
//! The file is derived data: it may lag (the decisions after its watermark are read from
//! the log's short unindexed tail), it is synced only at its own checkpoints
//! (`synchronous = NORMAL`), and it is rebuilt from the log when it is missing, damaged,
//! or does not match it.
//!
//! Lookups run on a connection that has the file attached as `keys`: the keyed part and
//! the tail in one statement. Any order of the two files' snapshots gives every decision
//! committed before the lookup began: the watermark never passes what the log holds, and
//! both only grow.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::StoreError;

pub const KEYS_FILE: &str = "spendgate-keys.db";
/// Decisions per bucket: `seq >> BUCKET_BITS`.
const BUCKET_BITS: u32 = 16;
/// A flush waits until this many decisions are unkeyed (or the log has been quiet).
const UNKEYED_FLUSH_MIN: i64 = 4_096;
/// Most decisions keyed in one transaction (catching up on a large log goes bucket by bucket).
const KEYS_PER_FLUSH_MAX: i64 = 1 << BUCKET_BITS;
const POLL_MS: u64 = 200;
/// A quiet log's tail is keyed after this long.
const QUIET_FLUSH_MS: u64 = 2_000;
/// The keys file's WAL is cut back to this after a checkpoint.
const KEYS_WAL_BYTES_MAX: i64 = 64 * 1024 * 1024;
/// The keys file's layout (`PRAGMA keys.user_version`); a file of another is rebuilt.
const KEYS_FORMAT: i64 = 1;

const KEYS_SCHEMA: &str = "
DROP TABLE IF EXISTS keys.auth_keys; DROP TABLE IF EXISTS keys.card_keys;
DROP TABLE IF EXISTS keys.keyed;
CREATE TABLE keys.auth_keys (bucket INTEGER NOT NULL, hash INTEGER NOT NULL,
    low INTEGER NOT NULL, PRIMARY KEY (bucket, hash, low)) WITHOUT ROWID;
CREATE TABLE keys.card_keys (bucket INTEGER NOT NULL, hash INTEGER NOT NULL,
    low INTEGER NOT NULL, PRIMARY KEY (bucket, hash, low)) WITHOUT ROWID;
CREATE TABLE keys.keyed (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
INSERT INTO keys.keyed (id, seq) VALUES (1, 0);
";

// The statements below spell `BUCKET_BITS` as 16 and 65535 (SQL constants).

/// Every stored decision whose authorization id hashes to ?1 (answer, body).
pub const AUTH_RECORDS: &str = "WITH RECURSIVE b(n) AS (
    SELECT (SELECT seq FROM keys.keyed) >> 16 UNION ALL SELECT n - 1 FROM b WHERE n > 0)
SELECT d.answer, d.body FROM b JOIN keys.auth_keys k ON k.bucket = b.n AND k.hash = ?1 >> 32
    JOIN decision_log d ON d.seq = (b.n << 16) | k.low WHERE d.auth_hash = ?1
UNION ALL
SELECT answer, body FROM decision_log WHERE seq > (SELECT seq FROM keys.keyed) AND auth_hash = ?1";

/// A card's newest ?2 decisions (answer, body), newest first: the keys are ordered, then
/// only those records read (one whose card merely shares the hash's upper half, about
/// one in 2³² per key, is left out after the limit: a page one row short, never a wrong row).
pub const CARD_RECORDS: &str = "WITH RECURSIVE b(n) AS (
    SELECT (SELECT seq FROM keys.keyed) >> 16 UNION ALL SELECT n - 1 FROM b WHERE n > 0),
s(seq) AS (
    SELECT (b.n << 16) | k.low FROM b JOIN keys.card_keys k ON k.bucket = b.n AND k.hash = ?1 >> 32
    UNION ALL
    SELECT seq FROM decision_log WHERE seq > (SELECT seq FROM keys.keyed) AND card_hash = ?1)
SELECT d.answer, d.body FROM (SELECT seq FROM s ORDER BY seq DESC LIMIT ?2) t
    JOIN decision_log d ON d.seq = t.seq WHERE d.card_hash = ?1 ORDER BY t.seq DESC";

pub fn keys_path(db_path: &Path) -> PathBuf {
    db_path.with_file_name(KEYS_FILE)
}

/// Attaches the keys file as `keys` (read-only on a read-only connection).
pub fn attach(conn: &Connection, db_path: &Path) -> Result<(), StoreError> {
    let keys = keys_path(db_path);
    conn.execute(
        "ATTACH DATABASE ?1 AS keys",
        [keys.to_string_lossy().as_ref()],
    )?;
    Ok(())
}

/// The keys file's own connection (the indexer's): the log read, the keys written.
/// Creates the file, and empties it when it does not describe this log. A file SQLite
/// cannot open or read (damaged) is deleted and made again: it is derived data, and the
/// service must not stay down for it.
pub fn open_indexer(db_path: &Path) -> Result<Connection, StoreError> {
    open_keys(db_path).or_else(|e| {
        tracing::warn!(error = %e, "the decision keys file is unreadable; rebuilding it");
        let keys = keys_path(db_path);
        for suffix in ["", "-wal", "-shm"] {
            let mut p = keys.clone().into_os_string();
            p.push(suffix);
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        open_keys(db_path)
    })
}

fn open_keys(db_path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(db_path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    attach(&conn, db_path)?;
    conn.execute_batch(&format!(
        "PRAGMA keys.journal_mode = WAL; PRAGMA keys.synchronous = NORMAL;
         PRAGMA keys.journal_size_limit = {KEYS_WAL_BYTES_MAX};"
    ))?;
    let format: i64 = conn.query_row("PRAGMA keys.user_version", [], |r| r.get(0))?;
    if format != KEYS_FORMAT {
        conn.execute_batch(&format!(
            "BEGIN; {KEYS_SCHEMA} PRAGMA keys.user_version = {KEYS_FORMAT}; COMMIT;"
        ))?;
    }
    if !describes_log(&conn)? {
        tracing::warn!("the decision keys do not match the decision log; rebuilding them");
        conn.execute_batch(
            "BEGIN; DELETE FROM keys.auth_keys; DELETE FROM keys.card_keys;
             UPDATE keys.keyed SET seq = 0; COMMIT;",
        )?;
    }
    Ok(conn)
}

/// Whether the keys file belongs to this log: its watermark within the log, and its last
/// keyed decision the log's (a log restored from an older copy fails one or the other).
fn describes_log(c: &Connection) -> Result<bool, StoreError> {
    let mark: i64 = c.query_row("SELECT seq FROM keys.keyed", [], |r| r.get(0))?;
    if mark == 0 {
        return Ok(true);
    }
    let last: Option<(i64, i64)> = c
        .query_row(
            "SELECT (bucket << 16) | low, hash FROM keys.auth_keys WHERE bucket = ?1
             ORDER BY low DESC LIMIT 1",
            [mark >> BUCKET_BITS],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((seq, hash)) = last else {
        // A bucket with no keys at all: only gaps in the sequence could explain it.
        let top: i64 = c.query_row("SELECT coalesce(max(seq), 0) FROM decision_log", [], |r| {
            r.get(0)
        })?;
        return Ok(mark <= top);
    };
    let logged: Option<i64> = c
        .query_row(
            "SELECT auth_hash >> 32 FROM decision_log WHERE seq = ?1",
            [seq],
            |r| r.get(0),
        )
        .optional()?;
    Ok(logged == Some(hash))
}

/// Decisions in the log after the watermark.
pub fn unkeyed(c: &Connection) -> Result<i64, StoreError> {
    Ok(c.query_row(
        "SELECT coalesce((SELECT max(seq) FROM decision_log), 0) - (SELECT seq FROM keys.keyed)",
        [],
        |r| r.get(0),
    )?)
}

/// Keys up to `keys_max` decisions after the watermark, in key order, and moves the
/// watermark past them, in one transaction. Returns how many are still unkeyed.
pub fn flush(c: &mut Connection, keys_max: i64) -> Result<i64, StoreError> {
    let tx = c.transaction()?;
    let mark: i64 = tx.query_row("SELECT seq FROM keys.keyed", [], |r| r.get(0))?;
    let top: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM decision_log", [], |r| {
        r.get(0)
    })?;
    let upper = top.min(mark.saturating_add(keys_max));
    if upper <= mark {
        return Ok(0);
    }
    for (table, column) in [("auth_keys", "auth_hash"), ("card_keys", "card_hash")] {
        tx.execute(
            &format!(
                "INSERT INTO keys.{table} (bucket, hash, low)
                 SELECT seq >> {BUCKET_BITS}, {column} >> 32, seq & 65535 FROM decision_log
                 WHERE seq > ?1 AND seq <= ?2 ORDER BY 1, 2, 3"
            ),
            [mark, upper],
        )?;
    }
    tx.execute("UPDATE keys.keyed SET seq = ?1", [upper])?;
    tx.commit()?;
    Ok(top - upper)
}

/// The writer's view of the keys, for the one write that finds a decision by its hashes
/// (a deadline's 91 replacing the stored answer). Its own read-only connection: the
/// writer's transactions must not take the keys file's write lock from the indexer.
pub struct KeysReader {
    conn: Connection,
}

impl KeysReader {
    pub fn open(db_path: &Path) -> Result<KeysReader, StoreError> {
        let conn = Connection::open_with_flags(
            keys_path(db_path),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(KeysReader { conn })
    }

    /// The watermark and the keyed decisions whose authorization id's hash begins like
    /// `hash` (the caller matches the whole hash): any other such decision is after the
    /// watermark.
    pub fn auth_seqs(&mut self, hash: i64) -> Result<(i64, Vec<i64>), StoreError> {
        let tx = self.conn.transaction()?;
        let mark: i64 = tx.query_row("SELECT seq FROM keyed", [], |r| r.get(0))?;
        let seqs = {
            let mut st = tx.prepare_cached(
                "WITH RECURSIVE b(n) AS (SELECT ?1 UNION ALL SELECT n - 1 FROM b WHERE n > 0)
                 SELECT (b.n << 16) | k.low FROM b JOIN auth_keys k ON k.bucket = b.n AND k.hash = ?2 >> 32",
            )?;
            let rows = st.query_map([mark >> BUCKET_BITS, hash], |r| r.get(0))?;
            rows.collect::<Result<Vec<i64>, _>>()?
        };
        tx.finish()?;
        Ok((mark, seqs))
    }
}

/// The indexer: keys the log's tail whenever it reaches [`UNKEYED_FLUSH_MIN`] decisions
/// (or has been quiet for [`QUIET_FLUSH_MS`]) until `stop` is dropped. A failed flush is
/// retried next time: lookups stay correct (the tail is longer), only slower.
pub fn indexer(mut conn: Connection, stop: Receiver<()>) {
    let mut flushed = Instant::now();
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(POLL_MS)) {
        let result = (|| {
            let mut left = unkeyed(&conn)?;
            let quiet = flushed.elapsed() >= Duration::from_millis(QUIET_FLUSH_MS);
            if left >= UNKEYED_FLUSH_MIN || (left > 0 && quiet) {
                left = flush(&mut conn, KEYS_PER_FLUSH_MAX)?;
                flushed = Instant::now();
            }
            Ok::<i64, StoreError>(left)
        })();
        match result {
            Ok(left) => metrics::gauge!("spendgate_store_decisions_unkeyed").set(left as f64),
            Err(e) => tracing::warn!(error = %e, "keying decisions failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::Db;

    fn auth(seq: i64) -> i64 {
        crate::store::id_hash(&format!("auth_{seq}"))
    }

    fn card(seq: i64) -> i64 {
        crate::store::id_hash(&format!("card_{}", seq % 7))
    }

    /// A log of `n` decisions: `auth_{seq}` on `card_{seq % 7}`.
    fn log(dir: &Path, n: i64) -> PathBuf {
        let path = dir.join(crate::store::DB_FILE);
        let c = Connection::open(&path).unwrap();
        c.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; {}",
            super::super::schema::SCHEMA
        ))
        .unwrap();
        append(&c, n);
        path
    }

    fn append(c: &Connection, n: i64) {
        let top: i64 = c
            .query_row("SELECT coalesce(max(seq), 0) FROM decision_log", [], |r| {
                r.get(0)
            })
            .unwrap();
        for seq in top + 1..=top + n {
            c.execute(
                "INSERT INTO decision_log (auth_hash, card_hash, answer, body) VALUES (?1, ?2, x'00', ?3)",
                rusqlite::params![auth(seq), card(seq), seq.to_le_bytes().to_vec()],
            )
            .unwrap();
        }
    }

    fn reader(path: &Path) -> Connection {
        let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        attach(&c, path).unwrap();
        c
    }

    fn bodies(c: &mut Connection, sql: &str, params: &[crate::store::sql::P<'_>]) -> Vec<i64> {
        let db: &mut dyn Db = c;
        db.rows(sql, params, |r| {
            let b: Vec<u8> = r.get(1)?;
            Ok(i64::from_le_bytes(b.try_into().unwrap()))
        })
        .unwrap()
    }

    #[test]
    fn lookups_find_keyed_and_unkeyed_decisions_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(dir.path(), 70_000);
        let mut ix = open_indexer(&path).unwrap();
        // Two buckets keyed, then a tail the keys do not cover.
        assert_eq!(flush(&mut ix, 69_000).unwrap(), 1_000);
        let mut r = reader(&path);
        for seq in [1, 65_535, 65_536, 69_000, 69_001, 70_000] {
            assert_eq!(
                bodies(&mut r, AUTH_RECORDS, &[auth(seq).into()]),
                vec![seq],
                "seq {seq}"
            );
        }
        assert!(bodies(&mut r, AUTH_RECORDS, &[auth(70_001).into()]).is_empty());
        // Card 3: every seventh decision, newest first, across the watermark.
        let newest = bodies(&mut r, CARD_RECORDS, &[card(3).into(), 5i64.into()]);
        let expected: Vec<i64> = (1..=70_000).rev().filter(|s| s % 7 == 3).take(5).collect();
        assert_eq!(newest, expected);
        let all = bodies(&mut r, CARD_RECORDS, &[card(3).into(), 100_000i64.into()]);
        assert_eq!(all.len(), 10_000);
        assert!(all.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn ids_whose_hashes_share_the_keyed_half_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(dir.path(), 0);
        let (a, b) = ((7i64 << 32) | 1, (7i64 << 32) | 2);
        let c = Connection::open(&path).unwrap();
        for (seq, h) in [(1i64, a), (2, b)] {
            c.execute(
                "INSERT INTO decision_log (auth_hash, card_hash, answer, body) VALUES (?1, ?1, x'00', ?2)",
                rusqlite::params![h, seq.to_le_bytes().to_vec()],
            )
            .unwrap();
        }
        let mut ix = open_indexer(&path).unwrap();
        flush(&mut ix, 100).unwrap();
        let mut r = reader(&path);
        assert_eq!(bodies(&mut r, AUTH_RECORDS, &[a.into()]), vec![1]);
        assert_eq!(
            bodies(&mut r, CARD_RECORDS, &[b.into(), 10i64.into()]),
            vec![2]
        );
        assert_eq!(
            KeysReader::open(&path).unwrap().auth_seqs(a).unwrap(),
            (2, vec![1, 2])
        );
    }

    #[test]
    fn the_writer_finds_keyed_seqs_below_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(dir.path(), 100);
        let mut ix = open_indexer(&path).unwrap();
        flush(&mut ix, 50).unwrap();
        let mut k = KeysReader::open(&path).unwrap();
        assert_eq!(k.auth_seqs(auth(40)).unwrap(), (50, vec![40]));
        assert_eq!(k.auth_seqs(auth(60)).unwrap(), (50, vec![]));
    }

    #[test]
    fn keys_that_do_not_match_the_log_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(dir.path(), 10);
        let mut ix = open_indexer(&path).unwrap();
        flush(&mut ix, 100).unwrap();
        drop(ix);
        // The log replaced by another (a restored copy): same length, other decisions.
        let c = Connection::open(&path).unwrap();
        c.execute_batch("DELETE FROM decision_log; DELETE FROM sqlite_sequence;")
            .unwrap();
        for seq in 1..=10i64 {
            c.execute(
                "INSERT INTO decision_log (auth_hash, card_hash, answer, body) VALUES (?1, 0, x'00', x'00')",
                [crate::store::id_hash(&format!("other_{seq}"))],
            )
            .unwrap();
        }
        let ix = open_indexer(&path).unwrap();
        assert_eq!(unkeyed(&ix).unwrap(), 10);
        // A log that lost its tail fails too.
        let dir = tempfile::tempdir().unwrap();
        let path = log(dir.path(), 10);
        let mut ix = open_indexer(&path).unwrap();
        flush(&mut ix, 100).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute("DELETE FROM decision_log WHERE seq > 5", [])
            .unwrap();
        let ix = open_indexer(&path).unwrap();
        assert_eq!(unkeyed(&ix).unwrap(), 5);
    }

    #[test]
    fn a_damaged_keys_file_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(dir.path(), 10);
        std::fs::write(keys_path(&path), b"not a database at all. ".repeat(400)).unwrap();
        let ix = open_indexer(&path).unwrap();
        assert_eq!(unkeyed(&ix).unwrap(), 10);
    }

    #[test]
    fn a_flush_touches_few_pages_however_large_the_keys() {
        // The point of the bucketed key: keying 4 096 new decisions into keys of 200 000
        // writes a fraction of a page per key (random keys write about one each).
        let dir = tempfile::tempdir().unwrap();
        let path = log(dir.path(), 200_000);
        let mut ix = open_indexer(&path).unwrap();
        while flush(&mut ix, KEYS_PER_FLUSH_MAX).unwrap() > 0 {}
        append(&Connection::open(&path).unwrap(), 4_096);
        let pages = |c: &Connection| -> i64 {
            c.execute_batch("PRAGMA keys.wal_checkpoint(TRUNCATE)")
                .unwrap();
            c.query_row("PRAGMA keys.page_count", [], |r| r.get(0))
                .unwrap()
        };
        let before = pages(&ix);
        let wal = keys_path(&path).with_file_name(format!("{KEYS_FILE}-wal"));
        flush(&mut ix, KEYS_PER_FLUSH_MAX).unwrap();
        let wal_pages = std::fs::metadata(&wal).unwrap().len() / 4_096;
        assert!(pages(&ix) > before);
        assert!(
            wal_pages < 8_192 / 4,
            "{wal_pages} pages written for 8 192 keys"
        );
    }

    #[test]
    fn a_deadline_answer_replaces_the_stored_answer_keyed_or_not() {
        use crate::store::{id_hash, DecisionWrite, Durability, Store, StoredDecision, Write};
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), Durability::Off).unwrap();
        let decision = |id: &str| {
            Write::Decision(Box::new(DecisionWrite {
                auth_hash: id_hash(id),
                card_hash: id_hash("card_1"),
                answer: b"\x02approved".to_vec(),
                body: id.as_bytes().to_vec(),
            }))
        };
        store.commit(vec![decision("auth_keyed")]);
        let mut ix = open_indexer(&dir.path().join(crate::store::DB_FILE)).unwrap();
        assert_eq!(flush(&mut ix, 100).unwrap(), 0);
        store.commit(vec![decision("auth_tail")]);
        for id in ["auth_keyed", "auth_tail"] {
            store.commit(vec![Write::DecisionAnswered {
                auth_hash: id_hash(id),
                card_hash: id_hash("card_1"),
                answer: b"\x02deadline".to_vec(),
            }]);
            let found = store.decisions_of_authorization(id).unwrap();
            assert!(
                matches!(&found[..], [StoredDecision::Record { answer, body }]
                    if answer == b"\x02deadline" && body == id.as_bytes()),
                "{id}: {found:?}"
            );
        }
        let (history, _) = store.card_history("card_1").unwrap();
        let bodies: Vec<_> = history
            .iter()
            .map(|d| match d {
                StoredDecision::Record { body, .. } => body.clone(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(bodies, [b"auth_tail".to_vec(), b"auth_keyed".to_vec()]);
        store.close();
    }

    #[test]
    fn the_indexer_keys_a_quiet_log_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(dir.path(), 10);
        let ix = open_indexer(&path).unwrap();
        let (stop, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || indexer(ix, rx));
        let check = open_indexer(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while unkeyed(&check).unwrap() > 0 {
            assert!(Instant::now() < deadline, "the quiet tail was never keyed");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(stop);
        h.join().unwrap();
    }
}
