//! Money: exact decimal amounts in ISO 4217 currencies, and FX conversion.
//!
//! Amounts are `rust_decimal::Decimal`, never floats. Parsing is exact: an amount with
//! more fraction digits than its currency allows (JPY 0, USD 2, KWD 3) is rejected, not
//! rounded. Arithmetic is checked.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ISO 4217 currency with a defined minor-unit exponent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub const USD: Currency = Currency(iso_currency::Currency::USD);
    pub const NGN: Currency = Currency(iso_currency::Currency::NGN);

    /// Parses a three-letter code; rejects codes without minor units (e.g. XAU).
    pub fn from_code(code: &str) -> Result<Currency, MoneyError> {
        let c = iso_currency::Currency::from_code(code)
            .ok_or_else(|| MoneyError::UnknownCurrency(code.to_string()))?;
        if c.exponent().is_none() {
            return Err(MoneyError::UnknownCurrency(code.to_string()));
        }
        Ok(Currency(c))
    }

    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// Every currency `from_code` accepts (ISO 4217 codes with minor units).
    pub fn all() -> impl Iterator<Item = Currency> {
        use iso_currency::IntoEnumIterator;
        iso_currency::Currency::iter()
            .filter(|c| c.exponent().is_some())
            .map(Currency)
    }

    /// Number of minor-unit digits (JPY 0, USD 2, KWD 3).
    pub fn exponent(self) -> u32 {
        // Constructors only admit currencies that have an exponent.
        u32::from(self.0.exponent().unwrap_or(2))
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::from_code(s)
    }
}
impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}
impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::from_code(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency `{0}` (expected an ISO 4217 code with minor units)")]
    UnknownCurrency(String),
    #[error("`{0}` is not a decimal amount")]
    NotADecimal(String),
    #[error("{amount} has more than {exponent} fraction digits allowed for {currency}")]
    TooPrecise {
        amount: String,
        currency: Currency,
        exponent: u32,
    },
    #[error("amount overflow")]
    Overflow,
    #[error("no FX rate from {from} to {to}")]
    NoRate { from: Currency, to: Currency },
}

/// Integer digits an amount may have: a quadrillion in major units, far above any real
/// transaction, far below where sums of amounts could overflow a `Decimal`.
pub const AMOUNT_INTEGER_DIGITS_MAX: usize = 15;
/// Fraction digits a decimal string may carry before the currency's exponent is checked.
pub const FRACTION_DIGITS_MAX: usize = 18;

/// Parses a decimal string exactly: ASCII digits with at most one point and digits on both
/// sides of it (`12`, `12.50`). No sign, exponent, separator, space or leading point; the
/// one parser for every amount a request or a policy carries.
pub fn parse_decimal(s: &str) -> Result<Decimal, MoneyError> {
    let shown = || s.chars().take(40).collect::<String>();
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !frac.is_none_or(|f| digits(f) && f.len() <= FRACTION_DIGITS_MAX) {
        return Err(MoneyError::NotADecimal(shown()));
    }
    if int.trim_start_matches('0').len() > AMOUNT_INTEGER_DIGITS_MAX {
        return Err(MoneyError::Overflow);
    }
    Decimal::from_str_exact(s).map_err(|_| MoneyError::NotADecimal(shown()))
}

/// Serde for request amounts: a JSON string parsed by [`parse_decimal`].
pub mod amount_str {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_decimal(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks that `amount` fits the currency's minor units without rounding.
pub fn check_precision(amount: Decimal, currency: Currency) -> Result<(), MoneyError> {
    let exponent = currency.exponent();
    if amount.normalize().scale() > exponent {
        return Err(MoneyError::TooPrecise {
            amount: amount.to_string(),
            currency,
            exponent,
        });
    }
    Ok(())
}

/// Parses `s` as an amount of `currency`, rejecting excess precision.
pub fn parse_amount(s: &str, currency: Currency) -> Result<Decimal, MoneyError> {
    let d = parse_decimal(s)?;
    check_precision(d, currency)?;
    Ok(d)
}

/// Formats an amount with exactly the currency's number of fraction digits.
pub fn format_amount(amount: Decimal, currency: Currency) -> String {
    Amount(amount, currency).to_string()
}

/// [`format_amount`] as a `Display`: written into a larger text without a String of its
/// own (explanations write several per line).
#[derive(Debug, Clone, Copy)]
pub struct Amount(pub Decimal, pub Currency);

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Amount(amount, currency) = *self;
        let mut a = amount
            .round_dp_with_strategy(currency.exponent(), RoundingStrategy::MidpointNearestEven);
        a.rescale(currency.exponent());
        fmt::Display::fmt(&a, f)
    }
}

/// Exact money value: an amount in a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub amount: Decimal,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount: Decimal, currency: Currency) -> Money {
        Money { amount, currency }
    }
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        assert_eq!(self.currency, other.currency, "adding different currencies");
        let amount = self
            .amount
            .checked_add(other.amount)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            format_amount(self.amount, self.currency),
            self.currency
        )
    }
}

/// Mid-market rates with a spread applied when charging a cardholder.
///
/// Rates are stored per ordered pair; a missing direct rate is derived from the inverse.
#[derive(Debug, Clone, Default)]
pub struct FxTable {
    /// Units of `to` per one unit of `from`, mid-market.
    rates: HashMap<(Currency, Currency), Decimal>,
    /// Markup applied to cardholder conversions, in basis points.
    spread_bps: u32,
}

/// The conversion that was applied, stored with a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FxQuote {
    pub from: Currency,
    pub to: Currency,
    /// Effective rate applied (mid plus spread), units of `to` per unit of `from`.
    pub rate: Decimal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFxFile {
    spread_bps: u32,
    /// "USD/NGN": "1550.00" means one USD buys 1550.00 NGN.
    rates: std::collections::BTreeMap<String, String>,
}

impl FxTable {
    pub fn new(spread_bps: u32) -> FxTable {
        FxTable {
            rates: HashMap::new(),
            spread_bps,
        }
    }

    pub fn spread_bps(&self) -> u32 {
        self.spread_bps
    }

    /// Parses the rates file format (`rules/fx/rates.yaml`).
    pub fn from_yaml(text: &str) -> Result<FxTable, String> {
        let raw: RawFxFile = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        if raw.spread_bps > 2_000 {
            return Err(format!("spread_bps {} is above 2000 (20%)", raw.spread_bps));
        }
        let mut table = FxTable::new(raw.spread_bps);
        for (pair, rate) in raw.rates {
            let (a, b) = pair
                .split_once('/')
                .ok_or_else(|| format!("rate key `{pair}` must look like USD/NGN"))?;
            let from = Currency::from_code(a).map_err(|e| e.to_string())?;
            let to = Currency::from_code(b).map_err(|e| e.to_string())?;
            let r = parse_decimal(&rate).map_err(|e| format!("{pair}: {e}"))?;
            if r <= Decimal::ZERO {
                return Err(format!("{pair}: rate must be positive"));
            }
            table.set_rate(from, to, r);
        }
        Ok(table)
    }

    pub fn set_rate(&mut self, from: Currency, to: Currency, rate: Decimal) {
        assert!(rate > Decimal::ZERO, "FX rates are positive");
        self.rates.insert((from, to), rate);
    }

    fn direct(&self, from: Currency, to: Currency) -> Option<Decimal> {
        if let Some(r) = self.rates.get(&(from, to)) {
            return Some(*r);
        }
        self.rates
            .get(&(to, from))
            .and_then(|r| Decimal::ONE.checked_div(*r))
    }

    /// Mid-market rate: direct, the inverse of the opposite pair, or a cross rate
    /// through one pivot currency (KES → USD → NGN), lowest pivot code first.
    pub fn mid_rate(&self, from: Currency, to: Currency) -> Result<Decimal, MoneyError> {
        if from == to {
            return Ok(Decimal::ONE);
        }
        if let Some(r) = self.direct(from, to) {
            return Ok(r);
        }
        let pivots: std::collections::BTreeSet<Currency> =
            self.rates.keys().flat_map(|(a, b)| [*a, *b]).collect();
        pivots
            .into_iter()
            .find_map(|p| self.direct(from, p)?.checked_mul(self.direct(p, to)?))
            .ok_or(MoneyError::NoRate { from, to })
    }

    /// Converts what the cardholder pays: mid rate plus spread, rounded half-even to
    /// the target currency's minor units.
    pub fn convert_charge(
        &self,
        amount: Decimal,
        from: Currency,
        to: Currency,
    ) -> Result<(Decimal, FxQuote), MoneyError> {
        let mid = self.mid_rate(from, to)?;
        let rate = if from == to {
            mid
        } else {
            let markup = Decimal::ONE + Decimal::new(i64::from(self.spread_bps), 4);
            mid.checked_mul(markup).ok_or(MoneyError::Overflow)?
        };
        let converted = amount.checked_mul(rate).ok_or(MoneyError::Overflow)?;
        let mut rounded =
            converted.round_dp_with_strategy(to.exponent(), RoundingStrategy::MidpointNearestEven);
        // A charge is never free: a positive amount converts to at least one minor unit.
        if amount > Decimal::ZERO && rounded.is_zero() {
            rounded = Decimal::new(1, to.exponent());
        }
        Ok((rounded, FxQuote { from, to, rate }))
    }

    /// Converts for limit checks: mid rate, rounded *up* to the target's minor units so
    /// that conversion can never let spending slip under a limit.
    pub fn convert_for_limit(
        &self,
        amount: Decimal,
        from: Currency,
        to: Currency,
    ) -> Result<Decimal, MoneyError> {
        if from == to {
            return Ok(amount);
        }
        let mid = self.mid_rate(from, to)?;
        let converted = amount.checked_mul(mid).ok_or(MoneyError::Overflow)?;
        Ok(converted.round_dp_with_strategy(to.exponent(), RoundingStrategy::AwayFromZero))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(c: &str) -> Currency {
        Currency::from_code(c).unwrap()
    }

    #[test]
    fn exponents_follow_iso_4217() {
        assert_eq!(cur("JPY").exponent(), 0);
        assert_eq!(cur("USD").exponent(), 2);
        assert_eq!(cur("KWD").exponent(), 3);
        assert!(Currency::from_code("XXX").is_err() || cur("XXX").exponent() == 0);
        assert!(matches!(
            Currency::from_code("ABC"),
            Err(MoneyError::UnknownCurrency(_))
        ));
    }

    #[test]
    fn parse_rejects_excess_precision_instead_of_rounding() {
        assert_eq!(
            parse_amount("25.00", cur("USD")).unwrap(),
            Decimal::new(2500, 2)
        );
        assert_eq!(
            parse_amount("1000", cur("JPY")).unwrap(),
            Decimal::new(1000, 0)
        );
        assert!(matches!(
            parse_amount("1.5", cur("JPY")),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            parse_amount("1.001", cur("USD")),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert_eq!(
            parse_amount("1.001", cur("KWD")).unwrap(),
            Decimal::new(1001, 3)
        );
        // Trailing zeros are not extra precision.
        assert!(parse_amount("1.1000", cur("USD")).is_ok());
        for bad in [
            "", "1e3", "1E2", "1_000", "+10.00", "-1", " 10", "10 ", "10.", ".5", "abc", "1,00",
            "0x10", "NaN", "1.2.3", "١٢",
        ] {
            assert!(parse_decimal(bad).is_err(), "{bad} should not parse");
        }
        assert_eq!(parse_decimal("0012.50").unwrap(), Decimal::new(1250, 2));
        assert_eq!(
            parse_decimal("999999999999999.99").unwrap(),
            Decimal::new(99_999_999_999_999_999, 2)
        );
        assert_eq!(parse_decimal("1000000000000000"), Err(MoneyError::Overflow));
    }

    #[test]
    fn fx_charge_rounds_half_even_with_spread() {
        let mut fx = FxTable::new(100); // 1%
        fx.set_rate(cur("USD"), cur("NGN"), Decimal::new(150000, 2)); // 1500.00
        let (ngn, quote) = fx
            .convert_charge(Decimal::new(1000, 2), cur("USD"), cur("NGN"))
            .unwrap();
        assert_eq!(ngn, Decimal::new(1515000, 2)); // 10 * 1500 * 1.01
        assert_eq!(quote.rate, Decimal::new(151500, 2));
        // Inverse direction derived; half-even: 0.125 -> 0.12
        let mut fx0 = FxTable::new(0);
        fx0.set_rate(cur("EUR"), cur("USD"), Decimal::new(125, 3));
        let (usd, _) = fx0
            .convert_charge(Decimal::ONE, cur("EUR"), cur("USD"))
            .unwrap();
        assert_eq!(usd, Decimal::new(12, 2));
        let back = fx0.mid_rate(cur("USD"), cur("EUR")).unwrap();
        assert_eq!(back, Decimal::new(8, 0));
        assert!(matches!(
            fx0.mid_rate(cur("USD"), cur("KES")),
            Err(MoneyError::NoRate { .. })
        ));
        // Cross rate through the pivot: 1 KES = 1/100 USD = 15 NGN.
        let mut fx1 = FxTable::new(0);
        fx1.set_rate(cur("USD"), cur("NGN"), Decimal::new(1500, 0));
        fx1.set_rate(cur("USD"), cur("KES"), Decimal::new(100, 0));
        assert_eq!(
            fx1.mid_rate(cur("KES"), cur("NGN")).unwrap(),
            Decimal::new(15, 0)
        );
    }

    #[test]
    fn limit_conversion_rounds_up() {
        let mut fx = FxTable::new(0);
        fx.set_rate(cur("USD"), cur("NGN"), Decimal::new(1500, 0));
        // 1 NGN = 0.000666.. USD -> rounds up to 0.01
        let usd = fx
            .convert_for_limit(Decimal::ONE, cur("NGN"), cur("USD"))
            .unwrap();
        assert_eq!(usd, Decimal::new(1, 2));
    }

    #[test]
    fn rates_file_parses_and_validates() {
        let t = FxTable::from_yaml("spread_bps: 50\nrates:\n  USD/NGN: \"1550.00\"\n").unwrap();
        assert_eq!(
            t.mid_rate(cur("USD"), cur("NGN")).unwrap(),
            Decimal::new(155000, 2)
        );
        assert!(FxTable::from_yaml("spread_bps: 50\nrates:\n  USD-NGN: \"1\"\n").is_err());
        assert!(FxTable::from_yaml("spread_bps: 50\nrates:\n  USD/NGN: \"-1\"\n").is_err());
        assert!(FxTable::from_yaml("spread_bps: 50\nbogus: 1\nrates: {}\n").is_err());
    }
}
