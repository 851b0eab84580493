//! The checks a rule can make (limit, velocity, countries, geofence, travel, script),
//! each validated and compiled from its raw form; `compile_rule` puts a rule together.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::compile::Ctx;
use super::matchers::{compile_cond, expand, parse_countries, positive_amount};
use super::outcomes::{compile_mode, compile_outcome};
use super::raw::{
    ListRef, RawCountries, RawGeofence, RawLimit, RawPolicy, RawRule, RawTravel, RawVelocity,
};
use super::script;
use super::*;
use crate::domain::LatLon;
use crate::money::Currency;
use crate::velocity::{key_hash, WindowSpec};

/// Compiles one rule; errors go to `cx` (located at the offending key) and give None.
pub(super) fn compile_rule(
    cx: &mut Ctx<'_>,
    i: usize,
    r: &RawRule,
    raw: &RawPolicy,
    currency: Currency,
    hasher: &mut Sha256,
    read_script: &dyn Fn(&Path) -> io::Result<String>,
) -> Option<Rule> {
    let errors_before = cx.errors.len();
    let mode = compile_mode(cx, i, r);
    let cond =
        |key: &'static str, v: &Option<serde_norway::Value>, cx: &mut Ctx<'_>| -> Option<Cond> {
            let v = v.as_ref()?;
            if let serde_norway::Value::String(expr) = v {
                cx.history_reads.add(script::HistoryReads::of(expr));
                match script::history_windows_in(expr) {
                    Ok(lengths) => cx.history_lengths.extend(lengths),
                    Err(e) => {
                        cx.rule_err(i, &[key], e);
                        return None;
                    }
                }
            }
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
        limit(cx, i, l, currency)
    } else if let Some(v) = &r.velocity {
        velocity(cx, i, v, r, raw, currency)
    } else if let Some(c) = &r.countries {
        countries(cx, i, c, raw)
    } else if let Some(g) = &r.geofence {
        geofence(cx, i, g)
    } else if let Some(t) = &r.travel {
        travel(cx, i, t)
    } else if let Some(s) = &r.script {
        script_check(cx, i, s, r, raw, hasher, read_script)
    } else {
        if when.is_none() && unless.is_none() && r.when.is_none() && r.unless.is_none() {
            cx.rule_err(i, &["id"], "rule has no check (limit, velocity, countries, geofence, travel, script) and no when/unless conditions");
        }
        Some(Check::Conditions)
    }?;
    let outcome = compile_outcome(cx, i, r, raw, &check);
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

fn limit(cx: &mut Ctx<'_>, i: usize, l: &RawLimit, currency: Currency) -> Option<Check> {
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
    Some(Check::Limit {
        amount_max,
        amount_min,
    })
}

fn velocity(
    cx: &mut Ctx<'_>,
    i: usize,
    v: &RawVelocity,
    r: &RawRule,
    raw: &RawPolicy,
    currency: Currency,
) -> Option<Check> {
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
    // starts from fresh counters instead of inheriting ones counted differently. Its
    // parts are our own stable encodings (conditions as canonical JSON), never a
    // dependency's `Debug` output, so an upgrade cannot silently reset every window.
    let key = key_hash(&[
        raw.policy.as_bytes(),
        r.id.as_bytes(),
        window.to_string().as_bytes(),
        scope.as_str().as_bytes(),
        counts.as_str().as_bytes(),
        condition_text(&r.when).as_bytes(),
        condition_text(&r.unless).as_bytes(),
        currency.code().as_bytes(),
    ]);
    Some(Check::Velocity(VelocityCheck {
        key,
        window,
        amount_max,
        count_max: v.count_max,
        scope,
        counts,
    }))
}

/// A condition as canonical JSON (`null` when absent), for window identity.
fn condition_text(v: &Option<serde_norway::Value>) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn countries(cx: &mut Ctx<'_>, i: usize, c: &RawCountries, raw: &RawPolicy) -> Option<Check> {
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
        Ok(set) => Some(Check::Countries {
            allow,
            set,
            list: name,
        }),
        Err(e) => {
            cx.rule_err(i, &["countries", key], e);
            None
        }
    }
}

fn geofence(cx: &mut Ctx<'_>, i: usize, g: &RawGeofence) -> Option<Check> {
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
    Some(Check::Geofence {
        shape,
        fires_inside,
    })
}

fn travel(cx: &mut Ctx<'_>, i: usize, t: &RawTravel) -> Option<Check> {
    if !(t.speed_kmh_max.is_finite() && t.speed_kmh_max > 0.0) {
        cx.rule_err(
            i,
            &["travel", "speed_kmh_max"],
            format!("speed_kmh_max {} must be positive", t.speed_kmh_max),
        );
    }
    Some(Check::Travel {
        speed_kmh_max: t.speed_kmh_max,
    })
}

fn script_check(
    cx: &mut Ctx<'_>,
    i: usize,
    s: &str,
    r: &RawRule,
    raw: &RawPolicy,
    hasher: &mut Sha256,
    read_script: &dyn Fn(&Path) -> io::Result<String>,
) -> Option<Check> {
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
    cx.history_reads.add(script::HistoryReads::of(&text));
    match script::history_windows_in(&text) {
        Ok(lengths) => cx.history_lengths.extend(lengths),
        Err(e) => {
            cx.rule_err(i, &["script"], e);
            return None;
        }
    }
    match script::compile_script(&text, raw.script_loops) {
        Ok(ast) => Some(Check::Script {
            ast: Arc::new(ast),
            path: rel,
        }),
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
            None
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(yaml: &str) -> u64 {
        let p = crate::policy::compile_policy(
            Path::new("t.yaml"),
            yaml,
            Arc::new(crate::money::FxTable::default()),
            &|_| Err(io::Error::other("no scripts")),
        )
        .unwrap();
        match &p.rules[0].check {
            Check::Velocity(v) => v.key,
            _ => panic!("a velocity rule"),
        }
    }

    fn compile_with_script(when: &str, script: &'static str) -> crate::policy::CompiledPolicy {
        let yaml = format!(
            "policy: p\ncurrency: USD\ntimezone: UTC\nrules:\n  - id: w\n    when: '{when}'\n    flag: true\n  - id: s\n    script: s.rhai\n"
        );
        crate::policy::compile_policy(
            Path::new("t.yaml"),
            &yaml,
            Arc::new(crate::money::FxTable::default()),
            &|_| Ok(script.to_string()),
        )
        .unwrap()
    }

    /// Decisions copy a card's activity log for scripts only when some code of the policy
    /// (a `when:` expression or a script file) could read it.
    #[test]
    fn a_policy_reads_the_activity_log_only_when_its_code_names_seen_merchant() {
        let neither = compile_with_script("txn.amount > 5.to_decimal()", "pass()");
        assert!(neither.uses_rhai && !neither.history_reads.activity);
        assert!(!neither.history_reads.countries);
        let in_when = compile_with_script("history.seen_merchant(txn.merchant_id)", "pass()");
        assert!(in_when.history_reads.activity && !in_when.history_reads.countries);
        let in_script = compile_with_script(
            "txn.amount > 5.to_decimal()",
            "if history.seen_merchant(txn.merchant_id) { pass() } else { flag(\"new\") }",
        );
        assert!(in_script.history_reads.activity);
        assert_eq!(
            in_script.without_scripts().history_reads,
            script::HistoryReads::default()
        );
    }

    const RULE: &str = "policy: p\ncurrency: USD\ntimezone: UTC\nrules:\n  - id: daily\n    when: { mcc: [\"5411\"] }\n    velocity: { window: 24h, amount_max: 100.00 }\n";

    /// Issue #8.15: a window's identity comes from our own encodings, so the same rule
    /// keeps its counters across builds and dependency upgrades (pinned value).
    #[test]
    fn velocity_window_identity_is_stable_and_tracks_the_definition() {
        assert_eq!(key_of(RULE), key_of(RULE));
        assert_eq!(
            key_of(RULE),
            0x40a5_ef8d_c42c_f1f8_u64,
            "{:#x}",
            key_of(RULE)
        );
        let other = RULE.replace("5411", "5412");
        assert_ne!(
            key_of(RULE),
            key_of(&other),
            "a changed condition starts fresh"
        );
    }
}
