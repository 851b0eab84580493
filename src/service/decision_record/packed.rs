//! The effects of a decision, packed for storage: window starts as offsets from the
//! decision time, the common amount once, keys as fixed 8 bytes, and what the request
//! already says (location, country, merchant) left out.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::CodecError;
use crate::decision::{Authorization, Effects, VelocityEffect};
use crate::domain::{Country, Counts, LatLon, VelocityScope};
use crate::velocity::{key_hash, Activity};

/// A decimal with its scale ("0.30" stays "0.30").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct PackedDecimal {
    mantissa: i128,
    scale: u32,
}

impl PackedDecimal {
    fn of(d: Decimal) -> PackedDecimal {
        PackedDecimal {
            mantissa: d.mantissa(),
            scale: d.scale(),
        }
    }

    fn unpack(self) -> Result<Decimal, CodecError> {
        Decimal::try_from_i128_with_scale(self.mantissa, self.scale)
            .map_err(|_| CodecError::Amount(format!("{}e-{}", self.mantissa, self.scale)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct PackedEffects {
    /// The amount most windows and the activity log record (the transaction in the
    /// policy currency).
    amount: PackedDecimal,
    velocity: Vec<PackedVelocity>,
    location: Option<PackedLocation>,
    activity: Option<PackedActivity>,
}

const SCOPE_BITS: u8 = 0b11;
const DECLINED: u8 = 1 << 2;
const SHARED_AMOUNT: u8 = 1 << 3;
const ZERO_AMOUNT: u8 = 1 << 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PackedVelocity {
    /// Scope (two bits), declined, and whether the amount is the shared one, zero, or
    /// `own`.
    flags: u8,
    key: [u8; 8],
    /// `at_ms − start_ms`, wrapping (a window without a start begins at `i64::MIN`).
    back_ms: i64,
    own: Option<PackedDecimal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PackedLocation {
    /// None: the merchant's location in the request.
    point: Option<(f64, f64)>,
    /// `at_ms − location_at_ms`.
    back_ms: i64,
}

/// Each field None when it is what the request and the shared amount say (always, as
/// `decide` builds it; kept explicit so a record never depends on that staying true).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PackedActivity {
    amount: Option<PackedDecimal>,
    country: Option<Country>,
    merchant: Option<[u8; 8]>,
}

pub(super) fn merchant_key(txn: &Authorization) -> u64 {
    key_hash(&[txn.merchant.id.as_bytes()])
}

fn scope_bits(s: VelocityScope) -> u8 {
    match s {
        VelocityScope::Card => 0,
        VelocityScope::Cardholder => 1,
        VelocityScope::Program => 2,
        VelocityScope::CardMerchant => 3,
    }
}

fn scope_of(bits: u8) -> VelocityScope {
    match bits & SCOPE_BITS {
        0 => VelocityScope::Card,
        1 => VelocityScope::Cardholder,
        2 => VelocityScope::Program,
        _ => VelocityScope::CardMerchant,
    }
}

impl PackedEffects {
    pub(super) fn of(e: &Effects, txn: &Authorization) -> PackedEffects {
        let shared = e
            .activity
            .as_ref()
            .map(|a| a.amount)
            .or_else(|| e.velocity.iter().map(|v| v.amount).find(|a| !a.is_zero()))
            .unwrap_or_default();
        let velocity = e
            .velocity
            .iter()
            .map(|v| {
                let mut flags = scope_bits(v.scope);
                if v.counts == Counts::Declined {
                    flags |= DECLINED;
                }
                // Bit-identical (scale included), so the window's sums print the same.
                let same = |a: Decimal, b: Decimal| a == b && a.scale() == b.scale();
                let own = if same(v.amount, shared) {
                    flags |= SHARED_AMOUNT;
                    None
                } else if same(v.amount, Decimal::ZERO) {
                    flags |= ZERO_AMOUNT;
                    None
                } else {
                    Some(PackedDecimal::of(v.amount))
                };
                PackedVelocity {
                    flags,
                    key: v.key.to_le_bytes(),
                    back_ms: e.at_ms.wrapping_sub(v.start_ms),
                    own,
                }
            })
            .collect();
        PackedEffects {
            amount: PackedDecimal::of(shared),
            velocity,
            location: e.location.map(|l| PackedLocation {
                point: (txn.merchant.location != Some(l)).then_some((l.lat, l.lon)),
                back_ms: e.at_ms.wrapping_sub(e.location_at_ms),
            }),
            activity: e.activity.as_ref().map(|a| PackedActivity {
                amount: (a.amount != shared || a.amount.scale() != shared.scale())
                    .then(|| PackedDecimal::of(a.amount)),
                country: (a.country != txn.merchant.country).then_some(a.country),
                merchant: (a.merchant != merchant_key(txn)).then(|| a.merchant.to_le_bytes()),
            }),
        }
    }

    pub(super) fn unpack(self, at_ms: i64, txn: &Authorization) -> Result<Effects, CodecError> {
        let auth_key = key_hash(&[txn.id.as_bytes()]);
        let shared = self.amount.unpack()?;
        let velocity = self
            .velocity
            .into_iter()
            .map(|v| {
                let amount = match v.own {
                    Some(own) => own.unpack()?,
                    None if v.flags & SHARED_AMOUNT != 0 => shared,
                    None if v.flags & ZERO_AMOUNT != 0 => Decimal::ZERO,
                    None => return Err(CodecError::Syntax("velocity entry without amount".into())),
                };
                Ok(VelocityEffect {
                    scope: scope_of(v.flags),
                    key: u64::from_le_bytes(v.key),
                    start_ms: at_ms.wrapping_sub(v.back_ms),
                    amount,
                    counts: if v.flags & DECLINED != 0 {
                        Counts::Declined
                    } else {
                        Counts::Approved
                    },
                })
            })
            .collect::<Result<_, CodecError>>()?;
        let activity = match self.activity {
            Some(a) => Some(Activity {
                at_ms,
                amount: match a.amount {
                    Some(own) => own.unpack()?,
                    None => shared,
                },
                approved: false,
                country: a.country.unwrap_or(txn.merchant.country),
                merchant: a
                    .merchant
                    .map_or_else(|| merchant_key(txn), u64::from_le_bytes),
            }),
            None => None,
        };
        Ok(Effects {
            velocity,
            auth_key,
            at_ms,
            location: match &self.location {
                Some(PackedLocation {
                    point: Some((lat, lon)),
                    ..
                }) => Some(LatLon {
                    lat: *lat,
                    lon: *lon,
                }),
                Some(PackedLocation { point: None, .. }) => {
                    Some(txn.merchant.location.ok_or_else(|| {
                        CodecError::Syntax("location without a merchant location".into())
                    })?)
                }
                None => None,
            },
            location_at_ms: self
                .location
                .as_ref()
                .map_or(at_ms, |l| at_ms.wrapping_sub(l.back_ms)),
            activity,
        })
    }
}
