//! The PostgreSQL backend: the same tables as SQLite's (version 6), typed for Postgres
//! (`BIGINT`, `BYTEA`, identity sequences), migrated under an advisory lock so instances
//! starting together do not race, and the connections the store runs on.
//!
//! A connection drives its own small runtime, so it must never be called from a
//! thread of the service's tokio runtime: the writer owns one on its own thread, and
//! reads go to a [`Reader`] — a connection on a thread of its own that callers on any
//! thread send statements to.

use std::sync::mpsc;

use super::sql::{Backend, Db, Owned, PgDb, Row, P};
use super::StoreError;

/// The schema version this code writes (the same numbering as SQLite's `user_version`).
pub const SCHEMA_VERSION: i64 = 7;

/// What the instances share, in the connection's own schema: the leases, the shard
/// count fixed at set-up, and which instances are alive (for sharing the shards out).
pub const CLUSTER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spendgate_leases (
    shard INTEGER PRIMARY KEY, owner TEXT NOT NULL, address TEXT NOT NULL, epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS spendgate_cluster (id INTEGER PRIMARY KEY CHECK (id = 1), shards INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS spendgate_members (
    owner TEXT PRIMARY KEY, address TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL);
";

/// One shard's tables: shard 0's in the connection's own schema, shard k's in the schema
/// `<that schema>_shard_k` (see [`enter_shard`]).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spendgate_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS programs (
    id TEXT PRIMARY KEY, policy TEXT NOT NULL, currency TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cardholders (
    id TEXT NOT NULL, program TEXT NOT NULL, name TEXT NOT NULL,
    kyc TEXT NOT NULL, blocked BOOLEAN NOT NULL, PRIMARY KEY (program, id));
CREATE TABLE IF NOT EXISTS cards (
    id TEXT PRIMARY KEY, program TEXT NOT NULL, cardholder_id TEXT NOT NULL, kind TEXT NOT NULL,
    currency TEXT NOT NULL, last4 TEXT NOT NULL, expiry TEXT NOT NULL, status TEXT NOT NULL,
    controls TEXT, processor_card_token TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS cards_processor_token ON cards(program, processor_card_token)
    WHERE processor_card_token IS NOT NULL;
CREATE TABLE IF NOT EXISTS transfers (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    reference TEXT NOT NULL, fx_rate TEXT, forced BOOLEAN NOT NULL, at_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS postings (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transfer_id TEXT NOT NULL REFERENCES transfers(id), account TEXT NOT NULL,
    currency TEXT NOT NULL, amount TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS postings_account ON postings(account);
CREATE TABLE IF NOT EXISTS holds (
    auth_id TEXT NOT NULL, card_id TEXT NOT NULL, card_currency TEXT NOT NULL,
    pending TEXT NOT NULL, authorized TEXT NOT NULL, captured TEXT NOT NULL, refunded TEXT NOT NULL,
    txn_amount TEXT NOT NULL, txn_currency TEXT NOT NULL, fx_rate TEXT NOT NULL, status TEXT NOT NULL,
    created_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL, resolved_ms BIGINT,
    captured_txn TEXT NOT NULL DEFAULT '0', PRIMARY KEY (card_id, auth_id));
CREATE INDEX IF NOT EXISTS holds_auth ON holds(auth_id);
CREATE INDEX IF NOT EXISTS holds_live ON holds(resolved_ms) WHERE status IN ('pending', 'posted');
CREATE TABLE IF NOT EXISTS hold_resolutions (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    card_id TEXT NOT NULL, auth_id TEXT NOT NULL, status TEXT NOT NULL, at_ms BIGINT NOT NULL,
    UNIQUE (card_id, auth_id));
CREATE TABLE IF NOT EXISTS velocity_releases (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, card_id TEXT NOT NULL, auth_id TEXT NOT NULL,
    ratio TEXT NOT NULL, at_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY, program TEXT NOT NULL, prefix TEXT NOT NULL, created_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL, response TEXT NOT NULL,
    at_ms BIGINT NOT NULL, PRIMARY KEY (scope, key));
CREATE INDEX IF NOT EXISTS idempotency_at ON idempotency(at_ms);
CREATE TABLE IF NOT EXISTS recovery_point (
    id INTEGER PRIMARY KEY CHECK (id = 1), format BIGINT NOT NULL, at_ms BIGINT NOT NULL,
    decision_seq BIGINT NOT NULL, release_seq BIGINT NOT NULL, transfer_seq BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS recovery_states (
    kind TEXT NOT NULL, id TEXT NOT NULL, state BYTEA NOT NULL, PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS decision_log (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, auth_hash BIGINT NOT NULL,
    card_hash BIGINT NOT NULL, answer BYTEA NOT NULL, body BYTEA NOT NULL);
CREATE INDEX IF NOT EXISTS decision_log_auth ON decision_log(auth_hash);
CREATE INDEX IF NOT EXISTS decision_log_card ON decision_log(card_hash);
CREATE TABLE IF NOT EXISTS record_dictionaries (
    id BIGINT PRIMARY KEY, dictionary BYTEA NOT NULL, created_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS policy_versions (
    policy TEXT NOT NULL, version TEXT NOT NULL, source TEXT NOT NULL, PRIMARY KEY (policy, version));
CREATE TABLE IF NOT EXISTS policy_activations (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, policy TEXT NOT NULL, version TEXT NOT NULL,
    at_ms BIGINT NOT NULL, \"by\" TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS policy_activations_policy ON policy_activations(policy, seq);
CREATE TABLE IF NOT EXISTS processor_hooks (
    program TEXT NOT NULL, processor TEXT NOT NULL, config TEXT NOT NULL,
    PRIMARY KEY (program, processor));
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY, program TEXT NOT NULL, config TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS program_alerts (
    program TEXT PRIMARY KEY, config TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS event_counters (
    program TEXT PRIMARY KEY, last BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    sequence BIGINT PRIMARY KEY, id TEXT NOT NULL UNIQUE, program TEXT NOT NULL, card_id TEXT,
    type TEXT NOT NULL, at_ms BIGINT NOT NULL, payload TEXT NOT NULL,
    program_sequence BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    endpoint_id TEXT NOT NULL, sequence BIGINT NOT NULL, status TEXT NOT NULL,
    attempts BIGINT NOT NULL, next_attempt_ms BIGINT NOT NULL, last_status BIGINT,
    last_error TEXT, latency_ms BIGINT, updated_ms BIGINT NOT NULL,
    PRIMARY KEY (endpoint_id, sequence));
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(sequence) WHERE status = 'pending';
";

/// The advisory lock key migrations hold (any constant no other program uses).
const MIGRATION_LOCK: i64 = 0x5350_454e_4447_4154; // "SPENDGAT"

/// Connects on a thread of its own (the client's runtime must not start inside another).
pub fn connect(url: &str) -> Result<PgDb, StoreError> {
    let url = url.to_string();
    std::thread::spawn(move || PgDb::connect(&url))
        .join()
        .unwrap_or_else(|_| Err(StoreError::Postgres("connect panicked".into())))
}

/// `connect`, then into `shard`'s tables (see [`enter_shard`]).
pub fn connect_shard(url: &str, shard: i64) -> Result<PgDb, StoreError> {
    let mut db = connect(url)?;
    enter_shard(&mut db, shard)?;
    Ok(db)
}

/// Points a fresh connection at `shard`'s tables. Shard 0 is the connection's own schema
/// (so an unsharded database is shard 0 as it stands); shard k > 0 is the schema
/// `<own>_shard_k`, searched first, with the own schema behind it for the cluster tables
/// (leases), which exist only there.
pub fn enter_shard(db: &mut dyn Db, shard: i64) -> Result<(), StoreError> {
    if shard == 0 {
        return Ok(());
    }
    let own: String = db.value("SELECT current_schema()", &[])?;
    let name = shard_schema(&own, shard);
    db.batch(&format!(
        "CREATE SCHEMA IF NOT EXISTS {name}; SET search_path TO {name}, {}",
        quote_ident(&own)
    ))
}

/// The schema holding shard `shard` (> 0) of the database whose own schema is `own`.
pub fn shard_schema(own: &str, shard: i64) -> String {
    quote_ident(&format!("{own}_shard_{shard}"))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Fixes the shard count when the database is first set up and refuses an instance
/// started with another (programs would land in other shards than their data).
pub fn agree_shards(db: &mut dyn Db, shards: u32) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO spendgate_cluster (id, shards) VALUES (1, ?1) ON CONFLICT (id) DO NOTHING",
        super::sql::params![i64::from(shards)],
    )?;
    let fixed: Option<i64> = db.row(
        "SELECT shards FROM spendgate_cluster WHERE id = 1",
        &[],
        |r| r.get(0),
    )?;
    match fixed {
        Some(n) if n == i64::from(shards) => Ok(()),
        Some(n) => Err(StoreError::Corrupt(format!(
            "this database was set up with {n} shard(s); this instance was started with {shards} \
             (the count cannot change: start it with --shards {n})"
        ))),
        None => Err(StoreError::Corrupt("spendgate_cluster has no row".into())),
    }
}

/// The shard count the database was set up with (1 when it never ran sharded).
pub fn shard_count(db: &mut dyn Db) -> Result<u32, StoreError> {
    if !db.has_table("spendgate_cluster")? {
        return Ok(1);
    }
    let n: Option<i64> = db.row(
        "SELECT shards FROM spendgate_cluster WHERE id = 1",
        &[],
        |r| r.get(0),
    )?;
    Ok(n.map_or(1, |n| n.clamp(1, i64::from(u32::MAX)) as u32))
}

/// Creates the schema (idempotent), one instance at a time; refuses a database a newer
/// spendgate wrote. On shard 0's connection (the database's own schema) the cluster
/// tables too; on shard k's, only that shard's tables.
///
/// A schema already at [`SCHEMA_VERSION`] is left alone: `CREATE INDEX IF NOT EXISTS`
/// locks its table (`SHARE`) even when the index exists, so an instance joining a live
/// cluster would stall the owner's writes and could deadlock with its batch. (So a change
/// to [`SCHEMA`] or [`CLUSTER_SCHEMA`] bumps the version.)
pub fn migrate(db: &mut dyn Db, shard: i64) -> Result<(), StoreError> {
    if is_current(db, shard)? {
        return Ok(());
    }
    db.transaction(|db| {
        db.execute(
            "SELECT pg_advisory_xact_lock(?1)",
            super::sql::params![MIGRATION_LOCK],
        )?;
        if shard == 0 {
            db.batch(CLUSTER_SCHEMA)?;
        }
        db.batch(SCHEMA)?;
        let version: Option<i64> = db.row(
            "SELECT version FROM spendgate_schema WHERE id = 1",
            &[],
            |r| r.get(0),
        )?;
        if let Some(v) = version.filter(|v| *v > SCHEMA_VERSION) {
            return Err(StoreError::Corrupt(format!(
                "the database is at schema version {v}; this spendgate writes {SCHEMA_VERSION}"
            )));
        }
        db.execute(
            "INSERT INTO spendgate_schema (id, version) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            super::sql::params![SCHEMA_VERSION],
        )?;
        Ok(())
    })
}

/// Whether this connection's own schema (the first on its search path, which a shard's
/// connection also searches the database's schema behind) already holds this version's
/// tables, and on shard 0 the cluster's. Reads catalogs and one row: no table lock that
/// a writer's `ROW EXCLUSIVE` waits for.
fn is_current(db: &mut dyn Db, shard: i64) -> Result<bool, StoreError> {
    let wanted: i64 = if shard == 0 { 4 } else { 1 };
    let present: i64 = db.value(
        "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema()
         AND (tablename = 'spendgate_schema' OR (?1 AND tablename IN
             ('spendgate_leases', 'spendgate_cluster', 'spendgate_members')))",
        super::sql::params![shard == 0],
    )?;
    if present < wanted {
        return Ok(false);
    }
    let version: Option<i64> = db.row(
        "SELECT version FROM spendgate_schema WHERE id = 1",
        &[],
        |r| r.get(0),
    )?;
    Ok(version == Some(SCHEMA_VERSION))
}

enum Request {
    Execute(String, Vec<Owned>),
    Query(String, Vec<Owned>),
    Batch(String),
}

enum Reply {
    Changed(usize),
    Rows(Vec<Row>),
    Done,
}

type Call = (Request, mpsc::SyncSender<Result<Reply, StoreError>>);

/// A PostgreSQL connection on a thread of its own, usable from any thread (the service's
/// runtime threads included). Query results come back whole, so readers keep them bounded
/// (every listing has a `LIMIT`; long scans page).
pub struct Reader {
    tx: mpsc::Sender<Call>,
}

impl Reader {
    /// A reader of `shard`'s tables.
    pub fn connect(url: &str, shard: i64) -> Result<Reader, StoreError> {
        let (tx, rx) = mpsc::channel::<Call>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let url = url.to_string();
        std::thread::Builder::new()
            .name("spendgate-pg-reader".into())
            .spawn(move || {
                let mut db = match PgDb::connect(&url).and_then(|mut db| {
                    enter_shard(&mut db, shard)?;
                    Ok(db)
                }) {
                    Ok(db) => {
                        let _ = ready_tx.send(Ok(()));
                        db
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok((req, reply)) = rx.recv() {
                    let r = match req {
                        Request::Execute(sql, ps) => {
                            let ps: Vec<P<'_>> = ps.iter().map(Owned::p).collect();
                            db.execute(&sql, &ps).map(Reply::Changed)
                        }
                        Request::Query(sql, ps) => {
                            let ps: Vec<P<'_>> = ps.iter().map(Owned::p).collect();
                            let mut rows = Vec::new();
                            db.each(&sql, &ps, &mut |r| {
                                rows.push(r);
                                Ok(())
                            })
                            .map(|()| Reply::Rows(rows))
                        }
                        Request::Batch(sql) => db.batch(&sql).map(|()| Reply::Done),
                    };
                    let _ = reply.send(r);
                }
            })?;
        ready_rx
            .recv()
            .unwrap_or_else(|_| Err(StoreError::Postgres("reader thread stopped".into())))?;
        Ok(Reader { tx })
    }

    fn call(&mut self, req: Request) -> Result<Reply, StoreError> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.tx
            .send((req, reply_tx))
            .map_err(|_| StoreError::Closed)?;
        reply_rx.recv().map_err(|_| StoreError::Closed)?
    }
}

impl Db for Reader {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[P<'_>]) -> Result<usize, StoreError> {
        match self.call(Request::Execute(
            sql.to_string(),
            params.iter().map(Owned::of).collect(),
        ))? {
            Reply::Changed(n) => Ok(n),
            _ => Ok(0),
        }
    }

    fn each(
        &mut self,
        sql: &str,
        params: &[P<'_>],
        f: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if let Reply::Rows(rows) = self.call(Request::Query(
            sql.to_string(),
            params.iter().map(Owned::of).collect(),
        ))? {
            for r in rows {
                f(r)?;
            }
        }
        Ok(())
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.call(Request::Batch(sql.to_string())).map(|_| ())
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.batch("BEGIN")
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.batch("COMMIT")
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        self.batch("ROLLBACK")
    }
}
