//! `when` / `unless` conditions: structured matchers (MCC, channel, type, merchant,
//! country, amount, local time, weekday, with named lists) or a Rhai expression.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::raw::{ListRef, RawMatcher, Scalar};
use super::script;
use super::*;
use crate::domain::{Channel, Country, Mcc, TxnType};
use crate::money::{parse_amount, Currency};
use crate::velocity::key_hash;

pub(super) fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Expands `$list` references and inline values into strings.
pub(super) fn expand(
    r: &ListRef,
    lists: &BTreeMap<String, Vec<Scalar>>,
) -> Result<Vec<String>, String> {
    let items: Vec<&Scalar> = match r {
        ListRef::One(s) => vec![s],
        ListRef::Values(v) => v.iter().collect(),
    };
    let mut out = Vec::new();
    for s in items {
        match s.as_str().strip_prefix('$') {
            Some(name) => {
                let l = lists
                    .get(name)
                    .ok_or_else(|| format!("unknown list `${name}`"))?;
                out.extend(l.iter().map(|x| x.0.clone()));
            }
            None => out.push(s.0.clone()),
        }
    }
    if out.is_empty() {
        return Err("empty list".into());
    }
    Ok(out)
}

pub(super) fn parse_mccs(values: &[String]) -> Result<Vec<u16>, String> {
    let mut v = values
        .iter()
        .map(|s| Mcc::parse(s).map(Mcc::value))
        .collect::<Result<Vec<_>, _>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

pub(super) fn parse_countries(values: &[String]) -> Result<crate::geo::CountrySet, String> {
    let mut set = crate::geo::CountrySet::default();
    for s in values {
        set.insert(Country::parse(s)?);
    }
    Ok(set)
}

pub(super) fn parse_bits<T: Copy>(
    values: &[String],
    parse: impl Fn(&str) -> Option<T>,
    bit: impl Fn(T) -> u16,
    what: &str,
) -> Result<u16, String> {
    let mut bits = 0;
    for s in values {
        let v = parse(s).ok_or_else(|| format!("unknown {what} `{s}`"))?;
        bits |= bit(v);
    }
    Ok(bits)
}

pub(super) fn parse_weekday(s: &str) -> Option<u8> {
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" | "monday" => 1,
        "tue" | "tuesday" => 2,
        "wed" | "wednesday" => 3,
        "thu" | "thursday" => 4,
        "fri" | "friday" => 5,
        "sat" | "saturday" => 6,
        "sun" | "sunday" => 7,
        _ => return None,
    })
}

pub(super) fn parse_hhmm(s: &str) -> Result<u16, String> {
    let bad = || format!("time `{s}` must be HH:MM (00:00 to 24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h > 24 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

pub(super) fn positive_amount(s: &Scalar, currency: Currency) -> Result<Decimal, String> {
    let d = parse_amount(s.as_str(), currency).map_err(|e| e.to_string())?;
    if d <= Decimal::ZERO {
        return Err(format!("amount {d} must be positive"));
    }
    Ok(d)
}

pub(super) fn compile_matcher(
    m: &RawMatcher,
    lists: &BTreeMap<String, Vec<Scalar>>,
    currency: Currency,
) -> Result<Matcher, (&'static str, String)> {
    let mut out = Matcher::default();
    if let Some(r) = &m.mcc {
        out.mcc = Some(
            expand(r, lists)
                .and_then(|v| parse_mccs(&v))
                .map_err(|e| ("mcc", e))?,
        );
    }
    if let Some(r) = &m.channel {
        out.channels = Some(
            expand(r, lists)
                .and_then(|v| parse_bits(&v, Channel::parse, Channel::bit, "channel"))
                .map_err(|e| ("channel", e))?,
        );
    }
    if let Some(r) = &m.txn_type {
        out.types = Some(
            expand(r, lists)
                .and_then(|v| parse_bits(&v, TxnType::parse, TxnType::bit, "transaction type"))
                .map_err(|e| ("type", e))?,
        );
    }
    if let Some(r) = &m.merchant {
        let mut v: Vec<u64> = expand(r, lists)
            .map_err(|e| ("merchant", e))?
            .iter()
            .map(|s| key_hash(&[s.as_bytes()]))
            .collect();
        v.sort_unstable();
        v.dedup();
        out.merchants = Some(v);
    }
    if let Some(r) = &m.country {
        out.countries = Some(
            expand(r, lists)
                .and_then(|v| parse_countries(&v))
                .map_err(|e| ("country", e))?,
        );
    }
    if let Some(a) = &m.amount {
        let p = |s: &Option<Scalar>| -> Result<Option<Decimal>, (&'static str, String)> {
            s.as_ref()
                .map(|s| parse_amount(s.as_str(), currency).map_err(|e| ("amount", e.to_string())))
                .transpose()
        };
        out.amount_gt = p(&a.gt)?;
        out.amount_gte = p(&a.gte)?;
        out.amount_lt = p(&a.lt)?;
        out.amount_lte = p(&a.lte)?;
        if a.gt.is_none() && a.gte.is_none() && a.lt.is_none() && a.lte.is_none() {
            return Err((
                "amount",
                "amount needs at least one of gt, gte, lt, lte".into(),
            ));
        }
    }
    if let Some(t) = &m.local_time {
        let from = parse_hhmm(&t.from).map_err(|e| ("local_time", e))?;
        let to = parse_hhmm(&t.to).map_err(|e| ("local_time", e))?;
        if from == to {
            return Err((
                "local_time",
                "from and to are equal: the range is empty".into(),
            ));
        }
        out.local_time = Some((from, to));
    }
    if let Some(r) = &m.weekday {
        let mut bits = 0u8;
        for s in expand(r, lists).map_err(|e| ("weekday", e))? {
            let d = parse_weekday(&s)
                .ok_or(("weekday", format!("unknown weekday `{s}` (mon..sun)")))?;
            bits |= 1 << d;
        }
        out.weekdays = Some(bits);
    }
    let empty = out.mcc.is_none()
        && out.channels.is_none()
        && out.types.is_none()
        && out.merchants.is_none()
        && out.countries.is_none()
        && out.amount_gt.is_none()
        && out.amount_gte.is_none()
        && out.amount_lt.is_none()
        && out.amount_lte.is_none()
        && out.local_time.is_none()
        && out.weekdays.is_none();
    if empty {
        return Err(("", "empty matcher".into()));
    }
    Ok(out)
}

pub(super) fn compile_cond(
    v: &serde_norway::Value,
    lists: &BTreeMap<String, Vec<Scalar>>,
    currency: Currency,
) -> Result<Cond, (&'static str, String)> {
    match v {
        serde_norway::Value::String(expr) => {
            let ast = script::compile_condition(expr)
                .map_err(|e| ("", format!("Rhai condition: {e}")))?;
            Ok(Cond::Rhai {
                ast: Arc::new(ast),
                source: expr.clone(),
            })
        }
        serde_norway::Value::Mapping(_) => {
            let m: RawMatcher =
                serde_norway::from_value(v.clone()).map_err(|e| ("", e.to_string()))?;
            compile_matcher(&m, lists, currency).map(|m| Cond::Match(Box::new(m)))
        }
        _ => Err((
            "",
            "expected matchers (a mapping) or a Rhai expression (a string)".into(),
        )),
    }
}
