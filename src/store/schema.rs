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
    controls TEXT);
CREATE TABLE IF NOT EXISTS transfers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    reference TEXT NOT NULL, fx_rate TEXT, forced INTEGER NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS postings (
    transfer_id TEXT NOT NULL REFERENCES transfers(id), account TEXT NOT NULL,
    currency TEXT NOT NULL, amount TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS postings_account ON postings(account);
CREATE TABLE IF NOT EXISTS holds (
    auth_id TEXT PRIMARY KEY, card_id TEXT NOT NULL, card_currency TEXT NOT NULL,
    pending TEXT NOT NULL, authorized TEXT NOT NULL, captured TEXT NOT NULL, refunded TEXT NOT NULL,
    txn_amount TEXT NOT NULL, txn_currency TEXT NOT NULL, fx_rate TEXT NOT NULL, status TEXT NOT NULL,
    created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, resolved_ms INTEGER);
CREATE TABLE IF NOT EXISTS hold_resolutions (
    auth_id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, auth_id TEXT NOT NULL UNIQUE, card_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL, approved INTEGER NOT NULL, response_code TEXT NOT NULL, reason TEXT NOT NULL,
    rule TEXT, amount TEXT NOT NULL, currency TEXT NOT NULL, amount_approved TEXT NOT NULL,
    card_currency TEXT NOT NULL, policy_version TEXT NOT NULL, request_id TEXT NOT NULL, request_hash TEXT NOT NULL,
    response TEXT NOT NULL, effects TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_card ON decisions(card_id, at_ms);
CREATE TABLE IF NOT EXISTS velocity_releases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, card_id TEXT NOT NULL, auth_id TEXT NOT NULL,
    ratio TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY, program TEXT NOT NULL, prefix TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL, response TEXT NOT NULL,
    at_ms INTEGER NOT NULL, PRIMARY KEY (scope, key));
";

pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)
}
