//! Protobuf wire-format primitives for the encoders that write protobuf straight into
//! a body buffer ([`super::remote_write`], [`super::otlp`]) instead of building prost
//! structs: no allocation per field, and each length computed once.
//!
//! Owns: varints, field keys and length-delimited fields. A field key is
//! `(field_number << 3) | wire_type`, wire types 0 (varint), 1 (64-bit) and 2
//! (length-delimited); callers spell keys as constants next to the message layout they
//! write. Must never: write a length that differs from the bytes that follow it.

/// Bytes of `v` as a varint (7 payload bits per byte, at least one byte).
pub(crate) fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `v` as a varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes of a length-delimited field with `len` content bytes (key + length +
/// content; field numbers below 16 have a one-byte key).
pub(crate) fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Appends a length-delimited field's key and length; the caller appends `len`
/// content bytes next.
pub(crate) fn put_len(out: &mut Vec<u8>, key: u8, len: usize) {
    out.push(key);
    put_varint(out, len as u64);
}

/// Appends a string field whose value is `parts` concatenated.
pub(crate) fn put_str(out: &mut Vec<u8>, key: u8, parts: [&str; 2]) {
    put_len(out, key, parts[0].len() + parts[1].len());
    out.extend_from_slice(parts[0].as_bytes());
    if !parts[1].is_empty() {
        out.extend_from_slice(parts[1].as_bytes());
    }
}

/// Appends a 64-bit field (`fixed64`, `sfixed64` or `double` bits), little-endian.
pub(crate) fn put_fixed64(out: &mut Vec<u8>, key: u8, bits: u64) {
    out.push(key);
    out.extend_from_slice(&bits.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_match_what_is_written() {
        for (v, n) in [
            (0u64, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), n, "{v}");
        }
        let mut b = Vec::new();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        b.clear();
        put_str(&mut b, 0x0a, ["ab", "c"]);
        assert_eq!(b, [0x0a, 3, b'a', b'b', b'c']);
        assert_eq!(field_len(3), b.len());
    }
}
