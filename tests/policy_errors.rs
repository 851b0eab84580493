//! Every broken-policy fixture fails with its precise `file:line:col: rule: message`,
//! and the CLI reports it with exit status 1.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use spendgate::policy::load_policy_file;

fn first_error(name: &str) -> String {
    let path = format!("tests/fixtures/broken/{name}.yaml");
    let errors = load_policy_file(Path::new(&path)).expect_err("broken fixture must not load");
    errors[0].to_string()
}

#[test]
fn each_broken_fixture_has_its_exact_error() {
    let cases = [
        ("unknown_key", "tests/fixtures/broken/unknown_key.yaml:6:5: cap: rules[0]: unknown field `limt`, expected one of `id`, `description`, `mode`, `when`, `unless`, `limit`, `velocity`, `countries`, `geofence`, `travel`, `script`, `decline`, `flag`, `score`, `reason`"),
        ("duplicate_rule_id", "tests/fixtures/broken/duplicate_rule_id.yaml:7:5: cap: duplicate rule id `cap`"),
        ("unknown_list", "tests/fixtures/broken/unknown_list.yaml:8:13: no_gambling: unknown list `$gamblng`"),
        ("invalid_code", "tests/fixtures/broken/invalid_code.yaml:7:5: cap: `58` is not a response code spendgate answers with (known: 00, 05, 10, 12, 13, 14, 30, 41, 43, 46, 51, 54, 57, 59, 61, 62, 65, 78, 91, 93, 96)"),
        ("invalid_country", "tests/fixtures/broken/invalid_country.yaml:6:18: home: `XX` is not an ISO 3166-1 alpha-2 country code"),
        ("invalid_currency", "tests/fixtures/broken/invalid_currency.yaml:2:1: policy: unknown currency `USX` (expected an ISO 4217 code with minor units)"),
        ("invalid_coordinates", "tests/fixtures/broken/invalid_coordinates.yaml:6:27: fence: center [95.0, 3.4] is not a valid [lat, lon]"),
        ("invalid_window", "tests/fixtures/broken/invalid_window.yaml:6:17: daily: window `1w`: expected a length like 10s, 15m, 24h, 7d (10s to 400d), calendar_day, calendar_week, calendar_month, calendar_year or lifetime"),
        ("invalid_timezone", "tests/fixtures/broken/invalid_timezone.yaml:3:1: policy: unknown time zone `Africa/Lagoss` (IANA names such as Africa/Lagos)"),
        ("too_precise_amount", "tests/fixtures/broken/too_precise_amount.yaml:6:14: cap: 100.001 has more than 2 fraction digits allowed for USD"),
        ("two_checks", "tests/fixtures/broken/two_checks.yaml:7:5: both: a rule has one check; found limit and travel"),
        ("script_path_escape", "tests/fixtures/broken/script_path_escape.yaml:6:5: escape: script path `../abuse/scripts/loop.rhai` must be relative and stay inside the rules directory"),
        ("rhai_unknown_variable", "tests/fixtures/broken/rhai_unknown_variable.yaml:6:5: typo: Rhai condition: Undefined variable: tx (line 1, position 1)"),
        ("rhai_syntax_error", "tests/fixtures/broken/scripts/syntax_error.rhai:5:1: syntax: Expecting ',' to separate the arguments to function call 'to_decimal'"),
        ("rhai_loop_not_allowed", "tests/fixtures/broken/scripts/loop.rhai:1:1: looping: Unexpected 'loop' (loops are off for this policy; `script_loops: true` allows them, bounded by the operations limit)"),
        ("score_without_threshold", "tests/fixtures/broken/score_without_threshold.yaml:7:5: score_only: score rules need score_decline_at at the top of the policy"),
        ("billion_laughs", "tests/fixtures/broken/billion_laughs.yaml:5:6: policy: YAML anchors and aliases (&name, *name) are not allowed; use named lists"),
    ];
    for (name, expected) in cases {
        assert_eq!(first_error(name), expected, "fixture {name}");
    }
}

#[test]
fn billion_laughs_fails_fast() {
    let start = Instant::now();
    first_error("billion_laughs");
    assert!(start.elapsed().as_secs() < 2, "took {:?}", start.elapsed());
}

#[test]
fn oversized_policy_is_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let mut text = String::from("policy: huge\ncurrency: USD\ntimezone: UTC\nrules:\n");
    while text.len() <= 300 * 1024 {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&path, text).unwrap();
    let errors = load_policy_file(&path).unwrap_err();
    assert!(
        errors[0].message.contains("above the 262144-byte limit"),
        "{}",
        errors[0]
    );
}

#[test]
fn several_errors_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.yaml");
    std::fs::write(
        &path,
        "policy: many\ncurrency: USD\ntimezone: UTC\nrules:\n  - id: a\n    limit: { amount_max: -5 }\n  - id: b\n    countries: { deny: [ZZ] }\n  - id: c\n    velocity: { window: 24h, count_max: 0 }\n",
    )
    .unwrap();
    let errors = load_policy_file(&path).unwrap_err();
    let rules: Vec<_> = errors
        .iter()
        .map(|e| e.rule.clone().unwrap_or_default())
        .collect();
    assert_eq!(rules, ["a", "b", "c"], "{errors:?}");
    assert_eq!((errors[0].line, errors[1].line, errors[2].line), (6, 8, 10));
}

fn spendgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spendgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_check_and_test_pass_on_shipped_rules() {
    let (code, out, err) = spendgate(&["check", "rules"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: consumer-prepaid-africa"), "{out}");
    assert!(out.contains("ok: corporate-expense"), "{out}");
    let (code, out, err) = spendgate(&["test", "rules"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" 0 failed"), "{out}");
}

#[test]
fn cli_check_fails_with_location() {
    let (code, _, err) = spendgate(&["check", "tests/fixtures/broken/unknown_list.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("tests/fixtures/broken/unknown_list.yaml:8:13: no_gambling: unknown list"),
        "{err}"
    );
}

#[test]
fn cli_test_fails_and_prints_the_trace() {
    let (code, out, _) = spendgate(&["test", "tests/fixtures/failing_test.yaml"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL tests/fixtures/failing_test.yaml:9: this expectation is wrong: expected approve, got decline 61"), "{out}");
    assert!(out.contains("150.00 > 100.00 USD"), "trace printed: {out}");
    assert!(out.contains("PASS this one is right"), "{out}");
    assert!(out.contains("1 passed, 1 failed"), "{out}");
}
