use proptest::prelude::*;

use super::super::{decode, encode, from_hex as bytes, BODY_FORMAT};
use super::*;
use crate::store::StoredDecision;

/// A decision as the previous release stored it (answer format 1, body format 1), from a
/// load run's store: an approval updating nine windows, five of them starting where the
/// one before does.
const V1_ANSWER: &str = "010102303008617070726F76656400063435302E3030034E474E0001093939393535302E303000000C633664393162636565646535000A";
const V1_BODY: &str = "0180E5F3D5C9681072302D61313334343966322D313132371D636172645F666336356333623933666362343065303832313034613065063435302E3030034E474E066D2D313132370453686F700435343131024E470001000000001A00A391774D4E4E9E3502458117E5473C02090895FCD25E275D8365FEEFB25200096827C2AEDC0F571E80CFA8BD04000B0573785B55B47659FEB9B70300147A648FC11D94E752FEB9B703000A9CED1192389CC3E2FEB9B70300086517A8427073025EFEB9B703000C12863DE298905646FEB9B70300081C4CC6F46E745CE0FEEFB252000C3B20275D39E12527FEEFB252000001000000";

fn v1() -> StoredDecision {
    StoredDecision::Record {
        answer: bytes(V1_ANSWER),
        body: bytes(V1_BODY),
    }
}

#[test]
fn bodies_written_in_format_1_still_decode_to_their_effects() {
    let d = decode(&v1()).unwrap();
    assert_eq!(d.auth_id, "r0-a13449f2-1127");
    assert_eq!(d.card_id, "card_fc65c3b93fcb40e082104a0e");
    let v = &d.effects.velocity;
    assert_eq!(v.len(), 9);
    let starts: Vec<i64> = v.iter().map(|e| d.at_ms - e.start_ms).collect();
    let day = 86_400_000 - 1;
    let hour = 3_600_000 - 1;
    // A calendar window (since midnight), then rolling ones.
    let today = 601_166_784;
    assert_eq!(starts, [day, today, hour, hour, hour, hour, hour, day, day]);
    // 450.00 NGN in the policy's currency, and a window of declines counting nothing.
    let amounts: Vec<String> = v.iter().map(|e| e.amount.to_string()).collect();
    let mut expected = vec!["0.30"; 9];
    expected[3] = "0";
    assert_eq!(amounts, expected);
    assert_eq!(v[3].counts, Counts::Declined);
    assert_eq!(d.history().amount, "450.00");
    assert_eq!(super::super::at_ms(&v1()).unwrap(), d.at_ms);
    assert!(super::super::response_of_answer("x", "y", &bytes(V1_ANSWER)).is_ok());
}

#[test]
fn windows_starting_together_store_their_start_once_and_read_back_the_same() {
    let old = decode(&v1()).unwrap();
    let request = old.request().unwrap().clone();
    let response: crate::service::responses::AuthorizationResponse =
        serde_json::from_str(&old.response()).unwrap();
    let w = encode(&request, &old.request_id, &old.effects, &response);
    assert_eq!(w.body[0], BODY_FORMAT);
    // Per entry the `Option` tag of format 1; per repeated start its 4-byte `back_ms`.
    assert_eq!(bytes(V1_BODY).len() - w.body.len(), 9 + 5 * 4);
    let new = decode(&StoredDecision::Record {
        answer: w.answer,
        body: w.body,
    })
    .unwrap();
    let (a, b) = (&new.effects, &old.effects);
    assert_eq!(a.velocity.as_slice(), b.velocity.as_slice());
    assert_eq!(
        (a.at_ms, a.auth_key, a.location_at_ms),
        (b.at_ms, b.auth_key, b.location_at_ms)
    );
    assert_eq!((&a.activity, a.location), (&b.activity, b.location));
    assert_eq!(new.at_ms, old.at_ms);
    assert_eq!(new.response(), old.response());
    assert_eq!(new.request_hash(), old.request_hash());
}

#[test]
fn velocity_entries_that_end_early_or_start_nowhere_are_errors() {
    let entry = |flags: u8| {
        let mut v = vec![flags];
        v.extend_from_slice(&7u64.to_le_bytes());
        v
    };
    let shared = Decimal::ONE;
    // An entry after the first may reuse the start; the first cannot.
    let mut ok = entry(SHARED_AMOUNT);
    postcard::to_io(&5i64, &mut ok).unwrap();
    ok.extend(entry(SHARED_AMOUNT | SAME_START));
    let e = Velocities(ok.clone()).unpack(100, shared).unwrap();
    assert_eq!((e[0].start_ms, e[1].start_ms), (95, 95));
    assert!(Velocities(entry(SHARED_AMOUNT | SAME_START))
        .unpack(100, shared)
        .is_err());
    for cut in 1..ok.len() {
        if cut == 10 {
            continue; // the first entry whole: a valid list of one
        }
        assert!(
            Velocities(ok[..cut].to_vec()).unpack(100, shared).is_err(),
            "cut at {cut}"
        );
    }
    // Neither shared nor zero: an own amount must follow.
    let mut own = entry(0);
    postcard::to_io(&5i64, &mut own).unwrap();
    assert!(Velocities(own).unpack(100, shared).is_err());
}

fn effect() -> impl Strategy<Value = (u8, u64, i64, Option<(i64, u32)>, bool)> {
    (
        0u8..4,
        any::<u64>(),
        prop::sample::select(vec![0i64, 1, 3_599_999, 86_399_999, i64::MIN, i64::MAX]),
        prop::option::of((-1_000_000i64..1_000_000, 0u32..4)),
        any::<bool>(),
    )
}

proptest! {
    #[test]
    fn any_effects_read_back_exactly(
        entries in prop::collection::vec(effect(), 0..12),
        at_ms in 0i64..4_000_000_000_000,
    ) {
        let old = decode(&v1()).unwrap();
        let mut e = old.effects.clone();
        e.at_ms = at_ms;
        let shared = e.activity.as_ref().map(|a| a.amount).unwrap();
        e.velocity = entries
            .into_iter()
            .map(|(scope, key, back, amount, declined)| VelocityEffect {
                scope: scope_of(scope),
                key,
                start_ms: at_ms.wrapping_sub(back),
                // None: the shared amount; scales other than the shared one's stay.
                amount: amount.map_or(shared, |(m, s)| Decimal::new(m, s)),
                counts: if declined { Counts::Declined } else { Counts::Approved },
            })
            .collect();
        let request = old.request().unwrap();
        let p = PackedEffects::of(&e, request);
        let mut body = vec![];
        postcard::to_io(&p, &mut body).unwrap();
        let back: PackedEffects = postcard::from_bytes(&body).unwrap();
        let e2 = back.unpack(at_ms, request).unwrap();
        prop_assert_eq!(e2.velocity.len(), e.velocity.len());
        for (a, b) in e2.velocity.iter().zip(&e.velocity) {
            prop_assert_eq!(a, b);
            prop_assert_eq!(a.amount.scale(), b.amount.scale());
        }
    }
}
