//! The one seam between the store's SQL and its two backends: SQLite (the embedded
//! default) and PostgreSQL (several instances on one database, see `postgres`). Every
//! statement is written once, with `?N` placeholders and SQL both understand (`ON
//! CONFLICT … DO UPDATE`, not `INSERT OR REPLACE`); the few differences ask
//! [`Db::backend`]. Rows come back as owned values read by column index, so decoding is
//! shared too.

use std::collections::HashMap;

use super::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A bound parameter.
#[derive(Debug, Clone, Copy)]
pub enum P<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl From<i64> for P<'_> {
    fn from(v: i64) -> Self {
        P::Int(v)
    }
}
impl From<bool> for P<'_> {
    fn from(v: bool) -> Self {
        P::Int(v as i64)
    }
}
impl From<&i64> for P<'_> {
    fn from(v: &i64) -> Self {
        P::Int(*v)
    }
}
impl From<&bool> for P<'_> {
    fn from(v: &bool) -> Self {
        P::Int(*v as i64)
    }
}
impl From<u32> for P<'_> {
    fn from(v: u32) -> Self {
        P::Int(v.into())
    }
}
impl<'a> From<&'a Option<String>> for P<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().map_or(P::Null, P::Text)
    }
}
impl From<&Option<i64>> for P<'_> {
    fn from(v: &Option<i64>) -> Self {
        v.map_or(P::Null, P::Int)
    }
}
impl<'a> From<&'a &str> for P<'a> {
    fn from(v: &'a &str) -> Self {
        P::Text(v)
    }
}
impl<'a> From<&'a str> for P<'a> {
    fn from(v: &'a str) -> Self {
        P::Text(v)
    }
}
impl<'a> From<&'a String> for P<'a> {
    fn from(v: &'a String) -> Self {
        P::Text(v)
    }
}
impl<'a> From<&'a [u8]> for P<'a> {
    fn from(v: &'a [u8]) -> Self {
        P::Blob(v)
    }
}
impl<'a> From<&'a Vec<u8>> for P<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        P::Blob(v)
    }
}
impl<'a, T: Into<P<'a>>> From<Option<T>> for P<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(P::Null, Into::into)
    }
}

/// `[a, b, …]` as parameters.
#[macro_export]
macro_rules! sql_params {
    ($($v:expr),* $(,)?) => { &[$($crate::store::sql::P::from($v)),*][..] };
}
pub use sql_params as params;

/// A column's value as read.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// One row, read by column index.
pub struct Row(Vec<V>);

pub trait FromV: Sized {
    fn from_v(v: &V) -> Option<Self>;
}
impl FromV for i64 {
    fn from_v(v: &V) -> Option<Self> {
        match v {
            V::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromV for bool {
    fn from_v(v: &V) -> Option<Self> {
        i64::from_v(v).map(|i| i != 0)
    }
}
impl FromV for String {
    fn from_v(v: &V) -> Option<Self> {
        match v {
            V::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromV for Vec<u8> {
    fn from_v(v: &V) -> Option<Self> {
        match v {
            V::Blob(b) => Some(b.clone()),
            // SQLite keeps what it was given; a text column read as bytes is its UTF-8.
            V::Text(s) => Some(s.as_bytes().to_vec()),
            _ => None,
        }
    }
}
impl<T: FromV> FromV for Option<T> {
    fn from_v(v: &V) -> Option<Self> {
        match v {
            V::Null => Some(None),
            v => T::from_v(v).map(Some),
        }
    }
}

impl Row {
    pub fn get<T: FromV>(&self, i: usize) -> Result<T, StoreError> {
        let v = self.0.get(i).unwrap_or(&V::Null);
        T::from_v(v).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "column {i}: unexpected {}",
                match v {
                    V::Null => "NULL",
                    V::Int(_) => "integer",
                    V::Text(_) => "text",
                    V::Blob(_) => "blob",
                }
            ))
        })
    }
}

/// A connection to either backend. Transactions are explicit: `begin`, then `commit` or
/// `rollback`.
pub trait Db: Send {
    fn backend(&self) -> Backend;
    /// Runs one statement; returns the rows it changed.
    fn execute(&mut self, sql: &str, params: &[P<'_>]) -> Result<usize, StoreError>;
    /// Runs a query, handing each row to `f` as it arrives.
    fn each(
        &mut self,
        sql: &str,
        params: &[P<'_>],
        f: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Runs several statements without parameters (schema).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
    fn begin(&mut self) -> Result<(), StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    fn rollback(&mut self) -> Result<(), StoreError>;
}

impl dyn Db + '_ {
    /// Runs `f` in one transaction: committed if it succeeds, rolled back if not.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.begin()?;
        match f(self) {
            Ok(v) => self.commit().map(|()| v),
            Err(e) => {
                let _ = self.rollback();
                Err(e)
            }
        }
    }

    /// Every row, decoded by `f`.
    pub fn rows<T>(
        &mut self,
        sql: &str,
        params: &[P<'_>],
        mut f: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.each(sql, params, &mut |r| {
            out.push(f(&r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row, if any.
    pub fn row<T>(
        &mut self,
        sql: &str,
        params: &[P<'_>],
        f: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.rows(sql, params, f)?.into_iter().next())
    }

    /// The first column of the first row.
    pub fn value<T: FromV>(&mut self, sql: &str, params: &[P<'_>]) -> Result<T, StoreError> {
        self.row(sql, params, |r| r.get(0))?
            .ok_or_else(|| StoreError::Corrupt(format!("no row for `{sql}`")))
    }

    /// Whether a table exists.
    pub fn has_table(&mut self, name: &str) -> Result<bool, StoreError> {
        let sql = match self.backend() {
            Backend::Sqlite => {
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1"
            }
            Backend::Postgres => {
                "SELECT count(*) > 0 FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = ?1"
            }
        };
        self.value(sql, params![name])
    }

    /// Whether a table has a column.
    pub fn has_column(&mut self, table: &str, column: &str) -> Result<bool, StoreError> {
        let sql = match self.backend() {
            Backend::Sqlite => "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            Backend::Postgres => {
                "SELECT count(*) > 0 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = ?1 AND column_name = ?2"
            }
        };
        self.value(sql, params![table, column])
    }
}

// --- SQLite -------------------------------------------------------------------------

impl Db for rusqlite::Connection {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[P<'_>]) -> Result<usize, StoreError> {
        let mut st = self.prepare_cached(sql)?;
        Ok(st.execute(rusqlite::params_from_iter(params.iter()))?)
    }

    fn each(
        &mut self,
        sql: &str,
        params: &[P<'_>],
        f: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut st = self.prepare_cached(sql)?;
        let columns = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
        while let Some(r) = rows.next()? {
            let mut vals = Vec::with_capacity(columns);
            for i in 0..columns {
                use rusqlite::types::ValueRef;
                vals.push(match r.get_ref(i)? {
                    ValueRef::Null => V::Null,
                    ValueRef::Integer(i) => V::Int(i),
                    ValueRef::Real(x) => V::Text(x.to_string()),
                    ValueRef::Text(t) => V::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => V::Blob(b.to_vec()),
                });
            }
            f(Row(vals))?;
        }
        Ok(())
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.execute_batch(sql)?)
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        Ok(self.execute_batch("BEGIN IMMEDIATE")?)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        Ok(self.execute_batch("COMMIT")?)
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        Ok(self.execute_batch("ROLLBACK")?)
    }
}

impl rusqlite::ToSql for P<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            P::Null => ValueRef::Null,
            P::Int(i) => ValueRef::Integer(i),
            P::Text(s) => ValueRef::Text(s.as_bytes()),
            P::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

// --- PostgreSQL ---------------------------------------------------------------------

/// A PostgreSQL connection with its prepared statements (by the SQL as written), driven
/// by a runtime of its own on the calling thread (never call it from the service's async
/// threads; see `postgres::Reader`).
///
/// Inside a transaction, statements without results are pipelined: queued, and sent
/// together (each still its own statement, in order) with the next query or with the
/// commit, and `BEGIN` goes out with the first of them; a fenced batch costs two round
/// trips (BEGIN + lease check, then the writes + COMMIT), not one per row. The first
/// failure fails the transaction, as it would have one by one.
pub struct PgDb {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    statements: HashMap<String, tokio_postgres::Statement>,
    in_transaction: bool,
    /// `BEGIN` not sent yet: it goes out with the transaction's first statement.
    begin_queued: bool,
    queued: Vec<(tokio_postgres::Statement, Vec<Owned>)>,
}

/// A parameter kept until its statement is sent.
#[derive(Debug, Clone)]
pub enum Owned {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Owned {
    pub fn of(p: &P<'_>) -> Owned {
        match *p {
            P::Null => Owned::Null,
            P::Int(i) => Owned::Int(i),
            P::Text(s) => Owned::Text(s.to_string()),
            P::Blob(b) => Owned::Blob(b.to_vec()),
        }
    }

    pub fn p(&self) -> P<'_> {
        match self {
            Owned::Null => P::Null,
            Owned::Int(i) => P::Int(*i),
            Owned::Text(s) => P::Text(s),
            Owned::Blob(b) => P::Blob(b),
        }
    }
}

impl PgDb {
    pub fn connect(url: &str) -> Result<PgDb, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (client, connection) = rt
            .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
            .map_err(pg)?;
        // The connection's I/O runs whenever this runtime does (inside each call).
        rt.spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgres connection closed");
            }
        });
        Ok(PgDb {
            rt,
            client,
            statements: HashMap::new(),
            in_transaction: false,
            begin_queued: false,
            queued: Vec::new(),
        })
    }

    fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self
            .rt
            .block_on(self.client.prepare(&placeholders(sql)))
            .map_err(pg)?;
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    /// Sends what is queued — `BEGIN` if not yet sent, the statements, then `tail` (the
    /// `COMMIT`) — in one pipeline, and waits for all of it. Every result is checked: after
    /// a failed statement PostgreSQL answers the `COMMIT` as a rollback, so a failure is
    /// always the statement's error, never a silent success.
    fn send(&mut self, tail: Option<&str>) -> Result<(), StoreError> {
        let begin = std::mem::take(&mut self.begin_queued);
        if !begin && self.queued.is_empty() && tail.is_none() {
            return Ok(());
        }
        let queued = std::mem::take(&mut self.queued);
        let params: Vec<Vec<P<'_>>> = queued
            .iter()
            .map(|(_, ps)| ps.iter().map(Owned::p).collect())
            .collect();
        let refs: Vec<Vec<&(dyn tokio_postgres::types::ToSql + Sync)>> = params
            .iter()
            .map(|ps| ps.iter().map(|p| p as _).collect())
            .collect();
        let client = &self.client;
        // Each request goes out when its future is first polled, and `join3` and
        // `try_join_all` poll in order: BEGIN, the statements, then the tail.
        let head = async {
            match begin {
                true => client.batch_execute("BEGIN").await,
                false => Ok(()),
            }
        };
        let statements = futures_util::future::try_join_all(
            queued
                .iter()
                .zip(&refs)
                .map(|((st, _), ps)| client.execute(st, ps)),
        );
        let tail = async {
            match tail {
                Some(t) => client.batch_execute(t).await,
                None => Ok(()),
            }
        };
        let (h, w, t) = self
            .rt
            .block_on(futures_util::future::join3(head, statements, tail));
        h.and(w.map(|_| ())).and(t).map_err(pg)
    }
}

pub fn pg(e: tokio_postgres::Error) -> StoreError {
    // The server's own message says what happened (`db error` alone does not).
    match e.as_db_error() {
        Some(d) if matches!(d.code().code(), "40P01" | "40001") => {
            StoreError::Conflict(format!("{} ({})", d.message(), d.code().code()))
        }
        Some(d) => StoreError::Postgres(format!("{} ({})", d.message(), d.code().code())),
        None => StoreError::Postgres(e.to_string()),
    }
}

/// `?N` → `$N` (SQLite's numbered placeholders as PostgreSQL writes them).
fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl tokio_postgres::types::ToSql for P<'_> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::Type;
        match *self {
            P::Null => Ok(tokio_postgres::types::IsNull::Yes),
            P::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                _ => i.to_string().to_sql(ty, out),
            },
            P::Text(s) => s.to_sql(ty, out),
            P::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

fn pg_value(r: &tokio_postgres::Row, i: usize) -> Result<V, StoreError> {
    use tokio_postgres::types::Type;
    let ty = r.columns()[i].type_().clone();
    let v = match ty {
        Type::INT8 => r.try_get::<_, Option<i64>>(i).map(|v| v.map(V::Int)),
        Type::INT4 => r
            .try_get::<_, Option<i32>>(i)
            .map(|v| v.map(|x| V::Int(x.into()))),
        Type::INT2 => r
            .try_get::<_, Option<i16>>(i)
            .map(|v| v.map(|x| V::Int(x.into()))),
        Type::BOOL => r
            .try_get::<_, Option<bool>>(i)
            .map(|v| v.map(|x| V::Int(x.into()))),
        Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i).map(|v| v.map(V::Blob)),
        _ => r.try_get::<_, Option<String>>(i).map(|v| v.map(V::Text)),
    };
    Ok(v.map_err(pg)?.unwrap_or(V::Null))
}

impl Db for PgDb {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[P<'_>]) -> Result<usize, StoreError> {
        let st = self.statement(sql)?;
        if self.in_transaction {
            // Pipelined (see the type's comment); the count is not known yet.
            self.queued
                .push((st, params.iter().map(Owned::of).collect()));
            return Ok(0);
        }
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as _).collect();
        Ok(self
            .rt
            .block_on(self.client.execute(&st, &refs))
            .map_err(pg)? as usize)
    }

    fn each(
        &mut self,
        sql: &str,
        params: &[P<'_>],
        f: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        use futures_util::TryStreamExt;
        if !self.queued.is_empty() {
            self.send(None)?;
        }
        let st = self.statement(sql)?;
        // A transaction's first query (the fence check) carries its BEGIN along.
        let begin = std::mem::take(&mut self.begin_queued);
        let (rt, client) = (&self.rt, &self.client);
        rt.block_on(async {
            let head = async {
                match begin {
                    true => client.batch_execute("BEGIN").await,
                    false => Ok(()),
                }
            };
            let (began, rows) =
                futures_util::future::join(head, client.query_raw(&st, params.iter())).await;
            began.map_err(pg)?;
            let rows = rows.map_err(pg)?;
            futures_util::pin_mut!(rows);
            while let Some(r) = rows.try_next().await.map_err(pg)? {
                let vals = (0..r.len())
                    .map(|i| pg_value(&r, i))
                    .collect::<Result<Vec<_>, _>>()?;
                f(Row(vals))?;
            }
            Ok(())
        })
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.send(None)?;
        self.rt.block_on(self.client.batch_execute(sql)).map_err(pg)
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.in_transaction = true;
        self.begin_queued = true;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.in_transaction = false;
        if self.begin_queued && self.queued.is_empty() {
            // Nothing was sent: there is no transaction to commit.
            self.begin_queued = false;
            return Ok(());
        }
        self.send(Some("COMMIT"))
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        self.queued.clear();
        self.in_transaction = false;
        if std::mem::take(&mut self.begin_queued) {
            return Ok(());
        }
        self.rt
            .block_on(self.client.batch_execute("ROLLBACK"))
            .map_err(pg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_placeholders_become_dollar_ones() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '?'"
        );
    }

    #[test]
    fn sqlite_rows_read_back_as_written() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        let db: &mut dyn Db = &mut c;
        db.batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB, n TEXT)")
            .unwrap();
        let blob = vec![1u8, 2, 3];
        db.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            params![7i64, "x", &blob, None::<&str>],
        )
        .unwrap();
        let row = db
            .row("SELECT i, s, b, n, i > 5 FROM t", &[], |r| {
                Ok((
                    r.get::<i64>(0)?,
                    r.get::<String>(1)?,
                    r.get::<Vec<u8>>(2)?,
                    r.get::<Option<String>>(3)?,
                    r.get::<bool>(4)?,
                ))
            })
            .unwrap();
        assert_eq!(row, Some((7, "x".into(), blob, None, true)));
        assert!(db.row("SELECT s FROM t", &[], |r| r.get::<i64>(0)).is_err());
    }
}
