//! What a processor adapter adds to a decision: the processor's authentication (HMAC or
//! Basic), its body translated into our authorization, our decision's answer turned into
//! its format and serialized. Issue 12's target: ≤ 20 µs per call. The baseline in the
//! same run is what our own hook does instead: parsing `/v1/authorizations`' JSON body.
//! Run: `cargo bench --bench processors` (`-- --test` runs each once).

use criterion::{criterion_group, criterion_main, Criterion};
use spendgate::decision::Authorization;
use spendgate::processors::auth::{
    adyen_signature, basic, standard_webhooks_sign, stripe_signature, BasicAuthInput,
};
use spendgate::processors::{decision_outcome, Credentials, HookConfig, Processor};

const NOW_S: i64 = 1_700_000_000;

/// An approval as `POST /v1/authorizations` answers it.
const DECISION: &str = r#"{"authorization_id":"a1","card_id":"card_0123456789abcdef01234567","approved":true,"response_code":"00","reason":"approved","rule":null,"amount_approved":"27.00","currency":"EUR","fx_rate":null,"available_after":"3.00","flags":[],"score":0,"policy_version":"0123456789ab","trace":[],"latency_us":4}"#;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/fixtures/processors/{name}")).expect("fixture")
}

fn case(p: Processor) -> (HookConfig, axum::http::HeaderMap, Vec<u8>) {
    let mut h = axum::http::HeaderMap::new();
    let password = "Bench-Passw0rd!-0123456789";
    let hex_key = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";
    let basic_auth = || {
        vec![BasicAuthInput {
            username: "bench".into(),
            password: password.into(),
        }]
    };
    match p {
        Processor::Lithic => {
            let body = fixture("lithic_asa.json");
            let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
            let key = spendgate::processors::auth::parse_whsec(secret).unwrap();
            h.insert("webhook-id", "msg_1".parse().unwrap());
            h.insert("webhook-timestamp", NOW_S.to_string().parse().unwrap());
            h.insert(
                "webhook-signature",
                standard_webhooks_sign(&key, "msg_1", NOW_S, &body)
                    .parse()
                    .unwrap(),
            );
            let c = Credentials {
                secrets: vec![secret.into()],
                ..Default::default()
            };
            (HookConfig::new(p, c).unwrap(), h, body)
        }
        Processor::Stripe => {
            let body = fixture("stripe_authorization_request.json");
            let secret = "whsec_test_secret_0123456789abcdef";
            h.insert(
                "stripe-signature",
                stripe_signature(secret, NOW_S, &body).parse().unwrap(),
            );
            let c = Credentials {
                secrets: vec![secret.into()],
                ..Default::default()
            };
            (HookConfig::new(p, c).unwrap(), h, body)
        }
        Processor::Marqeta => {
            let body = fixture("marqeta_jit_authorization.json");
            h.insert("authorization", basic("bench", password).parse().unwrap());
            let c = Credentials {
                basic_auth: basic_auth(),
                ..Default::default()
            };
            (HookConfig::new(p, c).unwrap(), h, body)
        }
        Processor::Adyen => {
            let body = fixture("adyen_relayed.json");
            h.insert("authorization", basic("bench", password).parse().unwrap());
            h.insert(
                "hmacsignature",
                adyen_signature(hex_key, &body).parse().unwrap(),
            );
            let c = Credentials {
                basic_auth: basic_auth(),
                hmac_keys: vec![hex_key.into()],
                ..Default::default()
            };
            (HookConfig::new(p, c).unwrap(), h, body)
        }
    }
}

fn adapters(c: &mut Criterion) {
    let own = serde_json::json!({"id": "a1", "card_id": "card_0123456789abcdef01234567", "amount": "27.00",
        "currency": "EUR", "merchant": {"id": "000123450000123", "name": "Tea Shop NLD", "mcc": "5813", "country": "NL"},
        "channel": "contactless", "type": "purchase"})
    .to_string();
    c.bench_function("own_hook_parse (baseline)", |b| {
        b.iter(|| serde_json::from_str::<Authorization>(std::hint::black_box(&own)).unwrap())
    });
    for p in Processor::ALL {
        let (cfg, headers, body) = case(p);
        c.bench_function(&format!("adapter/{}", p.as_str()), |b| {
            b.iter(|| {
                cfg.verify(&headers, &body, NOW_S).unwrap();
                let parsed = p.parse_message(std::hint::black_box(&body)).unwrap();
                let outcome = decision_outcome(DECISION).unwrap();
                p.answer(&parsed, &outcome).body.to_string()
            })
        });
    }
}

criterion_group!(benches, adapters);
criterion_main!(benches);
