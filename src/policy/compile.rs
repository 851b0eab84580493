//! Validation and compilation of policy files.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use chrono_tz::Tz;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use super::locate::Locator;
use super::raw::{ListRef, RawMatcher, RawPolicy, RawRule, Scalar};
use super::script::{self, ScriptLists};
use super::*;
use crate::domain::{Channel, Country, LatLon, Mcc, TxnType};
use crate::money::{parse_amount, Currency, FxTable};
use crate::velocity::{key_hash, WindowSpec};

/// All policies of a rules directory and the FX table they use.
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub dir: PathBuf,
    pub policies: Policies,
    pub fx: Arc<FxTable>,
}

impl PolicySet {
    pub fn get(&self, name: &str) -> Option<&Arc<CompiledPolicy>> {
        self.policies.get(name)
    }
}

fn plain_error(file: &Path, message: String) -> PolicyError {
    PolicyError {
        file: file.to_path_buf(),
        line: 1,
        column: 1,
        rule: None,
        message,
    }
}

/// Loads `dir/fx/rates.yaml` if present; an empty table converts only like-for-like.
fn load_fx(dir: &Path) -> Result<Arc<FxTable>, PolicyError> {
    let path = dir.join("fx").join("rates.yaml");
    match std::fs::read_to_string(&path) {
        Ok(text) => FxTable::from_yaml(&text)
            .map(Arc::new)
            .map_err(|m| plain_error(&path, format!("FX rates: {m}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Arc::new(FxTable::default())),
        Err(e) => Err(plain_error(&path, e.to_string())),
    }
}

/// Loads every `*.yaml` policy directly inside `dir` (sub-folders hold scripts and FX).
pub fn load_policy_dir(dir: &Path) -> Result<PolicySet, Vec<PolicyError>> {
    let fx = load_fx(dir).map_err(|e| vec![e])?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            vec![plain_error(
                dir,
                format!("cannot read rules directory: {e}"),
            )]
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(vec![plain_error(
            dir,
            "no policy files (*.yaml) found".into(),
        )]);
    }
    let mut errors = Vec::new();
    let mut policies = Policies::new();
    for f in files {
        match load_policy_file_with_fx(&f, fx.clone()) {
            Ok(p) => {
                if let Some(prev) = policies.get(&p.name) {
                    errors.push(PolicyError {
                        file: f.clone(),
                        line: 1,
                        column: 1,
                        rule: None,
                        message: format!(
                            "policy name `{}` is already used by {}",
                            p.name,
                            prev.file.display()
                        ),
                    });
                } else {
                    policies.insert(p.name.clone(), Arc::new(p));
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(PolicySet {
            dir: dir.to_path_buf(),
            policies,
            fx,
        })
    } else {
        Err(errors)
    }
}

/// Loads one policy file, with the FX table of its directory.
pub fn load_policy_file(path: &Path) -> Result<CompiledPolicy, Vec<PolicyError>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let fx = load_fx(dir).map_err(|e| vec![e])?;
    load_policy_file_with_fx(path, fx)
}

fn load_policy_file_with_fx(
    path: &Path,
    fx: Arc<FxTable>,
) -> Result<CompiledPolicy, Vec<PolicyError>> {
    let meta = std::fs::metadata(path).map_err(|e| vec![plain_error(path, e.to_string())])?;
    if meta.len() > POLICY_BYTES_MAX as u64 {
        return Err(vec![plain_error(
            path,
            format!(
                "file is {} bytes, above the {POLICY_BYTES_MAX}-byte limit",
                meta.len()
            ),
        )]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| vec![plain_error(path, e.to_string())])?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    compile_policy(path, &text, fx, &|rel: &Path| {
        std::fs::read_to_string(base.join(rel))
    })
}

struct Ctx<'a> {
    file: &'a Path,
    loc: Locator<'a>,
    errors: Vec<PolicyError>,
    rule_ids: Vec<String>,
}

impl Ctx<'_> {
    fn rule_err(&mut self, idx: usize, path: &[&str], message: impl Into<String>) {
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
    fn top_err(&mut self, key: &str, message: impl Into<String>) {
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

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Expands `$list` references and inline values into strings.
fn expand(r: &ListRef, lists: &BTreeMap<String, Vec<Scalar>>) -> Result<Vec<String>, String> {
    let items: Vec<&Scalar> = match r {
        ListRef::One(s) => vec![s],
        ListRef::Values(v) => v.iter().collect(),
    };
    let mut out = Vec::new();
    for s in items {
        match s.as_str().strip_prefix('$') {
            Some(name) => {
                let l = lists
                    .get(name)
                    .ok_or_else(|| format!("unknown list `${name}`"))?;
                out.extend(l.iter().map(|x| x.0.clone()));
            }
            None => out.push(s.0.clone()),
        }
    }
    if out.is_empty() {
        return Err("empty list".into());
    }
    Ok(out)
}

fn parse_mccs(values: &[String]) -> Result<Vec<u16>, String> {
    let mut v = values
        .iter()
        .map(|s| Mcc::parse(s).map(Mcc::value))
        .collect::<Result<Vec<_>, _>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

fn parse_countries(values: &[String]) -> Result<crate::geo::CountrySet, String> {
    let mut set = crate::geo::CountrySet::default();
    for s in values {
        set.insert(Country::parse(s)?);
    }
    Ok(set)
}

fn parse_bits<T: Copy>(
    values: &[String],
    parse: impl Fn(&str) -> Option<T>,
    bit: impl Fn(T) -> u16,
    what: &str,
) -> Result<u16, String> {
    let mut bits = 0;
    for s in values {
        let v = parse(s).ok_or_else(|| format!("unknown {what} `{s}`"))?;
        bits |= bit(v);
    }
    Ok(bits)
}

fn parse_weekday(s: &str) -> Option<u8> {
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" | "monday" => 1,
        "tue" | "tuesday" => 2,
        "wed" | "wednesday" => 3,
        "thu" | "thursday" => 4,
        "fri" | "friday" => 5,
        "sat" | "saturday" => 6,
        "sun" | "sunday" => 7,
        _ => return None,
    })
}

fn parse_hhmm(s: &str) -> Result<u16, String> {
    let bad = || format!("time `{s}` must be HH:MM (00:00 to 24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h > 24 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn positive_amount(s: &Scalar, currency: Currency) -> Result<Decimal, String> {
    let d = parse_amount(s.as_str(), currency).map_err(|e| e.to_string())?;
    if d <= Decimal::ZERO {
        return Err(format!("amount {d} must be positive"));
    }
    Ok(d)
}

fn compile_matcher(
    m: &RawMatcher,
    lists: &BTreeMap<String, Vec<Scalar>>,
    currency: Currency,
) -> Result<Matcher, (&'static str, String)> {
    let mut out = Matcher::default();
    if let Some(r) = &m.mcc {
        out.mcc = Some(
            expand(r, lists)
                .and_then(|v| parse_mccs(&v))
                .map_err(|e| ("mcc", e))?,
        );
    }
    if let Some(r) = &m.channel {
        out.channels = Some(
            expand(r, lists)
                .and_then(|v| parse_bits(&v, Channel::parse, Channel::bit, "channel"))
                .map_err(|e| ("channel", e))?,
        );
    }
    if let Some(r) = &m.txn_type {
        out.types = Some(
            expand(r, lists)
                .and_then(|v| parse_bits(&v, TxnType::parse, TxnType::bit, "transaction type"))
                .map_err(|e| ("type", e))?,
        );
    }
    if let Some(r) = &m.merchant {
        let mut v: Vec<u64> = expand(r, lists)
            .map_err(|e| ("merchant", e))?
            .iter()
            .map(|s| key_hash(&[s.as_bytes()]))
            .collect();
        v.sort_unstable();
        v.dedup();
        out.merchants = Some(v);
    }
    if let Some(r) = &m.country {
        out.countries = Some(
            expand(r, lists)
                .and_then(|v| parse_countries(&v))
                .map_err(|e| ("country", e))?,
        );
    }
    if let Some(a) = &m.amount {
        let p = |s: &Option<Scalar>| -> Result<Option<Decimal>, (&'static str, String)> {
            s.as_ref()
                .map(|s| parse_amount(s.as_str(), currency).map_err(|e| ("amount", e.to_string())))
                .transpose()
        };
        out.amount_gt = p(&a.gt)?;
        out.amount_gte = p(&a.gte)?;
        out.amount_lt = p(&a.lt)?;
        out.amount_lte = p(&a.lte)?;
        if a.gt.is_none() && a.gte.is_none() && a.lt.is_none() && a.lte.is_none() {
            return Err((
                "amount",
                "amount needs at least one of gt, gte, lt, lte".into(),
            ));
        }
    }
    if let Some(t) = &m.local_time {
        let from = parse_hhmm(&t.from).map_err(|e| ("local_time", e))?;
        let to = parse_hhmm(&t.to).map_err(|e| ("local_time", e))?;
        if from == to {
            return Err((
                "local_time",
                "from and to are equal: the range is empty".into(),
            ));
        }
        out.local_time = Some((from, to));
    }
    if let Some(r) = &m.weekday {
        let mut bits = 0u8;
        for s in expand(r, lists).map_err(|e| ("weekday", e))? {
            let d = parse_weekday(&s)
                .ok_or(("weekday", format!("unknown weekday `{s}` (mon..sun)")))?;
            bits |= 1 << d;
        }
        out.weekdays = Some(bits);
    }
    let empty = out.mcc.is_none()
        && out.channels.is_none()
        && out.types.is_none()
        && out.merchants.is_none()
        && out.countries.is_none()
        && out.amount_gt.is_none()
        && out.amount_gte.is_none()
        && out.amount_lt.is_none()
        && out.amount_lte.is_none()
        && out.local_time.is_none()
        && out.weekdays.is_none();
    if empty {
        return Err(("", "empty matcher".into()));
    }
    Ok(out)
}

fn compile_cond(
    v: &serde_norway::Value,
    lists: &BTreeMap<String, Vec<Scalar>>,
    currency: Currency,
) -> Result<Cond, (&'static str, String)> {
    match v {
        serde_norway::Value::String(expr) => {
            let ast = script::compile_condition(expr)
                .map_err(|e| ("", format!("Rhai condition: {e}")))?;
            Ok(Cond::Rhai {
                ast: Arc::new(ast),
                source: expr.clone(),
            })
        }
        serde_norway::Value::Mapping(_) => {
            let m: RawMatcher =
                serde_norway::from_value(v.clone()).map_err(|e| ("", e.to_string()))?;
            compile_matcher(&m, lists, currency).map(|m| Cond::Match(Box::new(m)))
        }
        _ => Err((
            "",
            "expected matchers (a mapping) or a Rhai expression (a string)".into(),
        )),
    }
}

/// A script path must be relative and stay below the policy's directory.
fn safe_relative(p: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(p);
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "script path `{p}` must be relative and stay inside the rules directory"
        ));
    }
    if path.extension().and_then(|e| e.to_str()) != Some("rhai") {
        return Err(format!("script path `{p}` must end in .rhai"));
    }
    Ok(path)
}

fn valid_point(lat: f64, lon: f64) -> bool {
    LatLon { lat, lon }.is_valid()
}

/// Validates and compiles a policy's text. `read_script` reads paths relative to the
/// policy's directory.
pub fn compile_policy(
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

fn compile_rule(
    cx: &mut Ctx<'_>,
    i: usize,
    r: &RawRule,
    raw: &RawPolicy,
    currency: Currency,
    hasher: &mut Sha256,
    read_script: &dyn Fn(&Path) -> io::Result<String>,
) -> Option<Rule> {
    let errors_before = cx.errors.len();
    let mode = match r.mode.as_deref() {
        None | Some("enforce") => Mode::Enforce,
        Some("shadow") => Mode::Shadow,
        Some(m) => {
            cx.rule_err(
                i,
                &["mode"],
                format!("mode `{m}` must be enforce or shadow"),
            );
            Mode::Enforce
        }
    };
    let cond =
        |key: &'static str, v: &Option<serde_norway::Value>, cx: &mut Ctx<'_>| -> Option<Cond> {
            let v = v.as_ref()?;
            match compile_cond(v, &raw.lists, currency) {
                Ok(c) => Some(c),
                Err((sub, msg)) => {
                    let path: Vec<&str> = if sub.is_empty() {
                        vec![key]
                    } else {
                        vec![key, sub]
                    };
                    cx.rule_err(i, &path, msg);
                    None
                }
            }
        };
    let when = cond("when", &r.when, cx);
    let unless = cond("unless", &r.unless, cx);

    let kinds: Vec<&str> = [
        r.limit.as_ref().map(|_| "limit"),
        r.velocity.as_ref().map(|_| "velocity"),
        r.countries.as_ref().map(|_| "countries"),
        r.geofence.as_ref().map(|_| "geofence"),
        r.travel.as_ref().map(|_| "travel"),
        r.script.as_ref().map(|_| "script"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if kinds.len() > 1 {
        cx.rule_err(
            i,
            &[kinds[1]],
            format!("a rule has one check; found {}", kinds.join(" and ")),
        );
        return None;
    }

    let check = if let Some(l) = &r.limit {
        let max = l.amount_max.as_ref().map(|s| positive_amount(s, currency));
        let min = l.amount_min.as_ref().map(|s| positive_amount(s, currency));
        let amount_max = match max.transpose() {
            Ok(v) => v,
            Err(e) => {
                cx.rule_err(i, &["limit", "amount_max"], e);
                None
            }
        };
        let amount_min = match min.transpose() {
            Ok(v) => v,
            Err(e) => {
                cx.rule_err(i, &["limit", "amount_min"], e);
                None
            }
        };
        if l.amount_max.is_none() && l.amount_min.is_none() {
            cx.rule_err(i, &["limit"], "limit needs amount_max or amount_min");
        }
        if let (Some(a), Some(b)) = (amount_min, amount_max) {
            if a > b {
                cx.rule_err(
                    i,
                    &["limit"],
                    format!("amount_min {a} is above amount_max {b}"),
                );
            }
        }
        Check::Limit {
            amount_max,
            amount_min,
        }
    } else if let Some(v) = &r.velocity {
        let window = WindowSpec::parse(&v.window).unwrap_or_else(|e| {
            cx.rule_err(i, &["velocity", "window"], e);
            WindowSpec::Lifetime
        });
        let amount_max = v.amount_max.as_ref().and_then(|s| {
            positive_amount(s, currency)
                .map_err(|e| cx.rule_err(i, &["velocity", "amount_max"], e))
                .ok()
        });
        if v.amount_max.is_none() && v.count_max.is_none() {
            cx.rule_err(i, &["velocity"], "velocity needs amount_max or count_max");
        }
        if v.count_max == Some(0) {
            cx.rule_err(
                i,
                &["velocity", "count_max"],
                "count_max must be at least 1",
            );
        }
        let scope = match v.scope.as_deref() {
            None | Some("card") => VelocityScope::Card,
            Some("cardholder") => VelocityScope::Cardholder,
            Some("program") => VelocityScope::Program,
            Some("card_merchant") => VelocityScope::CardMerchant,
            Some(s) => {
                cx.rule_err(
                    i,
                    &["velocity", "scope"],
                    format!("scope `{s}` must be card, cardholder, program or card_merchant"),
                );
                VelocityScope::Card
            }
        };
        let counts = match v.counts.as_deref() {
            None | Some("approved") => Counts::Approved,
            Some("declined") => Counts::Declined,
            Some(c) => {
                cx.rule_err(
                    i,
                    &["velocity", "counts"],
                    format!("counts `{c}` must be approved or declined"),
                );
                Counts::Approved
            }
        };
        if counts == Counts::Declined && v.amount_max.is_some() {
            cx.rule_err(
                i,
                &["velocity", "amount_max"],
                "a window counting declines limits count_max only",
            );
        }
        // The key changes whenever what the window counts changes, so a redefined rule
        // starts from fresh counters instead of inheriting ones counted differently.
        let key = key_hash(&[
            raw.policy.as_bytes(),
            r.id.as_bytes(),
            window.to_string().as_bytes(),
            scope.as_str().as_bytes(),
            format!("{counts:?}{:?}{:?}", r.when, r.unless).as_bytes(),
            currency.code().as_bytes(),
        ]);
        Check::Velocity(VelocityCheck {
            key,
            window,
            amount_max,
            count_max: v.count_max,
            scope,
            counts,
        })
    } else if let Some(c) = &r.countries {
        let (allow, list, key) = match (&c.allow, &c.deny) {
            (Some(a), None) => (true, a, "allow"),
            (None, Some(d)) => (false, d, "deny"),
            _ => {
                cx.rule_err(
                    i,
                    &["countries"],
                    "countries takes exactly one of allow or deny",
                );
                return None;
            }
        };
        let name = match list {
            ListRef::One(s) => s.0.clone(),
            ListRef::Values(v) => v.iter().map(|s| s.0.as_str()).collect::<Vec<_>>().join(","),
        };
        match expand(list, &raw.lists).and_then(|v| parse_countries(&v)) {
            Ok(set) => Check::Countries {
                allow,
                set,
                list: name,
            },
            Err(e) => {
                cx.rule_err(i, &["countries", key], e);
                return None;
            }
        }
    } else if let Some(g) = &r.geofence {
        let fires_inside = match g.fires.as_deref() {
            None | Some("outside") => false,
            Some("inside") => true,
            Some(f) => {
                cx.rule_err(
                    i,
                    &["geofence", "fires"],
                    format!("fires `{f}` must be outside or inside"),
                );
                false
            }
        };
        let shape = match (&g.circle, &g.polygon) {
            (Some(c), None) => {
                if !valid_point(c.center[0], c.center[1]) {
                    cx.rule_err(
                        i,
                        &["geofence", "center"],
                        format!("center {:?} is not a valid [lat, lon]", c.center),
                    );
                }
                if !(c.radius_km.is_finite() && c.radius_km > 0.0 && c.radius_km <= 20_000.0) {
                    cx.rule_err(
                        i,
                        &["geofence", "radius_km"],
                        format!("radius_km {} must be in (0, 20000]", c.radius_km),
                    );
                }
                crate::geo::Shape::Circle {
                    center: LatLon {
                        lat: c.center[0],
                        lon: c.center[1],
                    },
                    radius_km: c.radius_km,
                }
            }
            (None, Some(p)) => {
                if p.len() < 3 || p.len() > 1_000 {
                    cx.rule_err(
                        i,
                        &["geofence", "polygon"],
                        format!("a polygon needs 3 to 1000 vertices, got {}", p.len()),
                    );
                }
                if let Some(bad) = p.iter().find(|v| !valid_point(v[0], v[1])) {
                    cx.rule_err(
                        i,
                        &["geofence", "polygon"],
                        format!("vertex {bad:?} is not a valid [lat, lon]"),
                    );
                }
                crate::geo::Shape::polygon(p)
            }
            _ => {
                cx.rule_err(
                    i,
                    &["geofence"],
                    "geofence takes exactly one of circle or polygon",
                );
                return None;
            }
        };
        Check::Geofence {
            shape,
            fires_inside,
        }
    } else if let Some(t) = &r.travel {
        if !(t.speed_kmh_max.is_finite() && t.speed_kmh_max > 0.0) {
            cx.rule_err(
                i,
                &["travel", "speed_kmh_max"],
                format!("speed_kmh_max {} must be positive", t.speed_kmh_max),
            );
        }
        Check::Travel {
            speed_kmh_max: t.speed_kmh_max,
        }
    } else if let Some(s) = &r.script {
        let rel = match safe_relative(s) {
            Ok(p) => p,
            Err(e) => {
                cx.rule_err(i, &["script"], e);
                return None;
            }
        };
        let text = match read_script(&rel) {
            Ok(t) => t,
            Err(e) => {
                cx.rule_err(
                    i,
                    &["script"],
                    format!("cannot read script `{}`: {e}", rel.display()),
                );
                return None;
            }
        };
        hasher.update(text.as_bytes());
        match script::compile_script(&text, raw.script_loops) {
            Ok(ast) => Check::Script {
                ast: Arc::new(ast),
                path: rel,
            },
            Err((message, pos)) => {
                // Point at the script itself when Rhai knows where the problem is.
                let file = cx.file.parent().unwrap_or(Path::new(".")).join(&rel);
                let (line, column) = pos.unwrap_or((1, 1));
                cx.errors.push(PolicyError {
                    file,
                    line,
                    column,
                    rule: Some(r.id.clone()),
                    message,
                });
                return None;
            }
        }
    } else {
        if when.is_none() && unless.is_none() && r.when.is_none() && r.unless.is_none() {
            cx.rule_err(i, &["id"], "rule has no check (limit, velocity, countries, geofence, travel, script) and no when/unless conditions");
        }
        Check::Conditions
    };

    let outcomes = [r.decline.is_some(), r.flag.is_some(), r.score.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if outcomes > 1 {
        cx.rule_err(
            i,
            &["decline"],
            "a rule has one outcome: decline, flag or score",
        );
    }
    if matches!(check, Check::Script { .. }) && outcomes > 0 {
        cx.rule_err(
            i,
            &["script"],
            "a script rule decides its own outcome; remove decline/flag/score",
        );
    }
    let outcome = if let Some(code) = &r.decline {
        match crate::domain::ResponseCode::parse_decline(code.as_str()) {
            Ok(c) => Outcome::Decline(Some(c)),
            Err(e) => {
                cx.rule_err(i, &["decline"], e);
                Outcome::Decline(None)
            }
        }
    } else if r.flag == Some(true) {
        Outcome::Flag
    } else if let Some(points) = r.score {
        if !(-1000..=1000).contains(&points) || points == 0 {
            cx.rule_err(
                i,
                &["score"],
                format!("score {points} must be non-zero and within -1000..=1000"),
            );
        }
        if raw.score_decline_at.is_none() {
            cx.rule_err(
                i,
                &["score"],
                "score rules need score_decline_at at the top of the policy",
            );
        }
        Outcome::Score(points)
    } else {
        if r.flag == Some(false) {
            cx.rule_err(i, &["flag"], "flag: false has no meaning; remove it");
        }
        Outcome::Decline(None)
    };
    if cx.errors.len() > errors_before {
        return None;
    }
    Some(Rule {
        id: r.id.clone(),
        description: r.description.clone(),
        line: cx.loc.rule(i).0,
        mode,
        when,
        unless,
        check,
        outcome,
        reason: r.reason.clone().unwrap_or_else(|| r.id.clone()),
    })
}

/// 1-based position of the first YAML anchor or alias: `&x` / `*x` where a value starts,
/// outside quotes and comments.
fn find_yaml_alias(text: &str) -> Option<(usize, usize)> {
    for (n, line) in text.lines().enumerate() {
        let b = line.as_bytes();
        let mut quote: Option<u8> = None;
        let mut value_start = true; // start of line (after indentation) can hold a value
        for (i, &c) in b.iter().enumerate() {
            if let Some(q) = quote {
                if c == q {
                    quote = None;
                }
                continue;
            }
            match c {
                b'"' | b'\'' if value_start => quote = Some(c),
                b'#' if i == 0 || b[i - 1] == b' ' => break,
                b'&' | b'*' if value_start => {
                    if b.get(i + 1)
                        .is_some_and(|x| x.is_ascii_alphanumeric() || *x == b'_')
                    {
                        return Some((n + 1, i + 1));
                    }
                    value_start = false;
                }
                b' ' | b'\t' => {}
                b'[' | b',' | b'{' | b'-' => value_start = true,
                b':' => value_start = b.get(i + 1).is_none_or(|x| *x == b' '),
                _ => value_start = false,
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::find_yaml_alias;

    #[test]
    fn finds_anchors_and_aliases_only_where_values_start() {
        assert_eq!(find_yaml_alias("a: &x [1]\n"), Some((1, 4)));
        assert_eq!(find_yaml_alias("a:\n  - *x\n"), Some((2, 5)));
        assert_eq!(find_yaml_alias("b: [*a, *a]\n"), Some((1, 5)));
        assert_eq!(find_yaml_alias("w: 'txn.amount * 2 > 5'\n"), None);
        assert_eq!(find_yaml_alias("w: \"*x\"\n"), None);
        assert_eq!(find_yaml_alias("w: a*b # *c\n"), None);
    }
}
