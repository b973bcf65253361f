//! WAL recovery on arbitrary files: one or two segment files (optionally behind a valid
//! header) and an optional ack file in a fresh directory. Opening and reading never
//! panic; what is read matches the stats; recovery accounts for every byte it found;
//! and the recovered WAL takes an append that survives a reopen.
//!
//! Input layout: flags (bit 0: a second segment, bit 1: an ack file, bit 2: prepend
//! valid segment headers), then the first and second segment bodies' lengths (u16 LE
//! each), the bodies, and the rest as the ack file.
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use weir_core::wal::{HEADER_BYTES, Wal, WalConfig, WalPosition, WalRecord};

/// A fresh directory (in /dev/shm when there is one: recovery fsyncs), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("weir-wal-fuzz-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read_all(wal: &Wal, from: WalPosition) -> Vec<WalRecord> {
    let mut out = Vec::new();
    let mut at = from;
    // Every record takes at least 8 bytes of a small input: this bound is never hit.
    for _ in 0..100_000 {
        match wal.read(at).unwrap() {
            Some(r) => {
                assert!(r.position >= at && r.next > r.position);
                at = r.next;
                out.push(r);
            }
            None => return out,
        }
    }
    panic!("read did not reach the head");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let take_len = |rest: &[u8]| -> usize {
        rest.get(..2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let len1 = take_len(rest);
    let rest = rest.get(2..).unwrap_or_default();
    let len2 = take_len(rest);
    let rest = rest.get(2..).unwrap_or_default();
    let (body1, rest) = rest.split_at(len1.min(rest.len()));
    let (body2, ack) = rest.split_at(len2.min(rest.len()));

    let dir = TempDir::new();
    let segments: &[(u64, &[u8])] = if flags & 1 != 0 {
        &[(1, body1), (2, body2)]
    } else {
        &[(1, body1)]
    };
    let mut original = 0u64;
    for &(id, body) in segments {
        let mut bytes = Vec::new();
        if flags & 4 != 0 {
            bytes.extend_from_slice(b"WEIRWAL\0");
            bytes.extend_from_slice(&1u32.to_le_bytes());
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&0i64.to_le_bytes());
        }
        bytes.extend_from_slice(body);
        original += bytes.len() as u64;
        fs::write(dir.0.join(format!("{id:020}.wal")), &bytes).unwrap();
    }
    if flags & 2 != 0 {
        fs::write(dir.0.join("ack"), ack).unwrap();
    }

    // An error (another format version) is a valid answer; a panic is not.
    let Ok(mut wal) = Wal::open(&dir.0, WalConfig::default()) else {
        return;
    };
    let s = wal.stats();
    // Kept + cut off adds up to what was there, plus a fresh header when nothing was
    // left. Without an ack file, the only other deletion is of an empty first segment
    // (trivially fully acknowledged); with one, acknowledged segments go too.
    assert!(s.bytes + s.truncated_bytes <= original + HEADER_BYTES);
    if flags & 2 == 0 {
        assert!(s.bytes + s.truncated_bytes + HEADER_BYTES >= original);
    }
    let records = read_all(&wal, wal.acked());
    assert_eq!(records.len() as u64, s.unacked_records);
    let payload: u64 = records.iter().map(|r| r.payload.len() as u64).sum();
    assert_eq!(payload, s.unacked_bytes);
    assert_eq!(wal.read(wal.head()).unwrap(), None);

    let at = wal.append(b"probe").unwrap();
    drop(wal);
    let wal = Wal::open(&dir.0, WalConfig::default()).unwrap();
    assert_eq!(wal.stats().corrupt_tails, 0);
    let again = read_all(&wal, wal.acked());
    assert_eq!(again.len(), records.len() + 1);
    let last = again.last().unwrap();
    assert_eq!(
        (last.position, last.payload.as_slice()),
        (at, &b"probe"[..])
    );
});
