//! History reads for the API (a card's recent decisions and transfers), on a read-only
//! connection of their own so they never wait behind the writer.

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::decision_keys;
use super::load::{id_hash, legacy_row, record_row, LEGACY_COLUMNS};
use super::sql::{params, Backend, Db};
use super::{Store, StoreError, StoredDecision};

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
    /// The request id of the HTTP call that asked (empty in-process).
    pub request_id: String,
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
/// in-memory cache no longer has it: an answer stored without a decision (every scope but
/// authorizations, and an authorization's deadline 91 or unknown card's 14). A decision's
/// own answer is in its record ([`decisions_of_authorization`]).
pub fn stored_answer(
    c: &mut dyn Db,
    scope: &str,
    key: &str,
) -> Result<Option<(String, String)>, StoreError> {
    c.row(
        "SELECT request_hash, response FROM idempotency WHERE scope = ?1 AND key = ?2",
        params![scope, key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Every stored decision whose authorization id hashes like `auth_id` (any card, any
/// program; the caller decodes and compares).
pub fn decisions_of_authorization(
    c: &mut dyn Db,
    auth_id: &str,
) -> Result<Vec<StoredDecision>, StoreError> {
    let sql = match c.backend() {
        Backend::Sqlite => decision_keys::AUTH_RECORDS,
        Backend::Postgres => "SELECT answer, body FROM decision_log WHERE auth_hash = ?1",
    };
    let mut out = c.rows(sql, params![id_hash(auth_id)], record_row)?;
    if super::schema::has_legacy_decisions(c)? {
        out.extend(c.rows(
            &format!("SELECT {LEGACY_COLUMNS} FROM decisions WHERE auth_id = ?1"),
            params![auth_id],
            legacy_row,
        )?);
    }
    Ok(out)
}

/// The card an authorization of `program` placed its hold on, if it did.
pub fn card_of_authorization(
    c: &mut dyn Db,
    program: &str,
    auth_id: &str,
) -> Result<Option<String>, StoreError> {
    c.row(
        "SELECT h.card_id FROM holds h JOIN cards c ON c.id = h.card_id
         WHERE h.auth_id = ?1 AND c.program = ?2",
        params![auth_id, program],
        |r| r.get(0),
    )
}

pub fn open_reader(path: &std::path::Path) -> Result<Connection, StoreError> {
    Ok(Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?)
}

/// A card's newest decisions (at most [`HISTORY_ROWS_MAX`], newest first, still encoded;
/// a hash names them, so the caller keeps those of this card) and transfers.
pub fn card_history(
    c: &mut dyn Db,
    card: &str,
) -> Result<(Vec<StoredDecision>, Vec<TransferHistory>), StoreError> {
    let sql = match c.backend() {
        Backend::Sqlite => decision_keys::CARD_RECORDS,
        Backend::Postgres => {
            "SELECT answer, body FROM decision_log WHERE card_hash = ?1 ORDER BY seq DESC LIMIT ?2"
        }
    };
    let mut decisions = c.rows(
        sql,
        params![id_hash(card), HISTORY_ROWS_MAX as i64],
        record_row,
    )?;
    if decisions.len() < HISTORY_ROWS_MAX && super::schema::has_legacy_decisions(c)? {
        let left = (HISTORY_ROWS_MAX - decisions.len()) as i64;
        decisions.extend(c.rows(
            &format!(
                "SELECT {LEGACY_COLUMNS} FROM decisions WHERE card_id = ?1
                 ORDER BY at_ms DESC, seq DESC LIMIT ?2"
            ),
            params![card, left],
            legacy_row,
        )?);
    }
    let transfers = c.rows(
        "SELECT t.id, t.kind, t.reference, t.at_ms, p.amount, p.currency FROM postings p JOIN transfers t ON t.id = p.transfer_id
         WHERE p.account = ?1 ORDER BY t.seq DESC LIMIT ?2",
        params![&format!("card:{card}"), HISTORY_ROWS_MAX as i64],
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
    )?;
    Ok((decisions, transfers))
}

/// One time a policy version went live.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PolicyActivation {
    pub version: String,
    pub at_ms: i64,
    /// `startup`, `admin` (reload) or `admin rollback`.
    pub by: String,
}

pub fn policy_activations(
    c: &mut dyn Db,
    policy: &str,
) -> Result<Vec<PolicyActivation>, StoreError> {
    c.rows(
        "SELECT version, at_ms, \"by\" FROM policy_activations WHERE policy = ?1
             ORDER BY seq DESC LIMIT ?2",
        params![policy, HISTORY_ROWS_MAX as i64],
        |r| {
            Ok(PolicyActivation {
                version: r.get(0)?,
                at_ms: r.get(1)?,
                by: r.get(2)?,
            })
        },
    )
}

pub fn policy_source(
    c: &mut dyn Db,
    policy: &str,
    version: &str,
) -> Result<Option<String>, StoreError> {
    c.row(
        "SELECT source FROM policy_versions WHERE policy = ?1 AND version = ?2",
        params![policy, version],
        |r| r.get(0),
    )
}

/// Decisions read per page of a backwards scan.
const SCAN_PAGE_ROWS: i64 = 1_000;

/// Up to `rows_max` stored decisions before `before_seq`, newest first.
pub fn decisions_before(
    c: &mut dyn Db,
    before_seq: i64,
    rows_max: i64,
) -> Result<Vec<(i64, StoredDecision)>, StoreError> {
    c.rows(
        "SELECT seq, answer, body FROM decision_log WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
        params![before_seq, rows_max],
        |r| {
            Ok((
                r.get::<i64>(0)?,
                StoredDecision::Record {
                    answer: r.get(1)?,
                    body: r.get(2)?,
                },
            ))
        },
    )
}

/// Stored decisions after `seq`, in commit order.
pub fn decisions_after(c: &mut dyn Db, seq: i64) -> Result<Vec<(i64, StoredDecision)>, StoreError> {
    c.rows(
        "SELECT seq, answer, body FROM decision_log WHERE seq > ?1 ORDER BY seq",
        params![seq],
        |r| {
            Ok((
                r.get(0)?,
                StoredDecision::Record {
                    answer: r.get(1)?,
                    body: r.get(2)?,
                },
            ))
        },
    )
}

/// Velocity releases at or after `at_ms`: (card, authorization, ratio, at_ms).
pub fn releases_since(
    c: &mut dyn Db,
    at_ms: i64,
) -> Result<Vec<(String, String, rust_decimal::Decimal, i64)>, StoreError> {
    c.rows(
        "SELECT card_id, auth_id, ratio, at_ms FROM velocity_releases WHERE at_ms >= ?1 ORDER BY seq",
        params![at_ms],
        |r| {
            let ratio: String = r.get(2)?;
            let ratio = ratio
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("release ratio `{ratio}`")))?;
            Ok((r.get(0)?, r.get(1)?, ratio, r.get(3)?))
        },
    )
}

/// Reads on the store's own read-only connection (blocking: call them off the async
/// runtime). They never wait behind the writer.
impl Store {
    /// A card's latest decisions (still encoded, newest first) and transfers (blocking:
    /// call off the async runtime).
    pub fn card_history(
        &self,
        card_id: &str,
    ) -> Result<(Vec<StoredDecision>, Vec<TransferHistory>), StoreError> {
        self.readers.with(|c| {
            let (mut decisions, transfers) = card_history(c, card_id)?;
            self.expand(c, decisions.iter_mut())?;
            Ok((decisions, transfers))
        })
    }

    /// The stored decisions of an authorization id, on any card (the caller checks the
    /// program and the id: a hash names them).
    pub fn decisions_of_authorization(
        &self,
        auth_id: &str,
    ) -> Result<Vec<StoredDecision>, StoreError> {
        self.readers.with(|c| {
            let mut decisions = decisions_of_authorization(c, auth_id)?;
            self.expand(c, decisions.iter_mut())?;
            Ok(decisions)
        })
    }

    /// A policy's activations, newest first (at most [`HISTORY_ROWS_MAX`]).
    pub fn policy_activations(&self, policy: &str) -> Result<Vec<PolicyActivation>, StoreError> {
        self.readers.with(|c| policy_activations(c, policy))
    }

    /// A stored policy version's source (JSON of `PolicySource`).
    pub fn policy_source(&self, policy: &str, version: &str) -> Result<Option<String>, StoreError> {
        self.readers.with(|c| policy_source(c, policy, version))
    }

    /// The stored answer of an idempotent operation (see [`query::stored_answer`]).
    pub fn stored_answer(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.readers.with(|c| stored_answer(c, scope, key))
    }

    /// The card an authorization of `program` placed its hold on.
    pub fn card_of_authorization(
        &self,
        program: &str,
        auth_id: &str,
    ) -> Result<Option<String>, StoreError> {
        self.readers
            .with(|c| card_of_authorization(c, program, auth_id))
    }

    /// Stored decisions newest first while `keep` accepts them (the scan stops at the
    /// first it refuses), with their sequence numbers. A long scan, so read a page at a
    /// time with the reader taken per page: idempotency lookups of retries go in between.
    pub fn recent_decisions(
        &self,
        mut keep: impl FnMut(&StoredDecision) -> bool,
    ) -> Result<Vec<(i64, StoredDecision)>, StoreError> {
        let mut out = Vec::new();
        let mut before = i64::MAX;
        loop {
            let page = self.readers.with(|c| {
                let mut page = decisions_before(c, before, SCAN_PAGE_ROWS)?;
                self.expand(c, page.iter_mut().map(|(_, d)| d))?;
                Ok(page)
            })?;
            let full = page.len() as i64 == SCAN_PAGE_ROWS;
            for (seq, d) in page {
                if !keep(&d) {
                    return Ok(out);
                }
                before = seq;
                out.push((seq, d));
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// The highest decision sequence stored (0 with none): at least the count of
    /// decisions, so a bound for sizing what indexes them.
    pub fn decision_seq_max(&self) -> Result<i64, StoreError> {
        self.readers.with(|c| {
            c.value::<Option<i64>>("SELECT max(seq) FROM decision_log", &[])
                .map(|v| v.unwrap_or(0))
        })
    }

    /// Whether every authorization answer is found by [`Store::authorization_hashes`] and
    /// [`Store::authorization_idempotency_keys`]: not in a store that still has the
    /// version-4 `decisions` table (its ids are read from there only).
    pub fn authorization_ids_indexable(&self) -> Result<bool, StoreError> {
        self.readers
            .with(|c| super::schema::has_legacy_decisions(c).map(|legacy| !legacy))
    }

    /// A page of the authorization ids the store answers for: each stored decision's
    /// `auth_hash` after `seq`, in order, with its sequence (for the next page).
    pub fn authorization_hashes(
        &self,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        self.readers.with(|c| {
            c.rows(
                "SELECT seq, auth_hash FROM decision_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                params![seq, limit],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    /// A page of the authorization keys (`program/id`) answered from the idempotency table
    /// (decisions whose deadline passed: their 91), after `key`, in order.
    pub fn authorization_idempotency_keys(
        &self,
        key: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.readers.with(|c| {
            c.rows(
                "SELECT key FROM idempotency WHERE scope = 'authorization' AND key > ?1
                 ORDER BY key LIMIT ?2",
                params![key, limit],
                |r| r.get(0),
            )
        })
    }

    /// Stored decisions after `seq`, in commit order.
    pub fn decisions_after(&self, seq: i64) -> Result<Vec<(i64, StoredDecision)>, StoreError> {
        self.readers.with(|c| {
            let mut decisions = decisions_after(c, seq)?;
            self.expand(c, decisions.iter_mut().map(|(_, d)| d))?;
            Ok(decisions)
        })
    }

    /// Stored records as they were written (see `dictionary`).
    fn expand<'a>(
        &self,
        c: &mut dyn Db,
        decisions: impl Iterator<Item = &'a mut StoredDecision>,
    ) -> Result<(), StoreError> {
        for d in decisions {
            self.dictionaries.expand(c, d)?;
        }
        Ok(())
    }

    /// Velocity releases at or after `at_ms`.
    pub fn releases_since(
        &self,
        at_ms: i64,
    ) -> Result<Vec<(String, String, rust_decimal::Decimal, i64)>, StoreError> {
        self.readers.with(|c| releases_since(c, at_ms))
    }
}
