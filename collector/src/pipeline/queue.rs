//! What travels from a flush to the forwarder: the WAL record framing ([`Record`])
//! and the ring's entries ([`Queued`]), with their place in WAL order.
//!
//! Owns: the bytes of a record inside the WAL (version, append time, point count,
//! body). Must never: accept a payload it does not recognise as a record.

use bytes::Bytes;
use weir_core::wal::WalPosition;

/// One WAL record as the pipeline frames it: when it was appended, how many points
/// its body holds, and the body exactly as it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// When the record was appended, ms since the Unix epoch.
    pub appended_ms: i64,
    /// Points in the body.
    pub points: u64,
    /// The request body.
    pub body: Bytes,
}

/// Framing version of [`Record`].
const RECORD_VERSION: u8 = 1;
const RECORD_HEADER: usize = 1 + 8 + 8;

impl Record {
    /// The WAL payload: version byte, `appended_ms` and `points` (little endian), body.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER + self.body.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.appended_ms.to_le_bytes());
        out.extend_from_slice(&self.points.to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Parses a WAL payload; `None` if it is not a record of this version (the WAL's
    /// CRC passed, so this means a newer or foreign format).
    pub fn from_payload(payload: Vec<u8>) -> Option<Record> {
        if payload.len() < RECORD_HEADER || payload[0] != RECORD_VERSION {
            return None;
        }
        let appended_ms = i64::from_le_bytes(payload[1..9].try_into().ok()?);
        let points = u64::from_le_bytes(payload[9..17].try_into().ok()?);
        let mut body = Bytes::from(payload);
        Some(Record {
            appended_ms,
            points,
            body: body.split_off(RECORD_HEADER),
        })
    }
}

/// A record handed to the forwarder through the ring.
pub(super) struct Queued {
    /// Where it is in the WAL; `None` if the WAL append failed (sent from memory
    /// only, never acknowledged).
    pub(super) position: Option<WalPosition>,
    /// The WAL head before the append: the forwarder's cursor right after it sent
    /// the previous record. A memory-only record is sent once the cursor is there.
    pub(super) before: WalPosition,
    /// The WAL head after the append: the cursor once this record is acknowledged.
    pub(super) next: WalPosition,
    pub(super) record: Record,
}

/// Where a ring entry goes in WAL order: at its position, or, memory-only, just
/// before the position its append would have taken (ties keep ring order).
pub(super) fn order(q: &Queued) -> (WalPosition, u8) {
    match q.position {
        Some(p) => (p, 1),
        None => (q.before, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_refuses_foreign_payloads() {
        let r = Record {
            appended_ms: 1_700_000_000_123,
            points: 42,
            body: Bytes::from_static(b"body bytes"),
        };
        assert_eq!(Record::from_payload(r.to_payload()), Some(r));
        assert_eq!(Record::from_payload(vec![1, 2, 3]), None);
        let mut other = vec![9u8; 40];
        other[0] = 2;
        assert_eq!(Record::from_payload(other), None);
    }
}
