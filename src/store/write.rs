//! One batch of writes as one transaction: each `Write` as the rows it becomes, in SQL
//! both backends run; on PostgreSQL the batch first proves the writer still holds its
//! lease (see `lease`).

use super::decision_keys::KeysReader;
use super::lease::Fence;
use super::sql::{params, Backend, Db};
use super::{outbox, recovery_point, Job, StoreError, Write, ROWS_PER_SWEEP_MAX};

/// How many times in a row a batch the database rolled back (deadlock victim) is run
/// again before the store stops as for any other failure.
const CONFLICT_RETRIES_MAX: u32 = 5;

/// Commits a batch; one the database chose as a deadlock's victim wrote nothing and is
/// run again (its fence is checked again too). Another transaction (a migration, an
/// operator's session) can always take table locks in an order the writer does not.
pub(super) fn commit_retrying(
    db: &mut dyn Db,
    fence: Option<&Fence>,
    mut keys: Option<&mut KeysReader>,
    jobs: &[Job],
) -> Result<(), StoreError> {
    let mut retries = 0u32;
    loop {
        match commit_batch(db, fence, keys.as_deref_mut(), jobs) {
            Err(StoreError::Conflict(why)) if retries < CONFLICT_RETRIES_MAX => {
                retries += 1;
                metrics::counter!("spendgate_store_conflict_retries_total").increment(1);
                tracing::warn!(%why, retries, "the database rolled a batch back; running it again");
                std::thread::sleep(std::time::Duration::from_millis(10 * u64::from(retries)));
            }
            r => return r,
        }
    }
}

fn commit_batch(
    db: &mut dyn Db,
    fence: Option<&Fence>,
    keys: Option<&mut KeysReader>,
    jobs: &[Job],
) -> Result<(), StoreError> {
    commit_with(db, fence, keys, jobs.iter().flat_map(|j| &j.writes))
}

/// Writes `writes` in one transaction; with a fence, only while its lease is still the
/// current one (else `StoreError::Fenced`, and nothing is written).
pub fn commit<'a>(
    db: &mut dyn Db,
    fence: Option<&Fence>,
    writes: impl IntoIterator<Item = &'a Write>,
) -> Result<(), StoreError> {
    commit_with(db, fence, None, writes)
}

/// `commit`, with the decision keys (SQLite) for the writes that find a decision.
fn commit_with<'a>(
    db: &mut dyn Db,
    fence: Option<&Fence>,
    mut keys: Option<&mut KeysReader>,
    writes: impl IntoIterator<Item = &'a Write>,
) -> Result<(), StoreError> {
    db.transaction(|db| {
        if let Some(f) = fence {
            f.check(db)?;
        }
        for w in writes {
            write_one(db, keys.as_deref_mut(), w)?;
        }
        Ok(())
    })
}

fn write_one(c: &mut dyn Db, keys: Option<&mut KeysReader>, w: &Write) -> Result<(), StoreError> {
    match w {
        Write::Program(p) => {
            c.execute(
                "INSERT INTO programs (id, policy, currency) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET policy = excluded.policy, currency = excluded.currency",
                params![&p.id, &p.policy, p.currency.code()],
            )?;
        }
        Write::Cardholder(h) => {
            c.execute(
                "INSERT INTO cardholders (id, program, name, kyc, blocked) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (program, id) DO UPDATE SET name = excluded.name, kyc = excluded.kyc,
                     blocked = excluded.blocked",
                params![&h.id, &h.program, &h.name, h.kyc.as_str(), h.blocked],
            )?;
        }
        Write::Card(r) => {
            let controls = r
                .controls
                .as_ref()
                .map(|c| serde_json::to_string(c).unwrap_or_default());
            let kind = serde_json::to_value(r.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string));
            let expiry = format!("{:04}-{:02}", r.expiry.year, r.expiry.month);
            c.execute(
                "INSERT INTO cards (id, program, cardholder_id, kind, currency, last4, expiry, status, controls, processor_card_token)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (id) DO UPDATE SET program = excluded.program,
                     cardholder_id = excluded.cardholder_id, kind = excluded.kind,
                     currency = excluded.currency, last4 = excluded.last4, expiry = excluded.expiry,
                     status = excluded.status, controls = excluded.controls,
                     processor_card_token = excluded.processor_card_token",
                params![
                    &r.id,
                    &r.program,
                    &r.cardholder_id,
                    &kind,
                    r.currency.code(),
                    &r.last4,
                    &expiry,
                    r.status.as_str(),
                    &controls,
                    &r.processor_card_token
                ],
            )?;
        }
        Write::Transfer(t) => {
            let rate = t.fx_rate.map(|r| r.to_string());
            c.execute(
                "INSERT INTO transfers (id, kind, reference, fx_rate, forced, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![&t.id, t.kind.as_str(), &t.reference, &rate, t.forced, t.at_ms],
            )?;
            for p in &t.postings {
                c.execute(
                    "INSERT INTO postings (transfer_id, account, currency, amount) VALUES (?1, ?2, ?3, ?4)",
                    params![&t.id, p.account.as_str(), p.currency.code(), &p.amount.to_string()],
                )?;
            }
        }
        Write::Hold(h) => {
            c.execute(
                "INSERT INTO holds (auth_id, card_id, card_currency, pending, authorized, captured, refunded,
                    txn_amount, txn_currency, fx_rate, status, created_ms, expires_ms, resolved_ms, captured_txn)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT (card_id, auth_id) DO UPDATE SET card_currency = excluded.card_currency,
                     pending = excluded.pending, authorized = excluded.authorized,
                     captured = excluded.captured, refunded = excluded.refunded,
                     txn_amount = excluded.txn_amount, txn_currency = excluded.txn_currency,
                     fx_rate = excluded.fx_rate, status = excluded.status,
                     created_ms = excluded.created_ms, expires_ms = excluded.expires_ms,
                     resolved_ms = excluded.resolved_ms, captured_txn = excluded.captured_txn",
                params![
                    &h.auth_id,
                    &h.card_id,
                    h.card_currency.code(),
                    &h.pending.to_string(),
                    &h.authorized.to_string(),
                    &h.captured.to_string(),
                    &h.refunded.to_string(),
                    &h.txn_amount.to_string(),
                    h.txn_currency.code(),
                    &h.fx_rate.to_string(),
                    h.status.as_str(),
                    h.created_ms,
                    h.expires_ms,
                    &h.resolved_ms,
                    &h.captured_txn.to_string()
                ],
            )?;
        }
        Write::HoldResolved {
            card_id,
            auth_id,
            status,
            at_ms,
        } => {
            c.execute(
                "INSERT INTO hold_resolutions (card_id, auth_id, status, at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![card_id, auth_id, status.as_str(), at_ms],
            )?;
        }
        Write::Decision(d) => {
            c.execute(
                "INSERT INTO decision_log (auth_hash, card_hash, answer, body) VALUES (?1, ?2, ?3, ?4)",
                params![d.auth_hash, d.card_hash, &d.answer, &d.body],
            )?;
        }
        Write::RecordDictionary {
            id,
            dictionary,
            at_ms,
        } => {
            c.execute(
                "INSERT INTO record_dictionaries (id, dictionary, created_ms) VALUES (?1, ?2, ?3)",
                params![i64::from(*id), dictionary, at_ms],
            )?;
        }
        Write::DecisionAnswered {
            auth_hash,
            card_hash,
            answer,
        } => {
            // One authorization id per card: the pair names one decision. PostgreSQL
            // indexes the hashes; SQLite's keys give the keyed candidates, and a scan of
            // the unkeyed tail the rest (without them, a scan of the whole log).
            let (mark, seqs) = match (c.backend(), keys) {
                // Derived data must not stop the writer: without the keys, scan the log.
                (Backend::Sqlite, Some(k)) => k.auth_seqs(*auth_hash).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "decision keys unreadable; scanning the log");
                    (0, Vec::new())
                }),
                _ => (0, Vec::new()),
            };
            for seq in seqs {
                c.execute(
                    "UPDATE decision_log SET answer = ?3 WHERE seq = ?4 AND auth_hash = ?1 AND card_hash = ?2",
                    params![auth_hash, card_hash, answer, seq],
                )?;
            }
            c.execute(
                "UPDATE decision_log SET answer = ?3 WHERE seq > ?4 AND auth_hash = ?1 AND card_hash = ?2",
                params![auth_hash, card_hash, answer, mark],
            )?;
        }
        Write::VelocityRelease {
            card_id,
            auth_id,
            ratio,
            at_ms,
        } => {
            c.execute(
                "INSERT INTO velocity_releases (card_id, auth_id, ratio, at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![card_id, auth_id, ratio, at_ms],
            )?;
        }
        Write::Idempotency {
            scope,
            key,
            request_hash,
            response,
            at_ms,
        } => {
            // An upsert: a deadline override supersedes the stored answer of its request.
            c.execute(
                "INSERT INTO idempotency (scope, key, request_hash, response, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (scope, key) DO UPDATE SET request_hash = excluded.request_hash,
                     response = excluded.response, at_ms = excluded.at_ms",
                params![scope, key, request_hash, &**response, at_ms],
            )?;
        }
        Write::IdempotencySweep { before_ms } => {
            let sql = match c.backend() {
                Backend::Sqlite => {
                    "DELETE FROM idempotency WHERE rowid IN
                       (SELECT rowid FROM idempotency WHERE at_ms < ?1 LIMIT ?2)"
                }
                // By key, not `ctid`: CockroachDB and YugabyteDB have no `ctid`.
                Backend::Postgres => {
                    "DELETE FROM idempotency WHERE (scope, key) IN
                       (SELECT scope, key FROM idempotency WHERE at_ms < ?1 LIMIT ?2)"
                }
            };
            c.execute(sql, params![before_ms, ROWS_PER_SWEEP_MAX])?;
        }
        Write::RecoveryPoint {
            format,
            at_ms,
            states,
        } => recovery_point::write(c, *format, *at_ms, states)?,
        Write::PolicyActivated {
            policy,
            version,
            source,
            at_ms,
            by,
        } => {
            c.execute(
                "INSERT INTO policy_versions (policy, version, source) VALUES (?1, ?2, ?3)
                 ON CONFLICT (policy, version) DO NOTHING",
                params![policy, version, source],
            )?;
            c.execute(
                "INSERT INTO policy_activations (policy, version, at_ms, \"by\") VALUES (?1, ?2, ?3, ?4)",
                params![policy, version, at_ms, by],
            )?;
        }
        Write::ApiKey {
            hash,
            program,
            prefix,
            at_ms,
        } => {
            c.execute(
                "INSERT INTO api_keys (hash, program, prefix, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![hash, program, prefix, at_ms],
            )?;
        }
        Write::Outbox(o) => outbox::write(c, o)?,
        Write::HookConfig {
            program,
            processor,
            config: Some(config),
        } => {
            c.execute(
                "INSERT INTO processor_hooks (program, processor, config) VALUES (?1, ?2, ?3)
                 ON CONFLICT (program, processor) DO UPDATE SET config = excluded.config",
                params![program, processor, config],
            )?;
        }
        Write::HookConfig {
            program,
            processor,
            config: None,
        } => {
            c.execute(
                "DELETE FROM processor_hooks WHERE program = ?1 AND processor = ?2",
                params![program, processor],
            )?;
        }
    }
    Ok(())
}
