//! Decision records compressed with a zstd dictionary the store trains on its own records.
//!
//! A decision's two records are a few hundred bytes each, mostly what every other record
//! of the same policy also says (window keys, rule ids, explanation wording, the program's
//! currency and amounts): too small for compression alone, but a dictionary of that shared
//! text takes them to a fraction. The store samples the records it writes, trains a
//! dictionary on a background thread, stores it (`record_dictionaries`) and from then on
//! writes records as `[COMPRESSED][dictionary id: u16 LE][length: varint][zstd frame]`.
//! Reads expand them before anything decodes a record, so the record formats above the
//! store never see compression, and a record written uncompressed stays readable.
//!
//! Ordering is what keeps a crash safe: a dictionary is adopted under the same lock that
//! hands out commit sequences, in the same job as its own row, so every record compressed
//! with it commits in that transaction or a later one. Each store (a shard on PostgreSQL)
//! has one writer, so ids are the highest stored plus one.
//!
//! Training happens after 4 096 records in a store with no dictionary, after 65 536 in a
//! store with one and 262 144 in one with two (a store's first records rarely show the
//! declines it settles into), then once per 1 048 576 records a process writes, so the
//! wording of changed policies comes in: at most one dictionary (16 KiB) per million
//! decisions, plus three.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use parking_lot::{Mutex, RwLock};
use zstd::zstd_safe::{self, CCtx, CDict, CParameter, DCtx, DDict};

use super::sql::{params, Db};
use super::{StoreError, StoredDecision, Write};

/// The first byte of a compressed record (record formats above the store are small
/// numbers).
pub const COMPRESSED: u8 = 0xF0;
/// Largest dictionary trained, bytes.
const DICTIONARY_BYTES_MAX: usize = 16 * 1024;
/// Records (answer and body each) a dictionary is trained on.
const SAMPLES: usize = 4_096;
/// zstd level: with a dictionary, level 3 gained 0–3 % on these records (measured once).
const LEVEL: i32 = 1;
/// Largest record expanded (a record is a few hundred bytes; a trace of many rules a few
/// KiB): a longer stated length is corruption, not an allocation to make.
const RECORD_BYTES_MAX: usize = 1 << 20;
/// What every zstd frame begins with: left out of a record and put back to read it
/// (zstd's own magicless frames are behind its experimental API).
const FRAME_MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();

/// Records written before the next dictionary is trained, by how many the store holds.
fn records_before_training(stored: usize) -> u64 {
    match stored {
        0 => SAMPLES as u64,
        1 => 65_536,
        2 => 262_144,
        _ => 1_048_576,
    }
}

struct Encoder {
    id: u16,
    cdict: CDict<'static>,
}

/// A dictionary trained and not yet adopted.
struct Trained {
    id: u16,
    bytes: Vec<u8>,
    at_ms: i64,
}

struct Sampling {
    samples: Vec<Vec<u8>>,
    training: bool,
    /// Dictionaries stored and trained: what the next training waits for.
    dictionaries: usize,
}

/// The store's dictionaries: the one records are compressed with, and every one a
/// stored record may name (loaded at open, added as trained; at most one per million
/// decisions, see the module's doc).
pub struct Dictionaries {
    current: ArcSwapOption<Encoder>,
    decoders: RwLock<HashMap<u16, Arc<DDict<'static>>>>,
    next_id: Mutex<u16>,
    sampling: Mutex<Sampling>,
    /// Every `stride`-th record written is kept until `SAMPLES` pairs are.
    stride: AtomicU64,
    written: AtomicU64,
    trained: Mutex<Option<Trained>>,
    has_trained: AtomicBool,
    training: bool,
    pub compressed: AtomicU64,
}

/// Decompression contexts kept for the next read; beyond these, a read makes its own.
const DCTX_POOL_MAX: usize = 8;
static DCTX_POOL: Mutex<Vec<DCtx<'static>>> = Mutex::new(Vec::new());

// Compression runs on the threads that decide (the runtime's workers): one context each.
thread_local! {
    static CCTX: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    static FRAME: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Dictionaries {
    /// The dictionaries stored in `db`; the newest compresses. `training`: whether this
    /// process trains new ones (off for a store opened to read).
    pub fn load(db: &mut dyn Db, training: bool) -> Result<Dictionaries, StoreError> {
        let stored: Vec<(i64, Vec<u8>)> = db.rows(
            "SELECT id, dictionary FROM record_dictionaries ORDER BY id",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut decoders = HashMap::new();
        let mut current = None;
        for (id, bytes) in &stored {
            let id = u16::try_from(*id)
                .map_err(|_| StoreError::Corrupt(format!("record dictionary id {id}")))?;
            decoders.insert(id, Arc::new(DDict::create(bytes)));
            current = Some(Encoder {
                id,
                cdict: CDict::create(bytes, LEVEL),
            });
        }
        let next_id = current.as_ref().map_or(1, |e| e.id.saturating_add(1));
        let stride = records_before_training(stored.len()) / SAMPLES as u64;
        Ok(Dictionaries {
            current: ArcSwapOption::from_pointee(current),
            decoders: RwLock::new(decoders),
            next_id: Mutex::new(next_id),
            stride: AtomicU64::new(stride.max(1)),
            written: AtomicU64::new(0),
            sampling: Mutex::new(Sampling {
                samples: Vec::new(),
                training: false,
                dictionaries: stored.len(),
            }),
            trained: Mutex::new(None),
            has_trained: AtomicBool::new(false),
            training: training && next_id < u16::MAX,
            compressed: AtomicU64::new(0),
        })
    }

    /// Compresses the decision records in `writes` with the current dictionary, and
    /// samples them for the next (call before the job takes its sequence).
    pub fn compress(self: &Arc<Self>, writes: &mut [Write]) {
        let current = self.current.load();
        for w in writes.iter_mut() {
            let Write::Decision(d) = w else { continue };
            if self.training {
                self.sample(&d.answer, &d.body);
            }
            if let Some(enc) = current.as_deref() {
                d.answer = compress(enc, std::mem::take(&mut d.answer));
                d.body = compress(enc, std::mem::take(&mut d.body));
                self.compressed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Adopts a dictionary trained since the last call: its row joins `writes` (a job
    /// about to take its sequence, under the lock that hands them out), and records
    /// compressed after this return name it.
    pub fn adopt(&self, writes: &mut Vec<Write>) {
        if !self.has_trained.load(Ordering::Acquire) {
            return;
        }
        let Some(t) = self.trained.lock().take() else {
            return;
        };
        self.has_trained.store(false, Ordering::Release);
        self.decoders
            .write()
            .insert(t.id, Arc::new(DDict::create(&t.bytes)));
        self.current.store(Some(Arc::new(Encoder {
            id: t.id,
            cdict: CDict::create(&t.bytes, LEVEL),
        })));
        writes.insert(
            0,
            Write::RecordDictionary {
                id: t.id,
                dictionary: t.bytes,
                at_ms: t.at_ms,
            },
        );
    }

    fn sample(self: &Arc<Self>, answer: &[u8], body: &[u8]) {
        // Counted without the lock: every record passes here, one in `stride` stops.
        let written = self.written.fetch_add(1, Ordering::Relaxed) + 1;
        if written % self.stride.load(Ordering::Relaxed) != 0 {
            return;
        }
        let mut s = self.sampling.lock();
        if s.training {
            return;
        }
        s.samples.push(answer.to_vec());
        s.samples.push(body.to_vec());
        if s.samples.len() < 2 * SAMPLES {
            return;
        }
        s.training = true;
        let samples = std::mem::take(&mut s.samples);
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("spendgate-dictionary".into())
            .spawn(move || this.train(samples));
        if let Err(e) = spawned {
            // Sampling starts over; records stay as they are compressed now.
            s.training = false;
            tracing::warn!(error = %e, "could not start training a record dictionary");
        }
    }

    fn train(&self, samples: Vec<Vec<u8>>) {
        let trained = zstd::dict::from_samples(&samples, DICTIONARY_BYTES_MAX);
        let mut s = self.sampling.lock();
        s.dictionaries += usize::from(trained.is_ok());
        self.stride.store(
            (records_before_training(s.dictionaries) / SAMPLES as u64).max(1),
            Ordering::Relaxed,
        );
        self.written.store(0, Ordering::Relaxed);
        s.training = false;
        drop(s);
        match trained {
            Ok(bytes) => {
                let mut next = self.next_id.lock();
                let id = *next;
                *next = next.saturating_add(1);
                *self.trained.lock() = Some(Trained {
                    id,
                    bytes,
                    at_ms: chrono::Utc::now().timestamp_millis(),
                });
                self.has_trained.store(true, Ordering::Release);
            }
            Err(e) => tracing::warn!(error = %e, "training a record dictionary failed"),
        }
    }

    /// Dictionaries this process can expand records with.
    pub fn count(&self) -> usize {
        self.decoders.read().len()
    }

    /// Puts a compressed record back as it was written; other records are left alone.
    /// A dictionary this process has not loaded is read from `db` (a store written on by
    /// another process since).
    pub fn expand(&self, db: &mut dyn Db, d: &mut StoredDecision) -> Result<(), StoreError> {
        if let StoredDecision::Record { answer, body } = d {
            for record in [answer, body] {
                if record.first() == Some(&COMPRESSED) {
                    *record = self.expand_record(db, record)?;
                }
            }
        }
        Ok(())
    }

    fn expand_record(&self, db: &mut dyn Db, record: &[u8]) -> Result<Vec<u8>, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("compressed record: {what}"));
        let (id, rest) = match record {
            [_, a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
            _ => return Err(corrupt("too short")),
        };
        let (len, frame) = read_varint(rest).ok_or_else(|| corrupt("length"))?;
        if len > RECORD_BYTES_MAX {
            return Err(corrupt("length"));
        }
        let ddict = self.decoder(db, id)?;
        let mut whole = Vec::with_capacity(FRAME_MAGIC.len() + frame.len());
        whole.extend_from_slice(&FRAME_MAGIC);
        whole.extend_from_slice(frame);
        let mut out = Vec::with_capacity(len);
        // Contexts are pooled, not per thread: reads run on the runtime's blocking threads,
        // which can be many (≈ 95 KiB per decompression context).
        let mut dctx = DCTX_POOL.lock().pop().unwrap_or_else(DCtx::create);
        let r = dctx.decompress_using_ddict(&mut out, &whole, &ddict);
        let mut pool = DCTX_POOL.lock();
        if pool.len() < DCTX_POOL_MAX {
            pool.push(dctx);
        }
        drop(pool);
        r.map_err(|code| corrupt(zstd_safe::get_error_name(code)))?;
        if out.len() != len {
            return Err(corrupt("length differs"));
        }
        Ok(out)
    }

    fn decoder(&self, db: &mut dyn Db, id: u16) -> Result<Arc<DDict<'static>>, StoreError> {
        if let Some(d) = self.decoders.read().get(&id) {
            return Ok(d.clone());
        }
        let bytes: Option<Vec<u8>> = db.row(
            "SELECT dictionary FROM record_dictionaries WHERE id = ?1",
            params![i64::from(id)],
            |r| r.get(0),
        )?;
        let bytes = bytes.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "a record names dictionary {id}, which is not stored"
            ))
        })?;
        let d = Arc::new(DDict::create(&bytes));
        self.decoders.write().insert(id, d.clone());
        Ok(d)
    }
}

/// `raw` as a compressed record; `raw` itself when compression does not make it smaller.
fn compress(enc: &Encoder, raw: Vec<u8>) -> Vec<u8> {
    if raw.len() > RECORD_BYTES_MAX {
        // Kept as it is: a read refuses to expand anything longer.
        return raw;
    }
    let frame = CCTX.with(|c| {
        let mut c = c.borrow_mut();
        let cctx = c.get_or_insert_with(|| {
            let mut c = CCtx::create();
            // Only the frame's own header: the record says its length and dictionary.
            for p in [
                CParameter::ContentSizeFlag(false),
                CParameter::ChecksumFlag(false),
                CParameter::DictIdFlag(false),
            ] {
                let _ = c.set_parameter(p);
            }
            c
        });
        FRAME.with(|f| {
            let mut f = f.borrow_mut();
            f.clear();
            f.reserve(zstd_safe::compress_bound(raw.len()));
            cctx.ref_cdict(&enc.cdict).ok()?;
            cctx.compress2(&mut *f, &raw).ok()?;
            let frame = f.strip_prefix(&FRAME_MAGIC[..])?;
            let mut out = Vec::with_capacity(frame.len() + 8);
            out.push(COMPRESSED);
            out.extend_from_slice(&enc.id.to_le_bytes());
            write_varint(&mut out, raw.len());
            out.extend_from_slice(frame);
            Some(out)
        })
    });
    match frame {
        Some(out) if out.len() < raw.len() => out,
        _ => raw,
    }
}

fn write_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut v = 0usize;
    for (i, b) in bytes.iter().enumerate().take(4) {
        v |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
#[path = "dictionary_tests.rs"]
mod tests;
