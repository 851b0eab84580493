//! Unit tests of the card account (holds, captures, reversals, refunds, expiry).

use super::*;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}
fn funded(amount: &str) -> CardAccount {
    let mut c = CardAccount::new("c1", Currency::USD);
    c.transfer_with_funding(
        "f1",
        TransferKind::TopUp,
        AccountId::funding("p", Currency::USD),
        d(amount),
        0,
    )
    .unwrap();
    c
}

#[test]
fn hold_capture_partial_then_final() {
    let mut c = funded("100.00");
    c.place_hold(
        "a1",
        d("40.00"),
        d("40.00"),
        Currency::USD,
        Decimal::ONE,
        0,
        7,
    );
    assert_eq!(c.available(), d("60.00"));
    let r = c.capture("k1", "a1", d("15.00"), false, 1000, 1).unwrap();
    assert_eq!(
        (r.hold.status, r.hold.pending),
        (HoldStatus::Pending, d("25.00"))
    );
    assert_eq!((c.posted, c.pending), (d("85.00"), d("25.00")));
    let r = c.capture("k2", "a1", d("20.00"), true, 1000, 2).unwrap();
    assert_eq!(
        (r.hold.status, r.hold.captured),
        (HoldStatus::Posted, d("35.00"))
    );
    assert_eq!(r.released_ratio, d("0.125")); // 5.00 of 40.00 never spent
    assert_eq!(
        (c.posted, c.pending, c.available()),
        (d("65.00"), d("0"), d("65.00"))
    );
    // A second final capture is refused and changes nothing.
    let e = c.capture("k3", "a1", d("1.00"), true, 1000, 3).unwrap_err();
    assert!(matches!(
        e,
        LedgerError::HoldNotPending {
            status: HoldStatus::Posted,
            ..
        }
    ));
    assert_eq!(c.posted, d("65.00"));
}

#[test]
fn over_capture_is_bounded() {
    let mut c = funded("100.00");
    c.place_hold(
        "a1",
        d("50.00"),
        d("50.00"),
        Currency::USD,
        Decimal::ONE,
        0,
        7,
    );
    let e = c
        .capture("k1", "a1", d("55.01"), true, 1000, 1)
        .unwrap_err();
    assert_eq!(
        e,
        LedgerError::CaptureExceedsHold {
            requested: d("55.01"),
            allowed: d("55.00")
        }
    );
    assert_eq!((c.posted, c.pending), (d("100.00"), d("50.00")));
    c.capture("k1", "a1", d("55.00"), true, 1000, 1).unwrap();
    assert_eq!((c.posted, c.pending), (d("45.00"), d("0")));
}

#[test]
fn cross_currency_capture_balances_per_currency() {
    let mut c = CardAccount::new("c1", Currency::NGN);
    c.transfer_with_funding(
        "f",
        TransferKind::TopUp,
        AccountId::funding("p", Currency::NGN),
        d("100000.00"),
        0,
    )
    .unwrap();
    c.place_hold(
        "a1",
        d("15735.00"),
        d("10.00"),
        Currency::USD,
        d("1573.50"),
        0,
        7,
    );
    let r = c.capture("k", "a1", d("10.00"), true, 0, 1).unwrap();
    assert!(r.transfer.imbalance().is_empty());
    assert_eq!(r.transfer.postings.len(), 4);
    assert_eq!(c.posted, d("84265.00"));
}

#[test]
fn reversal_partial_full_and_too_large() {
    let mut c = funded("100.00");
    c.place_hold(
        "a1",
        d("30.00"),
        d("30.00"),
        Currency::USD,
        Decimal::ONE,
        0,
        7,
    );
    let e = c.reverse("a1", Some(d("30.01")), 1).unwrap_err();
    assert!(matches!(e, LedgerError::ReversalExceedsHold { .. }));
    let r = c.reverse("a1", Some(d("10.00")), 1).unwrap();
    assert_eq!(
        (r.hold.status, c.pending),
        (HoldStatus::Pending, d("20.00"))
    );
    let r = c.reverse("a1", None, 2).unwrap();
    assert_eq!(
        (r.hold.status, r.released),
        (HoldStatus::Voided, d("20.00"))
    );
    assert_eq!(c.available(), d("100.00"));
    assert!(matches!(
        c.reverse("a1", None, 3),
        Err(LedgerError::HoldNotPending { .. })
    ));
    assert!(matches!(
        c.reverse("zz", None, 3),
        Err(LedgerError::UnknownAuthorization(_))
    ));
}

#[test]
fn holds_expire_exactly_once() {
    let mut c = funded("100.00");
    c.place_hold(
        "a1",
        d("30.00"),
        d("30.00"),
        Currency::USD,
        Decimal::ONE,
        0,
        7,
    );
    assert!(c.expire(7 * 86_400_000 - 1).is_empty());
    let e = c.expire(7 * 86_400_000);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].released_ratio, Decimal::ONE);
    assert!(c.expire(8 * 86_400_000).is_empty());
    assert_eq!(c.available(), d("100.00"));
}

#[test]
fn refunds_linked_and_unlinked() {
    let mut c = funded("100.00");
    c.place_hold(
        "a1",
        d("30.00"),
        d("30.00"),
        Currency::USD,
        Decimal::ONE,
        0,
        7,
    );
    c.capture("k", "a1", d("30.00"), true, 0, 1).unwrap();
    assert!(matches!(
        c.refund("r1", Some("a1"), d("30.01"), Currency::USD, 2),
        Err(LedgerError::RefundExceedsCaptured { .. })
    ));
    c.refund("r1", Some("a1"), d("20.00"), Currency::USD, 2)
        .unwrap();
    assert!(c
        .refund("r2", Some("a1"), d("10.01"), Currency::USD, 2)
        .is_err());
    c.refund("r3", None, d("5.00"), Currency::USD, 3).unwrap();
    assert_eq!(c.posted, d("95.00"));
    assert!(matches!(
        c.refund("r4", None, d("0"), Currency::USD, 3),
        Err(LedgerError::NonPositiveAmount)
    ));
    assert!(matches!(
        c.refund("r4", None, d("1.001"), Currency::USD, 3),
        Err(LedgerError::Money(_))
    ));
}

#[test]
fn forced_post_may_go_negative() {
    let mut c = funded("10.00");
    c.forced_post(
        "adv1",
        d("25.00"),
        d("25.00"),
        Currency::USD,
        Decimal::ONE,
        1,
    )
    .unwrap();
    assert_eq!(c.available(), d("-15.00"));
    assert!(c.forced);
}

#[test]
fn capture_after_partial_reversal_is_bounded_by_what_is_still_authorized() {
    let mut c = funded("5000");
    c.place_hold(
        "a1",
        Decimal::new(1000, 0),
        Decimal::new(1000, 0),
        Currency::USD,
        Decimal::ONE,
        0,
        7,
    );
    c.reverse("a1", Some(Decimal::new(900, 0)), 1).unwrap();
    // 100 still authorized, 10 % tolerance: 110 at most.
    let err = c
        .capture("k1", "a1", Decimal::new(1100, 0), true, 1_000, 2)
        .unwrap_err();
    assert_eq!(
        err,
        LedgerError::CaptureExceedsHold {
            requested: Decimal::new(1100, 0),
            allowed: Decimal::new(110, 0)
        }
    );
    assert_eq!(c.posted, Decimal::new(5000, 0), "nothing moved");
    let r = c
        .capture("k2", "a1", Decimal::new(110, 0), true, 1_000, 3)
        .unwrap();
    assert_eq!(r.hold.captured, Decimal::new(110, 0));
}

/// Issue #8.13: a busy card's memory does not grow with voided holds: they leave the map
/// as soon as it is pruned, pending and captured ones stay.
#[test]
fn voided_holds_leave_memory_pending_and_captured_ones_stay() {
    let mut c = funded("100000");
    for i in 0..300 {
        let id = format!("a{i}");
        c.place_hold(&id, d("1"), d("1"), Currency::USD, Decimal::ONE, i, 7);
        if i % 3 == 0 {
            c.reverse(&id, None, i).unwrap();
        }
    }
    c.capture("k", "a1", d("1"), true, 0, 400).unwrap();
    c.place_hold("last", d("1"), d("1"), Currency::USD, Decimal::ONE, 500, 7);
    let voided = c
        .holds
        .values()
        .filter(|h| h.status == HoldStatus::Voided)
        .count();
    let live = c.holds.len() - voided;
    // Pruning is amortized (the map may double before the next one): never more voided
    // holds in memory than live ones plus the minimum, instead of all 100.
    assert!(voided <= live.max(64), "{voided} voided, {live} live");
    assert!(voided < 100, "{voided} voided kept");
    assert_eq!(c.pending_holds(), 200, "every pending hold is kept");
    assert!(
        c.holds.contains_key("a1"),
        "a captured hold stays for refunds"
    );
}
