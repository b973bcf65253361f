//! Turning C arguments (NUL-terminated strings, label arrays) into Rust borrows.
//!
//! Owns: the checks every string and label array passes before it reaches the
//! aggregator (NULL, UTF-8, [`WEIR_MAX_LABELS`]) and their refusal reasons. Must never:
//! allocate (labels are borrowed into a fixed array on the stack) or read past what the
//! caller declared.

use std::ffi::{CStr, c_char};

use crate::status::{Failure, weir_status};

/// Most labels one series may have through the C ABI. A longer array is refused with
/// `WEIR_STATUS_TOO_MANY_LABELS` (so the label array can be checked without
/// allocating).
pub const WEIR_MAX_LABELS: usize = 64;

/// One label: a name and a value, both NUL-terminated UTF-8 strings.
///
/// Both pointers must be non-NULL. They are only read during the call they are passed
/// to; weir keeps copies.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct weir_label {
    /// The label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not `__name__`.
    pub name: *const c_char,
    /// The label value: any UTF-8 text (an empty value means no label, as in
    /// Prometheus).
    pub value: *const c_char,
}

/// Why a C argument was refused before it reached the aggregator; the stable reasons
/// of `weir_ffi_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputRefusal {
    Null,
    InvalidUtf8,
    TooManyLabels,
}

impl InputRefusal {
    pub(crate) const ALL: [InputRefusal; 3] = [
        InputRefusal::Null,
        InputRefusal::InvalidUtf8,
        InputRefusal::TooManyLabels,
    ];

    /// Short, stable reason for counters.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            InputRefusal::Null => "null_argument",
            InputRefusal::InvalidUtf8 => "invalid_utf8",
            InputRefusal::TooManyLabels => "too_many_labels",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A refused argument: the reason to count and the failure to return.
pub(crate) struct BadInput {
    pub(crate) reason: InputRefusal,
    pub(crate) failure: Failure,
}

impl BadInput {
    fn null(what: &str) -> BadInput {
        BadInput {
            reason: InputRefusal::Null,
            failure: Failure::null(what),
        }
    }
}

/// Borrows a NUL-terminated UTF-8 string.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and unchanged
/// for `'a`.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, BadInput> {
    if p.is_null() {
        return Err(BadInput::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated, valid for 'a (the caller's contract).
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|e| BadInput {
        reason: InputRefusal::InvalidUtf8,
        failure: Failure::new(
            weir_status::InvalidUtf8,
            format!(
                "{what} is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        ),
    })
}

/// The labels of one call, borrowed into a fixed array.
pub(crate) struct LabelArgs<'a> {
    pairs: [(&'a str, &'a str); WEIR_MAX_LABELS],
    len: usize,
}

impl<'a> LabelArgs<'a> {
    /// The pairs, in the caller's order.
    pub(crate) fn as_slice(&self) -> &[(&'a str, &'a str)] {
        &self.pairs[..self.len]
    }
}

/// Borrows `len` labels from `labels` (which may be NULL when `len` is 0).
///
/// # Safety
/// When `len > 0` and `len <= WEIR_MAX_LABELS`, `labels` is NULL or points to `len`
/// readable `weir_label`s whose strings are NULL or NUL-terminated and stay valid for
/// `'a`.
pub(crate) unsafe fn labels_arg<'a>(
    labels: *const weir_label,
    len: usize,
) -> Result<LabelArgs<'a>, BadInput> {
    let mut out = LabelArgs {
        pairs: [("", ""); WEIR_MAX_LABELS],
        len: 0,
    };
    if len == 0 {
        return Ok(out);
    }
    if len > WEIR_MAX_LABELS {
        return Err(BadInput {
            reason: InputRefusal::TooManyLabels,
            failure: Failure::new(
                weir_status::TooManyLabels,
                format!("{len} labels given, at most {WEIR_MAX_LABELS} are accepted"),
            ),
        });
    }
    if labels.is_null() {
        return Err(BadInput::null("labels (with labels_len > 0)"));
    }
    // SAFETY: non-NULL, and the caller guarantees `len` readable elements for 'a.
    let given = unsafe { std::slice::from_raw_parts(labels, len) };
    for (slot, l) in out.pairs.iter_mut().zip(given) {
        // SAFETY: each string is NULL or NUL-terminated and valid for 'a (caller).
        let name = unsafe { str_arg(l.name, "a label name") }?;
        // SAFETY: as above.
        let value = unsafe { str_arg(l.value, "a label value") }?;
        *slot = (name, value);
    }
    out.len = len;
    Ok(out)
}
