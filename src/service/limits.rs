//! `GET /v1/cards/{id}/limits`: for every velocity rule that applies to a card (its
//! program's policy and its own controls), what is used, what is left and when the
//! window gives capacity back — so support can answer "why was I declined and when can
//! I pay again". Read under the card's lock; changes nothing.

use serde::Serialize;

use super::{CardState, Engine, Rejection};
use crate::decision::velocity_reset;
use crate::money::format_amount;
use crate::policy::{Check, CompiledPolicy, Counts, VelocityScope};
use crate::velocity::VelocityState;

/// One velocity rule's standing on a card.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CardLimit {
    pub rule: String,
    /// `policy` or `controls` (the card's own spending controls).
    pub source: String,
    /// `card`, `cardholder`, `program` (shared with other cards).
    pub scope: String,
    pub window: String,
    /// `approved` (spend and count) or `declined` (declines counted).
    pub counts: String,
    /// The rule applies only to some transactions (`when:`/`unless:`).
    pub conditional: bool,
    /// In the policy's currency.
    pub currency: String,
    pub amount_max: Option<String>,
    pub amount_used: String,
    pub amount_left: Option<String>,
    pub count_max: Option<u32>,
    pub count_used: u64,
    pub count_left: Option<u64>,
    /// When capacity comes back (RFC 3339), how much amount and count; none when
    /// nothing is used or the window never resets.
    pub frees_at: Option<String>,
    pub frees_amount: Option<String>,
    pub frees_count: Option<u64>,
}

impl Engine {
    /// The card's velocity limits now (a tenant sees only its own cards).
    pub fn card_limits(
        &self,
        tenant: Option<&str>,
        card_id: &str,
    ) -> Result<Vec<CardLimit>, Rejection> {
        self.read_card(tenant, card_id, |c, policy, hg, pg, now| {
            limits(c, policy, hg, pg, now)
        })
    }
}

fn limits(
    c: &CardState,
    policy: &CompiledPolicy,
    hg: Option<&VelocityState>,
    pg: Option<&VelocityState>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<CardLimit> {
    let mut out = Vec::new();
    let sources: [(&str, Option<&CompiledPolicy>); 2] = [
        ("policy", Some(policy)),
        ("controls", c.controls.as_deref()),
    ];
    for (source, p) in sources {
        let Some(p) = p else { continue };
        for rule in &p.rules {
            let Check::Velocity(v) = &rule.check else {
                continue;
            };
            let state = match v.scope {
                VelocityScope::Card => Some(&c.velocity),
                VelocityScope::Cardholder => hg,
                VelocityScope::Program => pg,
                // Per merchant: no single standing to report.
                VelocityScope::CardMerchant => continue,
            };
            let start_ms = v.window.start_ms(now, p.timezone);
            let (used, oldest) = state.map_or((Default::default(), None), |s| {
                (s.totals(v.key, start_ms), s.oldest(v.key, start_ms))
            });
            let reset = velocity_reset(v, used, oldest, now.timestamp_millis(), p.timezone);
            let money = |d| format_amount(d, p.currency);
            out.push(CardLimit {
                rule: rule.id.clone(),
                source: source.into(),
                scope: v.scope.as_str().into(),
                window: v.window.to_string(),
                counts: match v.counts {
                    Counts::Approved => "approved".into(),
                    Counts::Declined => "declined".into(),
                },
                conditional: rule.when.is_some() || rule.unless.is_some(),
                currency: p.currency.code().into(),
                amount_max: v.amount_max.map(money),
                amount_used: money(used.amount),
                amount_left: v
                    .amount_max
                    .map(|m| money((m - used.amount).max(rust_decimal::Decimal::ZERO))),
                count_max: v.count_max,
                count_used: used.count,
                count_left: v.count_max.map(|m| u64::from(m).saturating_sub(used.count)),
                frees_at: reset.and_then(|r| {
                    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(r.at_ms)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                }),
                frees_amount: reset.map(|r| money(r.amount)),
                frees_count: reset.map(|r| r.count),
            });
        }
    }
    out
}
