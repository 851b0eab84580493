//! Validation and compilation of one policy file: raw YAML → checked → compiled, with
//! every error located at `file:line:col` and its rule. The stages live beside it:
//! `matchers` (conditions), `checks` (what a rule checks), `outcomes` (what it does),
//! `alias` (the YAML alias guard) and `locate` (positions).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use chrono_tz::Tz;
use sha2::{Digest, Sha256};

use super::alias::find_yaml_alias;
use super::checks::compile_rule;
use super::load::plain_error;
use super::locate::Locator;
use super::matchers::valid_ident;
use super::raw::RawPolicy;
use super::script::ScriptLists;
use super::*;
use crate::money::{Currency, FxTable};

pub(super) struct Ctx<'a> {
    pub(super) file: &'a Path,
    pub(super) loc: Locator<'a>,
    pub(super) errors: Vec<PolicyError>,
    pub(super) rule_ids: Vec<String>,
    /// Lengths of the rolling windows the policy's Rhai code reads through `history`.
    pub(super) history_lengths: BTreeSet<i64>,
    /// What of a card's history its Rhai code may read beyond the windows.
    pub(super) history_reads: super::script::HistoryReads,
}

impl Ctx<'_> {
    pub(super) fn rule_err(&mut self, idx: usize, path: &[&str], message: impl Into<String>) {
        let (line, column) = self.loc.rule_key(idx, path);
        let rule = self.rule_ids.get(idx).cloned().filter(|s| !s.is_empty());
        self.errors.push(PolicyError {
            file: self.file.to_path_buf(),
            line,
            column,
            rule,
            message: message.into(),
        });
    }
    pub(super) fn top_err(&mut self, key: &str, message: impl Into<String>) {
        let (line, column) = self.loc.top_key(key);
        self.errors.push(PolicyError {
            file: self.file.to_path_buf(),
            line,
            column,
            rule: None,
            message: message.into(),
        });
    }
}

/// Validates and compiles a policy's text. `read_script` reads paths relative to the
/// policy's directory.
pub fn compile_policy(
    path: &Path,
    text: &str,
    fx: Arc<FxTable>,
    read_script: &dyn Fn(&Path) -> io::Result<String>,
) -> Result<CompiledPolicy, Vec<PolicyError>> {
    // Every script read is kept with the version (see `PolicySource`).
    let scripts = std::cell::RefCell::new(BTreeMap::new());
    let recording = |rel: &Path| -> io::Result<String> {
        let t = read_script(rel)?;
        scripts
            .borrow_mut()
            .insert(rel.to_string_lossy().into_owned(), t.clone());
        Ok(t)
    };
    let mut p = compile_policy_text(path, text, fx, &recording)?;
    p.source = Arc::new(PolicySource {
        file: path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
        text: text.to_string(),
        scripts: scripts.into_inner(),
    });
    Ok(p)
}

/// Compiles a stored version (a rollback): the same validation, its own scripts.
pub fn compile_source(
    source: &PolicySource,
    fx: Arc<FxTable>,
) -> Result<CompiledPolicy, Vec<PolicyError>> {
    compile_policy(Path::new(&source.file), &source.text, fx, &|rel: &Path| {
        source
            .scripts
            .get(rel.to_string_lossy().as_ref())
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in the stored version"))
    })
}

fn compile_policy_text(
    path: &Path,
    text: &str,
    fx: Arc<FxTable>,
    read_script: &dyn Fn(&Path) -> io::Result<String>,
) -> Result<CompiledPolicy, Vec<PolicyError>> {
    if text.len() > POLICY_BYTES_MAX {
        return Err(vec![plain_error(
            path,
            format!(
                "file is {} bytes, above the {POLICY_BYTES_MAX}-byte limit",
                text.len()
            ),
        )]);
    }
    let mut cx = Ctx {
        file: path,
        loc: Locator::new(text),
        errors: Vec::new(),
        rule_ids: Vec::new(),
        history_lengths: BTreeSet::new(),
        history_reads: Default::default(),
    };
    // Anchors and aliases are refused outright (named lists do their job), so a
    // "billion laughs" file fails fast; serde_norway's own expansion bound backs this up.
    if let Some((line, column)) = find_yaml_alias(text) {
        return Err(vec![PolicyError {
            file: path.to_path_buf(),
            line,
            column,
            rule: cx
                .loc
                .rule_at_line(line)
                .and_then(|i| cx.loc.rule_id_text(i)),
            message: "YAML anchors and aliases (&name, *name) are not allowed; use named lists"
                .into(),
        }]);
    }
    let raw: RawPolicy = match serde_norway::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let rule = cx
                .loc
                .rule_at_line(line)
                .and_then(|i| cx.loc.rule_id_text(i));
            return Err(vec![PolicyError {
                file: path.to_path_buf(),
                line,
                column,
                rule,
                message: e
                    .to_string()
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            }]);
        }
    };
    cx.rule_ids = raw.rules.iter().map(|r| r.id.clone()).collect();

    if !valid_ident(&raw.policy) {
        cx.top_err(
            "policy",
            format!(
                "policy name `{}` must be lowercase letters, digits, `_` or `-`",
                raw.policy
            ),
        );
    }
    let currency = Currency::from_str(&raw.currency).unwrap_or_else(|e| {
        cx.top_err("currency", e.to_string());
        Currency::USD
    });
    let timezone = Tz::from_str(&raw.timezone).unwrap_or_else(|_| {
        cx.top_err(
            "timezone",
            format!(
                "unknown time zone `{}` (IANA names such as Africa/Lagos)",
                raw.timezone
            ),
        );
        chrono_tz::UTC
    });
    let on_error = match raw.on_error.as_deref() {
        None | Some("decline") => OnError::Decline,
        Some("approve") => OnError::Approve,
        Some(o) => {
            cx.top_err(
                "on_error",
                format!("on_error `{o}` must be decline or approve"),
            );
            OnError::Decline
        }
    };
    if let Some(s) = raw.score_decline_at {
        if s <= 0 {
            cx.top_err("score_decline_at", "score_decline_at must be positive");
        }
    }
    if raw.lists.len() > LISTS_MAX {
        cx.top_err(
            "lists",
            format!("{} lists, above the limit of {LISTS_MAX}", raw.lists.len()),
        );
    }
    for (name, values) in &raw.lists {
        let (line, column) = cx.loc.list(name);
        let mut problem = None;
        if !valid_ident(name) {
            problem = Some(format!(
                "list name `{name}` must be lowercase letters, digits, `_` or `-`"
            ));
        } else if values.len() > LIST_ENTRIES_MAX {
            problem = Some(format!(
                "list `{name}` has {} entries, above {LIST_ENTRIES_MAX}",
                values.len()
            ));
        } else if values.is_empty() {
            problem = Some(format!("list `{name}` is empty"));
        }
        if let Some(message) = problem {
            cx.errors.push(PolicyError {
                file: path.to_path_buf(),
                line,
                column,
                rule: None,
                message,
            });
        }
    }
    if raw.rules.len() > RULES_MAX {
        cx.top_err(
            "rules",
            format!("{} rules, above the limit of {RULES_MAX}", raw.rules.len()),
        );
    }
    if raw.rules.is_empty() {
        cx.top_err("rules", "a policy needs at least one rule");
    }
    if raw.tests.len() > TESTS_MAX {
        cx.top_err(
            "tests",
            format!("{} tests, above the limit of {TESTS_MAX}", raw.tests.len()),
        );
    }

    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    let mut seen = HashSet::new();
    let mut rules = Vec::new();
    let mut velocity_per_scope: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (i, r) in raw.rules.iter().enumerate() {
        if !valid_ident(&r.id) {
            cx.rule_err(
                i,
                &["id"],
                format!(
                    "rule id `{}` must be lowercase letters, digits, `_` or `-` (at most 64)",
                    r.id
                ),
            );
        }
        if !seen.insert(r.id.clone()) {
            cx.rule_err(i, &["id"], format!("duplicate rule id `{}`", r.id));
            continue;
        }
        if let Some(rule) = compile_rule(&mut cx, i, r, &raw, currency, &mut hasher, read_script) {
            if let Check::Velocity(v) = &rule.check {
                let n = velocity_per_scope.entry(v.scope.as_str()).or_default();
                *n += 1;
                if *n > VELOCITY_RULES_PER_SCOPE_MAX {
                    cx.rule_err(
                        i,
                        &["velocity"],
                        format!(
                            "more than {VELOCITY_RULES_PER_SCOPE_MAX} velocity rules in scope {}",
                            v.scope.as_str()
                        ),
                    );
                }
            }
            rules.push(rule);
        }
    }

    let tests = raw
        .tests
        .iter()
        .enumerate()
        .map(|(i, t)| PolicyTestCase {
            name: t.name.clone(),
            line: cx.loc.test(i),
            raw: Arc::new(clone_test(t)),
        })
        .collect();

    if !cx.errors.is_empty() {
        return Err(cx.errors);
    }
    let lists: BTreeMap<String, BTreeSet<String>> = raw
        .lists
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().map(|s| s.0.clone()).collect()))
        .collect();
    let digest = hasher.finalize();
    let version: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let uses_rhai = rules.iter().any(Rule::uses_rhai);
    let history_windows = cx
        .history_lengths
        .iter()
        .map(|&length_ms| {
            let key = |counts: &str| {
                crate::velocity::key_hash(&[
                    raw.policy.as_bytes(),
                    b"history",
                    length_ms.to_string().as_bytes(),
                    counts.as_bytes(),
                    currency.code().as_bytes(),
                ])
            };
            HistoryWindow {
                length_ms,
                key_approved: key("approved"),
                key_declined: key("declined"),
            }
        })
        .collect();
    Ok(CompiledPolicy {
        name: raw.policy,
        description: raw.description,
        file: path.to_path_buf(),
        version,
        currency,
        timezone,
        on_error,
        score_decline_at: raw.score_decline_at,
        allow_script_loops: raw.script_loops,
        rules,
        lists: ScriptLists(Arc::new(lists)),
        tests,
        test_defaults: Arc::new(raw.test_defaults.unwrap_or_default()),
        fx,
        uses_rhai,
        history_windows,
        history_reads: cx.history_reads,
        source: Arc::default(),
    })
}

fn clone_test(t: &super::raw::RawTest) -> super::raw::RawTest {
    // RawTest holds only owned data; rebuild through serde-free field copies.
    super::raw::RawTest {
        name: t.name.clone(),
        txn: t.txn.clone(),
        card: t.card.as_ref().map(|c| super::raw::RawTestCard {
            status: c.status.clone(),
            kyc: c.kyc.clone(),
            blocked: c.blocked,
            currency: c.currency.clone(),
            available: c.available.clone(),
            expiry: c.expiry.clone(),
        }),
        history: t
            .history
            .iter()
            .map(|h| super::raw::RawTestHistory {
                ago: h.ago.clone(),
                txn: h.txn.clone(),
            })
            .collect(),
        expect: match &t.expect {
            super::raw::RawExpect::Word(w) => super::raw::RawExpect::Word(w.clone()),
            super::raw::RawExpect::Detail(d) => {
                super::raw::RawExpect::Detail(super::raw::RawExpectDetail {
                    approve: d.approve,
                    decline: d.decline.clone(),
                    rule: d.rule.clone(),
                    flag: d.flag.clone(),
                    amount_approved: d.amount_approved.clone(),
                })
            }
        },
    }
}
