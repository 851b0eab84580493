//! `spendgate gen`: a seeded stream of realistic authorizations for the shipped markets,
//! so analysts can try rules before they have history. Cards in Nigeria, Ghana and Kenya
//! (NGN, GHS, KES) shop near home — groceries, restaurants, fuel, transport, airtime,
//! online services — by day more than by night, withdraw cash now and then, and travel
//! a little; a few cards show card testing (bursts of small online attempts) and
//! impossible travel (a purchase abroad an hour after one at home). The same seed gives
//! the same stream (ChaCha8).

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;

use super::replay::ReplayRecord;
use crate::decision::{Authorization, Channel, Country, LatLon, Mcc, Merchant, TxnType};
use crate::money::Currency;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    pub seed: u64,
    pub cards: usize,
    pub days: u32,
    /// Authorizations per card per day, on average.
    pub per_card_day: f64,
    pub start: DateTime<Utc>,
    pub program: String,
    pub policy: String,
}

struct Market {
    country: &'static str,
    currency: Currency,
    /// Home city centre.
    home: (f64, f64),
    /// Major units per USD, roughly: amounts are drawn in USD and converted.
    per_usd: i64,
}

fn markets() -> [Market; 3] {
    [
        Market {
            country: "NG",
            currency: Currency::NGN,
            home: (6.5244, 3.3792),
            per_usd: 1550,
        },
        Market {
            country: "GH",
            currency: Currency::from_code("GHS").expect("ISO 4217"),
            home: (5.6037, -0.1870),
            per_usd: 15,
        },
        Market {
            country: "KE",
            currency: Currency::from_code("KES").expect("ISO 4217"),
            home: (-1.2921, 36.8219),
            per_usd: 130,
        },
    ]
}

/// (MCC, channel, typical USD amount, weight).
const SPEND: [(&str, Channel, f64, u32); 10] = [
    ("5411", Channel::Pos, 25.0, 30),         // groceries
    ("5812", Channel::Contactless, 12.0, 15), // restaurants
    ("5541", Channel::Pos, 30.0, 10),         // fuel
    ("4121", Channel::Ecommerce, 6.0, 12),    // ride-hailing
    ("4814", Channel::Ecommerce, 3.0, 10),    // airtime
    ("5999", Channel::Ecommerce, 40.0, 8),    // online shops
    ("5732", Channel::Pos, 180.0, 3),         // electronics
    ("4511", Channel::Ecommerce, 350.0, 1),   // airlines
    ("7995", Channel::Ecommerce, 20.0, 2),    // betting (declined by the shipped rules)
    ("6011", Channel::Atm, 60.0, 9),          // cash
];

/// Countries cards travel to.
const TRAVEL: [(&str, f64, f64); 4] = [
    ("ZA", -26.2041, 28.0473),
    ("GB", 51.5072, -0.1276),
    ("AE", 25.2048, 55.2708),
    ("US", 40.7128, -74.0060),
];

/// The stream, in time order.
pub fn generate(o: &GenOptions) -> Vec<ReplayRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let markets = markets();
    let weights: u32 = SPEND.iter().map(|s| s.3).sum();
    let mut out = Vec::new();
    let span_ms = i64::from(o.days) * 86_400_000;
    for c in 0..o.cards {
        let m = &markets[c % markets.len()];
        let card_id = format!("gen-card-{c:06}");
        let holder = format!("gen-holder-{c:06}");
        let available = Decimal::from(m.per_usd * 3_000);
        let n =
            ((o.per_card_day * f64::from(o.days)) * rng.random_range(0.3..1.7)).round() as usize;
        let mut push = |at: DateTime<Utc>, t: Authorization| {
            out.push(ReplayRecord {
                at,
                program: o.program.clone(),
                policy: o.policy.clone(),
                cardholder_id: holder.clone(),
                card_currency: m.currency,
                available: Some(available),
                request: t,
                before: None,
            });
        };
        let seq = std::cell::Cell::new(0u32);
        let txn = |rng: &mut ChaCha8Rng,
                   mcc: &str,
                   channel: Channel,
                   usd: f64,
                   country: &str,
                   at: (f64, f64)| {
            seq.set(seq.get() + 1);
            let major = (usd * m.per_usd as f64).max(1.0);
            let merchant_no = rng.random_range(0..40u32);
            Authorization {
                id: format!("gen-{c:06}-{:05}", seq.get()),
                card_id: card_id.clone(),
                amount: Decimal::new((major * 100.0).round() as i64, 2),
                currency: m.currency,
                merchant: Merchant {
                    id: format!("m-{country}-{mcc}-{merchant_no}"),
                    name: format!("Merchant {merchant_no}"),
                    mcc: Mcc::parse(mcc).expect("four digits"),
                    country: Country::parse(country).expect("ISO 3166"),
                    location: (channel != Channel::Ecommerce).then(|| LatLon {
                        lat: at.0 + rng.random_range(-0.05..0.05),
                        lon: at.1 + rng.random_range(-0.05..0.05),
                    }),
                },
                channel,
                txn_type: if channel == Channel::Atm {
                    TxnType::Withdrawal
                } else {
                    TxnType::Purchase
                },
                timestamp: None,
                partial_ok: false,
            }
        };
        let mut times: Vec<i64> = (0..n)
            .map(|_| {
                // Mostly daytime (local ≈ UTC+0..3): 06:00–23:00, a few at night.
                let day = rng.random_range(0..i64::from(o.days.max(1)));
                let hour = if rng.random_bool(0.9) {
                    rng.random_range(6..23)
                } else {
                    rng.random_range(0..6)
                };
                day * 86_400_000 + hour * 3_600_000 + rng.random_range(0..3_600_000)
            })
            .collect();
        times.sort_unstable();
        let traveller = rng.random_bool(0.05);
        let abroad = TRAVEL[rng.random_range(0..TRAVEL.len())];
        for (i, t) in times.iter().enumerate() {
            let mut pick = rng.random_range(0..weights);
            let (mcc, channel, usd, _) = SPEND
                .iter()
                .find(|s| {
                    if pick < s.3 {
                        true
                    } else {
                        pick -= s.3;
                        false
                    }
                })
                .copied()
                .unwrap_or(SPEND[0]);
            let usd = usd * rng.random_range(0.3..2.2);
            let away = traveller && i >= n / 2 && i < n / 2 + 4;
            let (country, at) = if away {
                (abroad.0, (abroad.1, abroad.2))
            } else {
                (m.country, m.home)
            };
            let a = txn(&mut rng, mcc, channel, usd, country, at);
            push(o.start + Duration::milliseconds(*t), a);
        }
        // Card testing: a burst of tiny online attempts within minutes.
        if rng.random_bool(0.02) {
            let t0 = rng.random_range(0..span_ms.max(1));
            for k in 0..12 {
                let a = txn(&mut rng, "5999", Channel::Ecommerce, 0.7, m.country, m.home);
                push(o.start + Duration::milliseconds(t0 + k * 20_000), a);
            }
        }
        // Impossible travel: at home, then in London an hour later.
        if rng.random_bool(0.02) {
            let t0 = rng.random_range(0..span_ms.max(1));
            let home = txn(&mut rng, "5411", Channel::Pos, 20.0, m.country, m.home);
            push(o.start + Duration::milliseconds(t0), home);
            let far = txn(
                &mut rng,
                "5732",
                Channel::Pos,
                90.0,
                "GB",
                (51.5072, -0.1276),
            );
            push(o.start + Duration::milliseconds(t0 + 3_600_000), far);
        }
    }
    out.sort_by(|a, b| {
        a.at.cmp(&b.at)
            .then_with(|| a.request.id.cmp(&b.request.id))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn options(seed: u64) -> GenOptions {
        GenOptions {
            seed,
            cards: 200,
            days: 3,
            per_card_day: 4.0,
            start: Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap(),
            program: "gen".into(),
            policy: "consumer-prepaid-africa".into(),
        }
    }

    fn ids(r: &[ReplayRecord]) -> Vec<String> {
        r.iter().map(|r| r.request.id.clone()).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        assert_eq!(ids(&generate(&options(7))), ids(&generate(&options(7))));
        assert_ne!(ids(&generate(&options(7))), ids(&generate(&options(8))));
    }

    #[test]
    fn the_stream_covers_the_markets_channels_and_is_in_time_order() {
        let r = generate(&options(7));
        assert!(r.len() > 1_000, "{}", r.len());
        assert!(r.windows(2).all(|w| w[0].at <= w[1].at));
        for code in ["NGN", "GHS", "KES"] {
            assert!(r.iter().any(|x| x.card_currency.code() == code), "{code}");
        }
        for ch in [
            Channel::Pos,
            Channel::Ecommerce,
            Channel::Atm,
            Channel::Contactless,
        ] {
            assert!(r.iter().any(|x| x.request.channel == ch), "{ch:?}");
        }
        assert!(r
            .iter()
            .any(|x| x.request.merchant.country.as_str() == "GB"));
    }
}
