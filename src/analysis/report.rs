//! A replay's report as text for the terminal, CSV (one row per flipped decision) and
//! one self-contained HTML page (inline CSS and SVG charts: no script, no network).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::replay::ReplayReport;

/// Flips listed in the terminal summary and the HTML page (CSV and JSON list all).
pub const FLIPS_SHOWN_MAX: usize = 500;

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

/// The terminal summary.
pub fn summary(r: &ReplayReport, flips_shown: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "replayed {} authorizations ({} with a recorded decision, {} carried over on the card's facts)",
        r.decisions, r.compared, r.carried_over
    );
    for (name, version) in &r.policies {
        let _ = writeln!(s, "candidate policy {name} version {version}");
    }
    let before = if r.compared == 0 {
        "no recorded decisions".to_string()
    } else {
        format!("{} before", pct(r.approval_rate_before()))
    };
    let _ = writeln!(
        s,
        "approval rate: {before}, {} after; {} flips, {} other code changes",
        pct(r.approval_rate_after()),
        r.flips.len(),
        r.code_changes
    );
    let _ = writeln!(s, "\nresponse codes        before      after");
    let codes: std::collections::BTreeSet<&String> =
        r.codes_before.keys().chain(r.codes_after.keys()).collect();
    for c in codes {
        let _ = writeln!(
            s,
            "  {c:<16} {:>10} {:>10}",
            r.codes_before.get(c).copied().unwrap_or(0),
            r.codes_after.get(c).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(s, "\namounts (transaction currency)");
    for (c, t) in &r.amounts {
        let _ = writeln!(
            s,
            "  {c}: approved {} → {} ({:+}), declined {} → {} ({:+})",
            t.approved_before,
            t.approved_after,
            t.approved_after - t.approved_before,
            t.declined_before,
            t.declined_after,
            t.declined_after - t.declined_before
        );
    }
    let _ = writeln!(s, "\nrules (declines decided)   before      after");
    for (rule, n) in &r.rules {
        let _ = writeln!(s, "  {rule:<24} {:>8} {:>10}", n.before, n.after);
    }
    if !r.shadow.is_empty() {
        let _ = writeln!(s, "\nshadow rules (would have fired)");
        for (rule, n) in &r.shadow {
            let _ = writeln!(s, "  {rule:<24} {n:>8}");
        }
    }
    if !r.flips.is_empty() {
        let _ = writeln!(
            s,
            "\nflips (first {} of {})",
            flips_shown.min(r.flips.len()),
            r.flips.len()
        );
        for f in r.flips.iter().take(flips_shown) {
            let _ = writeln!(
                s,
                "  {} {} card {} {} {}: {} → {} ({})",
                f.at.format("%Y-%m-%dT%H:%M:%SZ"),
                f.authorization_id,
                f.card_id,
                f.amount,
                f.currency,
                f.before,
                f.after,
                f.rule.as_deref().unwrap_or("-")
            );
        }
    }
    s
}

/// Every flip, one CSV row each.
pub fn flips_csv(r: &ReplayReport) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record([
        "at",
        "authorization_id",
        "card_id",
        "amount",
        "currency",
        "before",
        "after",
        "rule",
    ]);
    for f in &r.flips {
        let _ = w.write_record([
            f.at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            f.authorization_id.clone(),
            f.card_id.clone(),
            f.amount.to_string(),
            f.currency.code().to_string(),
            f.before.clone(),
            f.after.clone(),
            f.rule.clone().unwrap_or_default(),
        ]);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const BEFORE: &str = "#8a94a6";
const AFTER: &str = "#1f6feb";

/// Grouped horizontal bars: one row per label, a bar per series.
fn bars(id: &str, title: &str, rows: &[(String, Vec<f64>)], series: &[(&str, &str)]) -> String {
    let max = rows
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let bar_h = 14.0;
    let row_h = bar_h * series.len() as f64 + 10.0;
    let (label_w, plot_w) = (170.0, 460.0);
    let height = 40.0 + row_h * rows.len() as f64;
    let mut s = format!(
        r#"<figure><figcaption>{}</figcaption><svg id="{id}" role="img" aria-label="{}" width="{}" height="{height}" viewBox="0 0 {} {height}">"#,
        esc(title),
        esc(title),
        label_w + plot_w + 80.0,
        label_w + plot_w + 80.0
    );
    for (i, (name, color)) in series.iter().enumerate() {
        let x = label_w + i as f64 * 110.0;
        let _ = write!(
            s,
            r#"<rect x="{x}" y="4" width="12" height="12" fill="{color}"/><text x="{}" y="15">{}</text>"#,
            x + 16.0,
            esc(name)
        );
    }
    for (r, (label, values)) in rows.iter().enumerate() {
        let y0 = 30.0 + r as f64 * row_h;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y0 + row_h / 2.0,
            esc(label)
        );
        for (i, v) in values.iter().enumerate() {
            let w = (v / max * plot_w).max(if *v > 0.0 { 1.0 } else { 0.0 });
            let y = y0 + i as f64 * bar_h;
            let _ = write!(
                s,
                r#"<rect class="bar" x="{label_w}" y="{y}" width="{w:.1}" height="{}" fill="{}"><title>{}: {v}</title></rect><text x="{:.1}" y="{}" class="value">{}</text>"#,
                bar_h - 2.0,
                series[i].1,
                esc(series[i].0),
                label_w + w + 4.0,
                y + bar_h - 4.0,
                trim(*v)
            );
        }
    }
    s.push_str("</svg></figure>");
    s
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The whole report as one HTML page.
pub fn html(r: &ReplayReport) -> String {
    let codes: std::collections::BTreeSet<&String> =
        r.codes_before.keys().chain(r.codes_after.keys()).collect();
    let code_rows: Vec<(String, Vec<f64>)> = codes
        .into_iter()
        .map(|c| {
            (
                c.clone(),
                vec![
                    r.codes_before.get(c).copied().unwrap_or(0) as f64,
                    r.codes_after.get(c).copied().unwrap_or(0) as f64,
                ],
            )
        })
        .collect();
    let day_rows: Vec<(String, Vec<f64>)> = r
        .days
        .iter()
        .map(|(day, t)| {
            let before = if t.compared == 0 {
                0.0
            } else {
                t.approved_before as f64 / t.compared as f64 * 100.0
            };
            (
                day.clone(),
                vec![
                    before,
                    t.approved_after as f64 / t.decisions.max(1) as f64 * 100.0,
                ],
            )
        })
        .collect();
    let mut by_rule: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for f in &r.flips {
        let e = by_rule
            .entry(f.rule.clone().unwrap_or_else(|| "(no rule)".into()))
            .or_default();
        if f.after == "00" || f.after == "10" {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let flip_rows: Vec<(String, Vec<f64>)> = by_rule
        .into_iter()
        .map(|(rule, (approved, declined))| (rule, vec![approved as f64, declined as f64]))
        .collect();
    let mut s = String::from(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>spendgate replay</title><style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1f24}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:12px 0}figcaption{font-weight:600;margin-bottom:4px}
svg text{font:12px system-ui,sans-serif;fill:#1b1f24}svg text.value{fill:#57606a}
.k{display:inline-block;margin-right:28px}.k b{display:block;font-size:22px}
</style></head><body><h1>Replay: candidate policies against recorded decisions</h1>"#,
    );
    let _ = write!(s, "<p>");
    for (name, version) in &r.policies {
        let _ = write!(
            s,
            "candidate <code>{}</code> version <code>{}</code>; ",
            esc(name),
            esc(version)
        );
    }
    let _ = write!(s, "</p><div id=\"summary\">");
    for (label, value) in [
        ("authorizations", r.decisions.to_string()),
        ("approval rate before", pct(r.approval_rate_before())),
        ("approval rate after", pct(r.approval_rate_after())),
        ("flips", r.flips.len().to_string()),
        ("other code changes", r.code_changes.to_string()),
        ("carried over", r.carried_over.to_string()),
    ] {
        let _ = write!(s, r#"<span class="k">{label}<b>{value}</b></span>"#);
    }
    s.push_str("</div>");
    let series = [("before", BEFORE), ("after", AFTER)];
    s.push_str(&bars(
        "codes",
        "Response codes, before and after",
        &code_rows,
        &series,
    ));
    s.push_str(&bars(
        "approval-by-day",
        "Approval rate by day (%)",
        &day_rows,
        &series,
    ));
    s.push_str(&bars(
        "flips-by-rule",
        "Flips by deciding rule",
        &flip_rows,
        &[("now approved", "#2da44e"), ("now declined", "#cf222e")],
    ));
    s.push_str("<h2>Amounts (transaction currency)</h2><table><tr><th>currency</th><th>approved before</th><th>approved after</th><th>declined before</th><th>declined after</th></tr>");
    for (c, t) in &r.amounts {
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            esc(c),
            t.approved_before,
            t.approved_after,
            t.declined_before,
            t.declined_after
        );
    }
    s.push_str("</table><h2>Rules (declines decided)</h2><table><tr><th>rule</th><th>before</th><th>after</th></tr>");
    for (rule, n) in &r.rules {
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            esc(rule),
            n.before,
            n.after
        );
    }
    s.push_str("</table>");
    if !r.shadow.is_empty() {
        s.push_str(
            "<h2>Shadow rules (would have fired)</h2><table><tr><th>rule</th><th>count</th></tr>",
        );
        for (rule, n) in &r.shadow {
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td class="n">{n}</td></tr>"#,
                esc(rule)
            );
        }
        s.push_str("</table>");
    }
    let _ = write!(
        s,
        "<h2>Flips ({} of {})</h2><table id=\"flips\"><tr><th>time</th><th>authorization</th><th>card</th><th>amount</th><th>before</th><th>after</th><th>rule</th></tr>",
        r.flips.len().min(FLIPS_SHOWN_MAX),
        r.flips.len()
    );
    for f in r.flips.iter().take(FLIPS_SHOWN_MAX) {
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="n">{} {}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            f.at.format("%Y-%m-%d %H:%M:%S"),
            esc(&f.authorization_id),
            esc(&f.card_id),
            f.amount,
            f.currency,
            esc(&f.before),
            esc(&f.after),
            esc(f.rule.as_deref().unwrap_or("-"))
        );
    }
    s.push_str("</table></body></html>\n");
    s
}
