//! Write-ahead log: one per forwarding pipeline, in a directory of its own.
//!
//! Owns: the segment files and the ack file of one directory, appending request bodies
//! (opaque payloads) as checksummed records, reading them back in order, the ack cursor,
//! recovery after a crash, and the size cap. Must never: panic on what it finds on disk,
//! alter or delete anything before a corruption point, delete a record that was not
//! acknowledged except through the size cap (and then count it) or a failed sync (and
//! then count it and tell the caller which, so it can append them again), call a record
//! durable that a failed sync may have lost, or hand out a record whose checksum does
//! not match.
//!
//! # Life of a record
//! 1. [`Wal::append`] writes the record at the end of the active segment and returns its
//!    [`WalPosition`]. [`Wal::sync`] makes it durable (the pipeline decides when: by
//!    default once per flush; with [`SyncPolicy::Never`] it does nothing).
//! 2. A forwarder walks the log with [`Wal::read`], starting at [`Wal::acked`] and
//!    passing each [`WalRecord::next`] to the following call.
//! 3. Once a backend accepted a record, [`Wal::ack`] with its `next` moves the cursor;
//!    every segment all of whose records lie before the cursor is deleted (the active
//!    segment is kept). The cursor reaches the ack file in batches
//!    ([`WalConfig::ack_every`], [`WalConfig::ack_interval`]), whenever it reaches the
//!    head (nothing left unacknowledged), and on [`Wal::persist_ack`] / [`Wal::close`].
//! 4. After a crash or restart, [`Wal::open`] recovers and replay starts at
//!    [`Wal::acked`] again: at-least-once, duplicates possible, loss not.
//!
//! # Invariants
//! - Segment ids only grow; a position `(segment, offset)` is ordered first by segment,
//!   then by offset, and later appends always get larger positions than earlier ones.
//! - Every record in memory (`Segment::starts`) was either checksummed at open or
//!   written by this process; the frames of a segment are contiguous from the header to
//!   `Segment::len`.
//! - A record is acknowledged exactly when its position is below the cursor. The cursor
//!   is never above the head: open lowers it to the head (and persists that) if the
//!   files end before it, so a new append can never land behind it. The ack file's
//!   cursor is at or below the cursor in memory, never above it.
//! - Every record before `durable` (the head at the last successful sync) is on disk;
//!   a record at or after it is never called durable, and after a failed sync it is
//!   no longer in the log at all.
//! - The size cap (`cap_bytes`, over all segment files) is enforced after each append by
//!   deleting the oldest segments, never the active one; unacknowledged records deleted
//!   that way are counted in [`WalStats::dropped_records`] and
//!   [`WalStats::dropped_bytes`]. It is the only place the WAL drops data for good (a
//!   failed sync takes records out but hands them back: see "Failed syncs").
//!
//! # On-disk format (all integers little-endian)
//! A directory holds segment files named `<id as 20 zero-padded digits>.wal` (e.g.
//! `00000000000000000001.wal`, the first one), an `ack` file, and briefly `ack.tmp`.
//! Other files are left alone.
//!
//! Segment file = header, then record frames back to back:
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `b"WEIRWAL\0"` ([`SEGMENT_MAGIC`]) |
//! | 4 | format version, u32 ([`FORMAT_VERSION`]) |
//! | 8 | segment id, u64 (equals the id in the file name) |
//! | 8 | created, i64 milliseconds since the Unix epoch |
//!
//! Record frame ([`FRAME_HEADER_BYTES`] + payload):
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | payload length, u32 (at most [`MAX_RECORD_BYTES`]) |
//! | 4 | CRC32C (Castagnoli) of the 4 length bytes followed by the payload, u32 |
//! | n | payload |
//!
//! A record's position is its segment id and the byte offset of its frame in the file.
//!
//! Ack file `ack` (28 bytes): magic `b"WEIRACK\0"`, cursor segment u64, cursor offset
//! u64, CRC32C of those 24 bytes u32. It is written as `ack.tmp`, fsynced, renamed over
//! `ack`, and the directory fsynced (both fsyncs left out with [`SyncPolicy::Never`]).
//! A missing or damaged ack file means "nothing acknowledged": replay starts at the
//! oldest segment. A cursor in a segment that no longer exists means the same for the
//! segments left: replay starts at the oldest one.
//!
//! # Recovery ([`Wal::open`])
//! Every segment is scanned from its header. Its good part ends at the first frame whose
//! length field runs past the end of the file, exceeds [`MAX_RECORD_BYTES`], or whose
//! CRC does not match; anything after that point is cut (`set_len`, then fsync unless
//! [`SyncPolicy::Never`]) and counted in [`WalStats::corrupt_tails`] and
//! [`WalStats::truncated_bytes`]. This applies to
//! every segment, not only the last: a bit flip in an older segment cuts that segment at
//! the flip and keeps the later segments whole. A segment whose header is short, has the
//! wrong magic or names another id is removed and counted the same way (nothing of it
//! can be trusted, and nothing lies before it). A segment with the right magic but
//! another format version is an error: it was written by another build of weir and is
//! not touched. The last intact segment becomes the active one (appends continue after
//! its last good record); without one, a new segment is created.
//!
//! # Failures while running
//! A failed write (disk full, EIO) cuts the active segment back to its last good length,
//! so earlier records stay intact, counts [`WalStats::write_errors`] and returns the
//! error. If even the cut fails the segment is no longer written to: the next append
//! starts a fresh one. A record that no longer checksums when read (damaged on disk
//! after open) is skipped and counted in [`WalStats::corrupt_reads`].
//!
//! # Failed syncs
//! After an fdatasync error Linux may already have marked the pages it could not write
//! clean (and dropped them), and it reports the error once: a second fdatasync, or one
//! through a new handle, can succeed while the data is gone. So a failed sync is never
//! retried. Instead every record that sync should have made durable is taken out of
//! the log: from the first record after `durable` in the failed segment, through every
//! later record (later segments too, so the order of what is left and what comes
//! back stays the order of the appends). The index forgets them (they are never read,
//! acknowledged or reported durable), the files are cut back (best effort), the next
//! append starts a new segment, and [`Wal::sync`] returns [`WalError::SyncLost`] with
//! the first lost position. The WAL does not keep payloads in memory; the caller does
//! (the pipeline holds the bodies of the flush it is syncing) and appends the records
//! from `lost_from` on again, in order, then syncs again. A reader must not have sent
//! a record that a failed sync then takes out: a writer that syncs after several
//! appends calls [`Wal::defer_reads`] before them and [`Wal::publish`] once the sync
//! succeeded (or it gave up), and [`Wal::read`] returns none of them in between. A
//! failed directory fsync is treated the same when a segment was created since the
//! last one succeeded (from that segment's first record on). Counted in
//! [`WalStats::sync_errors`], [`WalStats::sync_lost_records`] and
//! [`WalStats::sync_lost_bytes`]. Syncs of segments rotated away from go through the
//! handle that wrote them, never a file opened anew. A failed fsync of the ack file
//! fails that ack file write only (the next write uses a new temporary file).
//!
//! # Crash semantics
//! What a crash (kill -9, or a machine crash) leaves, and what [`Wal::open`] makes of it:
//! - Records: with [`SyncPolicy::Fsync`], every record appended before the last
//!   successful [`Wal::sync`] survives; later ones survive a process crash (the page
//!   cache does) and may be lost, whole, to a machine crash (recovery cuts a torn
//!   tail). With [`SyncPolicy::Never`] nothing is fsynced: a machine crash may lose
//!   the records of the last seconds.
//! - Acknowledgements: the ack file lags the cursor by fewer than
//!   [`WalConfig::ack_every`] acknowledgements (unless writing it failed), and not at
//!   all once everything appended is acknowledged, so only a backlog being worked
//!   off has a window. After a crash, replay starts at the ack file's cursor, so the
//!   records acknowledged after it are sent again: at-least-once, duplicates
//!   possible, loss not. Fully
//!   acknowledged segments are deleted without waiting for the ack file: a cursor
//!   that points into a deleted segment replays from the oldest segment left, which
//!   is all at-least-once needs; persisting first would cost two fsyncs per deleted
//!   segment and save only duplicates. With [`SyncPolicy::Never`] the ack file is
//!   written without fsyncs, so a machine crash may also lose its last writes (more
//!   duplicates), or keep an ack file whose cursor lies past records the crash lost
//!   (open then lowers it to the head).
//! - [`Wal::close`] (or [`Wal::sync`] then [`Wal::persist_ack`]) is a clean stop: after
//!   it a restart replays exactly the unacknowledged records.
//!
//! # Limits
//! The WAL is not safe against two processes opening the same directory; the collector
//! gives each pipeline a directory of its own. Unix only (positioned reads and writes).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The first 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WEIRWAL\0";
/// The segment format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of a segment header: magic, version, segment id, created time.
pub const HEADER_BYTES: u64 = 28;
/// Size of a record frame's header: payload length and CRC32C.
pub const FRAME_HEADER_BYTES: u64 = 8;
/// The largest payload [`Wal::append`] accepts; a length field above it marks the end
/// of a segment's good part during recovery.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// The first 8 bytes of the ack file.
const ACK_MAGIC: [u8; 8] = *b"WEIRACK\0";
/// Size of the ack file: magic, segment, offset, CRC32C.
const ACK_BYTES: usize = 28;
const ACK_FILE: &str = "ack";
const ACK_TMP_FILE: &str = "ack.tmp";
/// Read size of the recovery scan.
const SCAN_BUFFER_BYTES: usize = 256 << 10;

/// Where a record starts: segment id and byte offset of its frame within the segment
/// file. Ordered by segment, then offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WalPosition {
    /// Segment id (the number in the segment's file name).
    pub segment: u64,
    /// Byte offset of the record's frame in the segment file.
    pub offset: u64,
}

/// Whether the WAL calls fsync at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// [`Wal::sync`] fdatasyncs the segments written since the last sync (and fsyncs
    /// the directory after a segment was created or deleted); the ack file is fsynced
    /// before it is renamed into place, and the directory after. A record is durable
    /// once a [`Wal::sync`] after its append returned `Ok`.
    #[default]
    Fsync,
    /// No fsync or fdatasync of any kind: [`Wal::sync`] does nothing, and the ack
    /// file is written and renamed without one. A crash of the process loses nothing
    /// (the page cache outlives it); a crash of the machine may lose the records and
    /// the acknowledgements of the last seconds (lost acknowledgements mean records
    /// sent again).
    Never,
}

/// Sizes and durability of one WAL. Fixed once the WAL is open.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Rotate to a new segment when the active one would grow beyond this many bytes
    /// (header included). A record larger than this gets a segment on its own.
    /// Default 64 MiB.
    pub segment_bytes: u64,
    /// Total size cap of all segment files. After an append pushes the total above
    /// it, the oldest segments are deleted (never the active one) and their
    /// unacknowledged records counted as dropped. Default 512 MiB.
    pub cap_bytes: u64,
    /// Whether the WAL calls fsync. Default [`SyncPolicy::Fsync`].
    pub sync: SyncPolicy,
    /// [`Wal::ack`] writes the ack file once this many acknowledgements (calls that
    /// moved the cursor) accumulated since it was last written, and whenever the
    /// cursor reaches the head (everything acknowledged); 0 counts as 1 (every
    /// acknowledgement). After a crash, the acknowledgements not yet written are
    /// undone: their records are sent again. Default 64.
    pub ack_every: u32,
    /// [`Wal::ack`] also writes the ack file when this long passed since it was last
    /// written (checked on each acknowledgement; nothing runs in the background), so
    /// a slow trickle of acknowledgements is persisted one by one. `Duration::MAX`:
    /// only `ack_every` counts. Default 1 s.
    pub ack_interval: Duration,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes: 64 << 20,
            cap_bytes: 512 << 20,
            sync: SyncPolicy::Fsync,
            ack_every: 64,
            ack_interval: Duration::from_secs(1),
        }
    }
}

/// One record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    /// Where the record starts.
    pub position: WalPosition,
    /// The position right after the record: pass it to [`Wal::read`] for the following
    /// record, or to [`Wal::ack`] to acknowledge this one and everything before it.
    pub next: WalPosition,
    /// The payload as appended.
    pub payload: Vec<u8>,
}

/// Counters and gauges of one WAL. Byte counts of records are payload bytes (frame
/// headers not included); `bytes` is file sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WalStats {
    /// Total size of the segment files on disk.
    pub bytes: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Records not yet acknowledged.
    pub unacked_records: u64,
    /// Payload bytes of the records not yet acknowledged.
    pub unacked_bytes: u64,
    /// Created time (ms since the Unix epoch) of the segment holding the oldest
    /// unacknowledged record; `None` when everything is acknowledged.
    pub oldest_unacked_ms: Option<i64>,
    /// Unacknowledged records deleted by the size cap since open.
    pub dropped_records: u64,
    /// Payload bytes of those records.
    pub dropped_bytes: u64,
    /// Torn or corrupt segment tails cut off, and segments with a bad header removed,
    /// during open.
    pub corrupt_tails: u64,
    /// Bytes cut off or removed during open.
    pub truncated_bytes: u64,
    /// Failed writes and segment creations since open.
    pub write_errors: u64,
    /// fsync and fdatasync calls since open (segments, ack file, directory): 0 with
    /// [`SyncPolicy::Never`].
    pub syncs: u64,
    /// Failed fsync and fdatasync calls since open.
    pub sync_errors: u64,
    /// Unacknowledged records taken out of the log since open because a sync that
    /// should have made them durable failed (see the module doc, "Failed syncs"):
    /// the caller got them back in [`WalError::SyncLost`] to append again.
    pub sync_lost_records: u64,
    /// Payload bytes of those records.
    pub sync_lost_bytes: u64,
    /// Times [`Wal::read`] skipped a record that no longer checksums (damaged on disk
    /// after open), since open. A damaged record read again is counted again.
    pub corrupt_reads: u64,
}

/// A WAL operation that failed; each variant names the step and carries the file.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The WAL directory could not be created.
    #[error("cannot create WAL directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The WAL directory could not be listed.
    #[error("cannot list WAL directory {path}: {source}")]
    ListDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A segment file could not be opened.
    #[error("cannot open WAL segment {path}: {source}")]
    OpenSegment {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Reading a segment file failed.
    #[error("cannot read WAL segment {path}: {source}")]
    ReadSegment {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Cutting a torn or corrupt tail off a segment during open failed.
    #[error("cannot cut the damaged tail of WAL segment {path}: {source}")]
    CutSegment {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A new segment file could not be created.
    #[error("cannot create WAL segment {path}: {source}")]
    CreateSegment {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing a record (or a new segment's header) failed; the segment was cut back
    /// to its last good record.
    #[error("cannot write WAL segment {path}: {source}")]
    WriteSegment {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A segment file could not be deleted.
    #[error("cannot delete WAL segment {path}: {source}")]
    RemoveSegment {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// fsync of the directory failed while no record depended on it (only deleted
    /// segments were not yet synced: at worst a crash brings acknowledged records
    /// back). The next [`Wal::sync`] tries again.
    #[error("cannot sync {path}: {source}")]
    Sync {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// fdatasync of a segment failed, or fsync of the directory while it held a new
    /// segment: the kernel may have dropped the pages it could not write, so every
    /// record from `lost_from` on was taken out of the log (never reported durable,
    /// never read again) and the next append starts a new segment. The caller still
    /// holds those payloads and appends them again (or counts them lost).
    #[error(
        "cannot sync {path}: {source}; {lost_records} unacknowledged records from segment {} offset {} on were taken out of the log",
        lost_from.segment,
        lost_from.offset
    )]
    SyncLost {
        /// The segment file or the directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
        /// The first position taken out: every record at or after it is gone.
        lost_from: WalPosition,
        /// How many of them were not acknowledged.
        lost_records: u64,
    },
    /// The ack file could not be written, synced or renamed into place.
    #[error("cannot write WAL ack file {path}: {source}")]
    WriteAck {
        /// The ack file (or its temporary).
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A payload over [`MAX_RECORD_BYTES`] was refused.
    #[error("WAL record of {len} bytes is over the limit of {max} bytes")]
    RecordTooLarge {
        /// The payload's length.
        len: usize,
        /// [`MAX_RECORD_BYTES`].
        max: usize,
    },
    /// A segment carries the right magic but another format version: written by another
    /// build of weir. It is left untouched.
    #[error(
        "WAL segment {path} has format version {version}; this build reads version {FORMAT_VERSION} only (move the file away to start over)"
    )]
    UnsupportedVersion {
        /// The segment file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
}

/// What the WAL knows about one segment file.
#[derive(Debug)]
struct Segment {
    id: u64,
    created_ms: i64,
    /// End of the good part: the header plus every intact frame. The next frame of the
    /// active segment goes here.
    len: u64,
    /// Size of the file on disk: `len`, except after a failed write that could not be
    /// cut back (then the segment is no longer written to).
    file_bytes: u64,
    /// Frame offsets, ascending and contiguous: frame `i` spans `starts[i]` to
    /// `starts[i + 1]` (or `len` for the last one); `starts[0] == HEADER_BYTES`.
    starts: Vec<u64>,
}

impl Segment {
    /// Index of the first record at or after `offset`.
    fn first_at_or_after(&self, offset: u64) -> usize {
        self.starts.partition_point(|&o| o < offset)
    }

    /// End of frame `i` (which must exist).
    fn frame_end(&self, i: usize) -> u64 {
        self.starts.get(i + 1).copied().unwrap_or(self.len)
    }

    /// Records from index `i` to the end, and their payload bytes (frames are
    /// contiguous, so no per-record sizes are needed).
    fn records_from(&self, i: usize) -> (u64, u64) {
        let n = self.starts.len().saturating_sub(i) as u64;
        if n == 0 {
            return (0, 0);
        }
        let frames = self.len - self.starts[i];
        (n, frames - n * FRAME_HEADER_BYTES)
    }
}

/// The one door of every segment write, cut and sync: injects the faults tests ask
/// for (how many upcoming writes, cuts and syncs fail) and counts the syncs.
#[derive(Debug, Default)]
struct Faults {
    write_failures: u32,
    truncate_failures: u32,
    sync_failures: u32,
    /// fsync and fdatasync calls made (failed ones included).
    syncs: u64,
}

/// What a sync must make durable.
#[derive(Clone, Copy)]
enum SyncWhat {
    /// The file's data (fdatasync): segments.
    Data,
    /// Data and metadata (fsync): the ack file and the directory.
    All,
}

impl Faults {
    /// fdatasync or fsync of `file`, unless a failure is injected.
    fn sync(&mut self, file: &File, what: SyncWhat) -> io::Result<()> {
        self.syncs += 1;
        if self.sync_failures > 0 {
            self.sync_failures -= 1;
            return Err(io::Error::other("injected sync failure"));
        }
        match what {
            SyncWhat::Data => file.sync_data(),
            SyncWhat::All => file.sync_all(),
        }
    }

    /// Writes `parts` back to back at `offset`. An injected failure writes the first
    /// half of the bytes (a torn write) and then fails as a full disk would.
    fn write_parts(&mut self, file: &File, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
        if self.write_failures > 0 {
            self.write_failures -= 1;
            let total: usize = parts.iter().map(|p| p.len()).sum();
            let mut left = total / 2;
            let mut at = offset;
            for p in parts {
                let n = p.len().min(left);
                file.write_all_at(&p[..n], at)?;
                at += n as u64;
                left -= n;
            }
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected write failure",
            ));
        }
        let mut at = offset;
        for p in parts {
            file.write_all_at(p, at)?;
            at += p.len() as u64;
        }
        Ok(())
    }

    /// Cuts `file` to `len`, unless a failure is injected.
    fn set_len(&mut self, file: &File, len: u64) -> io::Result<()> {
        if self.truncate_failures > 0 {
            self.truncate_failures -= 1;
            return Err(io::Error::other("injected truncate failure"));
        }
        file.set_len(len)
    }
}

/// A write-ahead log over one directory. See the module documentation.
///
/// `Send` and `Sync`; the pipeline shares it behind a `Mutex` between the task that
/// appends and the forwarder that reads and acknowledges.
///
/// # Example
/// ```
/// use weir_core::wal::{Wal, WalConfig};
///
/// let dir = std::env::temp_dir().join(format!("weir-wal-doc-{}", std::process::id()));
/// let mut wal = Wal::open(&dir, WalConfig::default())?;
/// wal.append(b"request body 1")?;
/// wal.append(b"request body 2")?;
/// wal.sync()?; // durable from here on
///
/// // The forwarder: read from the ack cursor, send, acknowledge.
/// let mut at = wal.acked();
/// while let Some(record) = wal.read(at)? {
///     // ... send record.payload; once the backend accepted it:
///     wal.ack(record.next)?;
///     at = record.next;
/// }
/// assert_eq!(wal.stats().unacked_records, 0);
/// assert_eq!(wal.acked(), wal.head());
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), weir_core::wal::WalError>(())
/// ```
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    config: WalConfig,
    /// Ascending by id, never empty; the back one is the active segment.
    segments: VecDeque<Segment>,
    /// Read-write handle of the active segment.
    active: File,
    /// The active segment is no longer written to (a failed cut or sync): the next
    /// append starts a new segment.
    active_broken: bool,
    /// The ack cursor: records below it are acknowledged. May point into a segment
    /// that no longer exists (then every remaining record is above it).
    cursor: WalPosition,
    /// The cursor the ack file holds: at or below `cursor`. After a crash replay
    /// starts there.
    persisted: WalPosition,
    /// Acknowledgements that moved `cursor` since the ack file was last written.
    acks_pending: u32,
    /// When the ack file was last written (or the WAL opened).
    persisted_at: Instant,
    /// Read handle of the last non-active segment read, by segment id.
    reader: Mutex<Option<(u64, File)>>,
    /// Segments rotated away from since the last sync, ascending, with the handle
    /// that wrote them: their last writes still need an fdatasync, through that
    /// handle (a file opened anew may not see an error the kernel already reported
    /// or dropped). Always empty with [`SyncPolicy::Never`].
    unsynced: Vec<(u64, File)>,
    /// Every record before this position is durable: the head at the last successful
    /// [`Wal::sync`] (or at open, for what recovery found).
    durable: WalPosition,
    /// While set ([`Wal::defer_reads`]), [`Wal::read`] returns no record at or past it:
    /// a writer's appends that are not yet synced and committed. `None`: every record
    /// is readable.
    read_limit: Option<WalPosition>,
    /// A segment file was created or deleted since the last directory fsync.
    dir_dirty: bool,
    /// The oldest segment created since the last directory fsync: its records (and
    /// those of every later segment) are not durable before the next one.
    created_since_dir_sync: Option<u64>,
    dropped_records: u64,
    dropped_bytes: u64,
    corrupt_tails: u64,
    truncated_bytes: u64,
    write_errors: u64,
    sync_errors: u64,
    sync_lost_records: u64,
    sync_lost_bytes: u64,
    /// Counted from `read(&self)`; Relaxed: a counter read only for stats.
    corrupt_reads: AtomicU64,
    faults: Faults,
}

/// Outcome of scanning one segment file during open.
enum Scanned {
    /// The header is intact; the good part is described by the segment, and `cut`
    /// bytes after it were removed.
    Intact {
        segment: Segment,
        file: File,
        cut: u64,
    },
    /// The header is short or wrong: the file (of this size) must go.
    BadHeader { size: u64 },
}

impl Wal {
    /// Opens the WAL in `dir` (creating the directory if needed) and recovers: scans
    /// every segment, cuts a torn or corrupt tail at the last good record (counted in
    /// [`WalStats::corrupt_tails`] and [`WalStats::truncated_bytes`]), removes segments
    /// with a bad header (counted the same way), reads the ack cursor (replaying
    /// everything when the ack file is missing or damaged), deletes segments that are
    /// fully acknowledged, and continues appending after the last intact record.
    ///
    /// # Errors
    /// I/O errors on the directory or a segment, and [`WalError::UnsupportedVersion`]
    /// for a segment written by another format version (left untouched).
    ///
    /// # Panics
    /// Never, whatever the files contain.
    pub fn open(dir: &Path, config: WalConfig) -> Result<Wal, WalError> {
        fs::create_dir_all(dir).map_err(|source| WalError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let ids = list_segment_ids(dir)?;
        let _ = fs::remove_file(dir.join(ACK_TMP_FILE));

        let mut segments = VecDeque::with_capacity(ids.len());
        let mut last_file = None;
        let mut max_id = 0u64;
        let mut corrupt_tails = 0u64;
        let mut truncated_bytes = 0u64;
        let mut dir_dirty = false;
        let mut created_since_dir_sync = None;
        for id in ids {
            max_id = max_id.max(id);
            let path = segment_path(dir, id);
            match scan_segment(&path, id, config.sync)? {
                Scanned::Intact { segment, file, cut } => {
                    if cut > 0 {
                        corrupt_tails += 1;
                        truncated_bytes += cut;
                    }
                    segments.push_back(segment);
                    last_file = Some(file);
                }
                Scanned::BadHeader { size } => {
                    fs::remove_file(&path)
                        .map_err(|source| WalError::RemoveSegment { path, source })?;
                    corrupt_tails += 1;
                    truncated_bytes += size;
                    dir_dirty = true;
                }
            }
        }

        // The last intact segment stays active, through the handle its scan opened (a
        // removed bad-header segment after it leaves no gap in the ordering).
        let (active, created) = match (segments.back(), last_file) {
            (Some(_), Some(file)) => (file, None),
            _ => {
                let id = next_id(dir, max_id)?;
                let (segment, file) = create_segment(dir, id, &mut Faults::default())?;
                dir_dirty = true;
                created_since_dir_sync = Some(id);
                (file, Some(segment))
            }
        };
        if let Some(segment) = created {
            segments.push_back(segment);
        }
        let cursor = read_ack(dir);

        let mut wal = Wal {
            dir: dir.to_path_buf(),
            config,
            segments,
            active,
            active_broken: false,
            cursor,
            persisted: cursor,
            acks_pending: 0,
            persisted_at: Instant::now(),
            reader: Mutex::new(None),
            unsynced: Vec::new(),
            durable: WalPosition::default(),
            read_limit: None,
            dir_dirty,
            created_since_dir_sync,
            dropped_records: 0,
            dropped_bytes: 0,
            corrupt_tails,
            truncated_bytes,
            write_errors: 0,
            sync_errors: 0,
            sync_lost_records: 0,
            sync_lost_bytes: 0,
            corrupt_reads: AtomicU64::new(0),
            faults: Faults::default(),
        };
        // Files ending before the cursor (a cut tail, a removed segment): lower it to
        // the head and persist that, or the next appends would land behind it.
        let head = wal.head();
        wal.durable = head;
        if wal.cursor > head {
            wal.cursor = head;
            wal.persist_ack()?;
        }
        wal.delete_acked()?;
        Ok(wal)
    }

    /// Appends one record and returns its position. Rotates to a new segment first
    /// when the active one would grow beyond [`WalConfig::segment_bytes`] (a record
    /// larger than that gets a segment on its own), then enforces
    /// [`WalConfig::cap_bytes`] by deleting the oldest segments (never the one just
    /// written to), counting their unacknowledged records as dropped.
    ///
    /// The record is durable only after the next [`Wal::sync`].
    ///
    /// # Errors
    /// [`WalError::RecordTooLarge`] over [`MAX_RECORD_BYTES`]. On a write error (disk
    /// full, EIO) the segment is cut back to its last good record, the error is counted
    /// in [`WalStats::write_errors`] and returned; earlier records stay intact and later
    /// appends work again once the cause is gone (in a new segment if the cut failed).
    pub fn append(&mut self, payload: &[u8]) -> Result<WalPosition, WalError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(WalError::RecordTooLarge {
                len: payload.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        let frame_bytes = FRAME_HEADER_BYTES + payload.len() as u64;
        let rotate = self.active_broken || {
            let active = self.active_segment();
            !active.starts.is_empty()
                && active.len.saturating_add(frame_bytes) > self.config.segment_bytes
        };
        if rotate {
            self.rotate()?;
        }

        let len_bytes = (payload.len() as u32).to_le_bytes();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
        let mut header = [0u8; FRAME_HEADER_BYTES as usize];
        header[..4].copy_from_slice(&len_bytes);
        header[4..].copy_from_slice(&crc.to_le_bytes());

        let offset = self.active_segment().len;
        let id = self.active_segment().id;
        if let Err(source) = self
            .faults
            .write_parts(&self.active, offset, &[&header, payload])
        {
            self.write_errors += 1;
            let cut = self.faults.set_len(&self.active, offset);
            let file_bytes = match cut {
                Ok(()) => offset,
                Err(_) => {
                    self.active_broken = true;
                    self.active
                        .metadata()
                        .map_or(offset + frame_bytes, |m| m.len())
                }
            };
            self.active_segment_mut().file_bytes = file_bytes;
            return Err(WalError::WriteSegment {
                path: segment_path(&self.dir, id),
                source,
            });
        }
        let active = self.active_segment_mut();
        active.starts.push(offset);
        active.len = offset + frame_bytes;
        active.file_bytes = active.len;
        self.enforce_cap();
        Ok(WalPosition {
            segment: id,
            offset,
        })
    }

    /// Makes every appended record durable: fdatasync of the segments rotated away from
    /// since the last sync and of the active segment (each through the handle that
    /// wrote it), and fsync of the directory if a segment was created or deleted since
    /// the last sync. Does nothing with [`SyncPolicy::Never`].
    ///
    /// # Errors
    /// [`WalError::SyncLost`] when an fdatasync fails, or the directory fsync while it
    /// held a new segment: the records that sync should have made durable were taken
    /// out of the log (see the module doc), counted in [`WalStats::sync_errors`],
    /// [`WalStats::sync_lost_records`] and [`WalStats::sync_lost_bytes`], and the next
    /// append starts a new segment. [`WalError::Sync`] when only the directory fsync
    /// failed and no record depended on it.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.config.sync == SyncPolicy::Never {
            return Ok(());
        }
        // The first record that may not be on disk, and the failure that says so.
        let mut lost: Option<(WalPosition, PathBuf, io::Error)> = None;
        for (id, file) in std::mem::take(&mut self.unsynced) {
            if lost.is_some() {
                break; // everything after the first failure goes anyway
            }
            if let Err(source) = self.faults.sync(&file, SyncWhat::Data) {
                self.sync_errors += 1;
                let from = self.durable.max(WalPosition {
                    segment: id,
                    offset: HEADER_BYTES,
                });
                lost = Some((from, segment_path(&self.dir, id), source));
            }
        }
        let active = self.active_segment();
        let (active_id, active_end) = (active.id, active.len);
        let active_pending = WalPosition {
            segment: active_id,
            offset: active_end,
        } > self.durable;
        if lost.is_none()
            && active_pending
            && let Err(source) = self.faults.sync(&self.active, SyncWhat::Data)
        {
            self.sync_errors += 1;
            let from = self.durable.max(WalPosition {
                segment: active_id,
                offset: HEADER_BYTES,
            });
            lost = Some((from, segment_path(&self.dir, active_id), source));
        }
        if self.dir_dirty {
            match self.sync_dir() {
                Ok(()) => {
                    self.dir_dirty = false;
                    self.created_since_dir_sync = None;
                }
                Err(source) => {
                    self.sync_errors += 1;
                    let path = self.dir.clone();
                    match self.created_since_dir_sync {
                        // A new segment's name may not survive a crash: its records
                        // and every later one's are not durable.
                        Some(id) => {
                            let from = WalPosition {
                                segment: id,
                                offset: HEADER_BYTES,
                            };
                            if lost.as_ref().is_none_or(|(f, _, _)| from < *f) {
                                lost = Some((from, path, source));
                            }
                        }
                        None if lost.is_none() => {
                            self.durable = self.head();
                            return Err(WalError::Sync { path, source });
                        }
                        None => {}
                    }
                }
            }
        }
        match lost {
            None => {
                self.durable = self.head();
                Ok(())
            }
            Some((lost_from, path, source)) => {
                let (lost_records, lost_bytes) = self.take_out_from(lost_from);
                self.sync_lost_records += lost_records;
                self.sync_lost_bytes += lost_bytes;
                Err(WalError::SyncLost {
                    path,
                    source,
                    lost_from,
                    lost_records,
                })
            }
        }
    }

    /// Persists the ack cursor now if the ack file lags behind it (a clean stop calls
    /// this; [`Wal::ack`] does when its batch is due).
    ///
    /// # Errors
    /// [`WalError::WriteAck`]: the ack file keeps its older cursor (a crash would
    /// replay more, never less); the next call tries again.
    pub fn persist_ack(&mut self) -> Result<(), WalError> {
        if self.cursor == self.persisted {
            return Ok(());
        }
        self.write_ack(self.cursor)?;
        self.persisted = self.cursor;
        self.acks_pending = 0;
        self.persisted_at = Instant::now();
        Ok(())
    }

    /// A clean stop: [`Wal::sync`], then [`Wal::persist_ack`]. Dropping the WAL
    /// without it is a crash as far as the files are concerned: appends since the last
    /// sync may be lost to a machine crash, and acknowledgements since the last ack
    /// file write are undone (their records are sent again).
    ///
    /// # Errors
    /// The first error of the two steps (both are tried).
    pub fn close(mut self) -> Result<(), WalError> {
        let synced = self.sync();
        let persisted = self.persist_ack();
        synced.and(persisted)
    }

    /// The first intact record at or after `from`, moving on to the next segment at a
    /// segment's end; if `from` lies in a segment that no longer exists, reading
    /// continues at the next one that does (the oldest remaining one after the cap
    /// deleted some). `Ok(None)` when `from` is at (or past) the head, or the next
    /// record is one [`Wal::defer_reads`] holds back.
    ///
    /// A record that no longer checksums is skipped and counted in
    /// [`WalStats::corrupt_reads`].
    ///
    /// # Errors
    /// I/O errors opening or reading a segment file.
    pub fn read(&self, from: WalPosition) -> Result<Option<WalRecord>, WalError> {
        let first = self.segments.partition_point(|s| s.id < from.segment);
        for (i, segment) in self.segments.iter().enumerate().skip(first) {
            let start = if segment.id == from.segment {
                segment.first_at_or_after(from.offset)
            } else {
                0
            };
            for k in start..segment.starts.len() {
                let position = WalPosition {
                    segment: segment.id,
                    offset: segment.starts[k],
                };
                if self.read_limit.is_some_and(|limit| position >= limit) {
                    return Ok(None);
                }
                let is_active = i + 1 == self.segments.len();
                match self.read_frame(segment, k, is_active)? {
                    Some(record) => return Ok(Some(record)),
                    None => {
                        self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(None)
    }

    /// Keeps the records appended from now on from [`Wal::read`] until
    /// [`Wal::publish`] (records already readable stay so). For a writer that appends
    /// several records and then syncs them at once: no reader sees one before it is
    /// durable, nor one that a failed sync takes out again (the writer appends those
    /// once more, at new positions). Positions only grow (a failed sync starts a new
    /// segment), so the limit stays below every later append.
    pub fn defer_reads(&mut self) {
        if self.read_limit.is_none() {
            self.read_limit = Some(self.head());
        }
    }

    /// Makes every appended record readable again (ends [`Wal::defer_reads`]).
    pub fn publish(&mut self) {
        self.read_limit = None;
    }

    /// Acknowledges every record before `upto` (a [`WalRecord::next`], usually): moves
    /// the cursor, persists it in the ack file when the batch is due
    /// ([`WalConfig::ack_every`], [`WalConfig::ack_interval`], or the cursor reached
    /// the head; written atomically:
    /// temporary file, fsync, rename, directory fsync, the fsyncs left out with
    /// [`SyncPolicy::Never`]) and deletes every segment whose records are all
    /// acknowledged, except the active one (the ack file may still name an older
    /// cursor then: see the module doc, "Crash semantics"). Acknowledging at or before
    /// [`Wal::acked`] does not move the cursor (but retries a due ack file write that
    /// failed); a position past the head counts as the head.
    ///
    /// # Errors
    /// [`WalError::WriteAck`]: the cursor moved in memory and the acknowledged segments
    /// were deleted anyway (a full disk gets its space back), but the ack file on disk
    /// is older, so a restart would replay more (duplicates, never loss); the next call
    /// retries the write. [`WalError::RemoveSegment`]: the cursor moved; the segment is
    /// retried on the next ack or open.
    pub fn ack(&mut self, upto: WalPosition) -> Result<(), WalError> {
        let upto = upto.min(self.head());
        if upto > self.acked() {
            self.cursor = upto;
            self.acks_pending = self.acks_pending.saturating_add(1);
        }
        // Caught up: nothing is left to send, so a crash from here on would replay
        // only duplicates; this write is also the one a steady trickle pays for.
        let due = self.acks_pending >= self.config.ack_every.max(1)
            || self.cursor >= self.head()
            || self.persisted_at.elapsed() >= self.config.ack_interval;
        let persisted = if due { self.persist_ack() } else { Ok(()) };
        self.delete_acked()?;
        persisted
    }

    /// The first unacknowledged position, where replay starts: the position of the
    /// oldest unacknowledged record, or [`Wal::head`] when there is none.
    pub fn acked(&self) -> WalPosition {
        for segment in &self.segments {
            let i = self.first_unacked(segment);
            if let Some(&offset) = segment.starts.get(i) {
                return WalPosition {
                    segment: segment.id,
                    offset,
                };
            }
        }
        self.head()
    }

    /// Where the next append goes; `read(head())` is `Ok(None)`.
    pub fn head(&self) -> WalPosition {
        let active = self.active_segment();
        if self.active_broken {
            WalPosition {
                segment: active.id.saturating_add(1),
                offset: HEADER_BYTES,
            }
        } else {
            WalPosition {
                segment: active.id,
                offset: active.len,
            }
        }
    }

    /// Sizes and counters; see [`WalStats`].
    pub fn stats(&self) -> WalStats {
        let mut stats = WalStats {
            segments: self.segments.len(),
            dropped_records: self.dropped_records,
            dropped_bytes: self.dropped_bytes,
            corrupt_tails: self.corrupt_tails,
            truncated_bytes: self.truncated_bytes,
            write_errors: self.write_errors,
            syncs: self.faults.syncs,
            sync_errors: self.sync_errors,
            sync_lost_records: self.sync_lost_records,
            sync_lost_bytes: self.sync_lost_bytes,
            corrupt_reads: self.corrupt_reads.load(Ordering::Relaxed),
            ..WalStats::default()
        };
        for segment in &self.segments {
            stats.bytes += segment.file_bytes;
            let (records, bytes) = segment.records_from(self.first_unacked(segment));
            if records > 0 && stats.oldest_unacked_ms.is_none() {
                stats.oldest_unacked_ms = Some(segment.created_ms);
            }
            stats.unacked_records += records;
            stats.unacked_bytes += bytes;
        }
        stats
    }

    /// The directory this WAL lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the next `n` writes fail as a full disk would, after writing half of their
    /// bytes (a torn write). For fault-injection tests only.
    #[doc(hidden)]
    pub fn inject_write_failures(&mut self, n: u32) {
        self.faults.write_failures = n;
    }

    /// Makes the next `n` attempts to cut a segment back after a failed write fail too.
    /// For fault-injection tests only.
    #[doc(hidden)]
    pub fn inject_truncate_failures(&mut self, n: u32) {
        self.faults.truncate_failures = n;
    }

    /// Makes the next `n` fsync or fdatasync calls fail (segments, ack file or
    /// directory, whichever comes next). For fault-injection tests only.
    #[doc(hidden)]
    pub fn inject_sync_failures(&mut self, n: u32) {
        self.faults.sync_failures = n;
    }

    fn active_segment(&self) -> &Segment {
        // `segments` is never empty after open.
        &self.segments[self.segments.len() - 1]
    }

    fn active_segment_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// Index of the first unacknowledged record of `segment`.
    fn first_unacked(&self, segment: &Segment) -> usize {
        match segment.id.cmp(&self.cursor.segment) {
            std::cmp::Ordering::Less => segment.starts.len(),
            std::cmp::Ordering::Equal => segment.first_at_or_after(self.cursor.offset),
            std::cmp::Ordering::Greater => 0,
        }
    }

    /// Starts a new active segment after the current one. A failure is counted and
    /// leaves the current one active.
    fn rotate(&mut self) -> Result<(), WalError> {
        let old = self.active_segment().id;
        let created = next_id(&self.dir, old).and_then(|id| {
            let faults = &mut self.faults;
            create_segment(&self.dir, id, faults)
        });
        let (segment, file) = created.inspect_err(|_| self.write_errors += 1)?;
        let new_id = segment.id;
        let old_file = std::mem::replace(&mut self.active, file);
        let old_end = WalPosition {
            segment: old,
            offset: self.active_segment().len,
        };
        // Only a segment with writes since the last sync needs one (not one whose
        // failed sync took its unsynced records out of the log).
        if self.config.sync == SyncPolicy::Fsync && old_end > self.durable {
            self.unsynced.push((old, old_file));
        }
        self.active_broken = false;
        self.segments.push_back(segment);
        self.dir_dirty = true;
        self.created_since_dir_sync.get_or_insert(new_id);
        Ok(())
    }

    /// Takes every record at or after `from` out of the log after a failed sync: cuts
    /// the index of each segment concerned back to before it, cuts the files too (best
    /// effort, not synced: a file that cannot be cut, or a crash before the cut reaches
    /// the disk, brings them back on open as duplicates of what the caller appends
    /// again), and marks the active segment broken so the next append starts a new
    /// one. Everything left is durable. Returns the unacknowledged records and payload
    /// bytes taken out.
    fn take_out_from(&mut self, from: WalPosition) -> (u64, u64) {
        let (mut records, mut bytes) = (0, 0);
        let last = self.segments.len() - 1;
        for i in 0..self.segments.len() {
            let segment = &self.segments[i];
            let keep = match segment.id.cmp(&from.segment) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => segment.first_at_or_after(from.offset),
                std::cmp::Ordering::Greater => 0,
            };
            if keep >= segment.starts.len() {
                continue;
            }
            let (r, b) = segment.records_from(self.first_unacked(segment).max(keep));
            records += r;
            bytes += b;
            let new_len = segment.starts[keep];
            let cut = if i == last {
                self.faults.set_len(&self.active, new_len)
            } else {
                OpenOptions::new()
                    .write(true)
                    .open(segment_path(&self.dir, segment.id))
                    .and_then(|f| f.set_len(new_len))
            };
            let segment = &mut self.segments[i];
            segment.starts.truncate(keep);
            segment.len = new_len;
            if cut.is_ok() {
                segment.file_bytes = new_len;
            }
        }
        self.unsynced.clear();
        self.active_broken = true;
        self.durable = self.head();
        (records, bytes)
    }

    /// Deletes the oldest segments while the files exceed the cap, never the active
    /// one, counting unacknowledged records as dropped. A segment that cannot be
    /// deleted stays (and is counted as present); the next append tries again.
    fn enforce_cap(&mut self) {
        let mut total: u64 = self.segments.iter().map(|s| s.file_bytes).sum();
        while total > self.config.cap_bytes && self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let (records, bytes) = oldest.records_from(self.first_unacked(oldest));
            let (id, file_bytes) = (oldest.id, oldest.file_bytes);
            if self.remove_segment_file(id).is_err() {
                break;
            }
            self.dropped_records += records;
            self.dropped_bytes += bytes;
            total -= file_bytes;
            self.segments.pop_front();
        }
    }

    /// Deletes the oldest segments while all their records are acknowledged, never the
    /// active one.
    fn delete_acked(&mut self) -> Result<(), WalError> {
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            if self.first_unacked(oldest) < oldest.starts.len() {
                break;
            }
            self.remove_segment_file(oldest.id)?;
            self.segments.pop_front();
        }
        Ok(())
    }

    /// Writes the ack file atomically: temporary file, fsync, rename, directory fsync
    /// (the fsyncs left out with [`SyncPolicy::Never`]). The temporary file is a new
    /// file each time, so a failed fsync taints nothing that a later write reuses.
    fn write_ack(&mut self, cursor: WalPosition) -> Result<(), WalError> {
        let mut bytes = [0u8; ACK_BYTES];
        bytes[..8].copy_from_slice(&ACK_MAGIC);
        bytes[8..16].copy_from_slice(&cursor.segment.to_le_bytes());
        bytes[16..24].copy_from_slice(&cursor.offset.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..24]);
        bytes[24..].copy_from_slice(&crc.to_le_bytes());
        let fsync = self.config.sync == SyncPolicy::Fsync;
        let tmp = self.dir.join(ACK_TMP_FILE);
        let ack_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WalError::WriteAck { path, source }
        };
        let file = File::create(&tmp).map_err(ack_err(&tmp))?;
        file.write_all_at(&bytes, 0).map_err(ack_err(&tmp))?;
        if fsync && let Err(source) = self.faults.sync(&file, SyncWhat::All) {
            self.sync_errors += 1;
            return Err(WalError::WriteAck { path: tmp, source });
        }
        drop(file);
        let path = self.dir.join(ACK_FILE);
        fs::rename(&tmp, &path).map_err(ack_err(&path))?;
        if fsync && let Err(source) = self.sync_dir() {
            self.sync_errors += 1;
            return Err(WalError::WriteAck {
                path: self.dir.clone(),
                source,
            });
        }
        Ok(())
    }

    /// fsync of the directory, so created, renamed and deleted entries are durable.
    fn sync_dir(&mut self) -> io::Result<()> {
        let dir = File::open(&self.dir)?;
        self.faults.sync(&dir, SyncWhat::All)
    }

    /// Removes a (non-active) segment's file and forgets what refers to it.
    fn remove_segment_file(&mut self, id: u64) -> Result<(), WalError> {
        let path = segment_path(&self.dir, id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(WalError::RemoveSegment { path, source }),
        }
        self.dir_dirty = true;
        self.unsynced.retain(|(u, _)| *u != id);
        let reader = self.reader.get_mut().unwrap_or_else(|e| e.into_inner());
        if reader.as_ref().is_some_and(|(cached, _)| *cached == id) {
            *reader = None;
        }
        Ok(())
    }

    /// Reads record `k` of `segment` and checks it against its CRC and the length the
    /// index expects; `None` if it no longer matches.
    fn read_frame(
        &self,
        segment: &Segment,
        k: usize,
        is_active: bool,
    ) -> Result<Option<WalRecord>, WalError> {
        let start = segment.starts[k];
        let end = segment.frame_end(k);
        let payload_len = (end - start - FRAME_HEADER_BYTES) as usize;
        let path = || segment_path(&self.dir, segment.id);
        let mut header = [0u8; FRAME_HEADER_BYTES as usize];
        let mut payload = vec![0u8; payload_len];
        let mut read = |file: &File| -> io::Result<()> {
            file.read_exact_at(&mut header, start)?;
            file.read_exact_at(&mut payload, start + FRAME_HEADER_BYTES)
        };
        let result = if is_active {
            read(&self.active)
        } else {
            let mut cached = self.reader.lock().unwrap_or_else(|e| e.into_inner());
            if cached.as_ref().is_none_or(|(id, _)| *id != segment.id) {
                let file = File::open(path()).map_err(|source| WalError::OpenSegment {
                    path: path(),
                    source,
                })?;
                *cached = Some((segment.id, file));
            }
            match cached.as_ref() {
                Some((_, file)) => read(file),
                None => Ok(()),
            }
        };
        match result {
            Ok(()) => {}
            // The file got shorter behind our back: the record is gone.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(source) => {
                return Err(WalError::ReadSegment {
                    path: path(),
                    source,
                });
            }
        }
        let len_bytes: [u8; 4] = header[..4].try_into().unwrap_or_default();
        let stored_crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &payload);
        if u32::from_le_bytes(len_bytes) as usize != payload_len || crc != stored_crc {
            return Ok(None);
        }
        Ok(Some(WalRecord {
            position: WalPosition {
                segment: segment.id,
                offset: start,
            },
            next: WalPosition {
                segment: segment.id,
                offset: end,
            },
            payload,
        }))
    }
}

/// `<dir>/<id, 20 digits>.wal`.
fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

/// The id in a segment file name, if `name` is one.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Ids of the segment files in `dir`, ascending.
fn list_segment_ids(dir: &Path) -> Result<Vec<u64>, WalError> {
    let list_err = |source| WalError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The id after `id`, or an error when ids are exhausted (only a hand-made file name
/// near `u64::MAX` gets there).
fn next_id(dir: &Path, id: u64) -> Result<u64, WalError> {
    id.checked_add(1).ok_or_else(|| WalError::CreateSegment {
        path: dir.to_path_buf(),
        source: io::Error::other("segment ids exhausted"),
    })
}

/// Milliseconds since the Unix epoch (negative before it).
fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Creates segment `id` with its header. On failure nothing is left behind (best
/// effort).
fn create_segment(dir: &Path, id: u64, faults: &mut Faults) -> Result<(Segment, File), WalError> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| WalError::CreateSegment {
            path: path.clone(),
            source,
        })?;
    let created_ms = now_ms();
    let mut header = [0u8; HEADER_BYTES as usize];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&id.to_le_bytes());
    header[20..28].copy_from_slice(&created_ms.to_le_bytes());
    if let Err(source) = faults.write_parts(&file, 0, &[&header]) {
        drop(file);
        let _ = fs::remove_file(&path);
        return Err(WalError::WriteSegment { path, source });
    }
    let segment = Segment {
        id,
        created_ms,
        len: HEADER_BYTES,
        file_bytes: HEADER_BYTES,
        starts: Vec::new(),
    };
    Ok((segment, file))
}

/// Checks a segment's header and every frame, cutting the file after the last intact
/// one (and syncing the cut, unless `sync` is [`SyncPolicy::Never`]).
fn scan_segment(path: &Path, id: u64, sync: SyncPolicy) -> Result<Scanned, WalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| WalError::OpenSegment {
            path: path.to_path_buf(),
            source,
        })?;
    let read_err = |source| WalError::ReadSegment {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(read_err)?.len();
    if size < HEADER_BYTES {
        return Ok(Scanned::BadHeader { size });
    }
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, &file);
    let mut header = [0u8; HEADER_BYTES as usize];
    reader.read_exact(&mut header).map_err(read_err)?;
    if header[..8] != SEGMENT_MAGIC {
        return Ok(Scanned::BadHeader { size });
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != FORMAT_VERSION {
        return Err(WalError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let mut field = [0u8; 8];
    field.copy_from_slice(&header[12..20]);
    if u64::from_le_bytes(field) != id {
        return Ok(Scanned::BadHeader { size });
    }
    field.copy_from_slice(&header[20..28]);
    let created_ms = i64::from_le_bytes(field);

    let mut starts = Vec::new();
    let mut pos = HEADER_BYTES;
    let mut chunk = vec![0u8; SCAN_BUFFER_BYTES];
    while size - pos >= FRAME_HEADER_BYTES {
        let mut frame = [0u8; FRAME_HEADER_BYTES as usize];
        reader.read_exact(&mut frame).map_err(read_err)?;
        let len_bytes = [frame[0], frame[1], frame[2], frame[3]];
        let len = u32::from_le_bytes(len_bytes) as u64;
        let stored_crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if len > MAX_RECORD_BYTES as u64 || len > size - pos - FRAME_HEADER_BYTES {
            break;
        }
        let mut crc = crc32c::crc32c(&len_bytes);
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(chunk.len());
            reader.read_exact(&mut chunk[..n]).map_err(read_err)?;
            crc = crc32c::crc32c_append(crc, &chunk[..n]);
            left -= n;
        }
        if crc != stored_crc {
            break;
        }
        starts.push(pos);
        pos += FRAME_HEADER_BYTES + len;
    }
    drop(reader);
    let cut = size - pos;
    if cut > 0 {
        let cut_err = |source| WalError::CutSegment {
            path: path.to_path_buf(),
            source,
        };
        file.set_len(pos).map_err(cut_err)?;
        if sync == SyncPolicy::Fsync {
            file.sync_data().map_err(cut_err)?;
        }
    }
    let segment = Segment {
        id,
        created_ms,
        len: pos,
        file_bytes: pos,
        starts,
    };
    Ok(Scanned::Intact { segment, file, cut })
}

/// The persisted ack cursor; the start of everything when the file is missing,
/// unreadable or damaged (replay all: duplicates, never loss).
fn read_ack(dir: &Path) -> WalPosition {
    let Ok(bytes) = fs::read(dir.join(ACK_FILE)) else {
        return WalPosition::default();
    };
    if bytes.len() != ACK_BYTES || bytes[..8] != ACK_MAGIC {
        return WalPosition::default();
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let stored_crc = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    if crc32c::crc32c(&bytes[..24]) != stored_crc {
        return WalPosition::default();
    }
    WalPosition {
        segment: word(8),
        offset: word(16),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::TempDir;

    #[test]
    fn wal_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Wal>();
    }

    #[test]
    fn segment_names_are_twenty_digits() {
        assert_eq!(
            segment_path(Path::new("d"), 7),
            Path::new("d/00000000000000000007.wal")
        );
        assert_eq!(parse_segment_name("00000000000000000007.wal"), Some(7));
        assert_eq!(parse_segment_name("0000000000000000007.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000000x.wal"), None);
        assert_eq!(parse_segment_name("99999999999999999999.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000007.wal.bak"), None);
    }

    #[test]
    fn frame_layout_is_length_crc_payload() {
        let dir = TempDir::new("wal-unit-layout");
        let mut wal = Wal::open(dir.path(), WalConfig::default()).unwrap();
        let pos = wal.append(b"abc").unwrap();
        assert_eq!(
            pos,
            WalPosition {
                segment: 1,
                offset: HEADER_BYTES
            }
        );
        let bytes = fs::read(segment_path(dir.path(), 1)).unwrap();
        assert_eq!(&bytes[..8], b"WEIRWAL\0");
        assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
        assert_eq!(&bytes[12..20], &1u64.to_le_bytes());
        assert_eq!(&bytes[28..32], &3u32.to_le_bytes());
        let mut crc_input = 3u32.to_le_bytes().to_vec();
        crc_input.extend_from_slice(b"abc");
        assert_eq!(&bytes[32..36], &crc32c::crc32c(&crc_input).to_le_bytes());
        assert_eq!(&bytes[36..], b"abc");
    }

    #[test]
    fn ack_file_round_trips_and_rejects_damage() {
        let dir = TempDir::new("wal-unit-ackfile");
        let mut wal = Wal::open(dir.path(), WalConfig::default()).unwrap();
        wal.append(b"abc").unwrap();
        let at = wal.head();
        wal.ack(at).unwrap();
        wal.persist_ack().unwrap();
        assert_eq!(read_ack(dir.path()), at);
        let path = dir.join(ACK_FILE);
        let mut bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), ACK_BYTES);
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_ack(dir.path()), WalPosition::default());
    }

    #[test]
    fn records_from_counts_payload_bytes() {
        let segment = Segment {
            id: 1,
            created_ms: 0,
            len: HEADER_BYTES + 8 + 10 + 8 + 5,
            file_bytes: 0,
            starts: vec![HEADER_BYTES, HEADER_BYTES + 18],
        };
        assert_eq!(segment.records_from(0), (2, 15));
        assert_eq!(segment.records_from(1), (1, 5));
        assert_eq!(segment.records_from(2), (0, 0));
    }
}
