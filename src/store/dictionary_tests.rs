use super::*;
use crate::store::{DecisionWrite, Durability, Store};

/// A record like a decision's: shared wording, amounts and ids that differ.
fn record(i: u64, kind: &str) -> Vec<u8> {
    let mut r = vec![2u8];
    r.extend_from_slice(
        format!(
            "{kind} auth_{i:08x} card_{:016x} {}.{:02} NGN daily_spend decline 65 \
             {} + 0.30 <= 1000.00 USD ({} left) in 24h (card scope); frees at 2026-12-07",
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            i % 997,
            i % 100,
            i % 50,
            1000 - i % 50
        )
        .as_bytes(),
    );
    r
}

fn write(i: u64) -> Write {
    Write::Decision(Box::new(DecisionWrite {
        auth_hash: i as i64,
        card_hash: (i % 7) as i64,
        answer: record(i, "answer"),
        body: record(i, "body"),
    }))
}

/// Writes decisions until the store adopts a dictionary (training runs on its own
/// thread), then `after` more; returns how many it wrote.
fn write_until_compressed(store: &Store, after: u64) -> u64 {
    let mut i = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while store.dictionaries.compressed.load(Ordering::Relaxed) < after {
        assert!(
            std::time::Instant::now() < deadline,
            "no dictionary adopted"
        );
        store.wait(store.submit(vec![write(i)]));
        i += 1;
    }
    i
}

fn raw_records(dir: &std::path::Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = rusqlite::Connection::open(dir.join(crate::store::DB_FILE)).unwrap();
    let mut st = c
        .prepare("SELECT answer, body FROM decision_log ORDER BY seq")
        .unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

#[test]
fn records_compressed_with_a_trained_dictionary_read_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), Durability::Off).unwrap();
    let n = write_until_compressed(&store, 100);
    assert!(n > SAMPLES as u64, "trained on {n} records");
    let counters = store.counters();
    assert_eq!(counters.record_dictionaries, 1);
    assert!(counters.decisions_compressed >= 100);
    let raw = raw_records(dir.path());
    let compressed: Vec<_> = raw.iter().filter(|(a, _)| a[0] == COMPRESSED).collect();
    assert!(compressed.len() >= 100);
    // Smaller by more than half: the records share most of their text.
    let (before, after): (usize, usize) = compressed.iter().fold((0, 0), |(b, a), (x, y)| {
        (b + 2 * record(0, "answer").len(), a + x.len() + y.len())
    });
    assert!(after * 2 < before, "{after} bytes against {before}");
    // Read back through the store and after a restart, every record is what was written.
    let want: Vec<StoredDecision> = (0..n)
        .map(|i| StoredDecision::Record {
            answer: record(i, "answer"),
            body: record(i, "body"),
        })
        .collect();
    let read: Vec<_> = store
        .decisions_after(0)
        .unwrap()
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(read, want);
    store.close();
    let (store, snapshot) = Store::open(dir.path(), Durability::Off).unwrap();
    assert_eq!(snapshot.decisions, want);
    // The reopened store compresses with the stored dictionary without training again.
    store.wait(store.submit(vec![write(n)]));
    let raw = raw_records(dir.path());
    assert_eq!(raw.last().unwrap().0[0], COMPRESSED);
    let dictionaries: i64 = rusqlite::Connection::open(dir.path().join(crate::store::DB_FILE))
        .unwrap()
        .query_row("SELECT count(*) FROM record_dictionaries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(dictionaries, 1);
}

#[test]
fn a_record_naming_a_dictionary_that_is_not_stored_is_an_error_not_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), Durability::Off).unwrap();
    write_until_compressed(&store, 1);
    store.close();
    let c = rusqlite::Connection::open(dir.path().join(crate::store::DB_FILE)).unwrap();
    c.execute("DELETE FROM record_dictionaries", []).unwrap();
    drop(c);
    let e = Store::open(dir.path(), Durability::Off)
        .err()
        .expect("a record without its dictionary is refused");
    assert!(
        e.to_string().contains("dictionary 1, which is not stored"),
        "{e}"
    );
}

#[test]
fn a_record_compression_would_not_shrink_is_stored_as_written() {
    let enc = Encoder {
        id: 3,
        cdict: CDict::create(&record(1, "answer"), LEVEL),
    };
    // Random bytes do not compress: the record keeps its own form.
    let noise: Vec<u8> = (0..64u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
        .collect();
    assert_eq!(compress(&enc, noise.clone()), noise);
    // Nor does a record longer than any read would expand.
    let long = record(3, "answer").repeat(RECORD_BYTES_MAX / 100);
    assert!(long.len() > RECORD_BYTES_MAX);
    assert_eq!(compress(&enc, long.clone()), long);
    let shared = record(2, "answer");
    let packed = compress(&enc, shared.clone());
    assert_eq!(&packed[..3], &[COMPRESSED, 3, 0]);
    assert!(packed.len() < shared.len() / 2, "{} bytes", packed.len());
}

#[test]
fn lengths_round_trip_through_their_varint() {
    for v in [0usize, 1, 127, 128, 300, 16_383, 16_384, RECORD_BYTES_MAX] {
        let mut out = Vec::new();
        write_varint(&mut out, v);
        out.push(0xAA);
        assert_eq!(read_varint(&out), Some((v, &[0xAA][..])));
    }
    assert_eq!(read_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]), None);
}
