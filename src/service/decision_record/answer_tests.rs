use proptest::prelude::*;

use super::*;

/// Answer records as the previous release wrote them (format 1), from a load run's store:
/// an approval, and a decline by `no_gambling` whose trace also shows `card_testing`.
const V1_APPROVAL: &str = "010102303008617070726F76656400063435302E3030034E474E0001093939393535302E303000000C6336643931626365656465350009";
const V1_DECLINE: &str = "01000235370B6E6F5F67616D626C696E67010B6E6F5F67616D626C696E6704302E3030034E474E00010A313030303030302E303000000C633664393162636565646535020B6E6F5F67616D626C696E670A6465636C696E65203537276D617463686564206D636320696E205B373830302C20373830312C20373830322C20373939355D0C636172645F74657374696E670A6465636C696E652035394B38206465636C696E6573203E3D203520696E2031682028636172642073636F7065293B2066726565732031206465636C696E6520617420323032362D31322D30365432323A34373A34355A1A";

fn bytes(hex: &str) -> Vec<u8> {
    super::super::from_hex(hex)
}

fn line(rule: &str, outcome: &str, detail: &str) -> TraceLine {
    TraceLine {
        rule: rule.into(),
        outcome: outcome.into(),
        detail: detail.into(),
    }
}

fn response(a: Answer) -> AuthorizationResponse {
    a.into_response("auth_1", "card_1")
}

fn json(r: &AuthorizationResponse) -> String {
    serde_json::to_string(r).unwrap()
}

#[test]
fn answers_written_in_format_1_still_read_as_they_were_sent() {
    let a = decode(&bytes(V1_APPROVAL)).unwrap();
    assert!(a.approved);
    assert_eq!(
        (
            a.response_code.as_str(),
            a.reason.as_str(),
            a.rule.as_deref()
        ),
        ("00", "approved", None)
    );
    assert_eq!(a.amount_approved, "450.00");
    assert_eq!(a.available_after.as_deref(), Some("999550.00"));
    assert_eq!(a.policy_version, "c6d91bceede5");
    assert!(a.trace.is_empty());

    let d = decode(&bytes(V1_DECLINE)).unwrap();
    assert!(!d.approved);
    assert_eq!(
        (
            d.response_code.as_str(),
            d.reason.as_str(),
            d.rule.as_deref()
        ),
        ("57", "no_gambling", Some("no_gambling"))
    );
    assert_eq!(
        d.trace,
        vec![
            line(
                "no_gambling",
                "decline 57",
                "matched mcc in [7800, 7801, 7802, 7995]"
            ),
            line(
                "card_testing",
                "decline 59",
                "8 declines >= 5 in 1h (card scope); frees 1 decline at 2026-12-06T22:47:45Z"
            ),
        ]
    );
    assert_eq!(d.latency_us, 26);
}

#[test]
fn a_decline_leaves_out_what_the_answer_repeats_and_reads_back_the_same() {
    let sent = response(decode(&bytes(V1_DECLINE)).unwrap());
    let v2 = encode(&sent);
    assert_eq!(v2[0], FORMAT);
    // The reason, the decisive line's rule and its outcome: `no_gambling` twice and
    // `decline 57`, each with its length byte; each line's variant takes a byte, and
    // `card_testing`'s line declined with another code, so it keeps its outcome.
    assert_eq!(bytes(V1_DECLINE).len() - v2.len(), 12 + 12 + 11 - 2 - 1);
    assert_eq!(json(&response(decode(&v2).unwrap())), json(&sent));

    let approval = response(decode(&bytes(V1_APPROVAL)).unwrap());
    let v2 = encode(&approval);
    assert_eq!(v2.len(), bytes(V1_APPROVAL).len());
    assert_eq!(json(&response(decode(&v2).unwrap())), json(&approval));
}

#[test]
fn a_record_that_leaves_out_a_rule_it_does_not_name_is_an_error() {
    let v2 = |state: u8, lines: &[TraceLine]| {
        let record = AnswerRef {
            state,
            response_code: "57",
            reason: "",
            rule: &None,
            amount_approved: "0.00",
            currency: Currency::USD,
            fx_rate: &None,
            available_after: &None,
            flags: &[],
            score: 0,
            policy_version: "v",
            trace: Lines {
                lines,
                rule: Some("no_gambling"),
                code: "57",
            },
            latency_us: 1,
        };
        let mut out = vec![FORMAT];
        postcard::to_io(&record, &mut out).unwrap();
        out
    };
    assert!(decode(&v2(0, &[])).is_ok());
    assert!(matches!(
        decode(&v2(REASON_IS_RULE, &[])),
        Err(CodecError::Syntax(_))
    ));
    for l in [
        line("no_gambling", "flag", ""),
        line("no_gambling", "decline 57", ""),
    ] {
        assert!(matches!(decode(&v2(0, &[l])), Err(CodecError::Syntax(_))));
    }
    assert!(decode(&v2(0, &[line("other", "decline 57", "")])).is_ok());
    assert!(decode(&[]).is_err());
    assert!(decode(&[9, 0]).is_err());
    assert!(decode(&v2(0, &[])[..5]).is_err());
}

fn text() -> impl Strategy<Value = String> {
    // A few values, so equal fields (what format 2 leaves out) come up often.
    prop::sample::select(vec![
        "",
        "r",
        "velocity",
        "decline 05",
        "decline ",
        "05",
        "59",
    ])
    .prop_map(str::to_string)
}

proptest! {
    #[test]
    fn any_answer_reads_back_exactly(
        approved in any::<bool>(),
        code in text(),
        reason in text(),
        rule in prop::option::of(text()),
        trace in prop::collection::vec((text(), text(), text()), 0..4),
        score in any::<i64>(),
        latency_us in any::<u64>(),
    ) {
        let r = AuthorizationResponse {
            authorization_id: "auth_1".into(),
            card_id: "card_1".into(),
            approved,
            response_code: code,
            reason,
            rule,
            amount_approved: "1.00".into(),
            currency: Currency::USD,
            fx_rate: None,
            available_after: Some("2.00".into()),
            flags: vec!["f".into()],
            score,
            policy_version: "v".into(),
            trace: trace.into_iter().map(|(r, o, d)| line(&r, &o, &d)).collect(),
            latency_us,
        };
        prop_assert_eq!(json(&response(decode(&encode(&r)).unwrap())), json(&r));
    }
}
