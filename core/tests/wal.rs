//! The write-ahead log from the outside: round trips across rotation, replay after a
//! reopen, acks, damage on disk (bit flips, truncation, garbage files, a lost or broken
//! ack file), the size cap, write failures, and a model-checked proptest of random
//! operation sequences. Every damage test reopens and asserts exact counts.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use weir_core::testing::TempDir;
use weir_core::wal::{
    FRAME_HEADER_BYTES, HEADER_BYTES, SyncPolicy, Wal, WalConfig, WalError, WalPosition, WalRecord,
};

/// Payload bytes of the small-segment layouts below.
const PAYLOAD: usize = 50;
/// One frame of a `PAYLOAD`-byte record.
const FRAME: u64 = FRAME_HEADER_BYTES + PAYLOAD as u64;
/// Two frames fit in a segment (28 + 2 × 58 = 144), a third would not (202 > 200).
/// Every acknowledgement is persisted at once, so a drop (a crash) keeps all of them.
const SMALL: WalConfig = WalConfig {
    segment_bytes: 200,
    cap_bytes: 1 << 30,
    sync: SyncPolicy::Fsync,
    ack_every: 1,
    ack_interval: Duration::MAX,
};
/// A full segment of the `SMALL` layout.
const FULL_SEGMENT: u64 = HEADER_BYTES + 2 * FRAME;

/// Record `i`'s payload: `PAYLOAD` bytes that differ from every other record's.
fn payload(i: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD];
    for (k, b) in p.iter_mut().enumerate() {
        *b = (i.wrapping_mul(31).wrapping_add(k as u64 * 7) % 251) as u8;
    }
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

fn segment_file(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

/// Every record from `from` to the head, following `next` (bounded).
fn read_all(wal: &Wal, from: WalPosition) -> Vec<WalRecord> {
    let mut out = Vec::new();
    let mut at = from;
    for _ in 0..100_000 {
        match wal.read(at).unwrap() {
            Some(r) => {
                assert!(r.next > r.position, "next {:?} after {:?}", r.next, r);
                at = r.next;
                out.push(r);
            }
            None => return out,
        }
    }
    panic!("read did not reach the head in 100,000 steps");
}

/// The record numbers of `records` (first 8 payload bytes), checking each payload.
fn numbers(records: &[WalRecord]) -> Vec<u64> {
    records
        .iter()
        .map(|r| {
            let i = u64::from_le_bytes(r.payload[..8].try_into().unwrap());
            assert_eq!(r.payload, payload(i), "payload of record {i}");
            i
        })
        .collect()
}

/// Appends records `from..to`, returning their positions.
fn append_range(wal: &mut Wal, from: u64, to: u64) -> Vec<WalPosition> {
    (from..to)
        .map(|i| wal.append(&payload(i)).unwrap())
        .collect()
}

/// Opens `dir` with `SMALL` and appends records `0..n` (two per segment).
fn small_wal(dir: &Path, n: u64) -> (Wal, Vec<WalPosition>) {
    let mut wal = Wal::open(dir, SMALL).unwrap();
    let positions = append_range(&mut wal, 0, n);
    (wal, positions)
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Total size of the `.wal` files in `dir`.
fn wal_bytes_on_disk(dir: &Path) -> u64 {
    segment_ids(dir)
        .into_iter()
        .map(|id| fs::metadata(segment_file(dir, id)).unwrap().len())
        .sum()
}

/// Ids of the segment files in `dir`, ascending.
fn segment_ids(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            let digits = name.strip_suffix(".wal")?;
            (digits.len() == 20).then(|| digits.parse().ok())?
        })
        .collect();
    ids.sort_unstable();
    ids
}

fn pos(segment: u64, offset: u64) -> WalPosition {
    WalPosition { segment, offset }
}

#[test]
fn append_read_ack_round_trip_across_rotation() {
    let dir = TempDir::new("round-trip");
    let (mut wal, positions) = small_wal(dir.path(), 20);
    for (i, p) in positions.iter().enumerate() {
        let i = i as u64;
        assert_eq!(*p, pos(i / 2 + 1, HEADER_BYTES + (i % 2) * FRAME));
    }
    assert_eq!(wal.head(), pos(10, FULL_SEGMENT));
    assert_eq!(wal.acked(), pos(1, HEADER_BYTES));
    let s = wal.stats();
    assert_eq!(s.segments, 10);
    assert_eq!(s.bytes, 10 * FULL_SEGMENT);
    assert_eq!(s.unacked_records, 20);
    assert_eq!(s.unacked_bytes, 20 * PAYLOAD as u64);
    assert_eq!(wal_bytes_on_disk(dir.path()), s.bytes);

    let records = read_all(&wal, wal.acked());
    assert_eq!(numbers(&records), (0..20).collect::<Vec<_>>());
    assert_eq!(
        records.iter().map(|r| r.position).collect::<Vec<_>>(),
        positions
    );
    assert_eq!(wal.read(wal.head()).unwrap(), None);

    // Acknowledge records 0..=6: segments 1-3 go, segment 4 (records 6, 7) stays.
    wal.ack(records[6].next).unwrap();
    assert_eq!(wal.acked(), positions[7]);
    assert_eq!(segment_ids(dir.path()), (4..=10).collect::<Vec<_>>());
    let s = wal.stats();
    assert_eq!((s.segments, s.unacked_records), (7, 13));
    assert_eq!(s.unacked_bytes, 13 * PAYLOAD as u64);
    assert_eq!(
        numbers(&read_all(&wal, wal.acked())),
        (7..20).collect::<Vec<_>>()
    );
    // Reading from before the oldest segment starts at the oldest record left.
    assert_eq!(numbers(&read_all(&wal, WalPosition::default()))[0], 6);

    // Acking backwards changes nothing.
    wal.ack(records[2].next).unwrap();
    assert_eq!(wal.acked(), positions[7]);

    // Acking the last record leaves only the active segment, with nothing unacked.
    wal.ack(records[19].next).unwrap();
    assert_eq!(wal.acked(), wal.head());
    assert_eq!(segment_ids(dir.path()), vec![10]);
    let s = wal.stats();
    assert_eq!((s.segments, s.unacked_records, s.unacked_bytes), (1, 0, 0));
    assert_eq!(s.oldest_unacked_ms, None);
    assert_eq!(wal.read(wal.acked()).unwrap(), None);
    wal.sync().unwrap();
}

#[test]
fn replay_after_reopen_without_ack_returns_every_record() {
    let dir = TempDir::new("replay");
    let (wal, positions) = small_wal(dir.path(), 21);
    let head = wal.head();
    drop(wal);

    let mut wal = Wal::open(dir.path(), SMALL).unwrap();
    let s = wal.stats();
    assert_eq!((s.corrupt_tails, s.truncated_bytes), (0, 0));
    assert_eq!((s.segments, s.unacked_records), (11, 21));
    assert_eq!(wal.head(), head);
    let records = read_all(&wal, wal.acked());
    assert_eq!(numbers(&records), (0..21).collect::<Vec<_>>());
    assert_eq!(records[20].position, positions[20]);
    // Appends continue in the last segment, right after its last record.
    assert_eq!(wal.append(&payload(21)).unwrap(), head);
    assert_eq!(wal.stats().segments, 11);
}

#[test]
fn ack_deletes_fully_acked_segments_and_persists_across_reopen() {
    let dir = TempDir::new("ack-persists");
    let (mut wal, positions) = small_wal(dir.path(), 20);
    let records = read_all(&wal, wal.acked());
    wal.ack(records[6].next).unwrap();
    drop(wal);

    let wal = Wal::open(dir.path(), SMALL).unwrap();
    assert_eq!(wal.acked(), positions[7]);
    assert_eq!(segment_ids(dir.path()), (4..=10).collect::<Vec<_>>());
    assert_eq!(
        numbers(&read_all(&wal, wal.acked())),
        (7..20).collect::<Vec<_>>()
    );
    assert_eq!(wal.stats().unacked_records, 13);
}

#[test]
fn ack_of_a_segment_end_deletes_that_segment() {
    let dir = TempDir::new("ack-end");
    let (mut wal, _) = small_wal(dir.path(), 6);
    let records = read_all(&wal, wal.acked());
    // Record 3 ends segment 2 exactly: both segments 1 and 2 are fully acked.
    wal.ack(records[3].next).unwrap();
    assert_eq!(segment_ids(dir.path()), vec![3]);
    assert_eq!(numbers(&read_all(&wal, wal.acked())), vec![4, 5]);
    // A position past the head counts as the head.
    wal.ack(pos(u64::MAX, 0)).unwrap();
    assert_eq!(wal.acked(), wal.head());
    let at = wal.append(&payload(6)).unwrap();
    assert_eq!(wal.acked(), at);
    drop(wal);
    let wal = Wal::open(dir.path(), SMALL).unwrap();
    assert_eq!(numbers(&read_all(&wal, wal.acked())), vec![6]);
}

#[test]
fn bit_flip_in_a_middle_segment_cuts_that_segment_and_keeps_later_ones() {
    let dir = TempDir::new("flip-middle");
    let (wal, positions) = small_wal(dir.path(), 20);
    drop(wal);
    // Record 8 is the first of segment 5: flip a payload bit.
    flip_bit(
        &segment_file(dir.path(), 5),
        positions[8].offset + FRAME_HEADER_BYTES + 20,
        3,
    );

    let wal = Wal::open(dir.path(), SMALL).unwrap();
    let s = wal.stats();
    assert_eq!((s.corrupt_tails, s.truncated_bytes), (1, 2 * FRAME));
    assert_eq!(s.unacked_records, 18);
    assert_eq!(
        fs::metadata(segment_file(dir.path(), 5)).unwrap().len(),
        HEADER_BYTES
    );
    let expected: Vec<u64> = (0..8).chain(10..20).collect();
    assert_eq!(numbers(&read_all(&wal, wal.acked())), expected);
    // The cut is durable: a second open finds nothing more to cut.
    drop(wal);
    let wal = Wal::open(dir.path(), SMALL).unwrap();
    assert_eq!(wal.stats().corrupt_tails, 0);
    assert_eq!(numbers(&read_all(&wal, wal.acked())), expected);
}

#[test]
fn bit_flip_in_a_length_or_crc_field_ends_the_good_part_there() {
    for (field_offset, name) in [(1u64, "length"), (5, "crc")] {
        let dir = TempDir::new(&format!("flip-{name}"));
        let (wal, positions) = small_wal(dir.path(), 20);
        drop(wal);
        // Record 13 is the second of segment 7.
        flip_bit(
            &segment_file(dir.path(), 7),
            positions[13].offset + field_offset,
            6,
        );
        let wal = Wal::open(dir.path(), SMALL).unwrap();
        let s = wal.stats();
        assert_eq!((s.corrupt_tails, s.truncated_bytes), (1, FRAME), "{name}");
        let expected: Vec<u64> = (0..13).chain(14..20).collect();
        assert_eq!(numbers(&read_all(&wal, wal.acked())), expected, "{name}");
    }
}

#[test]
fn bit_flip_in_the_last_record_loses_only_that_record() {
    let dir = TempDir::new("flip-last");
    let (wal, positions) = small_wal(dir.path(), 19);
    drop(wal);
    // Record 18 is alone in segment 10.
    flip_bit(
        &segment_file(dir.path(), 10),
        positions[18].offset + FRAME_HEADER_BYTES + PAYLOAD as u64 - 1,
        0,
    );
    let mut wal = Wal::open(dir.path(), SMALL).unwrap();
    let s = wal.stats();
    assert_eq!((s.corrupt_tails, s.truncated_bytes), (1, FRAME));
    assert_eq!(
        numbers(&read_all(&wal, wal.acked())),
        (0..18).collect::<Vec<_>>()
    );
    // The next append takes the damaged record's place.
    assert_eq!(wal.append(&payload(99)).unwrap(), positions[18]);
    assert_eq!(numbers(&read_all(&wal, positions[17]))[1..], [99]);
}

#[test]
fn truncation_mid_record_mid_length_field_and_mid_header() {
    // (bytes kept of the last segment, records left, bytes the open cuts, segments left)
    let cases: [(u64, u64, u64, usize); 4] = [
        // Mid-payload of record 19 (the second of segment 10).
        (
            HEADER_BYTES + FRAME + FRAME_HEADER_BYTES + 10,
            19,
            FRAME_HEADER_BYTES + 10,
            10,
        ),
        // Mid-length-field of record 19.
        (HEADER_BYTES + FRAME + 2, 19, 2, 10),
        // Mid-CRC field of record 18: the whole segment's records go.
        (HEADER_BYTES + 6, 18, 6, 10),
        // Mid-header: the segment is removed; segment 9 becomes the active one.
        (10, 18, 10, 9),
    ];
    for (keep, left, cut, segments) in cases {
        let dir = TempDir::new("truncate");
        let (wal, _) = small_wal(dir.path(), 20);
        drop(wal);
        truncate(&segment_file(dir.path(), 10), keep);
        let mut wal = Wal::open(dir.path(), SMALL).unwrap();
        let s = wal.stats();
        assert_eq!(
            (s.corrupt_tails, s.truncated_bytes, s.segments),
            (1, cut, segments),
            "keep {keep}"
        );
        assert_eq!(s.bytes, wal_bytes_on_disk(dir.path()));
        assert_eq!(
            numbers(&read_all(&wal, wal.acked())),
            (0..left).collect::<Vec<_>>(),
            "keep {keep}"
        );
        // Appending works and survives another reopen.
        append_range(&mut wal, 100, 103);
        drop(wal);
        let wal = Wal::open(dir.path(), SMALL).unwrap();
        assert_eq!(wal.stats().corrupt_tails, 0);
        let expected: Vec<u64> = (0..left).chain(100..103).collect();
        assert_eq!(numbers(&read_all(&wal, wal.acked())), expected);
    }
}

#[test]
fn garbage_file_with_a_segment_name_is_removed_and_others_are_left_alone() {
    let dir = TempDir::new("garbage");
    let (wal, _) = small_wal(dir.path(), 6);
    drop(wal);
    let garbage: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    fs::write(segment_file(dir.path(), 2), &garbage).unwrap();
    // Not segment names: never touched.
    fs::write(dir.path().join("notes.wal"), b"keep me").unwrap();
    fs::write(dir.path().join("2.wal"), b"keep me too").unwrap();

    let wal = Wal::open(dir.path(), SMALL).unwrap();
    let s = wal.stats();
    assert_eq!(
        (s.corrupt_tails, s.truncated_bytes, s.segments),
        (1, 1000, 2)
    );
    assert_eq!(numbers(&read_all(&wal, wal.acked())), vec![0, 1, 4, 5]);
    assert!(!segment_file(dir.path(), 2).exists());
    assert_eq!(fs::read(dir.path().join("notes.wal")).unwrap(), b"keep me");
    assert_eq!(fs::read(dir.path().join("2.wal")).unwrap(), b"keep me too");
}

#[test]
fn a_segment_naming_another_id_in_its_header_is_removed() {
    let dir = TempDir::new("wrong-id");
    let (wal, _) = small_wal(dir.path(), 6);
    drop(wal);
    fs::rename(segment_file(dir.path(), 2), segment_file(dir.path(), 7)).unwrap();
    let wal = Wal::open(dir.path(), SMALL).unwrap();
    let s = wal.stats();
    assert_eq!((s.corrupt_tails, s.truncated_bytes), (1, FULL_SEGMENT));
    assert_eq!(numbers(&read_all(&wal, wal.acked())), vec![0, 1, 4, 5]);
}

#[test]
fn another_format_version_is_an_error_and_untouched() {
    let dir = TempDir::new("version");
    let (wal, _) = small_wal(dir.path(), 2);
    drop(wal);
    let path = segment_file(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes[8] = 2;
    fs::write(&path, &bytes).unwrap();
    match Wal::open(dir.path(), SMALL) {
        Err(e @ WalError::UnsupportedVersion { version: 2, .. }) => {
            assert!(e.to_string().contains("00000000000000000001.wal"), "{e}");
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn deleted_ack_file_replays_every_record_left() {
    let dir = TempDir::new("ack-deleted");
    let (mut wal, _) = small_wal(dir.path(), 20);
    let records = read_all(&wal, wal.acked());
    wal.ack(records[6].next).unwrap();
    drop(wal);
    fs::remove_file(dir.path().join("ack")).unwrap();

    let wal = Wal::open(dir.path(), SMALL).unwrap();
    // Segments 1-3 are gone; record 6 (acked, in segment 4) comes again: a duplicate,
    // nothing lost.
    assert_eq!(
        numbers(&read_all(&wal, wal.acked())),
        (6..20).collect::<Vec<_>>()
    );
    assert_eq!(wal.stats().unacked_records, 14);
}

#[test]
fn damaged_ack_file_replays_every_record_left() {
    for damage in ["flip", "short", "long", "empty"] {
        let dir = TempDir::new("ack-damaged");
        let (mut wal, _) = small_wal(dir.path(), 20);
        let records = read_all(&wal, wal.acked());
        wal.ack(records[6].next).unwrap();
        drop(wal);
        let path = dir.path().join("ack");
        let mut bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 28);
        match damage {
            "flip" => bytes[17] ^= 0x10,
            "short" => bytes.truncate(20),
            "long" => bytes.push(0),
            _ => bytes.clear(),
        }
        fs::write(&path, &bytes).unwrap();
        let wal = Wal::open(dir.path(), SMALL).unwrap();
        assert_eq!(
            numbers(&read_all(&wal, wal.acked())),
            (6..20).collect::<Vec<_>>(),
            "{damage}"
        );
    }
}

#[test]
fn ack_cursor_past_a_cut_tail_is_lowered_so_new_records_are_not_lost() {
    let dir = TempDir::new("ack-past-tail");
    let (mut wal, positions) = small_wal(dir.path(), 20);
    wal.ack(wal.head()).unwrap();
    drop(wal);
    // The acked records of the last segment are lost, and the cursor now lies past
    // the end of the file.
    truncate(&segment_file(dir.path(), 10), HEADER_BYTES + 3);
    let mut wal = Wal::open(dir.path(), SMALL).unwrap();
    assert_eq!(wal.acked(), pos(10, HEADER_BYTES));
    assert_eq!(wal.append(&payload(50)).unwrap(), positions[18]);
    drop(wal);
    // Without the lowered cursor on disk, this record would count as acked.
    let wal = Wal::open(dir.path(), SMALL).unwrap();
    assert_eq!(numbers(&read_all(&wal, wal.acked())), vec![50]);
}

#[test]
fn cap_drops_exactly_the_oldest_segments_and_reads_continue_at_the_oldest_left() {
    let dir = TempDir::new("cap");
    let config = WalConfig {
        cap_bytes: 1000,
        ..SMALL
    };
    let mut wal = Wal::open(dir.path(), config.clone()).unwrap();
    append_range(&mut wal, 0, 5);
    let first = read_all(&wal, wal.acked());
    // Acked records are not counted as dropped: 0..=4 acked, segments 1-2 deleted.
    wal.ack(first[4].next).unwrap();
    let reader_at = first[4].next;
    append_range(&mut wal, 5, 40);

    // 40 records = 20 full segments of 144 bytes; at most 6 fit under 1000 bytes once
    // the seventh fills (7 × 144 = 1008), so segments 15-20 stay.
    assert_eq!(segment_ids(dir.path()), (15..=20).collect::<Vec<_>>());
    let s = wal.stats();
    assert_eq!((s.segments, s.bytes), (6, 6 * FULL_SEGMENT));
    // Segments 3..=14 held records 4..=27; record 4 was acked.
    assert_eq!(s.dropped_records, 23);
    assert_eq!(s.dropped_bytes, 23 * PAYLOAD as u64);
    assert_eq!(s.unacked_records, 12);
    // A reader whose position lies in a deleted segment continues at the oldest one.
    assert_eq!(
        numbers(&read_all(&wal, reader_at)),
        (28..40).collect::<Vec<_>>()
    );
    assert_eq!(wal.acked(), pos(15, HEADER_BYTES));
    drop(wal);
    // After a reopen the drops are history; what is left replays whole.
    let wal = Wal::open(dir.path(), config).unwrap();
    assert_eq!(wal.stats().dropped_records, 0);
    assert_eq!(
        numbers(&read_all(&wal, wal.acked())),
        (28..40).collect::<Vec<_>>()
    );
}

#[test]
fn cap_never_deletes_the_active_segment() {
    let dir = TempDir::new("cap-active");
    let config = WalConfig {
        cap_bytes: 10,
        ..SMALL
    };
    let mut wal = Wal::open(dir.path(), config).unwrap();
    append_range(&mut wal, 0, 5);
    // Every rotation drops the previous segment.
    assert_eq!(segment_ids(dir.path()), vec![3]);
    let s = wal.stats();
    assert_eq!((s.dropped_records, s.unacked_records), (4, 1));
    assert_eq!(numbers(&read_all(&wal, WalPosition::default())), vec![4]);
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = TempDir::new("oversize");
    let mut wal = Wal::open(dir.path(), SMALL).unwrap();
    let a = wal.append(&payload(0)).unwrap();
    let big = vec![7u8; 1000];
    let b = wal.append(&big).unwrap();
    let c = wal.append(&payload(1)).unwrap();
    assert_eq!((a.segment, b.segment, c.segment), (1, 2, 3));
    assert_eq!(b.offset, HEADER_BYTES);
    let records = read_all(&wal, wal.acked());
    assert_eq!(records[1].payload, big);
    drop(wal);
    let wal = Wal::open(dir.path(), SMALL).unwrap();
    assert_eq!(read_all(&wal, wal.acked()).len(), 3);
}

#[test]
fn an_empty_payload_is_a_record_too() {
    let dir = TempDir::new("empty-payload");
    let mut wal = Wal::open(dir.path(), WalConfig::default()).unwrap();
    let a = wal.append(b"").unwrap();
    let b = wal.append(b"x").unwrap();
    assert_eq!(b.offset, a.offset + FRAME_HEADER_BYTES);
    drop(wal);
    let wal = Wal::open(dir.path(), WalConfig::default()).unwrap();
    let records = read_all(&wal, wal.acked());
    assert_eq!(records.len(), 2);
    assert!(records[0].payload.is_empty());
}

#[test]
fn a_payload_over_the_limit_is_refused() {
    let dir = TempDir::new("too-large");
    let mut wal = Wal::open(dir.path(), WalConfig::default()).unwrap();
    let huge = vec![0u8; weir_core::wal::MAX_RECORD_BYTES + 1];
    assert!(matches!(
        wal.append(&huge),
        Err(WalError::RecordTooLarge { .. })
    ));
    assert_eq!(wal.head(), pos(1, HEADER_BYTES));
}

#[test]
fn injected_write_failure_keeps_earlier_records_and_later_appends_work() {
    let dir = TempDir::new("write-failure");
    let (mut wal, _) = small_wal(dir.path(), 5);
    let head = wal.head();
    let size = fs::metadata(segment_file(dir.path(), 3)).unwrap().len();

    wal.inject_write_failures(1);
    let err = wal.append(&payload(5)).unwrap_err();
    assert!(matches!(err, WalError::WriteSegment { .. }), "{err}");
    assert!(
        err.to_string().contains("00000000000000000003.wal"),
        "{err}"
    );
    // The torn half-record was cut off again.
    assert_eq!(
        fs::metadata(segment_file(dir.path(), 3)).unwrap().len(),
        size
    );
    let s = wal.stats();
    assert_eq!((s.write_errors, s.unacked_records), (1, 5));
    assert_eq!(s.bytes, wal_bytes_on_disk(dir.path()));
    assert_eq!(wal.head(), head);
    assert_eq!(
        numbers(&read_all(&wal, wal.acked())),
        (0..5).collect::<Vec<_>>()
    );

    assert_eq!(wal.append(&payload(5)).unwrap(), head);
    append_range(&mut wal, 6, 8);
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), SMALL).unwrap();
    assert_eq!(wal.stats().corrupt_tails, 0);
    assert_eq!(
        numbers(&read_all(&wal, wal.acked())),
        (0..8).collect::<Vec<_>>()
    );
}

#[test]
fn failed_cut_after_a_failed_write_moves_appends_to_a_fresh_segment() {
    let dir = TempDir::new("cut-failure");
    let (mut wal, _) = small_wal(dir.path(), 5);
    wal.inject_write_failures(1);
    wal.inject_truncate_failures(1);
    assert!(wal.append(&payload(5)).is_err());
    // Segment 3 keeps a torn half-frame; it is no longer written to.
    assert_eq!(wal.head(), pos(4, HEADER_BYTES));
    assert_eq!(wal.stats().bytes, wal_bytes_on_disk(dir.path()));
    assert_eq!(
        numbers(&read_all(&wal, wal.acked())),
        (0..5).collect::<Vec<_>>()
    );
    assert_eq!(wal.append(&payload(5)).unwrap(), pos(4, HEADER_BYTES));
    append_range(&mut wal, 6, 8);
    drop(wal);

    let wal = Wal::open(dir.path(), SMALL).unwrap();
    let s = wal.stats();
    // The half-frame (29 of 58 bytes) is cut as a torn tail on open.
    assert_eq!((s.corrupt_tails, s.truncated_bytes), (1, FRAME / 2));
    assert_eq!(
        numbers(&read_all(&wal, wal.acked())),
        (0..8).collect::<Vec<_>>()
    );
}

#[test]
fn failed_segment_creation_leaves_no_file_and_the_next_append_works() {
    let dir = TempDir::new("create-failure");
    let (mut wal, _) = small_wal(dir.path(), 4);
    // Segment 2 is full: the next append must create segment 3, and its header write
    // fails.
    wal.inject_write_failures(1);
    assert!(wal.append(&payload(4)).is_err());
    assert_eq!(wal.stats().write_errors, 1);
    assert_eq!(segment_ids(dir.path()), vec![1, 2]);
    assert_eq!(wal.append(&payload(4)).unwrap(), pos(3, HEADER_BYTES));
    drop(wal);
    let wal = Wal::open(dir.path(), SMALL).unwrap();
    assert_eq!(
        numbers(&read_all(&wal, wal.acked())),
        (0..5).collect::<Vec<_>>()
    );
}

#[test]
fn stats_report_the_oldest_unacked_segment_time() {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let dir = TempDir::new("oldest");
    let before = now();
    let (mut wal, _) = small_wal(dir.path(), 3);
    let after = now();
    let oldest = wal.stats().oldest_unacked_ms.unwrap();
    assert!(
        (before..=after).contains(&oldest),
        "{before} {oldest} {after}"
    );
    let records = read_all(&wal, wal.acked());
    wal.ack(records[2].next).unwrap();
    assert_eq!(wal.stats().oldest_unacked_ms, None);
}

/// Unmounts the tmpfs on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

/// A real full disk: a 256 KiB tmpfs. Needs root (CI runs as root); skipped, with a
/// note, where mounting is not allowed.
#[test]
fn full_disk_keeps_earlier_records_and_appends_resume_once_space_is_freed() {
    let dir = TempDir::new("enospc-mount");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    }
    let fs_guard = Tmpfs(dir.path().to_path_buf());
    let wal_dir = fs_guard.0.join("wal");
    let config = WalConfig {
        segment_bytes: 64 << 10,
        ..SMALL
    };
    let mut wal = Wal::open(&wal_dir, config.clone()).unwrap();
    let record = vec![0x5au8; 10_000];
    let mut ok = 0u64;
    let err = loop {
        match wal.append(&record) {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
        assert!(ok < 100, "a 256 KiB tmpfs took 1 MB");
    };
    assert!(matches!(err, WalError::WriteSegment { .. }), "{err}");
    assert!(ok >= 10, "only {ok} records fit");
    assert_eq!(wal.stats().write_errors, 1);
    assert_eq!(wal.stats().bytes, wal_bytes_on_disk(&wal_dir));
    let records = read_all(&wal, wal.acked());
    assert_eq!(records.len() as u64, ok);
    assert!(records.iter().all(|r| r.payload == record));

    // Free space by acknowledging everything; the next appends succeed. The ack file
    // itself may not fit on the full disk: the segments go anyway, and a second ack
    // persists the cursor.
    match wal.ack(wal.head()) {
        Ok(()) => {}
        Err(WalError::WriteAck { .. }) => wal.ack(wal.head()).unwrap(),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(wal.stats().segments, 1);
    let after = wal.append(b"after").unwrap();
    wal.append(b"after 2").unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open(&wal_dir, config).unwrap();
    assert_eq!(wal.stats().corrupt_tails, 0);
    let replay = read_all(&wal, wal.acked());
    assert_eq!(replay.len(), 2);
    assert_eq!(replay[0].position, after);
    assert_eq!(replay[1].payload, b"after 2");
    drop(wal);
    drop(fs_guard);
}

/// A segment of this layout holds four `PAYLOAD`-byte records (28 + 4 × 58 = 260).
const FOUR_PER_SEGMENT: WalConfig = WalConfig {
    segment_bytes: 300,
    ..SMALL
};

#[test]
fn deferred_records_are_read_only_once_published_and_never_the_ones_a_failed_sync_took() {
    let dir = TempDir::new("defer-reads");
    let mut wal = Wal::open(dir.path(), FOUR_PER_SEGMENT).unwrap();
    append_range(&mut wal, 0, 2);
    wal.sync().unwrap();
    wal.defer_reads();
    append_range(&mut wal, 2, 5); // across a rotation: segment 1 holds four
    // What was readable stays so; nothing appended since is.
    assert_eq!(numbers(&read_all(&wal, wal.acked())), [0, 1]);
    assert_eq!(wal.read(pos(1, HEADER_BYTES + 2 * FRAME)).unwrap(), None);
    assert_eq!(wal.read(pos(2, HEADER_BYTES)).unwrap(), None);

    // A failed sync takes records 2..5 out; the writer appends them again (a new
    // segment), syncs, and only then publishes.
    wal.inject_sync_failures(1);
    let lost_from = match wal.sync() {
        Err(WalError::SyncLost { lost_from, .. }) => lost_from,
        other => panic!("expected SyncLost, got {other:?}"),
    };
    assert_eq!(lost_from, pos(1, HEADER_BYTES + 2 * FRAME));
    wal.defer_reads(); // a second call keeps the first limit
    append_range(&mut wal, 2, 5);
    assert_eq!(numbers(&read_all(&wal, wal.acked())), [0, 1]);
    wal.sync().unwrap();
    wal.publish();
    assert_eq!(numbers(&read_all(&wal, wal.acked())), [0, 1, 2, 3, 4]);
}

#[test]
fn a_failed_sync_of_the_active_segment_takes_its_unsynced_records_out_of_the_log() {
    let dir = TempDir::new("sync-fail-active");
    let mut wal = Wal::open(dir.path(), FOUR_PER_SEGMENT).unwrap();
    let positions = append_range(&mut wal, 0, 3);
    wal.sync().unwrap();
    append_range(&mut wal, 3, 4);

    wal.inject_sync_failures(1);
    match wal.sync() {
        Err(WalError::SyncLost {
            lost_from,
            lost_records: 1,
            ..
        }) => assert_eq!(lost_from, pos(1, HEADER_BYTES + 3 * FRAME)),
        other => panic!("expected SyncLost, got {other:?}"),
    }
    let s = wal.stats();
    assert_eq!((s.sync_errors, s.write_errors), (1, 0));
    assert_eq!(
        (s.sync_lost_records, s.sync_lost_bytes),
        (1, PAYLOAD as u64)
    );
    // Record 3 is gone from the index and from the file; the rest is untouched.
    assert_eq!(
        numbers(&read_all(&wal, wal.acked())),
        (0..3).collect::<Vec<_>>()
    );
    assert_eq!(s.unacked_records, 3);
    assert_eq!(
        fs::metadata(segment_file(dir.path(), 1)).unwrap().len(),
        HEADER_BYTES + 3 * FRAME
    );
    // The failed file is never synced again: a sync with nothing new makes no call.
    let syncs = s.syncs;
    wal.sync().unwrap();
    assert_eq!(wal.stats().syncs, syncs);

    // Appended again, the record goes to a new segment and becomes durable there.
    assert_eq!(wal.append(&payload(3)).unwrap(), pos(2, HEADER_BYTES));
    append_range(&mut wal, 4, 6);
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), FOUR_PER_SEGMENT).unwrap();
    assert_eq!(wal.stats().corrupt_tails, 0);
    let records = read_all(&wal, wal.acked());
    assert_eq!(numbers(&records), (0..6).collect::<Vec<_>>());
    assert_eq!(records[0].position, positions[0]);
}

#[test]
fn a_failed_sync_of_a_rotated_segment_takes_out_every_later_record_too() {
    let dir = TempDir::new("sync-fail-rotated");
    let (mut wal, positions) = small_wal(dir.path(), 2);
    wal.sync().unwrap();
    // Segments 2 and 3 are rotated away from unsynced; 4 is active.
    append_range(&mut wal, 2, 7);
    assert_eq!(wal.head(), pos(4, HEADER_BYTES + FRAME));

    // The first sync is segment 2's (the oldest unsynced): it fails, so records 2..7
    // go, later segments included, to keep the order of what comes back.
    wal.inject_sync_failures(1);
    match wal.sync() {
        Err(WalError::SyncLost {
            lost_from,
            lost_records: 5,
            ..
        }) => assert_eq!(lost_from, pos(2, HEADER_BYTES)),
        other => panic!("expected SyncLost, got {other:?}"),
    }
    assert_eq!(numbers(&read_all(&wal, wal.acked())), vec![0, 1]);
    assert_eq!(wal.head(), pos(5, HEADER_BYTES));
    for id in 2..=4 {
        assert_eq!(
            fs::metadata(segment_file(dir.path(), id)).unwrap().len(),
            HEADER_BYTES,
            "segment {id}"
        );
    }
    let s = wal.stats();
    assert_eq!(s.bytes, wal_bytes_on_disk(dir.path()));
    assert_eq!(
        (s.sync_lost_records, s.sync_lost_bytes),
        (5, 5 * PAYLOAD as u64)
    );

    // The caller appends them again, in order: after a reopen each record is there
    // once, in order.
    append_range(&mut wal, 2, 7);
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), SMALL).unwrap();
    assert_eq!(wal.stats().corrupt_tails, 0);
    let records = read_all(&wal, wal.acked());
    assert_eq!(numbers(&records), (0..7).collect::<Vec<_>>());
    assert_eq!(records[1].position, positions[1]);
    assert_eq!(records[2].position, pos(5, HEADER_BYTES));
}

#[test]
fn a_failed_ack_file_sync_keeps_the_old_cursor_and_the_next_ack_writes_it() {
    let dir = TempDir::new("ack-sync-fail");
    let (mut wal, positions) = small_wal(dir.path(), 4);
    wal.sync().unwrap();
    wal.inject_sync_failures(1);
    assert!(matches!(
        wal.ack(positions[1]),
        Err(WalError::WriteAck { .. })
    ));
    assert_eq!(wal.stats().sync_errors, 1);
    assert_eq!(wal.acked(), positions[1]);
    wal.ack(positions[2]).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), SMALL).unwrap();
    assert_eq!(numbers(&read_all(&wal, wal.acked())), vec![2, 3]);
}

/// `n` records in one segment, synced, then each but the last acknowledged on its
/// own (so the cursor never catches up with the head); returns the fsync calls the
/// acknowledgements made, and those a clean close added.
fn syncs_for_acks(config: WalConfig, n: u64) -> (u64, u64) {
    let dir = TempDir::new("ack-syncs");
    let mut wal = Wal::open(dir.path(), config).unwrap();
    append_range(&mut wal, 0, n);
    wal.sync().unwrap();
    let records = read_all(&wal, wal.acked());
    let before = wal.stats().syncs;
    for r in &records[..records.len() - 1] {
        wal.ack(r.next).unwrap();
    }
    let after_acks = wal.stats().syncs;
    wal.persist_ack().unwrap();
    let after_close = wal.stats().syncs;
    wal.close().unwrap();
    (after_acks - before, after_close - after_acks)
}

#[test]
fn acks_are_persisted_in_batches_and_never_fsynced_with_sync_never() {
    let one_segment = WalConfig {
        segment_bytes: 1 << 20,
        ..SMALL
    };
    // Every acknowledgement written: an fsync of the temporary file and one of the
    // directory, each time.
    assert_eq!(syncs_for_acks(one_segment.clone(), 30), (58, 0));
    // One write per 8 acknowledgements (after the 8th, 16th, 24th), and the 5 left
    // on the clean close.
    let batched = WalConfig {
        ack_every: 8,
        ..one_segment.clone()
    };
    assert_eq!(syncs_for_acks(batched.clone(), 30), (6, 2));
    // An acknowledgement that catches up with the head is written at once.
    let dir = TempDir::new("caught-up");
    let mut wal = Wal::open(dir.path(), batched.clone()).unwrap();
    append_range(&mut wal, 0, 3);
    wal.sync().unwrap();
    let syncs = wal.stats().syncs;
    wal.ack(wal.head()).unwrap();
    assert_eq!(wal.stats().syncs, syncs + 2);
    drop(wal);
    let wal = Wal::open(dir.path(), batched.clone()).unwrap();
    assert_eq!(wal.stats().unacked_records, 0);
    // No fsync of any kind: not for acknowledgements, records or the directory.
    let never = WalConfig {
        sync: SyncPolicy::Never,
        ..batched
    };
    assert_eq!(syncs_for_acks(never.clone(), 30), (0, 0));
    let dir = TempDir::new("sync-never");
    let (mut wal, _) = small_wal(dir.path(), 0);
    drop(wal);
    wal = Wal::open(
        dir.path(),
        WalConfig {
            ack_every: 1,
            ..never
        },
    )
    .unwrap();
    append_range(&mut wal, 0, 9);
    wal.sync().unwrap();
    let records = read_all(&wal, wal.acked());
    wal.ack(records[4].next).unwrap();
    assert_eq!(wal.stats().syncs, 0);
    // The ack file is still written (without fsync): a reopen resumes after record 4.
    drop(wal);
    let wal = Wal::open(dir.path(), SMALL).unwrap();
    assert_eq!(numbers(&read_all(&wal, wal.acked())), vec![5, 6, 7, 8]);
}

#[test]
fn a_crash_with_batched_acks_replays_from_the_last_persisted_cursor_and_loses_nothing() {
    // (acks written every, records acknowledged one by one, replay after a crash)
    let cases: [(u32, u64, std::ops::Range<u64>); 3] = [
        // Persisted after record 4 (inside segment 2, which stays): records 5 and 6
        // were acknowledged after it and come again.
        (5, 7, 5..12),
        // Persisted after record 2, inside segment 1; records 3 and 4 acknowledged
        // after it emptied segment 1, deleted before the cursor that passes it was
        // written: replay starts at the oldest segment left (record 3 went with its
        // segment: it had been delivered).
        (3, 5, 4..12),
        // Nothing persisted yet: everything left is replayed.
        (100, 6, 4..12),
    ];
    for (ack_every, acked, replay) in cases {
        let config = WalConfig {
            ack_every,
            ..FOUR_PER_SEGMENT
        };
        let dir = TempDir::new("batched-crash");
        let mut wal = Wal::open(dir.path(), config.clone()).unwrap();
        append_range(&mut wal, 0, 12);
        wal.sync().unwrap();
        let records = read_all(&wal, wal.acked());
        for r in &records[..acked as usize] {
            wal.ack(r.next).unwrap();
        }
        drop(wal); // a crash: no close

        let mut wal = Wal::open(dir.path(), config.clone()).unwrap();
        let got = numbers(&read_all(&wal, wal.acked()));
        assert_eq!(
            got,
            replay.clone().collect::<Vec<_>>(),
            "ack_every {ack_every}"
        );
        // Every record not acknowledged before the crash is there, in order.
        assert!(got.ends_with(&(acked..12).collect::<Vec<_>>()));

        // A clean close after acknowledging two more: the next open replays exactly
        // the rest.
        let again = read_all(&wal, wal.acked());
        wal.ack(again[1].next).unwrap();
        wal.close().unwrap();
        let wal = Wal::open(dir.path(), config).unwrap();
        assert_eq!(
            numbers(&read_all(&wal, wal.acked())),
            (replay.start + 2..12).collect::<Vec<_>>()
        );
    }
}

/// One step of the model-checked proptest.
#[derive(Debug, Clone)]
enum Op {
    /// Append a payload of this many bytes.
    Append(u16),
    /// Ack at a surviving record (chosen by this number): its position, or its `next`.
    Ack(u16, bool),
    /// Drop the WAL and open it again.
    Reopen,
    /// Drop the WAL, cut this many bytes off the last segment file (a torn write), and
    /// open it again.
    TruncateTail(u16),
    Sync,
    /// Hold back the records appended from now on from reads ([`Wal::defer_reads`]).
    Defer,
    /// Make them readable again ([`Wal::publish`]).
    Publish,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u16..200).prop_map(Op::Append),
        2 => (any::<u16>(), any::<bool>()).prop_map(|(i, n)| Op::Ack(i, n)),
        1 => Just(Op::Reopen),
        1 => (0u16..300).prop_map(Op::TruncateTail),
        1 => Just(Op::Sync),
        1 => Just(Op::Defer),
        1 => Just(Op::Publish),
    ]
}

/// A record the model expects to exist.
#[derive(Debug)]
struct ModelRecord {
    position: WalPosition,
    next: WalPosition,
    payload: Vec<u8>,
    acked: bool,
}

/// Runs `ops` against a WAL and a `Vec` model; after every step, the unacked records
/// read back must be exactly the model's, and every count must match.
fn run_model(ops: &[Op], config: WalConfig) -> Result<(), TestCaseError> {
    let dir = TempDir::new("model");
    let mut wal = Wal::open(dir.path(), config.clone()).unwrap();
    let mut model: Vec<ModelRecord> = Vec::new();
    let mut seq = 0u64;
    let mut dropped_before = 0u64; // dropped_records of earlier opens
    let mut expected_dropped = 0u64;
    // Where reads stop while `Op::Defer` holds (a reopened WAL holds nothing back).
    let mut limit: Option<WalPosition> = None;
    for op in ops {
        match *op {
            Op::Append(len) => {
                seq += 1;
                let p: Vec<u8> = (0..len as u64).map(|k| (seq * 13 + k) as u8).collect();
                let position = wal.append(&p).unwrap();
                if let Some(last) = model.last() {
                    prop_assert!(position > last.position);
                }
                let next = WalPosition {
                    segment: position.segment,
                    offset: position.offset + FRAME_HEADER_BYTES + p.len() as u64,
                };
                model.push(ModelRecord {
                    position,
                    next,
                    payload: p,
                    acked: false,
                });
            }
            Op::Ack(i, use_next) => {
                if !model.is_empty() {
                    let r = &model[i as usize % model.len()];
                    let upto = if use_next { r.next } else { r.position };
                    wal.ack(upto).unwrap();
                    for r in model.iter_mut().filter(|r| r.position < upto) {
                        r.acked = true;
                    }
                }
            }
            Op::Reopen => {
                dropped_before += wal.stats().dropped_records;
                drop(wal);
                limit = None;
                wal = Wal::open(dir.path(), config.clone()).unwrap();
                prop_assert_eq!(wal.stats().corrupt_tails, 0);
            }
            Op::TruncateTail(cut) => {
                dropped_before += wal.stats().dropped_records;
                drop(wal);
                limit = None;
                let last = *segment_ids(dir.path()).last().unwrap();
                let path = segment_file(dir.path(), last);
                let size = fs::metadata(&path).unwrap().len();
                let keep = size.saturating_sub(cut as u64);
                truncate(&path, keep);
                // What the open must cut: to the last frame boundary at or below
                // `keep`, or the whole file when the header is torn.
                let boundary = if keep < HEADER_BYTES {
                    0
                } else {
                    model
                        .iter()
                        .filter(|r| r.position.segment == last && r.next.offset <= keep)
                        .map(|r| r.next.offset)
                        .max()
                        .unwrap_or(HEADER_BYTES)
                };
                model.retain(|r| r.position.segment != last || r.next.offset <= boundary);
                if boundary == 0 {
                    model.retain(|r| r.position.segment != last);
                }
                wal = Wal::open(dir.path(), config.clone()).unwrap();
                let s = wal.stats();
                // A torn header removes the file, even an empty one.
                let (tails, cut) = if keep < HEADER_BYTES {
                    (1, keep)
                } else {
                    (u64::from(keep != boundary), keep - boundary)
                };
                prop_assert_eq!((s.corrupt_tails, s.truncated_bytes), (tails, cut));
            }
            Op::Sync => wal.sync().unwrap(),
            Op::Defer => {
                wal.defer_reads();
                limit = limit.or(Some(wal.head()));
            }
            Op::Publish => {
                wal.publish();
                limit = None;
            }
        }

        // Segments deleted (by ack or cap) take their records out of the model;
        // unacked ones among them were dropped by the cap.
        let ids = segment_ids(dir.path());
        let oldest = ids[0];
        expected_dropped += model
            .iter()
            .filter(|r| r.position.segment < oldest && !r.acked)
            .count() as u64;
        model.retain(|r| r.position.segment >= oldest);

        let s = wal.stats();
        prop_assert_eq!(dropped_before + s.dropped_records, expected_dropped);
        let unacked: Vec<&ModelRecord> = model.iter().filter(|r| !r.acked).collect();
        let readable = unacked
            .iter()
            .filter(|r| limit.is_none_or(|l| r.position < l));
        let got = read_all(&wal, wal.acked());
        prop_assert_eq!(got.len(), readable.clone().count());
        for (g, m) in got.iter().zip(readable) {
            prop_assert_eq!(g.position, m.position);
            prop_assert_eq!(g.next, m.next);
            prop_assert_eq!(&g.payload, &m.payload);
        }
        prop_assert_eq!(s.unacked_records, unacked.len() as u64);
        prop_assert_eq!(
            s.unacked_bytes,
            unacked.iter().map(|r| r.payload.len() as u64).sum::<u64>()
        );
        prop_assert_eq!(s.bytes, wal_bytes_on_disk(dir.path()));
        prop_assert_eq!(s.segments, ids.len());
        prop_assert_eq!(wal.read(wal.head()).unwrap(), None);
    }
    Ok(())
}

/// One step of the batched-acknowledgement crash model.
#[derive(Debug, Clone)]
enum CrashOp {
    /// Append one record.
    Append,
    /// Acknowledge every record up to this many past the first unacknowledged one.
    Ack(u8),
    /// Drop the WAL without closing it, and open it again.
    Crash,
    /// Close the WAL cleanly, and open it again.
    Close,
}

fn crash_op() -> impl Strategy<Value = CrashOp> {
    prop_oneof![
        5 => Just(CrashOp::Append),
        4 => (0u8..4).prop_map(CrashOp::Ack),
        1 => Just(CrashOp::Crash),
        1 => Just(CrashOp::Close),
    ]
}

/// Runs `ops` with acknowledgements persisted every `ack_every`. After a crash, what
/// is replayed must be a run of consecutive records, in order, that ends with every
/// record never acknowledged: duplicates allowed, loss and reordering not. After a
/// clean close it must be exactly the unacknowledged records.
fn run_crash_model(ops: &[CrashOp], ack_every: u32) -> Result<(), TestCaseError> {
    let config = WalConfig {
        ack_every,
        ..FOUR_PER_SEGMENT
    };
    let dir = TempDir::new("crash-model");
    let mut wal = Wal::open(dir.path(), config.clone()).unwrap();
    let mut seq = 0u64;
    // Record numbers not yet acknowledged, in order.
    let mut unacked: Vec<u64> = Vec::new();
    for op in ops {
        match *op {
            CrashOp::Append => {
                wal.append(&payload(seq)).unwrap();
                unacked.push(seq);
                seq += 1;
            }
            CrashOp::Ack(k) => {
                let records = read_all(&wal, wal.acked());
                if let Some(r) = records.get(k as usize) {
                    wal.ack(r.next).unwrap();
                    let n = k as usize + 1;
                    unacked.drain(..n);
                }
            }
            CrashOp::Crash | CrashOp::Close => {
                if matches!(op, CrashOp::Close) {
                    wal.close().unwrap();
                } else {
                    drop(wal);
                }
                wal = Wal::open(dir.path(), config.clone()).unwrap();
                let got = numbers(&read_all(&wal, wal.acked()));
                prop_assert!(
                    got.ends_with(&unacked),
                    "{:?} lost some of {:?}",
                    got,
                    unacked
                );
                prop_assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{:?}", got);
                if matches!(op, CrashOp::Close) {
                    prop_assert_eq!(&got, &unacked);
                }
                // Replayed records count as unacknowledged again.
                unacked = got;
            }
        }
        prop_assert_eq!(numbers(&read_all(&wal, wal.acked())), unacked.clone());
        prop_assert_eq!(wal.stats().unacked_records, unacked.len() as u64);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_never_lose_an_unacked_intact_record(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        run_model(&ops, WalConfig { segment_bytes: 300, ..SMALL })?;
    }

    #[test]
    fn random_operations_under_a_small_cap_drop_only_what_they_count(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        run_model(&ops, WalConfig { segment_bytes: 300, cap_bytes: 1200, ..SMALL })?;
    }

    #[test]
    fn crashes_with_batched_acks_replay_duplicates_but_never_lose_or_reorder(
        ops in proptest::collection::vec(crash_op(), 1..80),
        ack_every in 1u32..6,
    ) {
        run_crash_model(&ops, ack_every)?;
    }

    /// The CI stand-in for the `wal` fuzz target: arbitrary bytes as segment files and
    /// an ack file never make open or read panic, and what is read adds up.
    #[test]
    fn arbitrary_files_open_and_read_without_panic(
        first in proptest::collection::vec(any::<u8>(), 0..400),
        second in proptest::collection::vec(any::<u8>(), 0..400),
        ack in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        valid_headers in any::<bool>(),
    ) {
        let dir = TempDir::new("arbitrary");
        let mut original = 0u64;
        for (id, body) in [(1u64, &first), (2, &second)] {
            let mut bytes = Vec::new();
            if valid_headers {
                bytes.extend_from_slice(b"WEIRWAL\0");
                bytes.extend_from_slice(&1u32.to_le_bytes());
                bytes.extend_from_slice(&id.to_le_bytes());
                bytes.extend_from_slice(&0i64.to_le_bytes());
            }
            bytes.extend_from_slice(body);
            original += bytes.len() as u64;
            fs::write(segment_file(dir.path(), id), &bytes).unwrap();
        }
        if let Some(ack) = &ack {
            fs::write(dir.path().join("ack"), ack).unwrap();
        }
        let Ok(mut wal) = Wal::open(dir.path(), WalConfig::default()) else {
            return Ok(());
        };
        let s = wal.stats();
        prop_assert_eq!(s.bytes, wal_bytes_on_disk(dir.path()));
        // Kept + cut off adds up to what was there, plus a fresh header when nothing
        // was left. Without an ack file, the only other deletion is of an empty first
        // segment (trivially fully acknowledged); with one, acknowledged segments go too.
        prop_assert!(s.bytes + s.truncated_bytes <= original + HEADER_BYTES);
        if ack.is_none() {
            prop_assert!(s.bytes + s.truncated_bytes + HEADER_BYTES >= original);
        }
        let records = read_all(&wal, wal.acked());
        prop_assert_eq!(records.len() as u64, s.unacked_records);
        prop_assert_eq!(
            records.iter().map(|r| r.payload.len() as u64).sum::<u64>(),
            s.unacked_bytes
        );
        // What recovery leaves takes appends that survive a reopen.
        let at = wal.append(b"probe").unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), WalConfig::default()).unwrap();
        prop_assert_eq!(wal.stats().corrupt_tails, 0);
        let again = read_all(&wal, wal.acked());
        prop_assert_eq!(again.len(), records.len() + 1);
        let last = again.last().unwrap();
        prop_assert_eq!(last.position, at);
        prop_assert_eq!(&last.payload, b"probe");
    }
}
