//! Velocity windows: exact rolling, calendar and lifetime sums and counts.
//!
//! Each window keeps its events in time order with running totals. Reads subtract the
//! (usually empty) expired prefix without mutating, so the pure core can read under a
//! shared borrow; `record` prunes the prefix, so work stays amortized O(1) per event.
//!
//! Memory is bounded: a window keeps at most [`EVENTS_PER_WINDOW_MAX`] events; a state
//! keeps one window per velocity rule (bounded by the policy's rule count) and at most
//! [`WINDOWS_PER_STATE_MAX`] per-merchant windows (`card_merchant` scope), which alone are
//! evicted: a rule's own window is never dropped to make room for a merchant's. One event
//! is 40 bytes, so a card's merchant windows take at most 64 × 128 × 40 B = 320 KiB, and a
//! typical card a few hundred bytes. Past the event cap the two oldest events merge into one stamped with the
//! *later* time: totals stay exact, and a merged event expires late rather than early, so
//! the bound can only make a limit stricter, never let spending through.

use std::collections::VecDeque;

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

pub const EVENTS_PER_WINDOW_MAX: usize = 128;
pub const WINDOWS_PER_STATE_MAX: usize = 64;
/// Shortest and longest rolling windows accepted.
pub const ROLLING_MS_MIN: i64 = 10_000;
pub const ROLLING_MS_MAX: i64 = 400 * 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CalendarUnit {
    Day,
    Week,
    Month,
    Year,
}

/// How far back a window reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowSpec {
    /// Events in (now − length, now].
    Rolling {
        length_ms: i64,
    },
    /// Events since the start of the current calendar period in the policy time zone.
    Calendar(CalendarUnit),
    Lifetime,
}

impl WindowSpec {
    /// Parses `10s`, `15m`, `24h`, `7d`, `calendar_day|week|month|year`, `lifetime`.
    pub fn parse(s: &str) -> Result<WindowSpec, String> {
        match s {
            "calendar_day" => return Ok(WindowSpec::Calendar(CalendarUnit::Day)),
            "calendar_week" => return Ok(WindowSpec::Calendar(CalendarUnit::Week)),
            "calendar_month" => return Ok(WindowSpec::Calendar(CalendarUnit::Month)),
            "calendar_year" => return Ok(WindowSpec::Calendar(CalendarUnit::Year)),
            "lifetime" => return Ok(WindowSpec::Lifetime),
            _ => {}
        }
        let bad = || {
            format!("window `{s}`: expected a length like 10s, 15m, 24h, 7d (10s to 400d), calendar_day, calendar_week, calendar_month, calendar_year or lifetime")
        };
        let split = s.len().checked_sub(1).ok_or_else(bad)?;
        let (num, unit) = s.split_at(split);
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || num.len() > 9 {
            return Err(bad());
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        let unit_ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let length_ms = n * unit_ms;
        if !(ROLLING_MS_MIN..=ROLLING_MS_MAX).contains(&length_ms) {
            return Err(bad());
        }
        Ok(WindowSpec::Rolling { length_ms })
    }

    /// Earliest event time (ms since epoch) that still counts at `now`.
    /// When a calendar window's period ends (the next one's start), in the policy time
    /// zone; None for rolling and lifetime windows.
    pub fn next_start_ms(&self, now: DateTime<Utc>, tz: Tz) -> Option<i64> {
        let WindowSpec::Calendar(unit) = *self else {
            return None;
        };
        let local = now.with_timezone(&tz).date_naive();
        let next = match unit {
            CalendarUnit::Day => local.succ_opt(),
            CalendarUnit::Week => local.checked_add_signed(Duration::days(
                7 - i64::from(local.weekday().num_days_from_monday()),
            )),
            CalendarUnit::Month => local
                .with_day(1)
                .and_then(|d| d.checked_add_months(chrono::Months::new(1))),
            CalendarUnit::Year => NaiveDate::from_ymd_opt(local.year() + 1, 1, 1),
        };
        next.map(|d| local_midnight_ms(d, tz))
    }

    pub fn start_ms(&self, now: DateTime<Utc>, tz: Tz) -> i64 {
        let now_ms = now.timestamp_millis();
        match *self {
            WindowSpec::Rolling { length_ms } => now_ms - length_ms + 1,
            WindowSpec::Lifetime => i64::MIN,
            WindowSpec::Calendar(unit) => {
                let local = now.with_timezone(&tz).date_naive();
                let first = match unit {
                    CalendarUnit::Day => Some(local),
                    CalendarUnit::Week => local.checked_sub_signed(Duration::days(i64::from(
                        local.weekday().num_days_from_monday(),
                    ))),
                    CalendarUnit::Month => local.with_day(1),
                    CalendarUnit::Year => NaiveDate::from_ymd_opt(local.year(), 1, 1),
                };
                first.map_or(now_ms, |d| local_midnight_ms(d, tz))
            }
        }
    }
}

impl std::fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WindowSpec::Rolling { length_ms } => {
                let s = length_ms / 1000;
                if s % 86_400 == 0 && s >= 2 * 86_400 {
                    write!(f, "{}d", s / 86_400)
                } else if s % 3600 == 0 {
                    write!(f, "{}h", s / 3600)
                } else if s % 60 == 0 {
                    write!(f, "{}m", s / 60)
                } else {
                    write!(f, "{s}s")
                }
            }
            WindowSpec::Calendar(CalendarUnit::Day) => f.write_str("calendar_day"),
            WindowSpec::Calendar(CalendarUnit::Week) => f.write_str("calendar_week"),
            WindowSpec::Calendar(CalendarUnit::Month) => f.write_str("calendar_month"),
            WindowSpec::Calendar(CalendarUnit::Year) => f.write_str("calendar_year"),
            WindowSpec::Lifetime => f.write_str("lifetime"),
        }
    }
}

/// The first instant of local date `d` in `tz`. Where a DST gap swallows midnight the
/// period starts at the first local time that exists.
fn local_midnight_ms(d: NaiveDate, tz: Tz) -> i64 {
    let mut t = d.and_time(chrono::NaiveTime::MIN);
    for _ in 0..48 {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(x) => return x.timestamp_millis(),
            LocalResult::Ambiguous(a, _) => return a.timestamp_millis(),
            LocalResult::None => t += Duration::minutes(30),
        }
    }
    // No time zone has a day-long gap; fall back to UTC midnight.
    d.and_time(chrono::NaiveTime::MIN)
        .and_utc()
        .timestamp_millis()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Event {
    at_ms: i64,
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    count: u32,
    /// Hash of the authorization id, 0 once merged (merged events are never reversed).
    auth: u64,
}

/// One window's events and running totals.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Window {
    events: VecDeque<Event>,
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    count: u64,
}

/// Totals of a window at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub amount: Decimal,
    pub count: u64,
}

impl Window {
    /// Totals of events at or after `start_ms`, without pruning.
    pub fn totals_since(&self, start_ms: i64) -> Totals {
        let mut t = Totals {
            amount: self.amount,
            count: self.count,
        };
        for e in self.events.iter().take_while(|e| e.at_ms < start_ms) {
            t.amount -= e.amount;
            t.count -= u64::from(e.count);
        }
        t
    }

    /// The oldest event at or after `start_ms`: (time, amount, count).
    pub fn oldest_since(&self, start_ms: i64) -> Option<(i64, Decimal, u32)> {
        self.events
            .iter()
            .find(|e| e.at_ms >= start_ms)
            .map(|e| (e.at_ms, e.amount, e.count))
    }

    fn prune(&mut self, start_ms: i64) {
        while let Some(e) = self.events.front() {
            if e.at_ms >= start_ms {
                break;
            }
            self.amount -= e.amount;
            self.count -= u64::from(e.count);
            self.events.pop_front();
        }
    }

    /// Adds an event. Times never run backwards inside a window: an event stamped
    /// earlier than the newest one is recorded at the newest time (expiring later).
    pub fn record(&mut self, start_ms: i64, at_ms: i64, amount: Decimal, auth: u64) {
        self.prune(start_ms);
        let at_ms = self
            .events
            .back()
            .map_or(at_ms, |last| at_ms.max(last.at_ms));
        if self.events.len() >= EVENTS_PER_WINDOW_MAX {
            // Merge the two oldest into one stamped with the later time (see module docs).
            if let (Some(a), Some(b)) = (self.events.pop_front(), self.events.pop_front()) {
                self.events.push_front(Event {
                    at_ms: b.at_ms,
                    amount: a.amount + b.amount,
                    count: a.count + b.count,
                    auth: 0,
                });
            }
        }
        self.events.push_back(Event {
            at_ms,
            amount,
            count: 1,
            auth,
        });
        self.amount += amount;
        self.count += 1;
        assert!(self.events.len() <= EVENTS_PER_WINDOW_MAX);
    }

    /// Gives capacity back for a reversed (or expired) authorization: `ratio` of its
    /// amount, and its count when fully reversed. Returns whether the event was found.
    pub fn reverse(&mut self, auth: u64, ratio: Decimal) -> bool {
        assert!(
            ratio > Decimal::ZERO && ratio <= Decimal::ONE,
            "reversal ratio in (0, 1]"
        );
        if auth == 0 {
            return false;
        }
        let Some(i) = self.events.iter().position(|e| e.auth == auth) else {
            return false;
        };
        let e = &mut self.events[i];
        let give_back = (e.amount * ratio).min(e.amount);
        e.amount -= give_back;
        self.amount -= give_back;
        if ratio == Decimal::ONE || e.amount.is_zero() {
            self.count -= u64::from(e.count);
            self.amount -= e.amount;
            self.events.remove(i);
        }
        true
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
    fn newest_ms(&self) -> i64 {
        self.events.back().map_or(i64::MIN, |e| e.at_ms)
    }
}

/// All windows of one scope (a card, a cardholder, a program), keyed by the compiled
/// rule's window key (and the merchant for `card_merchant` scope).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct VelocityState {
    /// (key, window, evictable): per-merchant windows are evictable, rule windows not.
    windows: Vec<(u64, Window, bool)>,
}

impl VelocityState {
    pub fn window(&self, key: u64) -> Option<&Window> {
        self.windows
            .iter()
            .find(|(k, ..)| *k == key)
            .map(|(_, w, _)| w)
    }

    pub fn totals(&self, key: u64, start_ms: i64) -> Totals {
        self.window(key)
            .map_or(Totals::default(), |w| w.totals_since(start_ms))
    }

    /// The oldest event of a rule's window still in it: (time, amount, count).
    pub fn oldest(&self, key: u64, start_ms: i64) -> Option<(i64, Decimal, u32)> {
        self.window(key).and_then(|w| w.oldest_since(start_ms))
    }

    /// Records an event in a rule's window (never evicted).
    pub fn record(&mut self, key: u64, start_ms: i64, at_ms: i64, amount: Decimal, auth: u64) {
        self.record_in(key, start_ms, at_ms, amount, auth, false);
    }

    /// Records an event in a per-merchant window: at most [`WINDOWS_PER_STATE_MAX`] of
    /// these are kept, the one whose newest event is oldest giving way.
    pub fn record_merchant(
        &mut self,
        key: u64,
        start_ms: i64,
        at_ms: i64,
        amount: Decimal,
        auth: u64,
    ) {
        self.record_in(key, start_ms, at_ms, amount, auth, true);
    }

    fn record_in(
        &mut self,
        key: u64,
        start_ms: i64,
        at_ms: i64,
        amount: Decimal,
        auth: u64,
        evictable: bool,
    ) {
        if let Some((_, w, _)) = self.windows.iter_mut().find(|(k, ..)| *k == key) {
            w.record(start_ms, at_ms, amount, auth);
            return;
        }
        if evictable {
            let merchants = self.windows.iter().filter(|(.., e)| *e).count();
            if merchants >= WINDOWS_PER_STATE_MAX {
                // Usually one already empty.
                if let Some(i) = (0..self.windows.len())
                    .filter(|&i| self.windows[i].2)
                    .min_by_key(|&i| self.windows[i].1.newest_ms())
                {
                    self.windows.swap_remove(i);
                }
            }
        }
        let mut w = Window::default();
        w.record(start_ms, at_ms, amount, auth);
        self.windows.push((key, w, evictable));
    }

    /// Gives capacity back in every window holding `auth`. Returns windows touched.
    pub fn reverse(&mut self, auth: u64, ratio: Decimal) -> usize {
        self.windows
            .iter_mut()
            .filter(|(_, w, _)| !w.is_empty())
            .map(|(_, w, _)| w.reverse(auth, ratio) as usize)
            .sum()
    }

    /// `reverse`, in the windows of `keys` only (rebuilt windows catch up on history's
    /// releases without releasing the others twice).
    pub fn reverse_in(
        &mut self,
        keys: &std::collections::HashSet<u64>,
        auth: u64,
        ratio: Decimal,
    ) -> usize {
        self.windows
            .iter_mut()
            .filter(|(k, w, _)| keys.contains(k) && !w.is_empty())
            .map(|(_, w, _)| w.reverse(auth, ratio) as usize)
            .sum()
    }

    pub fn window_count(&self) -> usize {
        self.windows.len()
    }

    /// Events held across all windows (each 40 bytes).
    pub fn event_count(&self) -> usize {
        self.windows.iter().map(|(_, w, _)| w.len()).sum()
    }
}

/// Stable 64-bit FNV-1a hash for keys (authorization ids, merchant ids, rule keys);
/// stable across processes, unlike `DefaultHasher`.
pub fn key_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1) // 0 means "no key"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_windows_reset_at_the_next_local_period() {
        let tz: Tz = "Africa/Lagos".parse().unwrap();
        let now = Utc.with_ymd_and_hms(2026, 6, 3, 11, 0, 0).unwrap(); // a Wednesday
        let next = |u| {
            let ms = WindowSpec::Calendar(u).next_start_ms(now, tz).unwrap();
            DateTime::<Utc>::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339()
        };
        assert_eq!(next(CalendarUnit::Day), "2026-06-03T23:00:00+00:00");
        assert_eq!(next(CalendarUnit::Week), "2026-06-07T23:00:00+00:00");
        assert_eq!(next(CalendarUnit::Month), "2026-06-30T23:00:00+00:00");
        assert_eq!(next(CalendarUnit::Year), "2026-12-31T23:00:00+00:00");
        assert_eq!(WindowSpec::Lifetime.next_start_ms(now, tz), None);
    }

    fn d(v: i64) -> Decimal {
        Decimal::new(v, 0)
    }

    #[test]
    fn parses_windows() {
        assert_eq!(
            WindowSpec::parse("10s").unwrap(),
            WindowSpec::Rolling { length_ms: 10_000 }
        );
        assert_eq!(
            WindowSpec::parse("24h").unwrap(),
            WindowSpec::Rolling {
                length_ms: 86_400_000
            }
        );
        assert_eq!(
            WindowSpec::parse("400d").unwrap(),
            WindowSpec::Rolling {
                length_ms: 400 * 86_400_000
            }
        );
        for bad in [
            "9s",
            "401d",
            "1w",
            "",
            "h",
            "-1h",
            "1.5h",
            "calendar_decade",
        ] {
            assert!(WindowSpec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(WindowSpec::parse("36h").unwrap().to_string(), "36h");
    }

    #[test]
    fn rolling_window_edge_is_exclusive_of_the_event_exactly_one_length_old() {
        let spec = WindowSpec::parse("24h").unwrap();
        let mut w = Window::default();
        let t0 = 1_700_000_000_000;
        w.record(spec_start(spec, t0), t0, d(10), 1);
        // 1 ms before the 24h mark it still counts; exactly 24h later it is out.
        assert_eq!(
            w.totals_since(spec_start(spec, t0 + 86_400_000 - 1)).amount,
            d(10)
        );
        assert_eq!(
            w.totals_since(spec_start(spec, t0 + 86_400_000)).amount,
            d(0)
        );
    }

    fn spec_start(spec: WindowSpec, now_ms: i64) -> i64 {
        spec.start_ms(
            DateTime::from_timestamp_millis(now_ms).unwrap(),
            chrono_tz::UTC,
        )
    }

    #[test]
    fn calendar_day_follows_time_zone_across_dst() {
        let tz: Tz = "America/New_York".parse().unwrap();
        // 2026-03-08 is the spring-forward day in New York: the day is 23 hours long.
        let now = Utc.with_ymd_and_hms(2026, 3, 8, 20, 0, 0).unwrap();
        let start = WindowSpec::Calendar(CalendarUnit::Day).start_ms(now, tz);
        assert_eq!(
            start,
            Utc.with_ymd_and_hms(2026, 3, 8, 5, 0, 0)
                .unwrap()
                .timestamp_millis()
        );
        let next = Utc.with_ymd_and_hms(2026, 3, 9, 4, 0, 0).unwrap(); // 00:00 EDT
        let start2 = WindowSpec::Calendar(CalendarUnit::Day).start_ms(next, tz);
        assert_eq!(start2 - start, 23 * 3_600_000);
        let week = WindowSpec::Calendar(CalendarUnit::Week).start_ms(now, tz);
        assert_eq!(
            week,
            Utc.with_ymd_and_hms(2026, 3, 2, 5, 0, 0)
                .unwrap()
                .timestamp_millis()
        );
        let month = WindowSpec::Calendar(CalendarUnit::Month).start_ms(now, tz);
        assert_eq!(
            month,
            Utc.with_ymd_and_hms(2026, 3, 1, 5, 0, 0)
                .unwrap()
                .timestamp_millis()
        );
    }

    #[test]
    fn backwards_clock_never_resurrects_or_reorders() {
        let mut w = Window::default();
        w.record(0, 1_000_000, d(5), 1);
        w.record(0, 500_000, d(7), 2); // clock went back: stored at 1_000_000
        assert_eq!(
            w.totals_since(1_000_000),
            Totals {
                amount: d(12),
                count: 2
            }
        );
        assert_eq!(w.totals_since(1_000_001), Totals::default());
    }

    #[test]
    fn cap_merges_oldest_conservatively() {
        let mut w = Window::default();
        for i in 0..(EVENTS_PER_WINDOW_MAX as i64 + 10) {
            w.record(0, i * 1000, d(1), (i + 1) as u64);
        }
        assert_eq!(w.len(), EVENTS_PER_WINDOW_MAX);
        let t = w.totals_since(0);
        assert_eq!(t.count, EVENTS_PER_WINDOW_MAX as u64 + 10);
        assert_eq!(t.amount, d(EVENTS_PER_WINDOW_MAX as i64 + 10));
        // Event 0 was merged into a later one: it now expires later than it would alone.
        assert!(w.totals_since(1).count >= EVENTS_PER_WINDOW_MAX as u64 + 9);
    }

    #[test]
    fn reversal_gives_capacity_back() {
        let mut s = VelocityState::default();
        s.record(7, 0, 10, d(100), 42);
        s.record(7, 0, 20, d(50), 43);
        assert_eq!(s.reverse(42, Decimal::new(5, 1)), 1); // half
        assert_eq!(
            s.totals(7, 0),
            Totals {
                amount: d(100),
                count: 2
            }
        );
        assert_eq!(s.reverse(42, Decimal::ONE), 1);
        assert_eq!(
            s.totals(7, 0),
            Totals {
                amount: d(50),
                count: 1
            }
        );
        assert_eq!(s.reverse(99, Decimal::ONE), 0);
    }

    #[test]
    fn state_bounds_merchant_window_count() {
        let mut s = VelocityState::default();
        for k in 1..=(WINDOWS_PER_STATE_MAX as u64 + 5) {
            s.record_merchant(k, 0, k as i64, d(1), k);
        }
        assert_eq!(s.window_count(), WINDOWS_PER_STATE_MAX);
        assert!(s.window(1).is_none(), "oldest merchant window evicted");
    }

    /// Issue #8.15: many merchants under a `card_merchant` rule never evict a live window
    /// of another rule (an ATM monthly budget must not reset).
    #[test]
    fn merchant_windows_never_evict_a_rule_window() {
        let mut s = VelocityState::default();
        s.record(7, 0, 1, d(250), 1);
        for k in 100..(100 + 3 * WINDOWS_PER_STATE_MAX as u64) {
            s.record_merchant(k, 0, k as i64, d(1), k);
        }
        assert_eq!(
            s.totals(7, 0),
            Totals {
                amount: d(250),
                count: 1
            }
        );
        assert_eq!(s.window_count(), WINDOWS_PER_STATE_MAX + 1);
    }

    #[test]
    fn key_hash_is_stable() {
        assert_eq!(key_hash(&[b"abc"]), key_hash(&[b"abc"]));
        assert_ne!(key_hash(&[b"ab", b"c"]), key_hash(&[b"a", b"bc"]));
    }
}

/// Activity entries a card keeps for scripts' `history` (newest last).
pub const ACTIVITY_MAX: usize = 64;

/// One past decision on a card, as scripts' `history` sees it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Activity {
    pub at_ms: i64,
    /// In the policy currency at decision time.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub approved: bool,
    pub country: crate::domain::Country,
    /// `key_hash` of the merchant id.
    pub merchant: u64,
}

/// The last [`ACTIVITY_MAX`] decisions on a card.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ActivityLog {
    events: VecDeque<Activity>,
}

impl ActivityLog {
    pub fn push(&mut self, a: Activity) {
        if self.events.len() == ACTIVITY_MAX {
            self.events.pop_front();
        }
        self.events.push_back(a);
    }
    pub fn snapshot(&self) -> std::sync::Arc<[Activity]> {
        self.events.iter().copied().collect()
    }
    pub fn len(&self) -> usize {
        self.events.len()
    }
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// The memory bound in the module docs and README rests on these sizes.
    #[test]
    fn event_and_activity_sizes_match_the_documented_bound() {
        assert_eq!(std::mem::size_of::<Event>(), 40);
        assert_eq!(std::mem::size_of::<Activity>(), 40);
    }
}
