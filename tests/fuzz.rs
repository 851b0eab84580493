//! Everything that parses, fed mutated and random input: policy YAML (with its Rhai), the
//! HTTP bodies of every route through the real router, settlement CSV and hook signature
//! headers. None may panic; a refused policy names the file, line and column; a refused
//! request is a 4xx problem+json and changes nothing.
//!
//! Property tests (stable Rust): `cargo test --test fuzz`; more cases with
//! `PROPTEST_CASES=5000 cargo test --release --test fuzz`.

use std::path::Path;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use proptest::prelude::*;
use spendgate::http::security::HookVerifier;
use spendgate::http::{build_state, routes, Config};
use tower::ServiceExt;

const SHIPPED: &str = include_str!("../rules/consumer_prepaid.yaml");

/// One edit of a text: cut a span, duplicate a line, insert a token, or swap a value.
#[derive(Debug, Clone)]
enum Edit {
    Cut { at: usize, len: usize },
    DuplicateLine { line: usize },
    Insert { at: usize, token: String },
    Truncate { at: usize },
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(": ".to_string()),
        Just("\n  - ".to_string()),
        Just("{".to_string()),
        Just("]".to_string()),
        Just("*a".to_string()),
        Just("&a ".to_string()),
        Just("window: lifetime".to_string()),
        Just("script: \"loop { }\"".to_string()),
        Just("when: \"txn.amount /\"".to_string()),
        Just("amount_max: -1".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("\u{0}".to_string()),
        Just("é\u{2028}".to_string()),
        "[ -~]{0,12}",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..SHIPPED.len(), 1..40usize).prop_map(|(at, len)| Edit::Cut { at, len }),
        (0..200usize).prop_map(|line| Edit::DuplicateLine { line }),
        (0..SHIPPED.len(), token()).prop_map(|(at, token)| Edit::Insert { at, token }),
        (0..SHIPPED.len()).prop_map(|at| Edit::Truncate { at }),
    ]
}

fn floor_boundary(s: &str, mut at: usize) -> usize {
    at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut s = text.to_string();
    for e in edits {
        match e {
            Edit::Cut { at, len } => {
                let a = floor_boundary(&s, *at);
                let b = floor_boundary(&s, a + len);
                s.replace_range(a..b, "");
            }
            Edit::DuplicateLine { line } => {
                let lines: Vec<&str> = s.lines().collect();
                if let Some(l) = lines.get(line % lines.len().max(1)) {
                    let l = format!("{l}\n");
                    let at = floor_boundary(&s, s.find(l.trim_end()).unwrap_or(0));
                    s.insert_str(at, &l);
                }
            }
            Edit::Insert { at, token } => {
                let a = floor_boundary(&s, *at);
                s.insert_str(a, token);
            }
            Edit::Truncate { at } => {
                let a = floor_boundary(&s, *at);
                s.truncate(a);
            }
        }
    }
    s
}

/// A rules directory holding `text` as its only policy, with the shipped scripts and FX.
fn load(text: &str) -> Result<(), Vec<spendgate::policy::PolicyError>> {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["fx", "scripts"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        for f in std::fs::read_dir(Path::new("rules").join(sub)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.path().join("policy.yaml"), text).unwrap();
    spendgate::policy::load_policy_dir(dir.path()).map(|_| ())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// A mutated policy loads or is refused with located errors; it never panics.
    #[test]
    fn a_mutated_policy_loads_or_is_refused_with_a_location(edits in proptest::collection::vec(edit(), 1..6)) {
        let text = apply(SHIPPED, &edits);
        if let Err(errors) = load(&text) {
            prop_assert!(!errors.is_empty());
            for e in errors {
                prop_assert!(e.file.ends_with("policy.yaml"), "{e}");
                prop_assert!(e.line >= 1 && e.column >= 1, "unlocated: {e}");
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    /// Random bytes as a policy file: refused (or, vanishingly rarely, valid), never a panic.
    #[test]
    fn random_text_as_a_policy_never_panics(text in "\\PC{0,300}") {
        let _ = load(&text);
    }

    /// A settlement file of any shape is read or refused, never a panic.
    #[test]
    fn any_settlement_csv_is_read_or_refused(lines in proptest::collection::vec("[ -~]{0,60}", 0..20)) {
        let text = format!("authorization_id,amount,currency,settlement_date\n{}", lines.join("\n"));
        let date = chrono::NaiveDate::from_ymd_opt(2026, 6, 3).unwrap();
        let _ = spendgate::reconcile::reconcile(&[], &text, date);
        let _ = spendgate::reconcile::reconcile(&[], &lines.join("\n"), date);
    }

    /// Signature headers of any content (huge timestamps included) are refused with a
    /// 401 problem, never a panic or an overflow.
    #[test]
    fn any_signature_header_is_checked_without_panic(
        id in "[ -~]{0,80}",
        ts in prop_oneof!["[0-9]{1,25}".boxed(), "-?[0-9]{1,20}".boxed(), "[ -~]{0,30}".boxed()],
        sig in "[ -~]{0,200}",
        body in proptest::collection::vec(any::<u8>(), 0..200),
        now in any::<i64>(),
    ) {
        let v = HookVerifier::new(vec![b"secret-one".to_vec()]);
        let mut h = HeaderMap::new();
        for (name, value) in [("webhook-id", &id), ("webhook-timestamp", &ts), ("webhook-signature", &sig)] {
            if let Ok(value) = HeaderValue::from_str(value) {
                h.insert(name, value);
            }
        }
        if let Err(p) = v.verify(&h, &body, now) {
            prop_assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        }
    }
}

/// JSON-ish bodies: valid JSON of the wrong shape, JSON with hostile values, and junk.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just(serde_json::json!(null)),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "\\PC{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::json!("1e400")),
        Just(serde_json::json!("99999999999999999999.99")),
        Just(serde_json::json!("4111111111111111")),
    ];
    let field = prop_oneof![
        Just("id"),
        Just("card_id"),
        Just("cardholder_id"),
        Just("amount"),
        Just("currency"),
        Just("merchant"),
        Just("mcc"),
        Just("country"),
        Just("kind"),
        Just("kyc"),
        Just("name"),
        Just("policy"),
        Just("expiry"),
        Just("final"),
        Just("channel"),
        Just("type"),
        Just("spending_limits"),
        Just("timestamp"),
        Just("authorization_id"),
        Just("unknown"),
    ];
    prop_oneof![
        proptest::collection::btree_map(field, value, 0..8)
            .prop_map(|m| serde_json::to_vec(&m).unwrap()),
        proptest::collection::vec(any::<u8>(), 0..120),
        "\\PC{0,120}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Any body to any route through the real router: never a 5xx, and every refusal is a
    /// problem+json. (The routes read the body only after their key: the program key and
    /// the admin key are both tried.)
    #[test]
    fn any_body_to_any_route_is_answered_without_a_server_error(
        route in 0..routes().len(),
        admin in any::<bool>(),
        bytes in body(),
    ) {
        let (rt, app, key) = shared_app();
        let (status, ctype) = rt.block_on(async {
            let r = &routes()[route];
            let path = r.path.replace("{id}", "fuzz-card");
            let req = Request::builder()
                .method(r.method.to_uppercase().as_str())
                .uri(path)
                .header("content-type", "application/json")
                .header("idempotency-key", "fuzz-key")
                .header("authorization", format!("Bearer {}", if admin { ADMIN } else { key.as_str() }))
                .body(Body::from(bytes))
                .unwrap();
            let res = app.clone().oneshot(req).await.unwrap();
            let ctype = res.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_string());
            (res.status(), ctype.unwrap_or_default())
        });
        prop_assert!(!status.is_server_error(), "{status}");
        if status.is_client_error() {
            prop_assert_eq!(ctype, "application/problem+json");
        }
    }
}

const ADMIN: &str = "fuzz-admin-key-0123456789";

/// One router for all cases (building one per case would spend the run loading policies).
fn shared_app() -> &'static (tokio::runtime::Runtime, axum::Router, String) {
    static APP: std::sync::OnceLock<(tokio::runtime::Runtime, axum::Router, String)> =
        std::sync::OnceLock::new();
    APP.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (app, key) = rt.block_on(app());
        (rt, app, key)
    })
}

/// A router on a fresh store, with a program `fz` and its key.
async fn app() -> (axum::Router, String) {
    let dir = tempfile::tempdir().unwrap();
    let c = Config {
        data_dir: dir.path().join("data"),
        rules_dir: "rules".into(),
        admin_key: Some(ADMIN.into()),
        ..Config::default()
    };
    let state = build_state(c).unwrap();
    // The store lives as long as the engine; the directory outlives the case.
    std::mem::forget(dir);
    let app = spendgate::http::app(state.clone());
    let req = |method: &str, path: &str, key: &str, body: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let r = app
        .clone()
        .oneshot(req(
            "POST",
            "/v1/programs",
            ADMIN,
            r#"{"id":"fz","policy":"consumer-prepaid-africa","currency":"NGN"}"#,
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .clone()
        .oneshot(req("POST", "/v1/programs/fz/api_keys", ADMIN, ""))
        .await
        .unwrap();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    (app, v["api_key"].as_str().unwrap().to_string())
}
