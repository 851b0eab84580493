//! Daily reconciliation: the ledger's captures against a processor's settlement file.
//!
//! Settlement file (CSV, header required):
//! `authorization_id,amount,currency,settlement_date` — one row per settled capture,
//! amounts in the transaction (settlement) currency as exact decimals, dates `YYYY-MM-DD`.
//! Rows for other dates are ignored. Several rows for one authorization are summed, as
//! are several captures in the ledger.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ledger::{Transfer, TransferKind};
use crate::money::{parse_amount, Currency};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    authorization_id: String,
    amount: String,
    currency: String,
    settlement_date: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub authorization_id: String,
    pub currency: Currency,
    pub ledger: Option<Decimal>,
    pub settlement: Option<Decimal>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub count: usize,
    pub amount: Decimal,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconReport {
    pub date: String,
    pub matched: Vec<Line>,
    pub mismatched: Vec<Line>,
    /// Captured in the ledger, absent from the settlement file.
    pub missing_in_settlement: Vec<Line>,
    /// In the settlement file, absent from the ledger.
    pub missing_in_ledger: Vec<Line>,
    /// Per currency and category.
    pub totals: BTreeMap<String, BTreeMap<String, Totals>>,
}

impl ReconReport {
    pub fn clean(&self) -> bool {
        self.mismatched.is_empty()
            && self.missing_in_settlement.is_empty()
            && self.missing_in_ledger.is_empty()
    }
}

/// Settlement amount of a capture: what network settlement received, in its currency.
fn settled(t: &Transfer) -> Option<(Currency, Decimal)> {
    t.postings
        .iter()
        .find(|p| p.account.as_str().starts_with("settlement:"))
        .map(|p| (p.currency, p.amount))
}

pub fn reconcile(
    transfers: &[Transfer],
    csv_text: &str,
    date: NaiveDate,
) -> Result<ReconReport, String> {
    let mut ledger: BTreeMap<(String, Currency), Decimal> = BTreeMap::new();
    for t in transfers.iter().filter(|t| t.kind == TransferKind::Capture) {
        let Some(day) = chrono::DateTime::from_timestamp_millis(t.at_ms).map(|d| d.date_naive())
        else {
            continue;
        };
        if day != date {
            continue;
        }
        if let Some((c, a)) = settled(t) {
            *ledger.entry((t.reference.clone(), c)).or_default() += a;
        }
    }
    let mut file: BTreeMap<(String, Currency), Decimal> = BTreeMap::new();
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(csv_text.as_bytes());
    for (i, row) in rdr.deserialize::<Row>().enumerate() {
        let line = i + 2;
        let row = row.map_err(|e| format!("line {line}: {e}"))?;
        let d = NaiveDate::parse_from_str(&row.settlement_date, "%Y-%m-%d").map_err(|_| {
            format!(
                "line {line}: settlement_date `{}` is not YYYY-MM-DD",
                row.settlement_date
            )
        })?;
        if d != date {
            continue;
        }
        let c = Currency::from_code(&row.currency).map_err(|e| format!("line {line}: {e}"))?;
        let a = parse_amount(&row.amount, c).map_err(|e| format!("line {line}: {e}"))?;
        if row.authorization_id.is_empty() {
            return Err(format!("line {line}: empty authorization_id"));
        }
        *file.entry((row.authorization_id, c)).or_default() += a;
    }
    let mut r = ReconReport {
        date: date.to_string(),
        ..ReconReport::default()
    };
    let add = |cat: &str, l: Line, r: &mut ReconReport| {
        let amount = l.ledger.or(l.settlement).unwrap_or_default();
        let t = r
            .totals
            .entry(l.currency.to_string())
            .or_default()
            .entry(cat.to_string())
            .or_default();
        t.count += 1;
        t.amount += amount;
        match cat {
            "matched" => r.matched.push(l),
            "mismatched" => r.mismatched.push(l),
            "missing_in_settlement" => r.missing_in_settlement.push(l),
            _ => r.missing_in_ledger.push(l),
        }
    };
    // An authorization settled in a different currency than captured is a mismatch.
    let auths: std::collections::BTreeSet<&String> =
        ledger.keys().chain(file.keys()).map(|(a, _)| a).collect();
    for auth in auths {
        let l: Vec<_> = ledger.iter().filter(|((a, _), _)| a == auth).collect();
        let f: Vec<_> = file.iter().filter(|((a, _), _)| a == auth).collect();
        match (l.as_slice(), f.as_slice()) {
            ([((_, lc), la)], [((_, fc), fa)]) => {
                let line = Line {
                    authorization_id: auth.clone(),
                    currency: *lc,
                    ledger: Some(**la),
                    settlement: Some(**fa),
                };
                let cat = if lc == fc && la == fa {
                    "matched"
                } else {
                    "mismatched"
                };
                add(cat, line, &mut r);
            }
            (ls, []) => {
                for ((_, c), a) in ls {
                    add(
                        "missing_in_settlement",
                        Line {
                            authorization_id: auth.clone(),
                            currency: *c,
                            ledger: Some(**a),
                            settlement: None,
                        },
                        &mut r,
                    );
                }
            }
            ([], fs) => {
                for ((_, c), a) in fs {
                    add(
                        "missing_in_ledger",
                        Line {
                            authorization_id: auth.clone(),
                            currency: *c,
                            ledger: None,
                            settlement: Some(**a),
                        },
                        &mut r,
                    );
                }
            }
            (ls, _) => {
                for ((_, c), a) in ls {
                    let s = file.get(&(auth.clone(), *c)).copied();
                    add(
                        "mismatched",
                        Line {
                            authorization_id: auth.clone(),
                            currency: *c,
                            ledger: Some(**a),
                            settlement: s,
                        },
                        &mut r,
                    );
                }
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::AccountId;

    fn capture(auth: &str, amount: &str, c: Currency, at_ms: i64) -> Transfer {
        let mut t = Transfer::simple(
            format!("capture:{auth}"),
            TransferKind::Capture,
            auth,
            AccountId::card("c"),
            AccountId::settlement(c),
            amount.parse().unwrap(),
            c,
            at_ms,
        );
        t.reference = auth.to_string();
        t
    }

    #[test]
    fn matches_mismatches_and_missing() {
        let day = NaiveDate::from_ymd_opt(2026, 6, 3).unwrap();
        let at = day
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis();
        let transfers = vec![
            capture("a1", "10.00", Currency::USD, at),
            capture("a2", "20.00", Currency::USD, at),
            capture("a3", "30.00", Currency::USD, at),
            capture("old", "5.00", Currency::USD, at - 86_400_000),
        ];
        let csv = "authorization_id,amount,currency,settlement_date\na1,10.00,USD,2026-06-03\na2,21.00,USD,2026-06-03\na4,4.00,USD,2026-06-03\nold,5.00,USD,2026-06-02\n";
        let r = reconcile(&transfers, csv, day).unwrap();
        assert_eq!(r.matched.len(), 1);
        assert_eq!(r.mismatched[0].authorization_id, "a2");
        assert_eq!(r.missing_in_settlement[0].authorization_id, "a3");
        assert_eq!(r.missing_in_ledger[0].authorization_id, "a4");
        assert_eq!(
            r.totals["USD"]["matched"].amount,
            "10.00".parse::<Decimal>().unwrap()
        );
        assert!(!r.clean());
        assert!(reconcile(
            &transfers,
            "authorization_id,amount,currency,settlement_date\na1,10.001,USD,2026-06-03\n",
            day
        )
        .is_err());
    }
}
