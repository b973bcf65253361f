//! Reading protobuf fields in place: the primitives of the borrowed walks (the
//! protobuf exposition format's, [`crate::parse::exposition`], and OTLP's,
//! [`crate::parse::otlp`]).
//!
//! Owns: reading one field's payload with prost's own key, varint and skip primitives
//! ([`weir_proto::encoding`]), checked the way prost's derived decoders check it
//! (wire type, length against the bytes that remain, UTF-8 of strings). Must never:
//! accept a field prost would refuse. Whatever a walk cannot read exactly as prost
//! would, it declines ([`Decline`]) and its caller decodes the message with prost.

use weir_proto::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

/// Why a walk declines a message: its caller decodes it with prost instead.
pub(crate) struct Decline;

/// A step of a walk: its result, or [`Decline`].
pub(crate) type Step<T> = Result<T, Decline>;

/// The payload of a length-delimited field of wire type `wt`.
pub(crate) fn delimited<'b>(wt: WireType, buf: &mut &'b [u8]) -> Step<&'b [u8]> {
    if wt != WireType::LengthDelimited {
        return Err(Decline);
    }
    let len = decode_varint(buf).map_err(|_| Decline)?;
    let len = usize::try_from(len).map_err(|_| Decline)?;
    if len > buf.len() {
        return Err(Decline);
    }
    let (payload, rest) = buf.split_at(len);
    *buf = rest;
    Ok(payload)
}

/// A string field (UTF-8 checked, as prost checks it).
pub(crate) fn string<'b>(wt: WireType, buf: &mut &'b [u8]) -> Step<&'b str> {
    std::str::from_utf8(delimited(wt, buf)?).map_err(|_| Decline)
}

/// A varint field (`int32`, `int64`, `uint32`, `uint64`, `bool` and enums: the caller
/// narrows it as prost does, `as i32`, `!= 0`, ...).
pub(crate) fn varint(wt: WireType, buf: &mut &[u8]) -> Step<u64> {
    if wt != WireType::Varint {
        return Err(Decline);
    }
    decode_varint(buf).map_err(|_| Decline)
}

/// A 64-bit field (`fixed64`, `sfixed64`, `double`) as its little-endian bytes.
pub(crate) fn sixty_four(wt: WireType, buf: &mut &[u8]) -> Step<[u8; 8]> {
    if wt != WireType::SixtyFourBit {
        return Err(Decline);
    }
    let (bytes, rest) = buf.split_first_chunk::<8>().ok_or(Decline)?;
    *buf = rest;
    Ok(*bytes)
}

/// A `double` field.
pub(crate) fn double(wt: WireType, buf: &mut &[u8]) -> Step<f64> {
    sixty_four(wt, buf).map(f64::from_le_bytes)
}

/// A `fixed64` field.
pub(crate) fn fixed64(wt: WireType, buf: &mut &[u8]) -> Step<u64> {
    sixty_four(wt, buf).map(u64::from_le_bytes)
}

/// Skips an unknown field as prost does; a group is declined (no client sends one,
/// and prost's group skipping depends on how deep the message sits).
pub(crate) fn skip(tag: u32, wt: WireType, buf: &mut &[u8]) -> Step<()> {
    if matches!(wt, WireType::StartGroup | WireType::EndGroup) {
        return Err(Decline);
    }
    skip_field(wt, tag, buf, DecodeContext::default()).map_err(|_| Decline)
}

/// Every field of a message: `field(tag, wire type, rest)` reads a known one and
/// returns `Ok(true)`, or `Ok(false)` to have it skipped.
pub(crate) fn fields<'b>(
    mut buf: &'b [u8],
    mut field: impl FnMut(u32, WireType, &mut &'b [u8]) -> Step<bool>,
) -> Step<()> {
    while !buf.is_empty() {
        let (tag, wt) = decode_key(&mut buf).map_err(|_| Decline)?;
        if !field(tag, wt, &mut buf)? {
            skip(tag, wt, &mut buf)?;
        }
    }
    Ok(())
}
