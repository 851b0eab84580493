//! The replay's input from a store: every stored authorization as a [`ReplayRecord`]
//! (request, the card's program, policy, holder and currency, the balance before the
//! decision and what was answered), and the velocity releases history recorded.

use std::collections::HashMap;
use std::str::FromStr;

use rust_decimal::Decimal;

use super::replay::{at_ms, Outcome, Release, ReplayRecord};
use crate::issuing::SpendingControls;
use crate::service::decision_record;
use crate::store::Snapshot;

/// What a store holds for a replay.
#[derive(Debug, Default)]
pub struct History {
    pub records: Vec<ReplayRecord>,
    pub releases: Vec<Release>,
    pub controls: HashMap<String, SpendingControls>,
    /// Decisions written before schema version 5, which did not keep the request.
    pub without_request: u64,
    /// Decisions on cards the store no longer has.
    pub without_card: u64,
}

/// Reads a store's decisions. A record that cannot be decoded is an error: a replay that
/// silently skipped history would report the wrong differences.
pub fn from_snapshot(s: Snapshot) -> Result<History, String> {
    let policy_of: HashMap<&str, &str> = s
        .programs
        .iter()
        .map(|p| (p.id.as_str(), p.policy.as_str()))
        .collect();
    let cards: HashMap<&str, &crate::issuing::CardRecord> =
        s.cards.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut h = History::default();
    for (i, stored) in s.decisions.iter().enumerate() {
        let d = decision_record::decode(stored)
            .map_err(|e| format!("stored decision {i} cannot be read: {e}"))?;
        let Some(request) = d.request() else {
            h.without_request += 1;
            continue;
        };
        let Some(card) = cards.get(d.card_id.as_str()) else {
            h.without_card += 1;
            continue;
        };
        let o = d.outcome();
        let amount_approved = Decimal::from_str(&o.amount_approved)
            .map_err(|_| format!("decision {}: amount `{}`", d.auth_id, o.amount_approved))?;
        let available_after = match &o.available_after {
            Some(a) => Some(
                Decimal::from_str(a)
                    .map_err(|_| format!("decision {}: balance `{a}`", d.auth_id))?,
            ),
            None => None,
        };
        // The balance before: what the answer said was left, plus what it held.
        let available = available_after.map(|a| if o.approved { a + amount_approved } else { a });
        h.records.push(ReplayRecord {
            at: at_ms(d.at_ms),
            program: card.program.clone(),
            policy: policy_of
                .get(card.program.as_str())
                .map_or_else(String::new, |p| p.to_string()),
            cardholder_id: card.cardholder_id.clone(),
            card_currency: card.currency,
            available,
            request: request.clone(),
            before: Some(Outcome {
                approved: o.approved,
                response_code: o.response_code,
                reason: o.reason,
                rule: o.rule,
                amount_approved,
            }),
        });
    }
    h.releases = s
        .velocity_releases
        .into_iter()
        .map(|(card_id, auth_id, ratio, at_ms)| Release {
            card_id,
            auth_id,
            ratio,
            at_ms,
        })
        .collect();
    h.controls = s
        .cards
        .into_iter()
        .filter_map(|c| Some((c.id, c.controls?)))
        .collect();
    Ok(h)
}
