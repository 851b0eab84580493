//! `spendgate diff OLD NEW`: what changed between two versions of policy files, rule by
//! rule, on the YAML as analysts wrote it (after anchors and merges, before compiling):
//! rules added, removed, moved (order decides which decline wins) and changed field by
//! field; lists with the entries added and removed; settings old → new.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;

use serde::Serialize;
use serde_norway::Value;

/// One difference, in a policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    PolicyAdded {
        policy: String,
    },
    PolicyRemoved {
        policy: String,
    },
    Setting {
        policy: String,
        field: String,
        old: Option<String>,
        new: Option<String>,
    },
    ListAdded {
        policy: String,
        list: String,
        entries: Vec<String>,
    },
    ListRemoved {
        policy: String,
        list: String,
    },
    ListChanged {
        policy: String,
        list: String,
        added: Vec<String>,
        removed: Vec<String>,
    },
    RuleAdded {
        policy: String,
        rule: String,
        position: usize,
    },
    RuleRemoved {
        policy: String,
        rule: String,
    },
    RuleMoved {
        policy: String,
        rule: String,
        from: usize,
        to: usize,
    },
    RuleField {
        policy: String,
        rule: String,
        field: String,
        old: Option<String>,
        new: Option<String>,
    },
    Tests {
        policy: String,
        old: usize,
        new: usize,
    },
}

/// Policies by name, as YAML values, from a file or every `.yaml`/`.yml` in a directory.
pub fn read_policies(path: &Path) -> Result<BTreeMap<String, Value>, String> {
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let mut v: Value =
            serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        v.apply_merge()
            .map_err(|e| format!("{}: {e}", f.display()))?;
        let name = v
            .get("policy")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{}: no `policy:` name", f.display()))?
            .to_string();
        out.insert(name, v);
    }
    Ok(out)
}

/// Scalars as analysts wrote them; anything else as one-line YAML-ish text.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => {
            format!(
                "[{}]",
                items.iter().map(text).collect::<Vec<_>>().join(", ")
            )
        }
        Value::Mapping(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", text(k), text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Tagged(t) => format!("{} {}", t.tag, text(&t.value)),
    }
}

/// Leaves of a mapping by dotted path (sequences of scalars stay one leaf).
fn leaves(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    text(k)
                } else {
                    format!("{prefix}.{}", text(k))
                };
                leaves(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), text(v));
        }
    }
}

fn rules(v: &Value) -> Vec<(String, &Value)> {
    v.get("rules")
        .and_then(Value::as_sequence)
        .map(|rs| {
            rs.iter()
                .enumerate()
                .map(|(i, r)| {
                    let id = r
                        .get("id")
                        .and_then(Value::as_str)
                        .map_or_else(|| format!("#{}", i + 1), str::to_string);
                    (id, r)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn list_entries(v: &Value) -> BTreeSet<String> {
    match v {
        Value::Sequence(items) => items.iter().map(text).collect(),
        other => BTreeSet::from([text(other)]),
    }
}

/// Every difference between two sets of policies.
pub fn diff(old: &BTreeMap<String, Value>, new: &BTreeMap<String, Value>) -> Vec<Change> {
    let mut out = Vec::new();
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        out.push(Change::PolicyRemoved {
            policy: name.clone(),
        });
    }
    for name in new.keys().filter(|n| !old.contains_key(*n)) {
        out.push(Change::PolicyAdded {
            policy: name.clone(),
        });
    }
    for (name, o) in old {
        if let Some(n) = new.get(name) {
            diff_policy(name, o, n, &mut out);
        }
    }
    out
}

fn diff_policy(policy: &str, o: &Value, n: &Value, out: &mut Vec<Change>) {
    let p = || policy.to_string();
    // Settings: every top-level field but rules, lists and tests.
    let mut so = BTreeMap::new();
    let mut sn = BTreeMap::new();
    for (v, into) in [(o, &mut so), (n, &mut sn)] {
        if let Value::Mapping(m) = v {
            for (k, v) in m {
                let k = text(k);
                if !matches!(k.as_str(), "rules" | "lists" | "tests") {
                    leaves(&k, v, into);
                }
            }
        }
    }
    let fields: BTreeSet<&String> = so.keys().chain(sn.keys()).collect();
    for f in fields {
        let (a, b) = (so.get(f), sn.get(f));
        if a != b {
            out.push(Change::Setting {
                policy: p(),
                field: f.clone(),
                old: a.cloned(),
                new: b.cloned(),
            });
        }
    }
    // Lists.
    let lists = |v: &Value| -> BTreeMap<String, BTreeSet<String>> {
        v.get("lists")
            .and_then(Value::as_mapping)
            .map(|m| m.iter().map(|(k, v)| (text(k), list_entries(v))).collect())
            .unwrap_or_default()
    };
    let (lo, ln) = (lists(o), lists(n));
    for (list, entries) in &lo {
        match ln.get(list) {
            None => out.push(Change::ListRemoved {
                policy: p(),
                list: list.clone(),
            }),
            Some(new_entries) if new_entries != entries => out.push(Change::ListChanged {
                policy: p(),
                list: list.clone(),
                added: new_entries.difference(entries).cloned().collect(),
                removed: entries.difference(new_entries).cloned().collect(),
            }),
            Some(_) => {}
        }
    }
    for (list, entries) in ln.iter().filter(|(l, _)| !lo.contains_key(*l)) {
        out.push(Change::ListAdded {
            policy: p(),
            list: list.clone(),
            entries: entries.iter().cloned().collect(),
        });
    }
    // Rules, by id.
    let (ro, rn) = (rules(o), rules(n));
    let old_pos: BTreeMap<&str, usize> = ro
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();
    let new_pos: BTreeMap<&str, usize> = rn
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();
    for (id, _) in ro
        .iter()
        .filter(|(id, _)| !new_pos.contains_key(id.as_str()))
    {
        out.push(Change::RuleRemoved {
            policy: p(),
            rule: id.clone(),
        });
    }
    for (i, (id, rule)) in rn.iter().enumerate() {
        let Some(&j) = old_pos.get(id.as_str()) else {
            out.push(Change::RuleAdded {
                policy: p(),
                rule: id.clone(),
                position: i + 1,
            });
            continue;
        };
        // Moved relative to the rules both versions have (an insertion above is not a move).
        let rank_old = ro[..j]
            .iter()
            .filter(|(x, _)| new_pos.contains_key(x.as_str()))
            .count();
        let rank_new = rn[..i]
            .iter()
            .filter(|(x, _)| old_pos.contains_key(x.as_str()))
            .count();
        if rank_old != rank_new {
            out.push(Change::RuleMoved {
                policy: p(),
                rule: id.clone(),
                from: j + 1,
                to: i + 1,
            });
        }
        let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
        leaves("", ro[j].1, &mut a);
        leaves("", rule, &mut b);
        let fields: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for f in fields {
            if a.get(f) != b.get(f) {
                out.push(Change::RuleField {
                    policy: p(),
                    rule: id.clone(),
                    field: f.clone(),
                    old: a.get(f).cloned(),
                    new: b.get(f).cloned(),
                });
            }
        }
    }
    let tests = |v: &Value| {
        v.get("tests")
            .and_then(Value::as_sequence)
            .map_or(0, Vec::len)
    };
    if tests(o) != tests(n) {
        out.push(Change::Tests {
            policy: p(),
            old: tests(o),
            new: tests(n),
        });
    }
}

/// The differences as lines for the terminal.
pub fn render(changes: &[Change]) -> String {
    let mut s = String::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    for c in changes {
        let _ = match c {
            Change::PolicyAdded { policy } => writeln!(s, "+ policy {policy}"),
            Change::PolicyRemoved { policy } => writeln!(s, "- policy {policy}"),
            Change::Setting {
                policy,
                field,
                old,
                new,
            } => {
                writeln!(s, "~ {policy}: {field}: {} → {}", opt(old), opt(new))
            }
            Change::ListAdded {
                policy,
                list,
                entries,
            } => {
                writeln!(s, "+ {policy}: list {list} [{}]", entries.join(", "))
            }
            Change::ListRemoved { policy, list } => writeln!(s, "- {policy}: list {list}"),
            Change::ListChanged {
                policy,
                list,
                added,
                removed,
            } => writeln!(
                s,
                "~ {policy}: list {list}:{}{}",
                if added.is_empty() {
                    String::new()
                } else {
                    format!(" + {}", added.join(", "))
                },
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(" − {}", removed.join(", "))
                }
            ),
            Change::RuleAdded {
                policy,
                rule,
                position,
            } => {
                writeln!(s, "+ {policy}: rule {rule} (at position {position})")
            }
            Change::RuleRemoved { policy, rule } => writeln!(s, "- {policy}: rule {rule}"),
            Change::RuleMoved {
                policy,
                rule,
                from,
                to,
            } => {
                writeln!(
                    s,
                    "~ {policy}: rule {rule} moved from position {from} to {to}"
                )
            }
            Change::RuleField {
                policy,
                rule,
                field,
                old,
                new,
            } => {
                writeln!(
                    s,
                    "~ {policy}: rule {rule}: {field}: {} → {}",
                    opt(old),
                    opt(new)
                )
            }
            Change::Tests { policy, old, new } => {
                writeln!(s, "~ {policy}: tests: {old} → {new}")
            }
        };
    }
    if changes.is_empty() {
        s.push_str("no differences\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> BTreeMap<String, Value> {
        let v: Value = serde_norway::from_str(yaml).unwrap();
        BTreeMap::from([(v["policy"].as_str().unwrap().to_string(), v)])
    }

    const OLD: &str = "
policy: p
currency: USD
lists:
  travel: [NG, GH, KE]
  gone: [a]
rules:
  - id: cap
    limit: { amount_max: 500.00 }
  - id: daily
    velocity: { window: 24h, amount_max: 1000.00, count_max: 20 }
  - id: old_rule
    decline: '57'
";

    const NEW: &str = "
policy: p
currency: USD
timezone: Africa/Lagos
lists:
  travel: [NG, GH, ZA]
rules:
  - id: daily
    velocity: { window: 24h, amount_max: 800.00, count_max: 20 }
  - id: cap
    limit: { amount_max: 500.00 }
  - id: fresh
    shadow: true
    decline: '59'
";

    #[test]
    fn rules_lists_and_settings_are_compared_field_by_field() {
        let changes = diff(&policy(OLD), &policy(NEW));
        let text = render(&changes);
        for expected in [
            "~ p: timezone: (none) → Africa/Lagos",
            "~ p: list travel: + ZA − KE",
            "- p: list gone",
            "- p: rule old_rule",
            "+ p: rule fresh (at position 3)",
            // YAML numbers print as numbers (1000.00 is 1000.0).
            "~ p: rule daily: velocity.amount_max: 1000.0 → 800.0",
            "~ p: rule daily moved from position 2 to 1",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in\n{text}");
        }
        assert!(!text.contains("rule cap:"), "cap did not change:\n{text}");
    }

    #[test]
    fn the_same_policy_has_no_differences() {
        assert!(diff(&policy(OLD), &policy(OLD)).is_empty());
        assert_eq!(render(&[]), "no differences\n");
    }
}
