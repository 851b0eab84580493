//! The event outbox: each event is written in the same commit as the change it reports,
//! with one delivery row per endpoint subscribed at that moment; delivery attempts update
//! those rows. Also the webhook endpoints and the programs' alert thresholds.

use serde::Serialize;

use super::sql::{params, Backend, Db};
use super::{Store, StoreError};

pub const OUTBOX_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY, program TEXT NOT NULL, config TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS program_alerts (
    program TEXT PRIMARY KEY, config TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_counters (
    program TEXT PRIMARY KEY, last INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    sequence INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, program TEXT NOT NULL, card_id TEXT,
    type TEXT NOT NULL, at_ms INTEGER NOT NULL, payload TEXT NOT NULL,
    program_sequence INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    endpoint_id TEXT NOT NULL, sequence INTEGER NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL, last_status INTEGER,
    last_error TEXT, latency_ms INTEGER, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, sequence)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(sequence) WHERE status = 'pending';
";

/// An event and the endpoints it is to be delivered to.
#[derive(Debug, Clone)]
pub struct EventWrite {
    pub id: String,
    /// The outbox's order (all programs).
    pub sequence: i64,
    /// The program's own sequence, as its receivers see it.
    pub program_sequence: i64,
    pub program: String,
    pub card_id: Option<String>,
    pub kind: &'static str,
    pub at_ms: i64,
    /// The JSON body delivered.
    pub payload: String,
    pub endpoints: Vec<String>,
}

/// Outbox changes, committed like every other write.
#[derive(Debug, Clone)]
pub enum OutboxWrite {
    Event(Box<EventWrite>),
    /// An endpoint's configuration (JSON), or its removal.
    Endpoint {
        id: String,
        program: String,
        config: Option<String>,
    },
    /// A program's alert thresholds (JSON).
    Alerts {
        program: String,
        config: String,
    },
    /// The outcome of one delivery attempt.
    Attempt {
        endpoint_id: String,
        sequence: i64,
        status: &'static str,
        attempts: i64,
        next_attempt_ms: i64,
        last_status: Option<i64>,
        last_error: Option<String>,
        latency_ms: Option<i64>,
        at_ms: i64,
    },
    /// Finished deliveries last changed before `before_ms`, and events older than it with
    /// no delivery left, are deleted (at most `SWEEP_ROWS_MAX` of each per sweep).
    Sweep {
        before_ms: i64,
    },
    /// A delivery put back in the queue now (also a dead one).
    Retry {
        endpoint_id: String,
        sequence: i64,
        at_ms: i64,
    },
}

/// Rows deleted per sweep, so one sweep never holds the writer long.
pub const SWEEP_ROWS_MAX: i64 = 10_000;

pub(super) fn write(c: &mut dyn Db, w: &OutboxWrite) -> Result<(), StoreError> {
    match w {
        OutboxWrite::Event(e) => {
            c.execute(
                "INSERT INTO events (sequence, id, program, card_id, type, at_ms, payload, program_sequence)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    e.sequence,
                    &e.id,
                    &e.program,
                    &e.card_id,
                    e.kind,
                    e.at_ms,
                    &e.payload,
                    e.program_sequence
                ],
            )?;
            for endpoint in &e.endpoints {
                c.execute(
                    "INSERT INTO deliveries (endpoint_id, sequence, status, attempts, next_attempt_ms, updated_ms)
                     VALUES (?1, ?2, 'pending', 0, ?3, ?3)",
                    params![endpoint, e.sequence, e.at_ms],
                )?;
            }
        }
        OutboxWrite::Endpoint {
            id,
            program,
            config: Some(config),
        } => {
            c.execute(
                "INSERT INTO webhook_endpoints (id, program, config) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET program = excluded.program, config = excluded.config",
                params![id, program, config],
            )?;
        }
        OutboxWrite::Endpoint {
            id, config: None, ..
        } => {
            c.execute("DELETE FROM webhook_endpoints WHERE id = ?1", params![id])?;
            // Nothing more goes to a removed endpoint.
            c.execute(
                "DELETE FROM deliveries WHERE endpoint_id = ?1 AND status = 'pending'",
                params![id],
            )?;
        }
        OutboxWrite::Alerts { program, config } => {
            c.execute(
                "INSERT INTO program_alerts (program, config) VALUES (?1, ?2)
                 ON CONFLICT (program) DO UPDATE SET config = excluded.config",
                params![program, config],
            )?;
        }
        OutboxWrite::Attempt {
            endpoint_id,
            sequence,
            status,
            attempts,
            next_attempt_ms,
            last_status,
            last_error,
            latency_ms,
            at_ms,
        } => {
            c.execute(
                "UPDATE deliveries SET status = ?3, attempts = ?4, next_attempt_ms = ?5, last_status = ?6,
                 last_error = ?7, latency_ms = ?8, updated_ms = ?9 WHERE endpoint_id = ?1 AND sequence = ?2",
                params![endpoint_id, sequence, status, attempts, next_attempt_ms, last_status, last_error, latency_ms, at_ms],
            )?;
        }
        OutboxWrite::Sweep { before_ms } => {
            // The programs' numbers are kept before their events go, so they only grow.
            let greater = match c.backend() {
                Backend::Sqlite => "max",
                Backend::Postgres => "greatest",
            };
            c.execute(
                &format!(
                    "INSERT INTO event_counters (program, last)
                     SELECT program, max(program_sequence) FROM events WHERE true GROUP BY program
                     ON CONFLICT (program) DO UPDATE
                         SET last = {greater}(event_counters.last, excluded.last)"
                ),
                &[],
            )?;
            c.execute(
                "DELETE FROM deliveries WHERE (endpoint_id, sequence) IN (
                     SELECT endpoint_id, sequence FROM deliveries
                     WHERE status != 'pending' AND updated_ms < ?1 LIMIT ?2)",
                params![before_ms, SWEEP_ROWS_MAX],
            )?;
            c.execute(
                "DELETE FROM events WHERE sequence IN (
                     SELECT e.sequence FROM events e WHERE e.at_ms < ?1
                     AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sequence = e.sequence) LIMIT ?2)",
                params![before_ms, SWEEP_ROWS_MAX],
            )?;
        }
        OutboxWrite::Retry {
            endpoint_id,
            sequence,
            at_ms,
        } => {
            c.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_ms = ?3, updated_ms = ?3
                 WHERE endpoint_id = ?1 AND sequence = ?2",
                params![endpoint_id, sequence, at_ms],
            )?;
        }
    }
    Ok(())
}

/// A delivery waiting to go out (due or not yet).
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    pub endpoint_id: String,
    pub sequence: i64,
    pub event_id: String,
    pub card_id: Option<String>,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    /// When the event happened.
    pub at_ms: i64,
    pub payload: String,
}

/// One delivery as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryRow {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub sequence: i64,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    pub attempts: i64,
    /// The receiver's last HTTP status, if it answered.
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub latency_ms: Option<i64>,
    pub created_ms: i64,
    pub next_attempt_ms: Option<i64>,
    pub updated_ms: i64,
}

/// One endpoint's pending deliveries in event order, at most `limit` (read per
/// endpoint, so one endpoint's backlog never hides another's due deliveries).
pub fn pending(
    c: &mut dyn Db,
    endpoint_id: &str,
    limit: usize,
) -> Result<Vec<PendingDelivery>, StoreError> {
    c.rows(
        "SELECT d.endpoint_id, d.sequence, e.id, e.card_id, d.attempts, d.next_attempt_ms, e.at_ms, e.payload
         FROM deliveries d JOIN events e ON e.sequence = d.sequence
         WHERE d.endpoint_id = ?1 AND d.status = 'pending' ORDER BY d.sequence LIMIT ?2",
        params![endpoint_id, limit as i64],
        |r| {
            Ok(PendingDelivery {
                endpoint_id: r.get(0)?,
                sequence: r.get(1)?,
                event_id: r.get(2)?,
                card_id: r.get(3)?,
                attempts: r.get(4)?,
                next_attempt_ms: r.get(5)?,
                at_ms: r.get(6)?,
                payload: r.get(7)?,
            })
        },
    )
}

/// An endpoint's deliveries, newest first, at most `limit`.
pub fn deliveries(
    c: &mut dyn Db,
    endpoint_id: &str,
    limit: usize,
) -> Result<Vec<DeliveryRow>, StoreError> {
    c.rows(
        "SELECT e.id, e.type, d.sequence, d.status, d.attempts, d.last_status, d.last_error, d.latency_ms,
                e.at_ms, d.next_attempt_ms, d.updated_ms
         FROM deliveries d JOIN events e ON e.sequence = d.sequence
         WHERE d.endpoint_id = ?1 ORDER BY d.sequence DESC LIMIT ?2",
        params![endpoint_id, limit as i64],
        |r| {
            let status: String = r.get(3)?;
            let next: i64 = r.get(9)?;
            Ok(DeliveryRow {
                event_id: r.get(0)?,
                kind: r.get(1)?,
                sequence: r.get(2)?,
                next_attempt_ms: (status == "pending").then_some(next),
                status,
                attempts: r.get(4)?,
                last_status: r.get(5)?,
                last_error: r.get(6)?,
                latency_ms: r.get(7)?,
                created_ms: r.get(8)?,
                updated_ms: r.get(10)?,
            })
        },
    )
}

/// The sequence of an event delivered (or to be) to an endpoint.
pub fn delivery_sequence(
    c: &mut dyn Db,
    endpoint_id: &str,
    event_id: &str,
) -> Result<Option<i64>, StoreError> {
    c.row(
        "SELECT d.sequence FROM deliveries d JOIN events e ON e.sequence = d.sequence
         WHERE d.endpoint_id = ?1 AND e.id = ?2",
        params![endpoint_id, event_id],
        |r| r.get(0),
    )
}

/// (pending deliveries, the oldest pending event's time).
pub fn queue_stats(c: &mut dyn Db) -> Result<(i64, Option<i64>), StoreError> {
    c.value::<i64>(
        "SELECT count(*) FROM deliveries d JOIN events e ON e.sequence = d.sequence
         WHERE d.status = 'pending'",
        &[],
    )
    .and_then(|n| {
        let oldest = c.value::<Option<i64>>(
            "SELECT min(e.at_ms) FROM deliveries d JOIN events e ON e.sequence = d.sequence
             WHERE d.status = 'pending'",
            &[],
        )?;
        Ok((n, oldest))
    })
}

/// What start-up reads of the outbox.
#[derive(Debug, Default)]
pub struct OutboxState {
    /// (id, program, config).
    pub endpoints: Vec<(String, String, String)>,
    /// (program, config).
    pub alerts: Vec<(String, String)>,
    /// The outbox's last event number.
    pub last_sequence: i64,
    /// (program, its last event sequence).
    pub program_sequences: Vec<(String, i64)>,
}

pub fn load(c: &mut dyn Db) -> Result<OutboxState, StoreError> {
    let endpoints = c.rows(
        "SELECT id, program, config FROM webhook_endpoints ORDER BY id",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let alerts = c.rows(
        "SELECT program, config FROM program_alerts ORDER BY program",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let last: Option<i64> = c.value("SELECT max(sequence) FROM events", &[])?;
    let program_sequences = c.rows(
        "SELECT program, max(last) FROM (
             SELECT program, last FROM event_counters
             UNION ALL SELECT program, max(program_sequence) FROM events GROUP BY program) AS s
         GROUP BY program ORDER BY program",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(OutboxState {
        endpoints,
        alerts,
        last_sequence: last.unwrap_or(0),
        program_sequences,
    })
}

/// Outbox reads on the store's read connection (blocking: call off the async runtime).
impl Store {
    pub fn pending_deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        self.readers.with(|c| pending(c, endpoint_id, limit))
    }

    pub fn deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.readers.with(|c| deliveries(c, endpoint_id, limit))
    }

    pub fn delivery_sequence(
        &self,
        endpoint_id: &str,
        event_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        self.readers
            .with(|c| delivery_sequence(c, endpoint_id, event_id))
    }

    pub fn queue_stats(&self) -> Result<(i64, Option<i64>), StoreError> {
        self.readers.with(|c| queue_stats(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> rusqlite::Connection {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(OUTBOX_SCHEMA).unwrap();
        c
    }

    fn event(seq: i64, at_ms: i64, endpoints: &[&str]) -> OutboxWrite {
        OutboxWrite::Event(Box::new(EventWrite {
            id: format!("evt_{seq}"),
            sequence: seq,
            program_sequence: seq,
            program: "p".into(),
            card_id: Some("c".into()),
            kind: "card.funded",
            at_ms,
            payload: "{}".into(),
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        }))
    }

    #[test]
    fn a_programs_event_numbers_survive_the_sweep_of_its_events() {
        let mut c = db();
        write(&mut c, &event(7, 100, &[])).unwrap();
        assert_eq!(
            load(&mut c).unwrap().program_sequences,
            vec![("p".to_string(), 7)]
        );
        write(&mut c, &OutboxWrite::Sweep { before_ms: 1_000 }).unwrap();
        let events: i64 = c
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 0);
        assert_eq!(
            load(&mut c).unwrap().program_sequences,
            vec![("p".to_string(), 7)]
        );
    }

    #[test]
    fn the_sweep_keeps_pending_deliveries_and_their_events() {
        let mut c = db();
        write(&mut c, &event(1, 100, &["we_a", "we_b"])).unwrap();
        write(&mut c, &event(2, 100, &["we_a"])).unwrap();
        let done = |seq, endpoint: &str| OutboxWrite::Attempt {
            endpoint_id: endpoint.into(),
            sequence: seq,
            status: "delivered",
            attempts: 1,
            next_attempt_ms: 150,
            last_status: Some(200),
            last_error: None,
            latency_ms: Some(3),
            at_ms: 150,
        };
        write(&mut c, &done(1, "we_a")).unwrap();
        write(&mut c, &done(2, "we_a")).unwrap();
        write(&mut c, &OutboxWrite::Sweep { before_ms: 1_000 }).unwrap();
        assert!(pending(&mut c, "we_a", 10).unwrap().is_empty());
        let pending = pending(&mut c, "we_b", 10).unwrap();
        assert_eq!(pending.len(), 1, "we_b still waits for event 1");
        assert_eq!(
            (pending[0].endpoint_id.as_str(), pending[0].sequence),
            ("we_b", 1)
        );
        let events: i64 = c
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 1, "event 2 had nobody left to deliver to");
        let (depth, oldest) = queue_stats(&mut c).unwrap();
        assert_eq!((depth, oldest), (1, Some(100)));
    }
}
