//! The Rhai sandbox: one engine built once, with hard limits, and the objects scripts see.
//!
//! Scripts and `when:` expressions compile to `AST` at load. At run time they see
//! `txn`, `card`, `history` and `lists` (read-only objects with getters, so no map is built
//! per decision) and return `pass()`, `decline(code, reason)`, `flag(reason)` or
//! `score(points, reason)`. Any runtime error (operation limit, recursion, string
//! size, type error) becomes the policy's `on_error` outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, Scope, AST};
use rust_decimal::Decimal;

use crate::domain::{CardStatus, Channel, Country, KycStatus, Mcc, ResponseCode, TxnType};
use crate::money::Currency;
use crate::velocity::{Activity, Totals, WindowSpec};

/// Limits of the sandbox; a script that exceeds any of them errors out promptly.
pub const OPERATIONS_MAX: u64 = 20_000;
pub const CALL_LEVELS_MAX: usize = 16;
pub const EXPR_DEPTH_MAX: usize = 32;
pub const FN_EXPR_DEPTH_MAX: usize = 16;
pub const STRING_LEN_MAX: usize = 1_024;
pub const ARRAY_LEN_MAX: usize = 256;
pub const MAP_LEN_MAX: usize = 64;
pub const VARIABLES_MAX: usize = 64;
pub const FUNCTIONS_MAX: usize = 16;
pub const SCRIPT_BYTES_MAX: usize = 32 * 1024;

/// What a script decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    Decline {
        code: ResponseCode,
        reason: ImmutableString,
    },
    Flag {
        reason: ImmutableString,
    },
    Score {
        points: i64,
        reason: ImmutableString,
    },
}

/// The transaction as scripts see it (amounts in the policy currency).
#[derive(Debug, Clone)]
pub struct ScriptTxn {
    pub amount: Decimal,
    pub original_amount: Decimal,
    pub original_currency: Currency,
    pub mcc: Mcc,
    pub country: Country,
    pub channel: Channel,
    pub txn_type: TxnType,
    pub merchant_id: ImmutableString,
    pub merchant_name: ImmutableString,
    pub location: Option<(f64, f64)>,
    pub local: LocalTime,
}

/// The decision's time in the policy's time zone, worked out on first use: most scripts
/// never ask, and the zone's lookup is a good part of building a script's inputs.
#[derive(Debug, Clone)]
pub struct LocalTime {
    pub at: chrono::DateTime<chrono::Utc>,
    pub tz: chrono_tz::Tz,
    /// (minute of the day, ISO weekday with Monday = 1), once known.
    pub known: Option<(u16, u8)>,
}

impl LocalTime {
    /// `known` is what the caller already worked out for this time and zone, if anything.
    pub fn new(
        at: chrono::DateTime<chrono::Utc>,
        tz: chrono_tz::Tz,
        known: Option<(u16, u8)>,
    ) -> LocalTime {
        LocalTime { at, tz, known }
    }

    /// (minute of the day, ISO weekday with Monday = 1).
    pub fn get(&mut self) -> (u16, u8) {
        *self.known.get_or_insert_with(|| {
            use chrono::{Datelike, Timelike};
            let l = self.at.with_timezone(&self.tz);
            (
                (l.hour() * 60 + l.minute()) as u16,
                l.weekday().number_from_monday() as u8,
            )
        })
    }
}

#[derive(Debug, Clone)]
pub struct ScriptCard {
    pub status: CardStatus,
    pub currency: Currency,
    pub kyc: KycStatus,
    pub available: Option<Decimal>,
    pub last_location: Option<(f64, f64)>,
    pub minutes_since_last: Option<i64>,
}

/// The card's history as scripts read it (amounts in the policy currency at decision
/// time). `count`, `sum` and `declined` read real velocity windows, declared at load time
/// by the string literals the code passes, so they are exact however busy the card is;
/// `countries` reads the newest approval per country (exact too); `seen_merchant` looks at
/// the last [`crate::velocity::ACTIVITY_MAX`] decisions.
#[derive(Debug, Clone)]
pub struct ScriptHistory {
    pub now_ms: i64,
    /// The card's recent decisions, copied only for a policy whose code may call
    /// `seen_merchant` (see [`HistoryReads`]).
    pub events: Option<Arc<[Activity]>>,
    /// (window length, approved totals, declined totals) for each declared window.
    pub windows: Arc<[(i64, Totals, Totals)]>,
    /// The newest approval in each country.
    /// Copied only for a policy whose code may call `countries` (see [`HistoryReads`]).
    pub countries: Option<Arc<[(Country, i64)]>>,
}

impl ScriptHistory {
    fn length(window: &str) -> Result<i64, Box<EvalAltResult>> {
        match WindowSpec::parse(window).map_err(|e| e.to_string())? {
            WindowSpec::Rolling { length_ms } => Ok(length_ms),
            _ => Err("history windows are rolling lengths such as 1h or 24h".into()),
        }
    }

    fn totals(&self, window: &str) -> Result<(Totals, Totals), Box<EvalAltResult>> {
        let length = Self::length(window)?;
        self.windows
            .iter()
            .find(|(l, ..)| *l == length)
            .map(|(_, a, d)| (*a, *d))
            .ok_or_else(|| {
                format!("history window `{window}` is not declared: pass it as a string literal")
                    .into()
            })
    }
}

/// Which parts of a card's history a policy's Rhai code may read beyond its declared
/// windows: a decision copies each only for code that could ask for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryReads {
    /// The activity log (`history.seen_merchant`).
    pub activity: bool,
    /// The newest approval per country (`history.countries`).
    pub countries: bool,
}

impl HistoryReads {
    /// What Rhai source may read: a method it names, or anything at all once it builds a
    /// function pointer (`Fn(...)`), through which a name could be put together at run
    /// time. Conservative: a false yes only costs a copy.
    pub fn of(src: &str) -> HistoryReads {
        let b = src.as_bytes();
        let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let pointer = src
            .match_indices("Fn")
            .any(|(i, _)| (i == 0 || !ident(b[i - 1])) && b.get(i + 2).is_none_or(|&c| !ident(c)));
        HistoryReads {
            activity: pointer || src.contains("seen_merchant"),
            countries: pointer || src.contains("countries"),
        }
    }

    pub fn add(&mut self, other: HistoryReads) {
        self.activity |= other.activity;
        self.countries |= other.countries;
    }
}

/// The rolling windows (in ms) that Rhai source reads through `history.count`, `sum` or
/// `declined`; every such call must pass its window as a string literal, so the windows
/// are known at load time and kept exactly. (`countries` is checked too; it needs no
/// window of its own.)
pub fn history_windows_in(src: &str) -> Result<Vec<i64>, String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    for (start, _) in src.match_indices("history") {
        if start > 0 && ident(b[start - 1]) {
            continue;
        }
        let mut i = skip_ws(start + "history".len());
        if b.get(i) != Some(&b'.') {
            continue;
        }
        i = skip_ws(i + 1);
        let name_start = i;
        while i < b.len() && ident(b[i]) {
            i += 1;
        }
        let name = &src[name_start..i];
        if !matches!(name, "count" | "sum" | "declined" | "countries") {
            continue;
        }
        let literal = || -> Option<&str> {
            let mut j = skip_ws(i);
            if b.get(j) != Some(&b'(') {
                return None;
            }
            j = skip_ws(j + 1);
            if b.get(j) != Some(&b'"') {
                return None;
            }
            let end = j + 1 + src[j + 1..].find('"')?;
            let k = skip_ws(end + 1);
            (b.get(k) == Some(&b')')).then(|| &src[j + 1..end])
        };
        let Some(window) = literal() else {
            return Err(format!(
                "history.{name} takes its window as a string literal such as \"24h\""
            ));
        };
        match WindowSpec::parse(window) {
            Ok(WindowSpec::Rolling { length_ms }) => {
                if name != "countries" && !out.contains(&length_ms) {
                    out.push(length_ms);
                }
            }
            _ => {
                return Err(format!(
                    "history.{name}(\"{window}\"): windows are rolling lengths such as 1h or 24h"
                ))
            }
        }
    }
    Ok(out)
}

/// Shared strings for the names of small enums, so that getters clone a reference
/// instead of allocating on every decision.
macro_rules! interned {
    ($fn_name:ident, $ty:ty) => {
        fn $fn_name(v: $ty) -> ImmutableString {
            static NAMES: OnceLock<Vec<ImmutableString>> = OnceLock::new();
            let names =
                NAMES.get_or_init(|| <$ty>::ALL.iter().map(|x| x.as_str().into()).collect());
            names[v as usize].clone()
        }
    };
}
interned!(channel_name, Channel);
interned!(txn_type_name, TxnType);
interned!(status_name, CardStatus);
interned!(kyc_name, KycStatus);

/// Named lists of the policy, for `lists.has("name", value)`.
#[derive(Debug, Clone, Default)]
pub struct ScriptLists(pub Arc<BTreeMap<String, BTreeSet<String>>>);

fn build_engine(allow_loops: bool) -> Engine {
    let mut e = Engine::new();
    e.set_max_operations(OPERATIONS_MAX)
        .set_max_call_levels(CALL_LEVELS_MAX)
        .set_max_expr_depths(EXPR_DEPTH_MAX, FN_EXPR_DEPTH_MAX)
        .set_max_string_size(STRING_LEN_MAX)
        .set_max_array_size(ARRAY_LEN_MAX)
        .set_max_map_size(MAP_LEN_MAX)
        .set_max_variables(VARIABLES_MAX)
        .set_max_functions(FUNCTIONS_MAX)
        .set_allow_looping(allow_loops)
        .set_strict_variables(true)
        .set_fail_on_invalid_map_property(true);
    // No dynamic code, no output channels.
    e.disable_symbol("eval");
    e.on_print(|_| {});
    e.on_debug(|_, _, _| {});

    e.register_fn("pass", || Verdict::Pass);
    e.register_fn(
        "decline",
        |code: &str, reason: ImmutableString| -> Result<Verdict, Box<EvalAltResult>> {
            let code = ResponseCode::parse_decline(code)
                .map_err(|m| -> Box<EvalAltResult> { m.into() })?;
            Ok(Verdict::Decline { code, reason })
        },
    );
    e.register_fn("flag", |reason: ImmutableString| Verdict::Flag { reason });
    e.register_fn(
        "score",
        |points: i64, reason: ImmutableString| -> Result<Verdict, Box<EvalAltResult>> {
            if !(-1000..=1000).contains(&points) {
                return Err("score points must be within -1000..=1000".into());
            }
            Ok(Verdict::Score { points, reason })
        },
    );
    e.register_fn(
        "distance_km",
        |lat1: f64, lon1: f64, lat2: f64, lon2: f64| {
            crate::geo::distance_km((lat1, lon1), (lat2, lon2))
        },
    );

    e.register_type_with_name::<Verdict>("Verdict");
    e.register_type_with_name::<ScriptTxn>("Txn")
        .register_get("amount", |t: &mut ScriptTxn| t.amount)
        .register_get("original_amount", |t: &mut ScriptTxn| t.original_amount)
        .register_get("original_currency", |t: &mut ScriptTxn| {
            ImmutableString::from(t.original_currency.code())
        })
        .register_get("mcc", |t: &mut ScriptTxn| {
            ImmutableString::from(t.mcc.to_string())
        })
        .register_get("country", |t: &mut ScriptTxn| {
            ImmutableString::from(t.country.as_str())
        })
        .register_get("channel", |t: &mut ScriptTxn| channel_name(t.channel))
        .register_get("type", |t: &mut ScriptTxn| txn_type_name(t.txn_type))
        .register_get("merchant_id", |t: &mut ScriptTxn| t.merchant_id.clone())
        .register_get("merchant_name", |t: &mut ScriptTxn| t.merchant_name.clone())
        .register_get("has_location", |t: &mut ScriptTxn| t.location.is_some())
        .register_get("lat", |t: &mut ScriptTxn| {
            t.location
                .map_or(Dynamic::UNIT, |l| Dynamic::from_float(l.0))
        })
        .register_get("lon", |t: &mut ScriptTxn| {
            t.location
                .map_or(Dynamic::UNIT, |l| Dynamic::from_float(l.1))
        })
        .register_get("local_hour", |t: &mut ScriptTxn| {
            i64::from(t.local.get().0 / 60)
        })
        .register_get("local_minute", |t: &mut ScriptTxn| {
            i64::from(t.local.get().0 % 60)
        })
        .register_get("weekday", |t: &mut ScriptTxn| i64::from(t.local.get().1));
    e.register_type_with_name::<ScriptCard>("Card")
        .register_get("status", |c: &mut ScriptCard| status_name(c.status))
        .register_get("currency", |c: &mut ScriptCard| {
            ImmutableString::from(c.currency.code())
        })
        .register_get("kyc", |c: &mut ScriptCard| kyc_name(c.kyc))
        .register_get("available", |c: &mut ScriptCard| {
            c.available.map_or(Dynamic::UNIT, Dynamic::from_decimal)
        })
        .register_get("has_last_location", |c: &mut ScriptCard| {
            c.last_location.is_some()
        })
        .register_get("last_lat", |c: &mut ScriptCard| {
            c.last_location
                .map_or(Dynamic::UNIT, |l| Dynamic::from_float(l.0))
        })
        .register_get("last_lon", |c: &mut ScriptCard| {
            c.last_location
                .map_or(Dynamic::UNIT, |l| Dynamic::from_float(l.1))
        })
        .register_get("minutes_since_last", |c: &mut ScriptCard| {
            c.minutes_since_last
                .map_or(Dynamic::UNIT, Dynamic::from_int)
        });
    e.register_type_with_name::<ScriptHistory>("History")
        .register_fn(
            "count",
            |h: &mut ScriptHistory, w: &str| -> Result<i64, Box<EvalAltResult>> {
                Ok(h.totals(w)?.0.count as i64)
            },
        )
        .register_fn(
            "sum",
            |h: &mut ScriptHistory, w: &str| -> Result<Decimal, Box<EvalAltResult>> {
                Ok(h.totals(w)?.0.amount)
            },
        )
        .register_fn(
            "declined",
            |h: &mut ScriptHistory, w: &str| -> Result<i64, Box<EvalAltResult>> {
                Ok(h.totals(w)?.1.count as i64)
            },
        )
        .register_fn(
            "countries",
            |h: &mut ScriptHistory, w: &str| -> Result<i64, Box<EvalAltResult>> {
                let start = h.now_ms - ScriptHistory::length(w)? + 1;
                // Never met: `HistoryReads` says yes to any code that could get here.
                let countries = h.countries.as_ref().ok_or_else(|| {
                    Box::<EvalAltResult>::from("history.countries: the countries were not loaded")
                })?;
                Ok(countries.iter().filter(|(_, at)| *at >= start).count() as i64)
            },
        )
        .register_fn(
            "seen_merchant",
            |h: &mut ScriptHistory, merchant: &str| -> Result<bool, Box<EvalAltResult>> {
                // Never met: `HistoryReads` says yes to any code that could get here.
                let events = h.events.as_ref().ok_or_else(|| {
                    Box::<EvalAltResult>::from(
                        "history.seen_merchant: the activity log was not loaded",
                    )
                })?;
                let k = crate::velocity::key_hash(&[merchant.as_bytes()]);
                Ok(events.iter().any(|a| a.approved && a.merchant == k))
            },
        );
    e.register_type_with_name::<ScriptLists>("Lists")
        .register_fn(
            "has",
            |l: &mut ScriptLists,
             name: &str,
             value: ImmutableString|
             -> Result<bool, Box<EvalAltResult>> {
                match l.0.get(name) {
                    Some(set) => Ok(set.contains(value.as_str())),
                    None => Err(format!("no list named `{name}`").into()),
                }
            },
        );
    e
}

/// The shared engine; scripts that allow loops get a twin with looping on.
pub fn engine(allow_loops: bool) -> &'static Engine {
    static STRICT: OnceLock<Engine> = OnceLock::new();
    static LOOPING: OnceLock<Engine> = OnceLock::new();
    if allow_loops {
        LOOPING.get_or_init(|| build_engine(true))
    } else {
        STRICT.get_or_init(|| build_engine(false))
    }
}

/// The names scripts may use, so that strict variables catch typos at load time.
fn compile_scope() -> Scope<'static> {
    let mut s = Scope::new();
    s.push_constant("txn", ());
    s.push_constant("card", ());
    s.push_constant("history", ());
    s.push_constant("lists", ());
    s
}

/// Compiles a script file's text.
/// Errors carry the 1-based (line, column) in the script where Rhai knows it.
pub fn compile_script(
    text: &str,
    allow_loops: bool,
) -> Result<AST, (String, Option<(usize, usize)>)> {
    if text.len() > SCRIPT_BYTES_MAX {
        return Err((
            format!(
                "script is {} bytes, above the {SCRIPT_BYTES_MAX}-byte limit",
                text.len()
            ),
            None,
        ));
    }
    engine(allow_loops).compile_with_scope(&compile_scope(), text).map_err(|e| {
        let pos = e.position();
        let at = pos.line().map(|l| (l, pos.position().unwrap_or(1)));
        let mut message = e.0.to_string();
        if !allow_loops && ["'loop'", "'while'", "'for'", "'do'"].iter().any(|k| message.contains(k)) {
            message.push_str(" (loops are off for this policy; `script_loops: true` allows them, bounded by the operations limit)");
        }
        (message, at)
    })
}

/// Compiles a `when:` / `unless:` expression (no statements, no loops).
pub fn compile_condition(text: &str) -> Result<AST, String> {
    engine(false)
        .compile_expression_with_scope(&compile_scope(), text)
        .map_err(|e| e.to_string())
}

/// The per-decision script inputs, built once on first use.
pub struct ScriptInputs {
    pub scope: Scope<'static>,
}

impl ScriptInputs {
    pub fn new(
        txn: ScriptTxn,
        card: ScriptCard,
        history: ScriptHistory,
        lists: ScriptLists,
    ) -> ScriptInputs {
        let mut scope = Scope::new();
        scope.push_constant("txn", txn);
        scope.push_constant("card", card);
        scope.push_constant("history", history);
        scope.push_constant("lists", lists);
        ScriptInputs { scope }
    }

    /// Runs a script; any error or an unexpected return value is an `Err` message.
    pub fn run_script(&mut self, ast: &AST, allow_loops: bool) -> Result<Verdict, String> {
        let r = engine(allow_loops).eval_ast_with_scope::<Dynamic>(&mut self.scope, ast);
        self.scope.rewind(4);
        let v = r.map_err(|e| e.to_string())?;
        if v.is_unit() {
            return Ok(Verdict::Pass);
        }
        v.try_cast::<Verdict>()
            .ok_or_else(|| "script must end with pass(), decline(code, reason), flag(reason) or score(points, reason)".to_string())
    }

    pub fn run_condition(&mut self, ast: &AST) -> Result<bool, String> {
        let r = engine(false).eval_ast_with_scope::<Dynamic>(&mut self.scope, ast);
        self.scope.rewind(4);
        let v = r.map_err(|e| e.to_string())?;
        v.as_bool()
            .map_err(|t| format!("condition must be true or false, got {t}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn inputs(local: LocalTime, events: Option<Arc<[Activity]>>) -> ScriptInputs {
        ScriptInputs::new(
            ScriptTxn {
                amount: Decimal::ONE,
                original_amount: Decimal::ONE,
                original_currency: Currency::NGN,
                mcc: Mcc::parse("5411").unwrap(),
                country: Country::parse("NG").unwrap(),
                channel: Channel::Pos,
                txn_type: TxnType::Purchase,
                merchant_id: "m-1".into(),
                merchant_name: "Shop".into(),
                location: None,
                local,
            },
            ScriptCard {
                status: CardStatus::Active,
                currency: Currency::NGN,
                kyc: KycStatus::Verified,
                available: None,
                last_location: None,
                minutes_since_last: None,
            },
            ScriptHistory {
                now_ms: 0,
                events,
                windows: Arc::from(Vec::new()),
                countries: None,
            },
            ScriptLists::default(),
        )
    }

    #[test]
    fn code_that_could_read_the_log_or_the_countries_is_said_to() {
        let reads = |activity, countries| HistoryReads {
            activity,
            countries,
        };
        assert_eq!(
            HistoryReads::of("history.seen_merchant(txn.merchant_id)"),
            reads(true, false)
        );
        assert_eq!(
            HistoryReads::of(r#"history.countries("24h") > 2"#),
            reads(false, true)
        );
        // A name put together at run time needs a function pointer: anything may be read.
        assert_eq!(
            HistoryReads::of(r#"let f = Fn("seen_" + "merchant"); history.call(f, "m-1")"#),
            reads(true, true)
        );
        assert_eq!(HistoryReads::of("let f=Fn(\"x\");"), reads(true, true));
        assert_eq!(
            HistoryReads::of(r#"history.count("1h") < 5 && txn.amount > 100.to_decimal()"#),
            reads(false, false)
        );
        assert_eq!(
            HistoryReads::of("let myFn = 1; let Fnord = 2; myFn + Fnord"),
            reads(false, false)
        );
    }

    #[test]
    fn local_time_getters_read_the_policy_zone_once_asked() {
        // Monday 23:30 UTC is Tuesday 00:30 in Lagos (UTC+1).
        let at = chrono::Utc.with_ymd_and_hms(2026, 1, 5, 23, 30, 0).unwrap();
        let mut i = inputs(LocalTime::new(at, chrono_tz::Africa::Lagos, None), None);
        let ast =
            compile_condition("txn.local_hour == 0 && txn.local_minute == 30 && txn.weekday == 2")
                .unwrap();
        assert_eq!(i.run_condition(&ast), Ok(true));
        // What the decision already worked out is used as is.
        let mut i = inputs(
            LocalTime::new(at, chrono_tz::Africa::Lagos, Some((13 * 60 + 5, 5))),
            None,
        );
        let ast =
            compile_condition("txn.local_hour * 100 + txn.local_minute + txn.weekday * 10000")
                .unwrap();
        let r = engine(false)
            .eval_ast_with_scope::<i64>(&mut i.scope, &ast)
            .unwrap();
        assert_eq!(r, 51_305);
    }

    #[test]
    fn history_not_loaded_is_an_error_never_a_false_no() {
        let at = chrono::Utc.with_ymd_and_hms(2026, 1, 5, 12, 0, 0).unwrap();
        let countries = compile_condition(r#"history.countries("24h") == 0"#).unwrap();
        let mut i = inputs(LocalTime::new(at, chrono_tz::UTC, None), None);
        let e = i.run_condition(&countries).unwrap_err();
        assert!(e.contains("countries were not loaded"), "{e}");
        let ast = compile_condition(r#"history.seen_merchant("m-1")"#).unwrap();
        let mut i = inputs(LocalTime::new(at, chrono_tz::UTC, None), None);
        let e = i.run_condition(&ast).unwrap_err();
        assert!(e.contains("activity log was not loaded"), "{e}");
        let seen = Activity {
            at_ms: 0,
            amount: Decimal::ONE,
            approved: true,
            country: Country::parse("NG").unwrap(),
            merchant: crate::velocity::key_hash(&[b"m-1"]),
        };
        let mut i = inputs(
            LocalTime::new(at, chrono_tz::UTC, None),
            Some(Arc::from(vec![seen])),
        );
        assert_eq!(i.run_condition(&ast), Ok(true));
    }
}
