//! The SQLite schema. Analysts may open the file read-only with `sqlite3`; amounts are
//! exact decimal text (`CAST(amount AS REAL)` for quick sums, never for money).

use rusqlite::Connection;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS programs (
    id TEXT PRIMARY KEY, policy TEXT NOT NULL, currency TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cardholders (
    id TEXT NOT NULL, program TEXT NOT NULL, name TEXT NOT NULL,
    kyc TEXT NOT NULL, blocked INTEGER NOT NULL, PRIMARY KEY (program, id));
CREATE TABLE IF NOT EXISTS cards (
    id TEXT PRIMARY KEY, program TEXT NOT NULL, cardholder_id TEXT NOT NULL, kind TEXT NOT NULL,
    currency TEXT NOT NULL, last4 TEXT NOT NULL, expiry TEXT NOT NULL, status TEXT NOT NULL,
    controls TEXT, processor_card_token TEXT);
CREATE TABLE IF NOT EXISTS transfers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    reference TEXT NOT NULL, fx_rate TEXT, forced INTEGER NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS postings (
    transfer_id TEXT NOT NULL REFERENCES transfers(id), account TEXT NOT NULL,
    currency TEXT NOT NULL, amount TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS postings_account ON postings(account);
CREATE TABLE IF NOT EXISTS holds (
    auth_id TEXT NOT NULL, card_id TEXT NOT NULL, card_currency TEXT NOT NULL,
    pending TEXT NOT NULL, authorized TEXT NOT NULL, captured TEXT NOT NULL, refunded TEXT NOT NULL,
    txn_amount TEXT NOT NULL, txn_currency TEXT NOT NULL, fx_rate TEXT NOT NULL, status TEXT NOT NULL,
    created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, resolved_ms INTEGER,
    captured_txn TEXT NOT NULL DEFAULT '0', PRIMARY KEY (card_id, auth_id));
CREATE TABLE IF NOT EXISTS hold_resolutions (
    card_id TEXT NOT NULL, auth_id TEXT NOT NULL, status TEXT NOT NULL, at_ms INTEGER NOT NULL,
    UNIQUE (card_id, auth_id));
CREATE INDEX IF NOT EXISTS holds_auth ON holds(auth_id);
CREATE TABLE IF NOT EXISTS velocity_releases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, card_id TEXT NOT NULL, auth_id TEXT NOT NULL,
    ratio TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY, program TEXT NOT NULL, prefix TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL, response TEXT NOT NULL,
    at_ms INTEGER NOT NULL, PRIMARY KEY (scope, key));
CREATE INDEX IF NOT EXISTS idempotency_at ON idempotency(at_ms);
CREATE INDEX IF NOT EXISTS holds_live ON holds(resolved_ms) WHERE status IN ('pending', 'posted');
CREATE TABLE IF NOT EXISTS recovery_point (
    id INTEGER PRIMARY KEY CHECK (id = 1), format INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    decision_seq INTEGER NOT NULL, release_seq INTEGER NOT NULL, transfer_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS recovery_states (
    kind TEXT NOT NULL, id TEXT NOT NULL, state BLOB NOT NULL, PRIMARY KEY (kind, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decision_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, auth_hash INTEGER NOT NULL, card_hash INTEGER NOT NULL,
    answer BLOB NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS record_dictionaries (
    id INTEGER PRIMARY KEY, dictionary BLOB NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS policy_versions (
    policy TEXT NOT NULL, version TEXT NOT NULL, source TEXT NOT NULL,
    PRIMARY KEY (policy, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policy_activations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, policy TEXT NOT NULL, version TEXT NOT NULL,
    at_ms INTEGER NOT NULL, by TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS policy_activations_policy ON policy_activations(policy, seq);
CREATE TABLE IF NOT EXISTS processor_hooks (
    program TEXT NOT NULL, processor TEXT NOT NULL, config TEXT NOT NULL,
    PRIMARY KEY (program, processor)) WITHOUT ROWID;
";

/// Decisions as versions 2 to 4 wrote them: text columns, the answer as JSON. A store
/// that has some keeps them in this table, read-only (history, replay, retries); version
/// 5 writes to `decision_log` and continues its sequence.
pub const LEGACY_DECISIONS: &str = "
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, auth_id TEXT NOT NULL, card_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL, approved INTEGER NOT NULL, response_code TEXT NOT NULL, reason TEXT NOT NULL,
    rule TEXT, amount TEXT NOT NULL, currency TEXT NOT NULL, amount_approved TEXT NOT NULL,
    card_currency TEXT NOT NULL, policy_version TEXT NOT NULL, request_id TEXT NOT NULL, request_hash TEXT NOT NULL,
    response TEXT NOT NULL, effects TEXT NOT NULL, UNIQUE (card_id, auth_id));
CREATE INDEX IF NOT EXISTS decisions_card ON decisions(card_id, at_ms);
CREATE INDEX IF NOT EXISTS decisions_auth ON decisions(auth_id);
";

/// The schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 8;
// Version 3 → 4 only adds tables and an index (`recovery_point`, `recovery_states`,
// `holds_live`): `SCHEMA` creates them. Version 4 → 5 writes decisions as compact records
// to `decision_log` (≈ 2.2 KB → a few hundred bytes each): see `migrate`; and keeps
// every policy version that went live (`policy_versions`, `policy_activations`).
// Version 5 → 6: cards carry their processor's card token (unique per program) and
// programs their processor hooks (`processor_hooks`); the event outbox
// (`events`, `deliveries`, `webhook_endpoints`, `program_alerts`).
// Version 6 → 7: decision records may be compressed with a dictionary the store trained
// (`record_dictionaries`, see `dictionary`): a release before it could not read them.
// Version 7 → 8: decisions are found by their hashes through `decision_keys` (a file of
// its own), not through two indexes on `decision_log`: `migrate` drops them. A release
// before it recreates them and still works; the keys then catch up from their watermark.

/// Version 1 → 2: authorization ids belong to their program, so holds, their
/// resolutions and decisions are unique per card instead of globally.
const V1_TO_V2: &str = "
ALTER TABLE holds RENAME TO holds_v1;
ALTER TABLE hold_resolutions RENAME TO hold_resolutions_v1;
ALTER TABLE decisions RENAME TO decisions_v1;
DROP INDEX IF EXISTS decisions_card;
";

const V1_TO_V2_COPY: &str = "
INSERT INTO holds (auth_id, card_id, card_currency, pending, authorized, captured, refunded,
    txn_amount, txn_currency, fx_rate, status, created_ms, expires_ms, resolved_ms)
    SELECT auth_id, card_id, card_currency, pending, authorized, captured, refunded,
    txn_amount, txn_currency, fx_rate, status, created_ms, expires_ms, resolved_ms FROM holds_v1;
INSERT INTO hold_resolutions (card_id, auth_id, status, at_ms)
    SELECT h.card_id, r.auth_id, r.status, r.at_ms FROM hold_resolutions_v1 r
    JOIN holds_v1 h ON h.auth_id = r.auth_id ORDER BY r.rowid;
INSERT INTO decisions SELECT * FROM decisions_v1;
DROP TABLE holds_v1;
DROP TABLE hold_resolutions_v1;
DROP TABLE decisions_v1;
";

pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let legacy: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'decisions'",
        [],
        |r| r.get(0),
    )?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| {
        if legacy && version < 2 {
            conn.execute_batch(V1_TO_V2)?;
            conn.execute_batch(LEGACY_DECISIONS)?;
            conn.execute_batch(SCHEMA)?;
            conn.execute_batch(V1_TO_V2_COPY)?;
        } else {
            conn.execute_batch(SCHEMA)?;
        }
        conn.execute_batch(super::outbox::OUTBOX_SCHEMA)?;
        // Version 2 → 3: holds remember what was captured in the transaction currency.
        let has_captured_txn: bool = conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('holds') WHERE name = 'captured_txn'",
            [],
            |r| r.get(0),
        )?;
        if !has_captured_txn {
            conn.execute_batch(
                "ALTER TABLE holds ADD COLUMN captured_txn TEXT NOT NULL DEFAULT '0'",
            )?;
        }
        // Version 5 → 6: a card's processor token, unique within its program.
        let has_token: bool = conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('cards') WHERE name = 'processor_card_token'",
            [],
            |r| r.get(0),
        )?;
        if !has_token {
            conn.execute_batch("ALTER TABLE cards ADD COLUMN processor_card_token TEXT")?;
        }
        conn.execute_batch(
            "CREATE UNIQUE INDEX IF NOT EXISTS cards_processor_token ON cards(program, processor_card_token)
             WHERE processor_card_token IS NOT NULL",
        )?;
        // Version 4 → 5: older decisions stay where they are (their rows lack the request
        // a compact record keeps); new ones continue their sequence in `decision_log`, so
        // recovery points and the log tail keep one order. An empty old table goes.
        if legacy {
            let rows: i64 = conn.query_row("SELECT count(*) FROM decisions", [], |r| r.get(0))?;
            if rows == 0 {
                conn.execute_batch("DROP TABLE decisions")?;
            } else {
                conn.execute(
                    "INSERT INTO sqlite_sequence (name, seq)
                     SELECT 'decision_log', (SELECT max(seq) FROM decisions)
                     WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'decision_log')",
                    [],
                )?;
            }
        }
        conn.execute_batch(
            "DROP INDEX IF EXISTS decision_log_auth; DROP INDEX IF EXISTS decision_log_card;",
        )?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
    })();
    match r {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Whether the store still has decisions in the version 2–4 table (never on PostgreSQL:
/// its schema began at version 6).
pub fn has_legacy_decisions(conn: &mut dyn super::sql::Db) -> Result<bool, super::StoreError> {
    match conn.backend() {
        super::sql::Backend::Sqlite => conn.has_table("decisions"),
        super::sql::Backend::Postgres => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version-1 tables, as stores written before per-program ids have them.
    const V1: &str = "
    CREATE TABLE holds (auth_id TEXT PRIMARY KEY, card_id TEXT NOT NULL, card_currency TEXT NOT NULL,
        pending TEXT NOT NULL, authorized TEXT NOT NULL, captured TEXT NOT NULL, refunded TEXT NOT NULL,
        txn_amount TEXT NOT NULL, txn_currency TEXT NOT NULL, fx_rate TEXT NOT NULL, status TEXT NOT NULL,
        created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, resolved_ms INTEGER);
    CREATE TABLE hold_resolutions (auth_id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, at_ms INTEGER NOT NULL);
    CREATE TABLE decisions (seq INTEGER PRIMARY KEY AUTOINCREMENT, auth_id TEXT NOT NULL UNIQUE,
        card_id TEXT NOT NULL, at_ms INTEGER NOT NULL, approved INTEGER NOT NULL, response_code TEXT NOT NULL,
        reason TEXT NOT NULL, rule TEXT, amount TEXT NOT NULL, currency TEXT NOT NULL,
        amount_approved TEXT NOT NULL, card_currency TEXT NOT NULL, policy_version TEXT NOT NULL,
        request_id TEXT NOT NULL, request_hash TEXT NOT NULL, response TEXT NOT NULL, effects TEXT NOT NULL);
    INSERT INTO holds VALUES ('a1', 'c1', 'USD', '0', '10', '10', '0', '10', 'USD', '1', 'posted', 1, 2, 3);
    INSERT INTO hold_resolutions VALUES ('a1', 'posted', 3);
    INSERT INTO decisions (auth_id, card_id, at_ms, approved, response_code, reason, rule, amount,
        currency, amount_approved, card_currency, policy_version, request_id, request_hash, response,
        effects) VALUES ('a1', 'c1', 1, 1, '00', 'approved', NULL, '10', 'USD', '10', 'USD', 'v', '', 'h',
        '{}', '{}');
    ";

    #[test]
    fn a_version_5_store_reads_without_migrating() {
        // What version 6 added, taken away again: a store as version 5 left it, read as
        // the read-only tools (replay, verify, decisions) read it.
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&c).unwrap();
        c.execute_batch(
            "DROP INDEX cards_processor_token;
             ALTER TABLE cards DROP COLUMN processor_card_token;
             DROP TABLE processor_hooks; DROP TABLE webhook_endpoints; DROP TABLE program_alerts;
             DROP TABLE events; DROP TABLE deliveries; DROP TABLE event_counters;
             INSERT INTO programs VALUES ('p', 'consumer-prepaid-africa', 'USD');
             INSERT INTO cards (id, program, cardholder_id, kind, currency, last4, expiry, status)
                 VALUES ('card_1', 'p', 'h', 'virtual', 'USD', '0001', '2030-01', 'active');
             PRAGMA user_version = 5;",
        )
        .unwrap();
        let s = crate::store::load_snapshot(&mut c).unwrap();
        assert_eq!(s.cards.len(), 1);
        assert_eq!(s.cards[0].processor_card_token, None);
        assert!(s.hook_configs.is_empty() && s.outbox.endpoints.is_empty());
    }

    #[test]
    fn a_version_7_store_loses_the_decision_hash_indexes_the_keys_replace() {
        let c = Connection::open_in_memory().unwrap();
        migrate(&c).unwrap();
        c.execute_batch(
            "CREATE INDEX decision_log_auth ON decision_log(auth_hash);
             CREATE INDEX decision_log_card ON decision_log(card_hash);
             PRAGMA user_version = 7;",
        )
        .unwrap();
        migrate(&c).unwrap();
        let indexes: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'decision_log'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0);
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 8);
    }

    #[test]
    fn a_version_1_store_migrates_to_per_card_authorization_ids() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(V1).unwrap();
        migrate(&c).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let card: String = c
            .query_row(
                "SELECT card_id FROM hold_resolutions WHERE auth_id = 'a1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(card, "c1");
        // The same authorization id on another card (another program) is now allowed.
        c.execute_batch(
            "INSERT INTO holds SELECT 'a1', 'c2', card_currency, pending, authorized, captured,
                 refunded, txn_amount, txn_currency, fx_rate, status, created_ms, expires_ms,
                 resolved_ms, captured_txn FROM holds WHERE card_id = 'c1';
             INSERT INTO decisions (auth_id, card_id, at_ms, approved, response_code, reason, rule,
                 amount, currency, amount_approved, card_currency, policy_version, request_id,
                 request_hash, response, effects) SELECT auth_id, 'c2', at_ms, approved,
                 response_code, reason, rule, amount, currency, amount_approved, card_currency,
                 policy_version, request_id, request_hash, response, effects FROM decisions;",
        )
        .unwrap();
        // Migrating again is a no-op.
        migrate(&c).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM decisions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    /// A version-4 store: the schema of then, one decision in the old table.
    fn v4_store(with_decision: bool) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(&SCHEMA.replace("decision_log", "unused_in_v4"))
            .unwrap();
        c.execute_batch("DROP TABLE unused_in_v4").unwrap();
        c.execute_batch(LEGACY_DECISIONS).unwrap();
        if with_decision {
            c.execute_batch(
                "INSERT INTO decisions (seq, auth_id, card_id, at_ms, approved, response_code, reason,
                     rule, amount, currency, amount_approved, card_currency, policy_version,
                     request_id, request_hash, response, effects)
                 VALUES (41, 'a1', 'c1', 1, 1, '00', 'approved', NULL, '10', 'USD', '10', 'USD', 'v',
                     '', 'h', '{}', '{}')",
            )
            .unwrap();
        }
        c.pragma_update(None, "user_version", 4).unwrap();
        c
    }

    #[test]
    fn a_version_4_store_keeps_its_decisions_and_continues_their_sequence() {
        let mut c = v4_store(true);
        migrate(&c).unwrap();
        assert!(has_legacy_decisions(&mut c).unwrap());
        c.execute(
            "INSERT INTO decision_log (auth_hash, card_hash, answer, body) VALUES (1, 2, x'01', x'01')",
            [],
        )
        .unwrap();
        let seq: i64 = c
            .query_row("SELECT seq FROM decision_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seq, 42, "one order across both tables");
        migrate(&c).unwrap();
        let old: i64 = c
            .query_row("SELECT count(*) FROM decisions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(old, 1);
    }

    #[test]
    fn an_empty_version_4_decision_table_is_dropped() {
        let mut c = v4_store(false);
        migrate(&c).unwrap();
        assert!(!has_legacy_decisions(&mut c).unwrap());
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }
}
