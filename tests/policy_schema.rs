//! Issue 11.7: `spendgate schema` describes the policy format the compiler reads: every
//! shipped policy file validates against it, and the mistakes editors should underline
//! (an unknown key, a misspelt rule field, a wrong type) do not.

use std::path::Path;

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&spendgate::policy::json_schema()).expect("a valid JSON Schema")
}

fn yaml(text: &str) -> serde_json::Value {
    let v: serde_norway::Value = serde_norway::from_str(text).unwrap();
    serde_json::to_value(v).unwrap()
}

#[test]
fn every_shipped_policy_validates_against_the_schema() {
    let v = validator();
    let mut checked = 0;
    for e in std::fs::read_dir("rules").unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "yaml") {
            let doc = yaml(&std::fs::read_to_string(&path).unwrap());
            let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 2);
}

#[test]
fn the_schema_rejects_what_the_compiler_rejects() {
    let v = validator();
    let base = std::fs::read_to_string(Path::new("rules/consumer_prepaid.yaml")).unwrap();
    for (what, bad) in [
        (
            "a misspelt rule field",
            base.replace("velocity: { window: 24h,", "velocty: { window: 24h,"),
        ),
        (
            "an unknown top-level key",
            format!("{base}\nowner: risk-team\n"),
        ),
        (
            "a count that is not a number",
            base.replace("count_max: 20 }", "count_max: twenty }"),
        ),
        ("no rules", base.replace("rules:", "rulez:")),
    ] {
        let doc = yaml(&bad);
        assert!(!v.is_valid(&doc), "{what} passed the schema");
        assert!(
            spendgate::policy::compile_policy(
                Path::new("p.yaml"),
                &bad,
                Default::default(),
                &|rel| std::fs::read_to_string(Path::new("rules").join(rel)),
            )
            .is_err(),
            "{what} compiled"
        );
    }
}
