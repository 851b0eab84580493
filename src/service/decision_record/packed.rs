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

/// `V`: the velocity entries, as [`Velocities`] (body format 2) or, in records of body
/// format 1, [`PackedVelocity`] each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct PackedEffects<V = Velocities> {
    /// The amount most windows and the activity log record (the transaction in the
    /// policy currency).
    amount: PackedDecimal,
    velocity: V,
    location: Option<PackedLocation>,
    activity: Option<PackedActivity>,
}

/// [`PackedEffects`] as body format 1 wrote them.
pub(super) type PackedEffectsV1 = PackedEffects<Vec<PackedVelocity>>;

const SCOPE_BITS: u8 = 0b11;
const DECLINED: u8 = 1 << 2;
const SHARED_AMOUNT: u8 = 1 << 3;
const ZERO_AMOUNT: u8 = 1 << 4;
/// Format 2: the window starts where the entry before it does (no `back_ms` follows).
const SAME_START: u8 = 1 << 5;

/// The velocity entries of body format 2, as bytes: per entry a head byte (scope,
/// declined, which amount, same start as the entry before), the key (8 bytes), then
/// `back_ms` unless the start is the same, then the amount when it is its own. Against
/// format 1 that leaves out `Option`'s tag per entry and most starts: a decision updates
/// ≈ 9 windows, 5 of them starting where the one before does (29 of ≈ 140 bytes).
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Velocities(Vec<u8>);

impl Serialize for Velocities {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Velocities {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Velocities;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("velocity entries as bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Velocities, E> {
                Ok(Velocities(v.to_vec()))
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct PackedVelocity {
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

/// Velocity entries as stored, back to effects.
pub(super) trait Entries {
    fn unpack(self, at_ms: i64, shared: Decimal) -> Result<Vec<VelocityEffect>, CodecError>;
}

fn effect(
    flags: u8,
    key: u64,
    start_ms: i64,
    own: Option<PackedDecimal>,
    shared: Decimal,
) -> Result<VelocityEffect, CodecError> {
    let amount = match own {
        Some(own) => own.unpack()?,
        None if flags & SHARED_AMOUNT != 0 => shared,
        None if flags & ZERO_AMOUNT != 0 => Decimal::ZERO,
        None => return Err(CodecError::Syntax("velocity entry without amount".into())),
    };
    Ok(VelocityEffect {
        scope: scope_of(flags),
        key,
        start_ms,
        amount,
        counts: if flags & DECLINED != 0 {
            Counts::Declined
        } else {
            Counts::Approved
        },
    })
}

impl Entries for Vec<PackedVelocity> {
    fn unpack(self, at_ms: i64, shared: Decimal) -> Result<Vec<VelocityEffect>, CodecError> {
        self.into_iter()
            .map(|v| {
                let start_ms = at_ms.wrapping_sub(v.back_ms);
                effect(v.flags, u64::from_le_bytes(v.key), start_ms, v.own, shared)
            })
            .collect()
    }
}

impl Entries for Velocities {
    fn unpack(self, at_ms: i64, shared: Decimal) -> Result<Vec<VelocityEffect>, CodecError> {
        let short = || CodecError::Syntax("velocity entries end early".into());
        let mut rest = self.0.as_slice();
        let mut out = Vec::with_capacity(rest.len() / 10);
        let mut back_ms = None;
        while let Some((&flags, after)) = rest.split_first() {
            let (key, after) = after.split_first_chunk::<8>().ok_or_else(short)?;
            rest = after;
            if flags & SAME_START == 0 {
                let (b, after) = postcard::take_from_bytes::<i64>(rest).map_err(|_| short())?;
                (back_ms, rest) = (Some(b), after);
            }
            let own = if flags & (SHARED_AMOUNT | ZERO_AMOUNT) == 0 {
                let (own, after) = postcard::take_from_bytes(rest).map_err(|_| short())?;
                rest = after;
                Some(own)
            } else {
                None
            };
            let back_ms = back_ms
                .ok_or_else(|| CodecError::Syntax("a first velocity entry without start".into()))?;
            out.push(effect(
                flags,
                u64::from_le_bytes(*key),
                at_ms.wrapping_sub(back_ms),
                own,
                shared,
            )?);
        }
        Ok(out)
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
        let mut velocity = Vec::with_capacity(e.velocity.len() * 14);
        let mut back_before = None;
        for v in &e.velocity {
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
            let back_ms = e.at_ms.wrapping_sub(v.start_ms);
            let same_start = back_before == Some(back_ms);
            if same_start {
                flags |= SAME_START;
            }
            velocity.push(flags);
            velocity.extend_from_slice(&v.key.to_le_bytes());
            // Plain values always serialize.
            if !same_start {
                postcard::to_io(&back_ms, &mut velocity).expect("postcard writes to a Vec");
            }
            if let Some(own) = own {
                postcard::to_io(&own, &mut velocity).expect("postcard writes to a Vec");
            }
            back_before = Some(back_ms);
        }
        PackedEffects {
            amount: PackedDecimal::of(shared),
            velocity: Velocities(velocity),
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
}

impl<V: Entries> PackedEffects<V> {
    pub(super) fn unpack(self, at_ms: i64, txn: &Authorization) -> Result<Effects, CodecError> {
        let auth_key = key_hash(&[txn.id.as_bytes()]);
        let shared = self.amount.unpack()?;
        let velocity = self.velocity.unpack(at_ms, shared)?.into();
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

#[cfg(test)]
#[path = "packed_tests.rs"]
mod tests;
