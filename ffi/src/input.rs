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
    // One pass finds the NUL and whether every byte is ASCII (the usual metric name or
    // label): such text is UTF-8 without a second, general validation pass, which
    // measured as a third of a one-shot update.
    let mut len = 0usize;
    let mut ascii = true;
    loop {
        // SAFETY: NUL-terminated (the caller's contract) and no NUL seen before `len`,
        // so `p + len` is still inside the string.
        let b = unsafe { *p.add(len) } as u8;
        if b == 0 {
            break;
        }
        ascii &= b.is_ascii();
        len += 1;
    }
    if ascii {
        // SAFETY: the `len` bytes before the NUL are readable and valid for 'a (caller).
        let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
        // SAFETY: every byte is ASCII, and ASCII is valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
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

/// Most labels borrowed into the small stack array; longer label sets use one of
/// [`WEIR_MAX_LABELS`] entries. Sized so the common case initialises 256 bytes, not 2 KiB
/// (which measured as most of the cost of a one-shot update).
const FEW_LABELS: usize = 8;

/// Borrows `len` labels from `labels` (which may be NULL when `len` is 0) into an
/// array on this stack frame and runs `f` on them, in the caller's order.
///
/// # Safety
/// When `len > 0` and `len <= WEIR_MAX_LABELS`, `labels` is NULL or points to `len`
/// readable `weir_label`s whose strings are NULL or NUL-terminated and stay valid
/// during the call.
pub(crate) unsafe fn with_labels<R>(
    labels: *const weir_label,
    len: usize,
    f: impl FnOnce(&[(&str, &str)]) -> R,
) -> Result<R, BadInput> {
    if len > WEIR_MAX_LABELS {
        return Err(BadInput {
            reason: InputRefusal::TooManyLabels,
            failure: Failure::new(
                weir_status::TooManyLabels,
                format!("{len} labels given, at most {WEIR_MAX_LABELS} are accepted"),
            ),
        });
    }
    if len > 0 && labels.is_null() {
        return Err(BadInput::null("labels (with labels_len > 0)"));
    }
    let given: &[weir_label] = if len == 0 {
        &[]
    } else {
        // SAFETY: non-NULL, and the caller guarantees `len` readable elements.
        unsafe { std::slice::from_raw_parts(labels, len) }
    };
    if len <= FEW_LABELS {
        let mut pairs = [("", ""); FEW_LABELS];
        // SAFETY: the strings are NULL or NUL-terminated and valid during the call.
        unsafe { borrow_into(&mut pairs, given) }?;
        Ok(f(&pairs[..len]))
    } else {
        let mut pairs = [("", ""); WEIR_MAX_LABELS];
        // SAFETY: as above.
        unsafe { borrow_into(&mut pairs, given) }?;
        Ok(f(&pairs[..len]))
    }
}

/// Checks and borrows each of `given` into `out` (which is at least as long).
///
/// # Safety
/// Each label's strings are NULL or NUL-terminated and valid for `'a`.
unsafe fn borrow_into<'a>(
    out: &mut [(&'a str, &'a str)],
    given: &[weir_label],
) -> Result<(), BadInput> {
    for (slot, l) in out.iter_mut().zip(given) {
        // SAFETY: NULL or NUL-terminated, valid for 'a (the caller's contract).
        let name = unsafe { str_arg(l.name, "a label name") }?;
        // SAFETY: as above.
        let value = unsafe { str_arg(l.value, "a label value") }?;
        *slot = (name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(s: &CStr) -> Result<&str, weir_status> {
        // SAFETY: a CStr is NUL-terminated and outlives the borrow.
        unsafe { str_arg(s.as_ptr(), "x") }.map_err(|b| b.failure.status)
    }

    #[test]
    fn ascii_and_other_valid_utf8_are_borrowed_whole() {
        assert_eq!(arg(c"requests_total"), Ok("requests_total"));
        assert_eq!(arg(c""), Ok(""));
        assert_eq!(arg(c"caf\xc3\xa9 \xe2\x82\xac"), Ok("café €"));
    }

    #[test]
    fn invalid_utf8_is_refused_wherever_it_appears() {
        assert_eq!(arg(c"\x80"), Err(weir_status::InvalidUtf8));
        assert_eq!(arg(c"ok\xc3"), Err(weir_status::InvalidUtf8));
        assert_eq!(arg(c"\xff\xfeok"), Err(weir_status::InvalidUtf8));
    }

    #[test]
    fn more_than_eight_labels_use_the_large_array_and_keep_their_order() {
        let names: Vec<std::ffi::CString> = (0..WEIR_MAX_LABELS)
            .map(|i| std::ffi::CString::new(format!("l{i}")).unwrap())
            .collect();
        let labels: Vec<weir_label> = names
            .iter()
            .map(|n| weir_label {
                name: n.as_ptr(),
                value: c"v".as_ptr(),
            })
            .collect();
        for len in [0, 1, FEW_LABELS, FEW_LABELS + 1, WEIR_MAX_LABELS] {
            // SAFETY: `len` readable labels with NUL-terminated strings.
            let got = unsafe {
                with_labels(labels.as_ptr(), len, |l| {
                    l.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>()
                })
            };
            let want: Vec<String> = (0..len).map(|i| format!("l{i}")).collect();
            assert_eq!(got.ok(), Some(want));
        }
    }
}
