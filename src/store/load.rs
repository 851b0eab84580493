//! Reads everything back at start-up (and for `ledger verify`).

use std::str::FromStr;

use rusqlite::Connection;
use rust_decimal::Decimal;
use smallvec::SmallVec;

use super::StoreError;
use crate::domain::{CardStatus, Expiry, KycStatus};
use crate::issuing::{CardKind, CardRecord, Cardholder, Program};
use crate::ledger::verify::LedgerSnapshot;
use crate::ledger::{AccountId, Hold, HoldStatus, Posting, Transfer, TransferKind};
use crate::money::Currency;

/// A decision to store: two opaque records the service encodes (see
/// `service::decision_record`) and the hashes that index them. `answer` is what the
/// caller was told and can be replaced (a missed deadline's 91); `body` is what a replay
/// needs (the request, the request id, the effects).
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionWrite {
    /// [`id_hash`] of the authorization id.
    pub auth_hash: i64,
    /// [`id_hash`] of the card id.
    pub card_hash: i64,
    pub answer: Vec<u8>,
    pub body: Vec<u8>,
}

/// The index key of an authorization or card id: a stable 64-bit hash (readers compare
/// the decoded ids, so a collision costs a row read, never a wrong answer).
pub fn id_hash(id: &str) -> i64 {
    crate::velocity::key_hash(&[id.as_bytes()]) as i64
}

/// A decision as read back.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredDecision {
    /// Version 5 on: compact records, decoded by the service.
    Record { answer: Vec<u8>, body: Vec<u8> },
    /// Written by versions 2–4 (text columns, the answer as JSON).
    Legacy(Box<LegacyDecision>),
}

/// A decision as versions 2–4 stored it: its outcome, the exact response answered (JSON,
/// with the trace), the request's hash (for idempotent replays) and the effects needed to
/// rebuild velocity windows (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyDecision {
    pub auth_id: String,
    pub card_id: String,
    pub at_ms: i64,
    pub approved: bool,
    pub response_code: String,
    pub reason: String,
    pub rule: Option<String>,
    pub amount: String,
    pub currency: String,
    pub amount_approved: String,
    /// The HTTP request id that asked for this decision (empty in-process).
    pub request_id: String,
    pub request_hash: String,
    pub response: String,
    pub effects: String,
}

/// Everything in the store, in commit order.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub programs: Vec<Program>,
    pub cardholders: Vec<Cardholder>,
    pub cards: Vec<CardRecord>,
    pub ledger: LedgerSnapshot,
    pub decisions: Vec<StoredDecision>,
    /// (card id, authorization id, ratio) in order.
    /// (card, authorization, ratio, at_ms), in commit order.
    pub velocity_releases: Vec<(String, String, Decimal, i64)>,
    /// (scope, key, request hash, response).
    pub idempotency: Vec<(String, String, String, String)>,
    /// (SHA-256 of the key, program).
    pub api_keys: Vec<(String, String)>,
    /// (program, hook configuration as JSON).
    pub hook_configs: Vec<(String, String)>,
    /// Webhook endpoints, alert thresholds, the last event sequence.
    pub outbox: super::outbox::OutboxState,
    /// The recovery point the transfers, decisions and releases above follow (live loads
    /// only; a full load has none and holds everything).
    pub point: Option<super::LoadedPoint>,
}

/// Idempotent answers read at start-up (the newest); older ones are answered from the
/// store when asked for.
pub const IDEMPOTENCY_ROWS_AT_START_MAX: i64 = 100_000;

/// What start-up needs: the entities, the recovery point and the log after it, holds that
/// can still move money (pending, or captured within the refund window), and the newest
/// idempotent answers. Without a point (a store written before points existed, or in
/// another format) the whole log is replayed.
pub fn load_live(conn: &Connection) -> Result<Snapshot, StoreError> {
    let mut s = Snapshot::default();
    load_entities(conn, &mut s)?;
    let point =
        super::recovery_point::load(conn)?.filter(|p| p.cut.format == super::RECOVERY_POINT_FORMAT);
    let cut = point.as_ref().map(|p| p.cut).unwrap_or_default();
    s.point = point;
    load_transfers(conn, &mut s, cut.transfer_seq)?;
    load_holds(
        conn,
        &mut s,
        "WHERE status IN ('pending', 'posted') AND (resolved_ms IS NULL OR resolved_ms >=
           (SELECT coalesce(max(resolved_ms), 0) FROM holds WHERE status IN ('pending', 'posted')) - ?1)",
        crate::ledger::RESOLVED_HOLD_RETENTION_MS,
    )?;
    load_decisions(conn, &mut s, cut.decision_seq)?;
    load_releases(conn, &mut s, cut.release_seq)?;
    load_idempotency(conn, &mut s, IDEMPOTENCY_ROWS_AT_START_MAX)?;
    Ok(s)
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

fn dec(s: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str_exact(s).map_err(|_| corrupt(format!("amount `{s}`")))
}

fn cur(s: &str) -> Result<Currency, StoreError> {
    Currency::from_str(s).map_err(|_| corrupt(format!("currency `{s}`")))
}

/// Everything in the store (`ledger verify`, tests): every transfer, hold, resolution,
/// decision and release, in commit order.
pub fn load_snapshot(conn: &Connection) -> Result<Snapshot, StoreError> {
    let mut s = Snapshot::default();
    load_entities(conn, &mut s)?;
    load_transfers(conn, &mut s, 0)?;
    load_holds(conn, &mut s, "WHERE ?1 = ?1", 0)?;
    let mut st =
        conn.prepare("SELECT card_id, auth_id, status FROM hold_resolutions ORDER BY rowid")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (card, a, st) = row?;
        let status = HoldStatus::parse(&st).ok_or_else(|| corrupt(format!("resolution `{st}`")))?;
        s.ledger.hold_resolutions.push((card, a, status));
    }
    load_decisions(conn, &mut s, 0)?;
    load_releases(conn, &mut s, 0)?;
    load_idempotency(conn, &mut s, i64::MAX)?;
    Ok(s)
}

/// The newest `rows_max` idempotent answers, oldest first.
fn load_idempotency(conn: &Connection, s: &mut Snapshot, rows_max: i64) -> Result<(), StoreError> {
    let mut st = conn.prepare(
        "SELECT scope, key, request_hash, response FROM idempotency ORDER BY at_ms DESC LIMIT ?1",
    )?;
    let rows = st.query_map([rows_max], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    for row in rows {
        s.idempotency.push(row?);
    }
    s.idempotency.reverse();
    Ok(())
}

/// Programs, cardholders, cards and API keys: all of them, always.
fn load_entities(conn: &Connection, s: &mut Snapshot) -> Result<(), StoreError> {
    let mut st = conn.prepare("SELECT id, policy, currency FROM programs ORDER BY id")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (id, policy, c) = row?;
        s.programs.push(Program {
            id,
            policy,
            currency: cur(&c)?,
        });
    }

    let mut st =
        conn.prepare("SELECT id, program, name, kyc, blocked FROM cardholders ORDER BY id")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, bool>(4)?,
        ))
    })?;
    for row in rows {
        let (id, program, name, kyc, blocked) = row?;
        let kyc = KycStatus::parse(&kyc).ok_or_else(|| corrupt(format!("kyc `{kyc}`")))?;
        s.cardholders.push(Cardholder {
            id,
            program,
            name,
            kyc,
            blocked,
        });
    }

    // A store of schema 5 or older read as it is (read-only tools: replay, verify,
    // decisions): what version 6 added is absent, not an error.
    let exists = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, bool>(0));
    let has_token = exists(
        "SELECT count(*) > 0 FROM pragma_table_info('cards') WHERE name = 'processor_card_token'",
    )?;
    let has_table = |name: &str| {
        conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, bool>(0),
        )
    };
    let token = if has_token {
        "processor_card_token"
    } else {
        "NULL"
    };
    let mut st = conn.prepare(&format!("SELECT id, program, cardholder_id, kind, currency, last4, expiry, status, controls, {token} FROM cards ORDER BY id"))?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, Option<String>>(8)?,
            r.get::<_, Option<String>>(9)?,
        ))
    })?;
    for row in rows {
        let (id, program, cardholder_id, kind, c, last4, expiry, status, controls, token) = row?;
        let kind: CardKind = serde_json::from_value(serde_json::Value::String(kind.clone()))
            .map_err(|_| corrupt(format!("kind `{kind}`")))?;
        let (y, m) = expiry
            .split_once('-')
            .ok_or_else(|| corrupt(format!("expiry `{expiry}`")))?;
        let expiry = Expiry {
            year: y.parse().map_err(|_| corrupt("expiry year"))?,
            month: m.parse().map_err(|_| corrupt("expiry month"))?,
        };
        let status =
            CardStatus::parse(&status).ok_or_else(|| corrupt(format!("status `{status}`")))?;
        let controls = controls
            .map(|c| serde_json::from_str(&c).map_err(|e| corrupt(format!("controls: {e}"))))
            .transpose()?;
        s.cards.push(CardRecord {
            id,
            program,
            cardholder_id,
            kind,
            currency: cur(&c)?,
            last4,
            expiry,
            status,
            controls,
            processor_card_token: token,
        });
    }

    let mut st = conn.prepare("SELECT hash, program FROM api_keys")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    for row in rows {
        s.api_keys.push(row?);
    }
    if has_table("processor_hooks")? {
        let mut st = conn
            .prepare("SELECT program, config FROM processor_hooks ORDER BY program, processor")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        for row in rows {
            s.hook_configs.push(row?);
        }
    }
    if has_table("event_counters")? {
        s.outbox = super::outbox::load(conn)?;
    }
    Ok(())
}

/// Transfers after `after_seq` with their postings, in commit order.
fn load_transfers(conn: &Connection, s: &mut Snapshot, after_seq: i64) -> Result<(), StoreError> {
    let mut st = conn.prepare(
        "SELECT t.id, t.kind, t.reference, t.fx_rate, t.forced, t.at_ms, p.account, p.currency, p.amount
         FROM transfers t JOIN postings p ON p.transfer_id = t.id WHERE t.seq > ?1 ORDER BY t.seq, p.rowid",
    )?;
    let rows = st.query_map([after_seq], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, bool>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, String>(8)?,
        ))
    })?;
    for row in rows {
        let (id, kind, reference, fx_rate, forced, at_ms, account, c, amount) = row?;
        let posting = Posting {
            account: AccountId(account),
            currency: cur(&c)?,
            amount: dec(&amount)?,
        };
        match s.ledger.transfers.last_mut() {
            Some(t) if t.id == id => t.postings.push(posting),
            _ => s.ledger.transfers.push(Transfer {
                id,
                kind: TransferKind::parse(&kind)
                    .ok_or_else(|| corrupt(format!("transfer kind `{kind}`")))?,
                reference,
                postings: SmallVec::from_iter([posting]),
                fx_rate: fx_rate.map(|r| dec(&r)).transpose()?,
                forced,
                at_ms,
            }),
        }
    }

    Ok(())
}

/// Holds matching `filter` (which binds `?1` to `arg`), oldest first.
fn load_holds(
    conn: &Connection,
    s: &mut Snapshot,
    filter: &str,
    arg: i64,
) -> Result<(), StoreError> {
    let mut st = conn.prepare(&format!(
        "SELECT auth_id, card_id, card_currency, pending, authorized, captured, refunded, txn_amount, txn_currency,
                fx_rate, status, created_ms, expires_ms, resolved_ms, captured_txn FROM holds {filter}
         ORDER BY created_ms, auth_id"
    ))?;
    let rows = st.query_map([arg], |r| {
        Ok((
            (
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ),
            (
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, String>(9)?,
            ),
            (
                r.get::<_, String>(10)?,
                r.get::<_, i64>(11)?,
                r.get::<_, i64>(12)?,
                r.get::<_, Option<i64>>(13)?,
                r.get::<_, String>(14)?,
            ),
        ))
    })?;
    for row in rows {
        let (
            (auth_id, card_id, cc, pending, authorized),
            (captured, refunded, txn_amount, tc, rate),
            (status, created_ms, expires_ms, resolved_ms, captured_txn),
        ) = row?;
        s.ledger.holds.push(Hold {
            auth_id,
            card_id,
            card_currency: cur(&cc)?,
            pending: dec(&pending)?,
            authorized: dec(&authorized)?,
            captured: dec(&captured)?,
            captured_txn: dec(&captured_txn)?,
            refunded: dec(&refunded)?,
            txn_amount: dec(&txn_amount)?,
            txn_currency: cur(&tc)?,
            fx_rate: dec(&rate)?,
            status: HoldStatus::parse(&status)
                .ok_or_else(|| corrupt(format!("hold status `{status}`")))?,
            created_ms,
            expires_ms,
            resolved_ms,
        });
    }

    Ok(())
}

/// Decisions after `after_seq`, in commit order (older tables first: their sequence
/// numbers are all lower).
fn load_decisions(conn: &Connection, s: &mut Snapshot, after_seq: i64) -> Result<(), StoreError> {
    if super::schema::has_legacy_decisions(conn)? {
        let mut st = conn.prepare(&format!(
            "SELECT {LEGACY_COLUMNS} FROM decisions WHERE seq > ?1 ORDER BY seq"
        ))?;
        let rows = st.query_map([after_seq], legacy_row)?;
        for row in rows {
            s.decisions.push(row?);
        }
    }
    let mut st =
        conn.prepare("SELECT answer, body FROM decision_log WHERE seq > ?1 ORDER BY seq")?;
    let rows = st.query_map([after_seq], record_row)?;
    for row in rows {
        s.decisions.push(row?);
    }
    Ok(())
}

pub(super) const LEGACY_COLUMNS: &str = "auth_id, card_id, at_ms, approved, response_code, reason,
    rule, amount, currency, amount_approved, request_id, request_hash, response, effects";

/// A row of `LEGACY_COLUMNS`.
pub(super) fn legacy_row(r: &rusqlite::Row) -> rusqlite::Result<StoredDecision> {
    Ok(StoredDecision::Legacy(Box::new(LegacyDecision {
        auth_id: r.get(0)?,
        card_id: r.get(1)?,
        at_ms: r.get(2)?,
        approved: r.get(3)?,
        response_code: r.get(4)?,
        reason: r.get(5)?,
        rule: r.get(6)?,
        amount: r.get(7)?,
        currency: r.get(8)?,
        amount_approved: r.get(9)?,
        request_id: r.get(10)?,
        request_hash: r.get(11)?,
        response: r.get(12)?,
        effects: r.get(13)?,
    })))
}

/// A row of `answer, body`.
pub(super) fn record_row(r: &rusqlite::Row) -> rusqlite::Result<StoredDecision> {
    Ok(StoredDecision::Record {
        answer: r.get(0)?,
        body: r.get(1)?,
    })
}

/// Velocity releases after `after_seq`, in commit order.
fn load_releases(conn: &Connection, s: &mut Snapshot, after_seq: i64) -> Result<(), StoreError> {
    let mut st = conn.prepare(
        "SELECT card_id, auth_id, ratio, at_ms FROM velocity_releases WHERE seq > ?1 ORDER BY seq",
    )?;
    let rows = st.query_map([after_seq], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (c, a, ratio, at_ms) = row?;
        s.velocity_releases.push((c, a, dec(&ratio)?, at_ms));
    }
    Ok(())
}
