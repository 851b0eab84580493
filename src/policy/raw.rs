//! The policy file as written: YAML deserialized with unknown keys rejected.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// A YAML scalar kept as text: analysts write `5411` or `"5411"`, `500.00` or `"500.00"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                // Rust prints the shortest text that round-trips, which is the text the
                // analyst wrote for any amount of up to 15 significant digits.
                if !v.is_finite() {
                    return Err(E::custom("numbers must be finite"));
                }
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Scalar {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl schemars::JsonSchema for Scalar {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Scalar".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["string", "number", "boolean"],
            "description": "a value written plain or quoted: 5411 or \"5411\", 500.00 or \"500.00\""
        })
    }
}

/// What `when:` and `unless:` accept (for the JSON Schema; the compiler reads them as YAML
/// values and checks each form).
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Condition {
    Matchers(Box<RawMatcher>),
    /// A Rhai expression over `txn`, `card` and `history`.
    Expression(String),
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub policy: String,
    #[serde(default)]
    pub description: Option<String>,
    pub currency: String,
    pub timezone: String,
    #[serde(default)]
    pub on_error: Option<String>,
    #[serde(default)]
    pub score_decline_at: Option<i64>,
    /// Scripts may use loops (still bounded by the operations limit).
    #[serde(default)]
    pub script_loops: bool,
    #[serde(default)]
    pub lists: BTreeMap<String, Vec<Scalar>>,
    pub rules: Vec<RawRule>,
    /// Transaction fields that embedded tests use unless they say otherwise.
    #[serde(default)]
    pub test_defaults: Option<RawTestTxn>,
    #[serde(default)]
    pub tests: Vec<RawTest>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    /// The rule applies when this holds: matchers, or a Rhai expression.
    #[serde(default)]
    #[schemars(with = "Option<Condition>")]
    pub when: Option<serde_norway::Value>,
    /// The rule does not apply when this holds: matchers, or a Rhai expression.
    #[serde(default)]
    #[schemars(with = "Option<Condition>")]
    pub unless: Option<serde_norway::Value>,
    #[serde(default)]
    pub limit: Option<RawLimit>,
    #[serde(default)]
    pub velocity: Option<RawVelocity>,
    #[serde(default)]
    pub countries: Option<RawCountries>,
    #[serde(default)]
    pub geofence: Option<RawGeofence>,
    #[serde(default)]
    pub travel: Option<RawTravel>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub decline: Option<Scalar>,
    #[serde(default)]
    pub flag: Option<bool>,
    #[serde(default)]
    pub score: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Structured matchers. Keys AND together; a list matches any of its values. A value
/// may name a list with `$name`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatcher {
    pub mcc: Option<ListRef>,
    pub channel: Option<ListRef>,
    #[serde(rename = "type")]
    pub txn_type: Option<ListRef>,
    pub merchant: Option<ListRef>,
    pub country: Option<ListRef>,
    pub amount: Option<RawRange>,
    pub local_time: Option<RawTimeRange>,
    pub weekday: Option<ListRef>,
}

/// Either `$list_name` or inline values.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ListRef {
    Values(Vec<Scalar>),
    One(Scalar),
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRange {
    pub gt: Option<Scalar>,
    pub gte: Option<Scalar>,
    pub lt: Option<Scalar>,
    pub lte: Option<Scalar>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeRange {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    pub amount_max: Option<Scalar>,
    pub amount_min: Option<Scalar>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVelocity {
    pub window: String,
    pub amount_max: Option<Scalar>,
    pub count_max: Option<u32>,
    pub scope: Option<String>,
    pub counts: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCountries {
    pub allow: Option<ListRef>,
    pub deny: Option<ListRef>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGeofence {
    pub circle: Option<RawCircle>,
    /// Vertices as `[lat, lon]`, at least three.
    pub polygon: Option<Vec<[f64; 2]>>,
    /// `outside` (default): the rule fires for located transactions outside the fence.
    pub fires: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCircle {
    pub center: [f64; 2],
    pub radius_km: f64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTravel {
    pub speed_kmh_max: f64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub name: String,
    #[serde(default)]
    pub txn: RawTestTxn,
    #[serde(default)]
    pub card: Option<RawTestCard>,
    /// Earlier transactions on the same card, run through the engine first.
    #[serde(default)]
    pub history: Vec<RawTestHistory>,
    pub expect: RawExpect,
}

#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTestTxn {
    pub amount: Option<Scalar>,
    pub currency: Option<String>,
    pub mcc: Option<Scalar>,
    pub country: Option<String>,
    pub channel: Option<String>,
    #[serde(rename = "type")]
    pub txn_type: Option<String>,
    pub merchant: Option<String>,
    pub location: Option<[f64; 2]>,
    /// Local time in the policy time zone, `YYYY-MM-DDTHH:MM` (default 2026-06-03T12:00).
    pub at: Option<String>,
    pub partial_ok: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTestHistory {
    /// How long before the test transaction, e.g. `2h`.
    pub ago: String,
    #[serde(flatten)]
    pub txn: RawTestTxn,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTestCard {
    pub status: Option<String>,
    pub kyc: Option<String>,
    pub blocked: Option<bool>,
    pub currency: Option<String>,
    pub available: Option<Scalar>,
    /// Expiry as `YYYY-MM`.
    pub expiry: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum RawExpect {
    /// `approve`, `decline`, `flag`
    Word(String),
    Detail(RawExpectDetail),
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawExpectDetail {
    pub approve: Option<bool>,
    pub decline: Option<Scalar>,
    pub rule: Option<String>,
    pub flag: Option<String>,
    pub amount_approved: Option<Scalar>,
}
