//! Reads everything back at start-up (and for `ledger verify`).

use std::str::FromStr;

use rust_decimal::Decimal;
use smallvec::SmallVec;

use super::sql::{params, Backend, Db, Row};
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
pub fn load_live(conn: &mut dyn Db) -> Result<Snapshot, StoreError> {
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
pub fn load_snapshot(conn: &mut dyn Db) -> Result<Snapshot, StoreError> {
    let mut s = Snapshot::default();
    load_entities(conn, &mut s)?;
    load_transfers(conn, &mut s, 0)?;
    load_holds(conn, &mut s, "WHERE ?1 = ?1", 0)?;
    let order = match conn.backend() {
        Backend::Sqlite => "rowid",
        Backend::Postgres => "seq",
    };
    let rows = conn.rows(
        &format!("SELECT card_id, auth_id, status FROM hold_resolutions ORDER BY {order}"),
        &[],
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
            ))
        },
    )?;
    for (card, a, st) in rows {
        let status = HoldStatus::parse(&st).ok_or_else(|| corrupt(format!("resolution `{st}`")))?;
        s.ledger.hold_resolutions.push((card, a, status));
    }
    load_decisions(conn, &mut s, 0)?;
    load_releases(conn, &mut s, 0)?;
    load_idempotency(conn, &mut s, i64::MAX)?;
    Ok(s)
}

/// The newest `rows_max` idempotent answers, oldest first (ties in a fixed order, so both
/// backends load the same).
fn load_idempotency(conn: &mut dyn Db, s: &mut Snapshot, rows_max: i64) -> Result<(), StoreError> {
    s.idempotency = conn.rows(
        "SELECT scope, key, request_hash, response FROM idempotency
         ORDER BY at_ms DESC, scope DESC, key DESC LIMIT ?1",
        params![rows_max],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    s.idempotency.reverse();
    Ok(())
}

/// Programs, cardholders, cards and API keys: all of them, always.
fn load_entities(conn: &mut dyn Db, s: &mut Snapshot) -> Result<(), StoreError> {
    let rows = conn.rows(
        "SELECT id, policy, currency FROM programs ORDER BY id",
        &[],
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
            ))
        },
    )?;
    for (id, policy, c) in rows {
        s.programs.push(Program {
            id,
            policy,
            currency: cur(&c)?,
        });
    }

    let rows = conn.rows(
        "SELECT id, program, name, kyc, blocked FROM cardholders ORDER BY id",
        &[],
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
                r.get::<bool>(4)?,
            ))
        },
    )?;
    for (id, program, name, kyc, blocked) in rows {
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
    let token = if conn.has_column("cards", "processor_card_token")? {
        "processor_card_token"
    } else {
        "NULL"
    };
    let mut cards = Vec::new();
    conn.each(
        &format!("SELECT id, program, cardholder_id, kind, currency, last4, expiry, status, controls, {token} FROM cards ORDER BY id"),
        &[],
        &mut |r| {
            cards.push(card_row(&r)?);
            Ok(())
        },
    )?;
    s.cards = cards;

    s.api_keys = conn.rows("SELECT hash, program FROM api_keys", &[], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    if conn.has_table("processor_hooks")? {
        s.hook_configs = conn.rows(
            "SELECT program, config FROM processor_hooks ORDER BY program, processor",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
    }
    if conn.has_table("event_counters")? {
        s.outbox = super::outbox::load(conn)?;
    }
    Ok(())
}

fn card_row(r: &Row) -> Result<CardRecord, StoreError> {
    let kind: String = r.get(3)?;
    let kind: CardKind = serde_json::from_value(serde_json::Value::String(kind.clone()))
        .map_err(|_| corrupt(format!("kind `{kind}`")))?;
    let expiry: String = r.get(6)?;
    let (y, m) = expiry
        .split_once('-')
        .ok_or_else(|| corrupt(format!("expiry `{expiry}`")))?;
    let expiry = Expiry {
        year: y.parse().map_err(|_| corrupt("expiry year"))?,
        month: m.parse().map_err(|_| corrupt("expiry month"))?,
    };
    let status: String = r.get(7)?;
    let status = CardStatus::parse(&status).ok_or_else(|| corrupt(format!("status `{status}`")))?;
    let controls = r
        .get::<Option<String>>(8)?
        .map(|c| serde_json::from_str(&c).map_err(|e| corrupt(format!("controls: {e}"))))
        .transpose()?;
    Ok(CardRecord {
        id: r.get(0)?,
        program: r.get(1)?,
        cardholder_id: r.get(2)?,
        kind,
        currency: cur(&r.get::<String>(4)?)?,
        last4: r.get(5)?,
        expiry,
        status,
        controls,
        processor_card_token: r.get(9)?,
    })
}

/// Transfers after `after_seq` with their postings, in commit order.
fn load_transfers(conn: &mut dyn Db, s: &mut Snapshot, after_seq: i64) -> Result<(), StoreError> {
    let order = match conn.backend() {
        Backend::Sqlite => "p.rowid",
        Backend::Postgres => "p.seq",
    };
    let transfers = &mut s.ledger.transfers;
    conn.each(
        &format!("SELECT t.id, t.kind, t.reference, t.fx_rate, t.forced, t.at_ms, p.account, p.currency, p.amount
         FROM transfers t JOIN postings p ON p.transfer_id = t.id WHERE t.seq > ?1 ORDER BY t.seq, {order}"),
        params![after_seq],
        &mut |r| {
            let id: String = r.get(0)?;
            let posting = Posting {
                account: AccountId(r.get(6)?),
                currency: cur(&r.get::<String>(7)?)?,
                amount: dec(&r.get::<String>(8)?)?,
            };
            match transfers.last_mut() {
                Some(t) if t.id == id => t.postings.push(posting),
                _ => {
                    let kind: String = r.get(1)?;
                    transfers.push(Transfer {
                        id,
                        kind: TransferKind::parse(&kind)
                            .ok_or_else(|| corrupt(format!("transfer kind `{kind}`")))?,
                        reference: r.get(2)?,
                        postings: SmallVec::from_iter([posting]),
                        fx_rate: r.get::<Option<String>>(3)?.map(|r| dec(&r)).transpose()?,
                        forced: r.get(4)?,
                        at_ms: r.get(5)?,
                    })
                }
            }
            Ok(())
        },
    )
}

/// Holds matching `filter` (which binds `?1` to `arg`), oldest first.
fn load_holds(
    conn: &mut dyn Db,
    s: &mut Snapshot,
    filter: &str,
    arg: i64,
) -> Result<(), StoreError> {
    let holds = &mut s.ledger.holds;
    conn.each(
        &format!(
            "SELECT auth_id, card_id, card_currency, pending, authorized, captured, refunded, txn_amount, txn_currency,
                fx_rate, status, created_ms, expires_ms, resolved_ms, captured_txn FROM holds {filter}
         ORDER BY created_ms, auth_id"
        ),
        params![arg],
        &mut |r| {
            let text = |i: usize| r.get::<String>(i);
            let status = text(10)?;
            holds.push(Hold {
                auth_id: text(0)?,
                card_id: text(1)?,
                card_currency: cur(&text(2)?)?,
                pending: dec(&text(3)?)?,
                authorized: dec(&text(4)?)?,
                captured: dec(&text(5)?)?,
                captured_txn: dec(&text(14)?)?,
                refunded: dec(&text(6)?)?,
                txn_amount: dec(&text(7)?)?,
                txn_currency: cur(&text(8)?)?,
                fx_rate: dec(&text(9)?)?,
                status: HoldStatus::parse(&status)
                    .ok_or_else(|| corrupt(format!("hold status `{status}`")))?,
                created_ms: r.get(11)?,
                expires_ms: r.get(12)?,
                resolved_ms: r.get(13)?,
            });
            Ok(())
        },
    )
}

/// Decisions after `after_seq`, in commit order (older tables first: their sequence
/// numbers are all lower).
fn load_decisions(conn: &mut dyn Db, s: &mut Snapshot, after_seq: i64) -> Result<(), StoreError> {
    let decisions = &mut s.decisions;
    if super::schema::has_legacy_decisions(conn)? {
        conn.each(
            &format!("SELECT {LEGACY_COLUMNS} FROM decisions WHERE seq > ?1 ORDER BY seq"),
            params![after_seq],
            &mut |r| {
                decisions.push(legacy_row(&r)?);
                Ok(())
            },
        )?;
    }
    let mut raw = Vec::new();
    conn.each(
        "SELECT answer, body FROM decision_log WHERE seq > ?1 ORDER BY seq",
        params![after_seq],
        &mut |r| {
            raw.push(record_row(&r)?);
            Ok(())
        },
    )?;
    let dictionaries = super::dictionary::Dictionaries::load(conn, false)?;
    for mut d in raw {
        dictionaries.expand(conn, &mut d)?;
        decisions.push(d);
    }
    Ok(())
}

pub(super) const LEGACY_COLUMNS: &str = "auth_id, card_id, at_ms, approved, response_code, reason,
    rule, amount, currency, amount_approved, request_id, request_hash, response, effects";

/// A row of `LEGACY_COLUMNS`.
pub(super) fn legacy_row(r: &Row) -> Result<StoredDecision, StoreError> {
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
pub(super) fn record_row(r: &Row) -> Result<StoredDecision, StoreError> {
    Ok(StoredDecision::Record {
        answer: r.get(0)?,
        body: r.get(1)?,
    })
}

/// Velocity releases after `after_seq`, in commit order.
fn load_releases(conn: &mut dyn Db, s: &mut Snapshot, after_seq: i64) -> Result<(), StoreError> {
    let releases = &mut s.velocity_releases;
    conn.each(
        "SELECT card_id, auth_id, ratio, at_ms FROM velocity_releases WHERE seq > ?1 ORDER BY seq",
        params![after_seq],
        &mut |r| {
            releases.push((r.get(0)?, r.get(1)?, dec(&r.get::<String>(2)?)?, r.get(3)?));
            Ok(())
        },
    )
}
