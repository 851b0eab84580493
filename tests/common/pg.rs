//! The PostgreSQL test database, when there is one: `SPENDGATE_TEST_POSTGRES` names it
//! (`.ci/run` creates a fresh one per run); each test works in a schema of its own.

use spendgate::cluster::{Fence, LeaseClient};

/// The database URL, or `None` (and, once per test binary, a line saying that the
/// PostgreSQL tests did not run).
pub fn base_url() -> Option<String> {
    match std::env::var("SPENDGATE_TEST_POSTGRES") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            // Straight to stderr (the test harness captures `eprintln!` of passing tests),
            // so a run without a database says so.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\nSPENDGATE_TEST_POSTGRES is not set: the PostgreSQL tests of this binary \
                     did NOT run (set it to a database URL, e.g. \
                     postgres://postgres@127.0.0.1:5432/test)\n"
                );
            });
            None
        }
    }
}

/// A schema of its own in the test database; the URL that works in it (blocking).
pub fn fresh_schema(base: &str) -> String {
    use spendgate::store::sql::Db;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut c = spendgate::store::postgres::connect(base).expect("test database");
    c.batch(&format!("CREATE SCHEMA {name}")).unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{name}")
}

/// Takes shard 0's lease as `owner` (it must be free), in an unsharded database.
pub fn lease(url: &str, owner: &str, lease_ms: i64) -> (LeaseClient, Fence) {
    let mut client = LeaseClient::connect(url, owner, "http://127.0.0.1:1", lease_ms, 1).unwrap();
    let fence = client.try_acquire(0).unwrap().expect("the lease is free");
    (client, fence)
}
