//! The Prometheus recorder keeps every histogram sample until something folds it into its
//! buckets. A server nobody scrapes must still not grow by its samples: these tests count
//! the live heap (their own binary, so no other test's allocations are counted).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use spendgate::http::{metrics_handle, METRICS_UPKEEP_INTERVAL};

/// The system allocator, counting the bytes it has handed out and not had back.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn record(samples: usize) {
    for i in 0..samples {
        metrics::histogram!("spendgate_decision_latency_seconds").record((i % 1000) as f64 / 1e5);
    }
}

#[test]
fn histogram_samples_nobody_scrapes_are_folded_into_buckets_not_kept() {
    let _handle = metrics_handle();
    record(1000);
    std::thread::sleep(METRICS_UPKEEP_INTERVAL * 2);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    // As many samples as a million authorizations leave (two each, and two per commit):
    // 32 MB if kept.
    record(2_000_000);
    std::thread::sleep(METRICS_UPKEEP_INTERVAL * 3);
    // The drained blocks are freed once the recording threads move the epoch on.
    record(100_000);
    std::thread::sleep(METRICS_UPKEEP_INTERVAL * 3);
    record(100_000);
    let kept = LIVE_BYTES.load(Ordering::Relaxed) - before;
    assert!(
        kept < 2_000_000,
        "{kept} bytes still held for 2.2 M histogram samples nobody scraped"
    );
}
