//! [`Bodies`]: packs encoded units (one series with its companions) into request
//! bodies under a size limit.
//!
//! Owns: the split rule. A unit is appended to the open body; if that takes the body
//! over the limit and the body held something before, the earlier part is sealed as
//! one request and the unit opens the next body. So every body is at or under the
//! limit unless it holds one unit that alone is bigger. Must never: split a unit, or
//! copy the body more than once per request (sealing moves only the one unit left
//! over to the front of the reused buffer).

use super::EncodedRequest;

/// What a finished body goes through before it becomes a request.
pub(crate) enum Seal {
    /// Sent as written (line protocol).
    Plain,
    /// Snappy block format, as remote write requires (boxed to keep `Plain` small).
    Snappy(Box<Snappy>),
}

impl Seal {
    /// Snappy block compression.
    pub(crate) fn snappy() -> Seal {
        Seal::Snappy(Box::new(Snappy {
            encoder: snap::raw::Encoder::new(),
            out: Vec::new(),
        }))
    }
}

/// The snappy encoder and its output buffer, both reused for every request of a
/// batch (the encoder's 2 KiB hash table and the worst-case-sized output).
pub(crate) struct Snappy {
    encoder: snap::raw::Encoder,
    out: Vec<u8>,
}

impl Snappy {
    /// `input` compressed, in a vector of exactly its length. (`compress_vec` would
    /// return one with the worst case's capacity, ~1.17x the input: at 1M scraped
    /// series the bodies of one flush then held 128 MB for 8 MB of compressed bytes,
    /// for as long as they waited in the pipeline.) Fails only for input over 4 GiB.
    fn compress(&mut self, input: &[u8]) -> Result<Vec<u8>, snap::Error> {
        self.out.resize(snap::raw::max_compress_len(input.len()), 0);
        let n = self.encoder.compress(input, &mut self.out)?;
        Ok(self.out[..n].to_vec())
    }
}

/// Request bodies being built.
pub(crate) struct Bodies {
    /// The open body: committed units, then possibly one unit being written.
    buf: Vec<u8>,
    /// Points of the committed units in `buf`.
    points: u64,
    limit: usize,
    seal: Seal,
    done: Vec<EncodedRequest>,
}

impl Bodies {
    pub(crate) fn new(limit: usize, seal: Seal) -> Bodies {
        Bodies {
            buf: Vec::with_capacity(limit.min(1 << 20)),
            points: 0,
            limit,
            seal,
            done: Vec::new(),
        }
    }

    /// Where the next unit starts; pass it to [`Bodies::commit`] after writing the
    /// unit through [`Bodies::buf`].
    pub(crate) fn mark(&self) -> usize {
        self.buf.len()
    }

    /// The open body, to append one unit to.
    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Takes the unit written since `mark`, holding `points` points.
    pub(crate) fn commit(&mut self, mark: usize, points: u64) {
        if self.buf.len() > self.limit && mark > 0 {
            self.seal_prefix(mark);
        }
        self.points += points;
    }

    /// Seals `buf[..end]` (all committed units) as one request and keeps the rest.
    fn seal_prefix(&mut self, end: usize) {
        let body = match &mut self.seal {
            Seal::Plain => self.buf[..end].to_vec(),
            // Fails only for input over 4 GiB (the block format's length field):
            // bodies are at most the limit (at most 1 GiB) plus one unit, and a unit
            // is one series, whose key came through a receiver's bounded input.
            Seal::Snappy(snappy) => snappy.compress(&self.buf[..end]).unwrap_or_default(),
        };
        if !body.is_empty() {
            self.done.push(EncodedRequest {
                body,
                points: self.points,
            });
        }
        self.buf.drain(..end);
        self.points = 0;
    }

    /// Seals the open body (if any) and returns every request.
    pub(crate) fn finish(mut self) -> Vec<EncodedRequest> {
        if !self.buf.is_empty() {
            self.seal_prefix(self.buf.len());
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(b: &mut Bodies, bytes: &[u8], points: u64) {
        let m = b.mark();
        b.buf().extend_from_slice(bytes);
        b.commit(m, points);
    }

    #[test]
    fn units_pack_under_the_limit_and_a_big_one_goes_alone() {
        let mut b = Bodies::new(10, Seal::Plain);
        unit(&mut b, b"aaaa", 1);
        unit(&mut b, b"bbbb", 2);
        unit(&mut b, b"cccc", 3); // 12 > 10: "aaaabbbb" sealed
        unit(&mut b, b"dddddddddddddd", 4); // alone, over the limit
        unit(&mut b, b"ee", 5);
        let got: Vec<(Vec<u8>, u64)> = b.finish().into_iter().map(|r| (r.body, r.points)).collect();
        assert_eq!(
            got,
            vec![
                (b"aaaabbbb".to_vec(), 3),
                (b"cccc".to_vec(), 3),
                (b"dddddddddddddd".to_vec(), 4),
                (b"ee".to_vec(), 5),
            ]
        );
        assert!(Bodies::new(10, Seal::Plain).finish().is_empty());
    }

    #[test]
    fn snappy_bodies_decompress_to_the_units() {
        let mut b = Bodies::new(1 << 20, Seal::snappy());
        unit(&mut b, &[7u8; 1000], 1);
        let r = b.finish();
        assert_eq!(r.len(), 1);
        assert!(r[0].body.len() < 1000);
        assert_eq!(r[0].body.capacity(), r[0].body.len(), "no worst-case slack");
        let plain = snap::raw::Decoder::new()
            .decompress_vec(&r[0].body)
            .unwrap();
        assert_eq!(plain, vec![7u8; 1000]);
    }
}
