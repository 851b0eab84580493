//! History reads for the API (a card's recent decisions and transfers), on a read-only
//! connection of their own so they never wait behind the writer.

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::StoreError;

/// Rows returned per listing.
pub const HISTORY_ROWS_MAX: usize = 100;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DecisionHistory {
    pub authorization_id: String,
    pub at_ms: i64,
    pub approved: bool,
    pub response_code: String,
    pub reason: String,
    pub rule: Option<String>,
    pub amount: String,
    pub currency: String,
    pub amount_approved: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TransferHistory {
    pub transfer_id: String,
    pub kind: String,
    pub reference: String,
    pub at_ms: i64,
    /// Signed: positive credits the card.
    pub amount: String,
    pub currency: String,
}

/// A card's latest decisions and transfers, newest first.
#[derive(Debug, Clone, Default)]
pub struct CardHistory {
    pub decisions: Vec<DecisionHistory>,
    pub transfers: Vec<TransferHistory>,
}

/// The stored answer (request hash, response) of an idempotent operation, when the
/// in-memory cache no longer has it. Authorization keys are `program/authorization id`:
/// the answer is the decision's own, or an answer stored without a decision (a deadline's
/// 91, an unknown card's 14).
pub fn stored_answer(
    c: &Connection,
    scope: &str,
    key: &str,
) -> Result<Option<(String, String)>, StoreError> {
    use rusqlite::OptionalExtension;
    let row = c
        .prepare_cached(
            "SELECT request_hash, response FROM idempotency WHERE scope = ?1 AND key = ?2",
        )?
        .query_row(rusqlite::params![scope, key], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if row.is_some() || scope != "authorization" {
        return Ok(row);
    }
    let Some((program, auth_id)) = key.split_once('/') else {
        return Ok(None);
    };
    Ok(c.prepare_cached(
        "SELECT d.request_hash, d.response FROM decisions d JOIN cards c ON c.id = d.card_id
         WHERE d.auth_id = ?1 AND c.program = ?2",
    )?
    .query_row(rusqlite::params![auth_id, program], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()?)
}

/// The card an authorization of `program` placed its hold on, if it did.
pub fn card_of_authorization(
    c: &Connection,
    program: &str,
    auth_id: &str,
) -> Result<Option<String>, StoreError> {
    use rusqlite::OptionalExtension;
    Ok(c.prepare_cached(
        "SELECT h.card_id FROM holds h JOIN cards c ON c.id = h.card_id
         WHERE h.auth_id = ?1 AND c.program = ?2",
    )?
    .query_row(rusqlite::params![auth_id, program], |r| r.get(0))
    .optional()?)
}

pub fn open_reader(path: &std::path::Path) -> Result<Connection, StoreError> {
    Ok(Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?)
}

pub fn card_history(c: &Connection, card: &str) -> Result<CardHistory, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT auth_id, at_ms, approved, response_code, reason, rule, amount, currency, amount_approved
         FROM decisions WHERE card_id = ?1 ORDER BY at_ms DESC, seq DESC LIMIT ?2",
    )?;
    let decisions = st
        .query_map(rusqlite::params![card, HISTORY_ROWS_MAX as i64], |r| {
            Ok(DecisionHistory {
                authorization_id: r.get(0)?,
                at_ms: r.get(1)?,
                approved: r.get(2)?,
                response_code: r.get(3)?,
                reason: r.get(4)?,
                rule: r.get(5)?,
                amount: r.get(6)?,
                currency: r.get(7)?,
                amount_approved: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut st = c.prepare_cached(
        "SELECT t.id, t.kind, t.reference, t.at_ms, p.amount, p.currency FROM postings p JOIN transfers t ON t.id = p.transfer_id
         WHERE p.account = ?1 ORDER BY t.seq DESC LIMIT ?2",
    )?;
    let transfers = st
        .query_map(
            rusqlite::params![format!("card:{card}"), HISTORY_ROWS_MAX as i64],
            |r| {
                Ok(TransferHistory {
                    transfer_id: r.get(0)?,
                    kind: r.get(1)?,
                    reference: r.get(2)?,
                    at_ms: r.get(3)?,
                    amount: r.get(4)?,
                    currency: r.get(5)?,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(CardHistory {
        decisions,
        transfers,
    })
}
