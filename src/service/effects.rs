//! The stored form of a decision's effects: enough to rebuild velocity windows, the
//! activity log and the travel anchor at start-up. Named records, decoded strictly: a
//! record that cannot be read is an error at recovery, never skipped in silence.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::decision::{Effects, VelocityEffect};
use crate::domain::{Country, Counts, LatLon, VelocityScope};
use crate::velocity::Activity;

/// One decision's effects. Field names are short: one record is written per decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectsRecord {
    #[serde(rename = "at")]
    pub at_ms: i64,
    /// `key_hash` of the authorization id.
    #[serde(rename = "auth")]
    pub auth_key: u64,
    #[serde(rename = "v")]
    pub velocity: Vec<VelocityRecord>,
    #[serde(rename = "loc")]
    pub location: Option<LocationRecord>,
    #[serde(rename = "act")]
    pub activity: Option<ActivityRecord>,
}

/// A window update. (Older stores wrote these as arrays in the same field order; serde
/// reads both forms.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VelocityRecord {
    pub scope: u8,
    pub key: u64,
    pub start_ms: i64,
    pub amount: String,
    pub declined: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LocationRecord {
    pub lat: f64,
    pub lon: f64,
    /// The transaction's own time when it differs from the decision's (older records
    /// have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityRecord {
    pub amount: String,
    pub country: String,
    pub merchant: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("effects record is not readable: {0}")]
    Syntax(String),
    #[error("effects record has unknown velocity scope {0}")]
    Scope(u8),
    #[error("effects record has a bad amount `{0}`")]
    Amount(String),
    #[error("effects record has a bad country `{0}`")]
    Country(String),
}

fn scope_id(s: VelocityScope) -> u8 {
    match s {
        VelocityScope::Card => 0,
        VelocityScope::Cardholder => 1,
        VelocityScope::Program => 2,
        VelocityScope::CardMerchant => 3,
    }
}

fn scope_from(id: u8) -> Result<VelocityScope, CodecError> {
    Ok(match id {
        0 => VelocityScope::Card,
        1 => VelocityScope::Cardholder,
        2 => VelocityScope::Program,
        3 => VelocityScope::CardMerchant,
        x => return Err(CodecError::Scope(x)),
    })
}

fn amount(s: &str) -> Result<Decimal, CodecError> {
    Decimal::from_str(s).map_err(|_| CodecError::Amount(s.to_string()))
}

impl EffectsRecord {
    pub fn of(e: &Effects) -> EffectsRecord {
        EffectsRecord {
            at_ms: e.at_ms,
            auth_key: e.auth_key,
            velocity: e
                .velocity
                .iter()
                .map(|v| VelocityRecord {
                    scope: scope_id(v.scope),
                    key: v.key,
                    start_ms: v.start_ms,
                    amount: v.amount.to_string(),
                    declined: v.counts == Counts::Declined,
                })
                .collect(),
            location: e.location.map(|l| LocationRecord {
                lat: l.lat,
                lon: l.lon,
                at: (e.location_at_ms != e.at_ms).then_some(e.location_at_ms),
            }),
            activity: e.activity.map(|a| ActivityRecord {
                amount: a.amount.to_string(),
                country: a.country.to_string(),
                merchant: a.merchant,
            }),
        }
    }

    pub fn encode(e: &Effects) -> String {
        // A struct of plain fields always serializes.
        serde_json::to_string(&EffectsRecord::of(e)).unwrap_or_default()
    }

    pub fn decode(text: &str) -> Result<EffectsRecord, CodecError> {
        serde_json::from_str(text).map_err(|e| CodecError::Syntax(e.to_string()))
    }

    /// Which shared scopes the record touches: (cardholder, program).
    pub fn shared_scopes(&self) -> (bool, bool) {
        (
            self.velocity.iter().any(|v| v.scope == 1),
            self.velocity.iter().any(|v| v.scope == 2),
        )
    }

    pub fn to_effects(&self) -> Result<Effects, CodecError> {
        let velocity = self
            .velocity
            .iter()
            .map(|v| {
                Ok(VelocityEffect {
                    scope: scope_from(v.scope)?,
                    key: v.key,
                    start_ms: v.start_ms,
                    amount: amount(&v.amount)?,
                    counts: if v.declined {
                        Counts::Declined
                    } else {
                        Counts::Approved
                    },
                })
            })
            .collect::<Result<_, CodecError>>()?;
        let activity = match &self.activity {
            Some(a) => Some(Activity {
                at_ms: self.at_ms,
                amount: amount(&a.amount)?,
                approved: false,
                country: Country::parse(&a.country)
                    .map_err(|_| CodecError::Country(a.country.clone()))?,
                merchant: a.merchant,
            }),
            None => None,
        };
        Ok(Effects {
            velocity,
            auth_key: self.auth_key,
            at_ms: self.at_ms,
            location: self.location.map(|l| LatLon {
                lat: l.lat,
                lon: l.lon,
            }),
            location_at_ms: self.location.and_then(|l| l.at).unwrap_or(self.at_ms),
            activity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Effects {
        let mut e = Effects {
            auth_key: 42,
            at_ms: 1_780_000_000_000,
            location: Some(LatLon { lat: 6.5, lon: 3.3 }),
            activity: Some(Activity {
                at_ms: 1_780_000_000_000,
                amount: Decimal::new(1250, 2),
                approved: false,
                country: Country::parse("NG").unwrap(),
                merchant: 7,
            }),
            ..Effects::default()
        };
        e.velocity.push(VelocityEffect {
            scope: VelocityScope::Program,
            key: 9,
            start_ms: 1_779_999_000_000,
            amount: Decimal::new(1250, 2),
            counts: Counts::Approved,
        });
        e
    }

    #[test]
    fn effects_round_trip_through_the_record() {
        let e = sample();
        let back = EffectsRecord::decode(&EffectsRecord::encode(&e))
            .unwrap()
            .to_effects()
            .unwrap();
        assert_eq!(back.velocity.as_slice(), e.velocity.as_slice());
        assert_eq!((back.at_ms, back.auth_key), (e.at_ms, e.auth_key));
        assert_eq!(back.location, e.location);
        assert_eq!(back.activity, e.activity);
    }

    #[test]
    fn records_written_as_arrays_by_older_stores_still_decode() {
        let old =
            r#"{"at":5,"auth":1,"v":[[1,2,3,"4.50",false]],"loc":[1.0,2.0],"act":["4.50","GH",8]}"#;
        let e = EffectsRecord::decode(old).unwrap().to_effects().unwrap();
        assert_eq!(e.velocity[0].scope, VelocityScope::Cardholder);
        assert_eq!(e.activity.unwrap().country.as_str(), "GH");
    }

    #[test]
    fn an_unreadable_record_is_an_error_not_a_skip() {
        assert!(matches!(
            EffectsRecord::decode("{not json"),
            Err(CodecError::Syntax(_))
        ));
        let bad_scope = r#"{"at":5,"auth":1,"v":[[9,2,3,"4.50",false]],"loc":null,"act":null}"#;
        assert_eq!(
            EffectsRecord::decode(bad_scope)
                .unwrap()
                .to_effects()
                .unwrap_err(),
            CodecError::Scope(9)
        );
        let bad_amount = r#"{"at":5,"auth":1,"v":[[0,2,3,"x",false]],"loc":null,"act":null}"#;
        assert!(matches!(
            EffectsRecord::decode(bad_amount).unwrap().to_effects(),
            Err(CodecError::Amount(_))
        ));
    }
}
