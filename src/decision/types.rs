//! Inputs of a decision: the authorization request and the card as the core sees it.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::money::Currency;
use crate::velocity::{ActivityLog, VelocityState};

/// ISO 18245 merchant category code, four digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mcc(u16);

impl Mcc {
    pub fn parse(s: &str) -> Result<Mcc, String> {
        if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("MCC `{s}` must be four digits"));
        }
        s.parse::<u16>().map(Mcc).map_err(|e| e.to_string())
    }
    pub fn value(self) -> u16 {
        self.0
    }
}
impl fmt::Debug for Mcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.0)
    }
}
impl fmt::Display for Mcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.0)
    }
}
impl Serialize for Mcc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}
impl<'de> Deserialize<'de> for Mcc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Mcc::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// ISO 3166-1 alpha-2 country code, validated against the standard's table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    pub fn parse(s: &str) -> Result<Country, String> {
        let c = isocountry::CountryCode::for_alpha2(s)
            .map_err(|_| format!("`{s}` is not an ISO 3166-1 alpha-2 country code"))?;
        let b = c.alpha2().as_bytes();
        Ok(Country([b[0], b[1]]))
    }
    pub fn as_str(&self) -> &str {
        // Only ASCII uppercase letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
    /// Dense index 0..676 for bitsets.
    pub fn index(self) -> usize {
        usize::from(self.0[0] - b'A') * 26 + usize::from(self.0[1] - b'A')
    }
}
impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl Serialize for Country {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Country::parse(&s).map_err(serde::de::Error::custom)
    }
}

macro_rules! small_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn parse(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
            /// Bit for compact sets.
            pub fn bit(self) -> u16 { 1 << (self as u16) }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

small_enum!(
    /// How the card was presented.
    Channel { Ecommerce = "ecommerce", Pos = "pos", Contactless = "contactless", Atm = "atm", Moto = "moto" }
);
small_enum!(
    /// What the authorization asks for.
    TxnType { Purchase = "purchase", Withdrawal = "withdrawal", Verification = "verification", Refund = "refund" }
);
small_enum!(
    /// Card lifecycle state.
    CardStatus { Inactive = "inactive", Active = "active", Frozen = "frozen", Lost = "lost", Stolen = "stolen", Terminated = "terminated" }
);
small_enum!(
    /// Cardholder identity verification state.
    KycStatus { Pending = "pending", Verified = "verified", Rejected = "rejected" }
);

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

impl LatLon {
    pub fn is_valid(&self) -> bool {
        self.lat.is_finite()
            && self.lon.is_finite()
            && (-90.0..=90.0).contains(&self.lat)
            && (-180.0..=180.0).contains(&self.lon)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Merchant {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// ISO 18245 merchant category code, four digits.
    #[schema(value_type = String, example = "5411")]
    pub mcc: Mcc,
    /// ISO 3166-1 alpha-2.
    #[schema(value_type = String, example = "NG")]
    pub country: Country,
    #[serde(default)]
    pub location: Option<LatLon>,
}

/// An authorization request from the processor's hook.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// The processor's authorization id; also the idempotency key.
    pub id: String,
    pub card_id: String,
    /// Major units as a decimal string ("25.00"), parsed exactly.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "25.00")]
    pub amount: Decimal,
    #[schema(value_type = String, example = "NGN")]
    pub currency: Currency,
    pub merchant: Merchant,
    pub channel: Channel,
    #[serde(rename = "type")]
    pub txn_type: TxnType,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub timestamp: Option<DateTime<Utc>>,
    #[serde(default)]
    pub partial_ok: bool,
}

/// Card expiry: valid through the last day of this month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Expiry {
    pub year: i32,
    pub month: u32,
}

impl Expiry {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        let d = now.date_naive();
        (d.year(), d.month()) > (self.year, self.month)
    }
    pub fn first_day(&self) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(self.year, self.month, 1)
    }
}

/// A located, approved transaction: the anchor for impossible-travel checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastSeen {
    pub at_ms: i64,
    pub location: LatLon,
}

/// Everything the pure core may know about a card, borrowed from the service's state
/// while the card's lock is held.
#[derive(Debug, Clone, Copy)]
pub struct CardView<'a> {
    pub card_id: &'a str,
    pub status: CardStatus,
    pub expiry: Option<Expiry>,
    pub kyc: KycStatus,
    pub cardholder_blocked: bool,
    pub currency: Currency,
    /// Spendable balance in card currency; `None` when funds are not tracked.
    pub available: Option<Decimal>,
    pub card_velocity: &'a VelocityState,
    pub cardholder_velocity: Option<&'a VelocityState>,
    pub program_velocity: Option<&'a VelocityState>,
    pub last_seen: Option<LastSeen>,
    pub activity: &'a ActivityLog,
    /// The card's own spending controls, compiled to card-scope rules.
    pub controls: Option<&'a crate::policy::CompiledPolicy>,
}
