//! Policies: YAML + Rhai files, validated and compiled once, evaluated many times.
//!
//! Raw text ([`raw`]) → validated and compiled ([`CompiledPolicy`]) → evaluated by
//! [`crate::decision::decide`]. Every load error names the file, line, column and rule.

mod alias;
mod checks;
mod compile;
mod load;
mod locate;
mod matchers;
mod outcomes;
pub mod raw;
pub mod script;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use chrono_tz::Tz;
use rhai::AST;
use rust_decimal::Decimal;

use crate::domain::ResponseCode;
pub use crate::domain::{Counts, VelocityScope};
use crate::geo::{CountrySet, Shape};
use crate::money::{Currency, FxTable};
use crate::velocity::WindowSpec;

pub use compile::{compile_policy, compile_source};
pub use load::{load_policy_dir, load_policy_file, PolicySet};

/// The JSON Schema of a policy file (for editors' YAML language servers), generated from
/// the types the compiler reads.
pub fn json_schema() -> serde_json::Value {
    let mut s = serde_json::to_value(schemars::schema_for!(raw::RawPolicy)).unwrap_or_default();
    s["title"] = "spendgate policy".into();
    s
}

/// Largest policy file accepted.
pub const POLICY_BYTES_MAX: usize = 256 * 1024;
pub const RULES_MAX: usize = 256;
pub const LISTS_MAX: usize = 64;
pub const LIST_ENTRIES_MAX: usize = 10_000;
pub const VELOCITY_RULES_PER_SCOPE_MAX: usize = 32;
pub const TESTS_MAX: usize = 1_000;

/// A load error, printed as `file:line:col: rule: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The rule id, or `None` for policy-level errors.
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.rule.as_deref().unwrap_or("policy"),
            self.message
        )
    }
}

impl std::error::Error for PolicyError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// A failing script declines with 96 (fail closed).
    Decline,
    /// A failing script is skipped and the decision flagged.
    Approve,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// Evaluated and recorded, never enforced.
    Shadow,
}

/// What a rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Decline with this code, or the check's default code.
    Decline(Option<ResponseCode>),
    /// Approve, mark for review.
    Flag,
    /// Add points to the risk score.
    Score(i64),
}

#[derive(Debug, Clone)]
pub struct VelocityCheck {
    /// Identifies this rule's windows in velocity state; stable across reloads while
    /// the rule's definition is unchanged.
    pub key: u64,
    pub window: WindowSpec,
    pub amount_max: Option<Decimal>,
    pub count_max: Option<u32>,
    pub scope: VelocityScope,
    pub counts: Counts,
}

/// The test a rule applies once its conditions match.
#[derive(Debug, Clone)]
pub enum Check {
    /// The conditions alone fire the rule.
    Conditions,
    Limit {
        amount_max: Option<Decimal>,
        amount_min: Option<Decimal>,
    },
    Velocity(VelocityCheck),
    Countries {
        allow: bool,
        set: CountrySet,
        list: String,
    },
    Geofence {
        shape: Shape,
        /// Fire inside the fence instead of outside.
        fires_inside: bool,
    },
    Travel {
        speed_kmh_max: f64,
    },
    Script {
        ast: Arc<AST>,
        path: PathBuf,
    },
}

impl Check {
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Conditions => "conditions",
            Check::Limit { .. } => "limit",
            Check::Velocity(_) => "velocity",
            Check::Countries { .. } => "countries",
            Check::Geofence { .. } => "geofence",
            Check::Travel { .. } => "travel",
            Check::Script { .. } => "script",
        }
    }
}

/// Structured matchers; every present key must match.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    /// Sorted MCC values.
    pub mcc: Option<Vec<u16>>,
    pub channels: Option<u16>,
    pub types: Option<u16>,
    /// Sorted hashes of merchant ids.
    pub merchants: Option<Vec<u64>>,
    pub countries: Option<CountrySet>,
    /// Bounds on the amount in the policy currency.
    pub amount_gt: Option<Decimal>,
    pub amount_gte: Option<Decimal>,
    pub amount_lt: Option<Decimal>,
    pub amount_lte: Option<Decimal>,
    /// Local time of day `[from, to)` in minutes; wraps past midnight when from > to.
    pub local_time: Option<(u16, u16)>,
    /// Bit n set for ISO weekday n (Monday = 1).
    pub weekdays: Option<u8>,
}

#[derive(Debug, Clone)]
pub enum Cond {
    Match(Box<Matcher>),
    Rhai { ast: Arc<AST>, source: String },
}

impl Cond {
    pub fn is_rhai(&self) -> bool {
        matches!(self, Cond::Rhai { .. })
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: Option<String>,
    /// Line of the rule in its file, for explanations.
    pub line: usize,
    pub mode: Mode,
    pub when: Option<Cond>,
    pub unless: Option<Cond>,
    pub check: Check,
    pub outcome: Outcome,
    /// The decline reason reported (defaults to the rule id).
    pub reason: String,
}

impl Rule {
    pub fn uses_rhai(&self) -> bool {
        matches!(self.check, Check::Script { .. })
            || self.when.as_ref().is_some_and(Cond::is_rhai)
            || self.unless.as_ref().is_some_and(Cond::is_rhai)
    }
}

/// A policy ready to evaluate. Immutable; swapped whole on reload.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub name: String,
    pub description: Option<String>,
    pub file: PathBuf,
    /// Content hash of the policy file and its scripts (first 12 hex digits of SHA-256).
    pub version: String,
    pub currency: Currency,
    pub timezone: Tz,
    pub on_error: OnError,
    pub score_decline_at: Option<i64>,
    pub allow_script_loops: bool,
    pub rules: Vec<Rule>,
    pub lists: script::ScriptLists,
    pub tests: Vec<PolicyTestCase>,
    pub test_defaults: Arc<raw::RawTestTxn>,
    pub fx: Arc<FxTable>,
    pub uses_rhai: bool,
    /// Rolling windows the policy's Rhai code reads through `history.count/sum/declined`,
    /// kept as real velocity windows of each card so the answers are exact.
    pub history_windows: Vec<HistoryWindow>,
    /// What of a card's history (beyond `history_windows`) its Rhai code may read: a
    /// decision copies only that for its scripts.
    pub history_reads: script::HistoryReads,
    /// What this version was compiled from.
    pub source: Arc<PolicySource>,
}

/// What a policy version was compiled from: its file's text and the scripts it read (by
/// their path relative to the file), so a version can be stored, shown and compiled
/// again (a rollback) without the files. The FX table is the rules directory's, shared.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct PolicySource {
    /// The policy file's name.
    pub file: String,
    pub text: String,
    pub scripts: BTreeMap<String, String>,
}

/// A `history` window declared by a string literal in a script or condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryWindow {
    pub length_ms: i64,
    /// Window counting approved decisions (and their amounts).
    pub key_approved: u64,
    /// Window counting declined decisions.
    pub key_declined: u64,
}

/// An embedded test, kept raw with its line; [`crate::policy_tests`] runs it.
#[derive(Debug, Clone)]
pub struct PolicyTestCase {
    pub name: String,
    pub line: usize,
    pub raw: Arc<raw::RawTest>,
}

impl CompiledPolicy {
    /// The same policy without Rhai conditions or scripts: for comparing their cost,
    /// or running where scripts are not trusted.
    pub fn without_scripts(&self) -> CompiledPolicy {
        let mut p = self.clone();
        p.rules.retain(|r| !r.uses_rhai());
        p.uses_rhai = false;
        p.history_reads = script::HistoryReads::default();
        p.version = format!("{}-noscripts", self.version);
        p
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    pub fn has_scope(&self, scope: VelocityScope) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(&r.check, Check::Velocity(v) if v.scope == scope))
    }
}

/// Policies by name, with the FX table they share.
pub type Policies = BTreeMap<String, Arc<CompiledPolicy>>;
