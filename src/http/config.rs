//! Service configuration: defaults, then a YAML file, then environment variables.
//! Secrets (admin key, hook secrets) come from the environment or files, never the repo.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::service::EngineConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listen address (`SPENDGATE_ADDR`).
    pub addr: String,
    /// Data directory holding the SQLite store (`SPENDGATE_DATA`).
    pub data_dir: PathBuf,
    /// A PostgreSQL store shared by several instances (`SPENDGATE_STORE`,
    /// `postgres://…`); unset, the SQLite store in `data_dir`.
    pub store: Option<String>,
    /// With a PostgreSQL store: how long an owner's lease lasts without renewal, so how
    /// soon a standby takes over from a dead owner (`SPENDGATE_LEASE_MS`).
    pub lease_ms: u64,
    /// With a PostgreSQL store: the URL other instances forward requests to, when this
    /// one owns the cards (`SPENDGATE_ADVERTISE`); `http://` and the listen address
    /// when unset.
    pub advertise: Option<String>,
    /// With a PostgreSQL store: how many shards the programs are split into
    /// (`SPENDGATE_SHARDS`); fixed when the database is first set up, the same on every
    /// instance. 1: one instance owns everything, the others stand by.
    pub shards: u32,
    /// Rules directory (`SPENDGATE_RULES`).
    pub rules_dir: PathBuf,
    /// Admin key (`SPENDGATE_ADMIN_KEY`) or a file holding it (`SPENDGATE_ADMIN_KEY_FILE`).
    /// When neither is set, one is generated into `<data_dir>/admin.key` (mode 0600).
    #[serde(skip)]
    pub admin_key: Option<String>,
    pub admin_key_file: Option<PathBuf>,
    /// Hook secrets, comma-separated `whsec_…` (`SPENDGATE_HOOK_SECRETS`); when set, the
    /// processor-facing endpoints require a valid signature. Two during rotation.
    #[serde(skip)]
    pub hook_secrets: Vec<String>,
    /// Decision budget in milliseconds (`SPENDGATE_DEADLINE_MS`).
    pub deadline_ms: u64,
    /// Largest request body in bytes.
    pub body_bytes_max: usize,
    /// Requests in flight at once; more wait.
    pub requests_in_flight_max: usize,
    /// Connections open at once; more wait in the listen backlog, not accepted.
    pub connections_max: usize,
    /// A request's head, and then its body, must arrive within this many milliseconds of
    /// the server starting to read it; a keep-alive connection idle this long is closed.
    pub read_timeout_ms: u64,
    /// Requests per second per API key.
    pub rate_per_key_per_s: u32,
    /// Runtime worker threads (`SPENDGATE_WORKERS`); 0 = one per core.
    pub workers: usize,
    /// The store's WAL is cut back whenever it passes this many MiB.
    pub wal_mib_max: u64,
    /// The engine's own settings (holds, captures, sweeps).
    pub engine: EngineConfig,
    /// Webhook delivery (timeouts, retries).
    pub webhooks: crate::delivery::DeliveryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:8080".into(),
            data_dir: "data".into(),
            store: None,
            lease_ms: 5_000,
            advertise: None,
            shards: 1,
            rules_dir: "rules".into(),
            admin_key: None,
            admin_key_file: None,
            hook_secrets: vec![],
            deadline_ms: 1_500,
            body_bytes_max: 8 * 1024,
            requests_in_flight_max: 4_096,
            connections_max: 4_096,
            read_timeout_ms: 60_000,
            rate_per_key_per_s: 50_000,
            workers: 0,
            wal_mib_max: 256,
            engine: EngineConfig::default(),
            webhooks: crate::delivery::DeliveryConfig::default(),
        }
    }
}

impl Config {
    /// Defaults, overridden by `file` (YAML, same keys) and then by environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, String> {
        let mut c = match file {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            None => Config::default(),
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(v) = env("SPENDGATE_ADDR") {
            c.addr = v;
        }
        if let Some(v) = env("SPENDGATE_DATA") {
            c.data_dir = v.into();
        }
        if let Some(v) = env("SPENDGATE_STORE") {
            c.store = Some(v);
        }
        if let Some(v) = env("SPENDGATE_ADVERTISE") {
            c.advertise = Some(v);
        }
        if let Some(v) = env("SPENDGATE_LEASE_MS") {
            c.lease_ms = v
                .parse()
                .map_err(|_| "SPENDGATE_LEASE_MS must be a number".to_string())?;
        }
        if let Some(v) = env("SPENDGATE_SHARDS") {
            c.shards = v
                .parse()
                .map_err(|_| "SPENDGATE_SHARDS must be a number".to_string())?;
        }
        if let Some(v) = env("SPENDGATE_RULES") {
            c.rules_dir = v.into();
        }
        if let Some(v) = env("SPENDGATE_WORKERS") {
            c.workers = v
                .parse()
                .map_err(|_| "SPENDGATE_WORKERS must be a number".to_string())?;
        }
        if let Some(v) = env("SPENDGATE_DEADLINE_MS") {
            c.deadline_ms = v
                .parse()
                .map_err(|_| "SPENDGATE_DEADLINE_MS must be a number".to_string())?;
        }
        if let Some(v) = env("SPENDGATE_ADMIN_KEY_FILE") {
            c.admin_key_file = Some(v.into());
        }
        c.admin_key = env("SPENDGATE_ADMIN_KEY");
        if c.admin_key.is_none() {
            if let Some(f) = &c.admin_key_file {
                let k = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
                c.admin_key = Some(k.trim().to_string());
            }
        }
        if let Some(v) = env("SPENDGATE_HOOK_SECRETS") {
            c.hook_secrets = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if c.hook_secrets.len() > 2 {
            return Err("at most two hook secrets (current and previous)".into());
        }
        if c.admin_key.as_ref().is_some_and(|k| k.len() < 16) {
            return Err("the admin key must be at least 16 characters".into());
        }
        if let Some(url) = &c.store {
            if !crate::cluster::is_postgres_url(url) {
                return Err(
                    "store must be a postgres:// URL (unset: SQLite in the data directory)".into(),
                );
            }
            // Every instance must accept the same admin key: a generated one would differ.
            if c.admin_key.is_none() {
                return Err("a PostgreSQL store needs SPENDGATE_ADMIN_KEY (or _FILE), the same on every instance".into());
            }
            if c.lease_ms < 500 {
                return Err("lease_ms must be at least 500".into());
            }
        }
        if !(1..=crate::domain::shard::SHARDS_MAX).contains(&c.shards) {
            return Err(format!(
                "shards must be 1 to {}",
                crate::domain::shard::SHARDS_MAX
            ));
        }
        if c.connections_max == 0 {
            return Err("connections_max must be at least 1".into());
        }
        if c.read_timeout_ms == 0 {
            return Err("read_timeout_ms must be at least 1".into());
        }
        if c.shards > 1 && c.store.is_none() {
            return Err("shards split a PostgreSQL store; the SQLite store is one shard".into());
        }
        Ok(c)
    }
}
