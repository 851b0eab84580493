//! The shared vocabulary of cards and payments: merchant category codes, countries,
//! locations, channels, transaction types, card and KYC states, expiry, ISO 8583 response
//! codes, and velocity scopes. It imports nothing of ours, so every other module can
//! build on it without an import cycle.

mod codes;
mod ids;
pub mod shard;

pub use codes::{ResponseCode, KNOWN_CODES};
pub use ids::{check_id, contains_card_number, shorten, IdError, ID_LEN_MAX};

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    /// Every code `parse` accepts (ISO 3166-1 alpha-2).
    pub fn all() -> impl Iterator<Item = Country> {
        isocountry::CountryCode::as_array_alpha2()
            .iter()
            .filter_map(|c| Country::parse(c.alpha2()).ok())
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

/// Card expiry: valid through the last day of this month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Expiry {
    pub year: i32,
    pub month: u32,
}

impl Expiry {
    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Expiry, String> {
        let bad = || format!("expiry `{}` must be YYYY-MM", shorten(s));
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Expiry { year, month })
    }

    /// Months from `now`'s month to the expiry month (negative when already past).
    pub fn months_after(&self, now: DateTime<Utc>) -> i64 {
        let d = now.date_naive();
        (i64::from(self.year) - i64::from(d.year())) * 12 + i64::from(self.month)
            - i64::from(d.month())
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        let d = now.date_naive();
        (d.year(), d.month()) > (self.year, self.month)
    }
    pub fn first_day(&self) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(self.year, self.month, 1)
    }
}

/// Whose spending a velocity window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VelocityScope {
    Card,
    Cardholder,
    Program,
    CardMerchant,
}

impl VelocityScope {
    pub fn as_str(self) -> &'static str {
        match self {
            VelocityScope::Card => "card",
            VelocityScope::Cardholder => "cardholder",
            VelocityScope::Program => "program",
            VelocityScope::CardMerchant => "card_merchant",
        }
    }
}

/// Which decisions a velocity window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counts {
    Approved,
    Declined,
}

impl Counts {
    pub fn as_str(self) -> &'static str {
        match self {
            Counts::Approved => "approved",
            Counts::Declined => "declined",
        }
    }
}
