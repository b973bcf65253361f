//! The result of every fallible call ([`weir_status`]), the thread-local message of the
//! last failure ([`weir_last_error`]) and the panic boundary every exported body runs in.
//!
//! Owns: the numeric codes (stable: a code is never renumbered or reused) and the
//! mapping from the aggregator's refusals onto them. Must never: let a panic unwind
//! into C, or allocate on the success path.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use weir_core::{KeyError, Rejected};

/// The outcome of a call. The numeric values are stable across releases.
///
/// On anything but `WEIR_STATUS_OK`, `weir_last_error()` on the same thread returns a
/// one-line message saying what was wrong.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum weir_status {
    /// Success.
    Ok = 0,
    /// A pointer argument that must not be NULL was NULL.
    NullArgument = 1,
    /// A string argument is not valid UTF-8.
    InvalidUtf8 = 2,
    /// The metric name does not match `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    InvalidMetricName = 3,
    /// A label name does not match `[a-zA-Z_][a-zA-Z0-9_]*`, is `__name__`, or
    /// appears twice.
    InvalidLabelName = 4,
    /// More than `WEIR_MAX_LABELS` labels.
    TooManyLabels = 5,
    /// The value cannot be applied: NaN, infinite or negative counter increment, NaN
    /// observation.
    InvalidValue = 6,
    /// The series already exists with another kind (e.g. a gauge asked for as a
    /// counter).
    TypeConflict = 7,
    /// A new series was refused: its metric name reached `max_series_per_metric`, or
    /// the instance reached `max_series`. Existing series keep working.
    SeriesLimit = 8,
    /// The series was evicted under the update many times in a row (only possible
    /// with a series TTL far below the flush interval); the point was not recorded.
    EvictedDuringUpdate = 9,
    /// The configuration text was refused (the message names the key).
    InvalidConfig = 10,
    /// An argument is out of its documented range (e.g. an unknown output format).
    InvalidArgument = 11,
    /// The flushed batch does not fit in one output buffer of the chosen format
    /// (more than 1 GiB encoded). The batch still went into the pipelines.
    BatchTooLarge = 12,
    /// The instance was closed: it takes no more flushes.
    Closed = 13,
    /// weir panicked inside the call (a bug in weir). The panic was caught; the
    /// instance may be used further but the call had no or partial effect.
    Panic = 100,
}

/// A failed call: its status and the message for `weir_last_error`.
pub(crate) struct Failure {
    pub(crate) status: weir_status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: weir_status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// A NULL pointer where `what` was expected.
    pub(crate) fn null(what: &str) -> Failure {
        Failure::new(weir_status::NullArgument, format!("{what} is NULL"))
    }
}

impl From<Rejected> for Failure {
    fn from(e: Rejected) -> Failure {
        let status = match &e {
            Rejected::InvalidKey(KeyError::InvalidMetricName(_)) => weir_status::InvalidMetricName,
            Rejected::InvalidKey(KeyError::InvalidLabelName(_) | KeyError::DuplicateLabel(_)) => {
                weir_status::InvalidLabelName
            }
            Rejected::InvalidValue(_) => weir_status::InvalidValue,
            Rejected::TypeConflict { .. } => weir_status::TypeConflict,
            Rejected::MetricLimit(_) | Rejected::GlobalLimit => weir_status::SeriesLimit,
            Rejected::EvictedDuringUpdate => weir_status::EvictedDuringUpdate,
        };
        Failure::new(status, e.to_string())
    }
}

thread_local! {
    /// The message of the last failed call on this thread (empty before the first).
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    // An interior NUL cannot be shown by a C string: cut the message there.
    let mut bytes = message.into_bytes();
    if let Some(i) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(i);
    }
    let c = CString::new(bytes).unwrap_or_default();
    // `try_with` fails only while the thread is being torn down; the message is then
    // lost, the status is not.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = c;
        }
    });
}

/// Runs `body` inside the panic boundary: `Ok` becomes `WEIR_STATUS_OK`, a failure its
/// status (with its message stored for `weir_last_error`), a panic `WEIR_STATUS_PANIC`.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> weir_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => weir_status::Ok,
        Ok(Err(f)) => {
            set_last_error(f.message);
            f.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown payload".to_owned());
            set_last_error(format!("weir panicked (a bug in weir): {what}"));
            weir_status::Panic
        }
    }
}

/// The message of the last call on this thread that did not return
/// `WEIR_STATUS_OK`, as a NUL-terminated UTF-8 string; `""` if there was none.
///
/// The pointer is owned by weir and stays valid until the next call into weir on the
/// same thread; copy the text to keep it. Never NULL. Successful calls leave the
/// message as it was.
#[unsafe(no_mangle)]
pub extern "C" fn weir_last_error() -> *const c_char {
    const EMPTY: &[u8] = b"\0";
    let found = catch_unwind(|| {
        LAST_ERROR
            .try_with(|slot| slot.try_borrow().map(|s| s.as_ptr()).ok())
            .ok()
            .flatten()
    });
    // The CString lives in this thread's slot until `set_last_error` replaces it,
    // which only a later weir call on this thread does.
    match found {
        Ok(Some(p)) => p,
        _ => EMPTY.as_ptr().cast(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: weir_last_error returns a valid NUL-terminated string that lives
        // until the next weir call on this thread; it is copied at once.
        unsafe { CStr::from_ptr(weir_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_its_own_status_with_a_message() {
        let st = guard(|| panic!("boom"));
        assert_eq!(st, weir_status::Panic);
        assert!(last().contains("boom"), "{}", last());
    }

    #[test]
    fn a_failure_keeps_its_message_until_the_next_failure() {
        assert_eq!(
            guard(|| Err(Failure::null("name"))),
            weir_status::NullArgument
        );
        assert_eq!(guard(|| Ok(())), weir_status::Ok);
        assert_eq!(last(), "name is NULL");
    }

    #[test]
    fn a_message_with_an_interior_nul_is_cut_there() {
        guard(|| Err(Failure::new(weir_status::InvalidArgument, "a\0b")));
        assert_eq!(last(), "a");
    }
}
