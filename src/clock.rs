//! Time and identifiers, injected: the engine never reads the wall clock or draws random
//! ids itself, so tests control both and a replay can reproduce them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, TimeZone, Utc};

/// Wall-clock time as the engine sees it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock (`serve` and the tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that tests set and advance by hand.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now_ms: AtomicI64::new(at.timestamp_millis()),
        }
    }
    pub fn set(&self, at: DateTime<Utc>) {
        self.now_ms.store(at.timestamp_millis(), Ordering::SeqCst);
    }
    pub fn advance(&self, by: chrono::Duration) {
        self.now_ms
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let ms = self.now_ms.load(Ordering::SeqCst);
        Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
    }
}

/// Where new card tokens and API keys come from.
pub trait Ids: Send + Sync {
    /// 32 lowercase hex digits of fresh randomness (or a test's sequence).
    fn hex128(&self) -> String;
}

/// Random ids (UUID v4 bits) for the running service.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl Ids for RandomIds {
    fn hex128(&self) -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }
}

/// Predictable ids for tests: a counter mixed so that ids still look unrelated.
#[derive(Debug, Default)]
pub struct SequentialIds {
    next: AtomicU64,
}

impl Ids for SequentialIds {
    fn hex128(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        // SplitMix64 twice: distinct, stable, and not sequential in their first digits.
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        format!("{:016x}{:016x}", mix(n), mix(n ^ 0x9e37_79b9_7f4a_7c15))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let t = Utc.with_ymd_and_hms(2026, 6, 3, 11, 0, 0).unwrap();
        let c = ManualClock::new(t);
        assert_eq!(c.now(), t);
        c.advance(chrono::Duration::seconds(5));
        assert_eq!(c.now(), t + chrono::Duration::seconds(5));
    }

    #[test]
    fn sequential_ids_are_distinct_hex() {
        let ids = SequentialIds::default();
        let (a, b) = (ids.hex128(), ids.hex128());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
