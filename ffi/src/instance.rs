//! `weir_instance`: creating, flushing, closing and freeing an embedded weir, and the
//! byte buffers it hands out.
//!
//! Owns: the instance's lifecycle through the C ABI, the output formats of
//! `weir_flush`, and the counters of arguments refused before they reached the
//! aggregator. Must never: hand C a buffer it cannot give back to `weir_buffer_free`,
//! or block an update on a flush.

use std::ffi::c_char;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use weir_core::Temporality;
use weir_core::encode::{EncodeOptions, MAX_REQUEST_BYTES, otlp, prometheus_text, remote_write};

use crate::input::{BadInput, InputRefusal, str_arg};
use crate::runtime::Runtime;
use crate::status::{Failure, guard, weir_status};

/// An embedded weir: an aggregator, and (with a configuration) its pipelines and
/// periodic flush.
///
/// Underneath: a `Box` made by `weir_instance_new` and given back by
/// `weir_instance_free`. Thread-safe: every function taking a
/// `const weir_instance *` may be called from any number of threads at once.
///
/// After `fork()`, the child must not use an instance created before the fork (its
/// background threads do not exist in the child): it creates its own, on another
/// `data_dir`. The parent's instance keeps working.
pub struct weir_instance {
    pub(crate) runtime: Runtime,
    /// Liveness token: the per-thread writers of the one-shot calls hold a `Weak` to it
    /// (see `series::ThreadWriter`).
    pub(crate) alive: Arc<()>,
    /// Arguments refused before they reached the aggregator, by [`InputRefusal`].
    refused: [AtomicU64; InputRefusal::ALL.len()],
}

impl weir_instance {
    /// Counts a refused argument and turns it into the call's failure.
    pub(crate) fn refuse(&self, bad: BadInput) -> Failure {
        // Relaxed: a statistic, read without ordering by `weir_self_metrics`.
        self.refused[bad.reason.index()].fetch_add(1, Ordering::Relaxed);
        bad.failure
    }
}

/// The encoding `weir_flush` returns; one of the `WEIR_FORMAT_*` values.
pub type weir_format = u32;
/// Prometheus text exposition 0.0.4 (running totals), for a service that serves its own
/// `/metrics`.
pub const WEIR_FORMAT_PROMETHEUS_TEXT: weir_format = 0;
/// An OTLP `ExportMetricsServiceRequest` (protobuf), counters and histograms
/// cumulative.
pub const WEIR_FORMAT_OTLP_CUMULATIVE: weir_format = 1;
/// An OTLP `ExportMetricsServiceRequest` (protobuf), counters and histograms as the
/// increase since the previous flush.
pub const WEIR_FORMAT_OTLP_DELTA: weir_format = 2;
/// A Prometheus remote write 1.0 `WriteRequest`, snappy block-compressed: the body of
/// a remote write POST as is.
pub const WEIR_FORMAT_REMOTE_WRITE: weir_format = 3;

/// Creates an instance and stores it in `*out`.
///
/// `config_toml` is NULL (all defaults) or NUL-terminated TOML text with the daemon's
/// schema (docs/configuration.md). Only `data_dir`, `[aggregation]`, `[[pipelines]]`,
/// `[shutdown]` and `[log]` apply; a receivers, scrape, exposition or admin section
/// that differs from its default is refused. The instance starts its pipelines (each
/// first sends what its write-ahead log still holds from an earlier run on the same
/// `data_dir`) and flushes every `aggregation.flush_interval` on a background thread
/// (from 256k series on, a flush also walks them on up to 3 more threads, one per
/// core, that end with it). Two live instances must not share a `data_dir` with
/// pipelines.
///
/// Returns `WEIR_STATUS_OK`, `WEIR_STATUS_NULL_ARGUMENT` (`out` NULL),
/// `WEIR_STATUS_INVALID_UTF8` or `WEIR_STATUS_INVALID_CONFIG`. `*out` is set only on
/// success.
///
/// # Safety
/// `config_toml` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_instance_new(
    config_toml: *const c_char,
    out: *mut *mut weir_instance,
) -> weir_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let text = if config_toml.is_null() {
            ""
        } else {
            // SAFETY: non-NULL and NUL-terminated (the caller's contract); read only
            // during this call.
            unsafe { str_arg(config_toml, "config_toml") }.map_err(|b| b.failure)?
        };
        let runtime =
            Runtime::from_toml(text).map_err(|m| Failure::new(weir_status::InvalidConfig, m))?;
        let instance = Box::new(weir_instance {
            runtime,
            alive: Arc::new(()),
            refused: Default::default(),
        });
        // SAFETY: `out` is non-NULL and writable (the caller's contract).
        unsafe { out.write(Box::into_raw(instance)) };
        Ok(())
    })
}

/// Stops the instance: a final flush into the pipelines' write-ahead logs, then up to
/// `grace_ms` milliseconds for the pipelines to send what they hold (what is left is
/// sent by the next instance on the same `data_dir`). Idempotent. After it, updates
/// are still accepted but no flush reaches anything, and `weir_flush` returns
/// `WEIR_STATUS_CLOSED`.
///
/// # Safety
/// `instance` is NULL or a live instance from `weir_instance_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_instance_close(
    instance: *const weir_instance,
    grace_ms: u64,
) -> weir_status {
    guard(|| {
        // SAFETY: NULL or live (the caller's contract).
        let inst = unsafe { instance.as_ref() }.ok_or_else(|| Failure::null("instance"))?;
        inst.runtime.close(Duration::from_millis(grace_ms));
        Ok(())
    })
}

/// Closes the instance (as `weir_instance_close` with the configured
/// `shutdown.grace_period`, default 5 s, if it was not closed already) and frees it.
/// NULL is ignored.
///
/// Handles made from the instance stay memory-safe to use and to free afterwards, but
/// their updates reach no flush. Freeing an instance twice, or using it after this call,
/// is undefined behaviour (as for `free`).
///
/// # Safety
/// `instance` is NULL or a live instance from `weir_instance_new`, not used by any
/// other thread during or after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_instance_free(instance: *mut weir_instance) {
    let _ = guard(|| {
        if !instance.is_null() {
            // SAFETY: made by `Box::into_raw` in `weir_instance_new` and not freed yet
            // (the caller's contract), so this is its only owner.
            // Dropping the instance closes it with its configured grace period.
            drop(unsafe { Box::from_raw(instance) });
        }
        Ok(())
    });
}

/// Hands a byte buffer to C: `data` followed by one NUL byte not counted in the
/// length (so text can be read as a C string).
///
/// # Safety
/// `out_buf` and `out_len` are non-NULL and writable.
unsafe fn give_buffer(mut data: Vec<u8>, out_buf: *mut *mut u8, out_len: *mut usize) {
    let len = data.len();
    data.push(0);
    let raw = Box::into_raw(data.into_boxed_slice());
    // SAFETY: both non-NULL and writable (the caller's contract).
    unsafe {
        out_buf.write(raw.cast::<u8>());
        out_len.write(len);
    }
}

fn check_out(out_buf: *mut *mut u8, out_len: *mut usize) -> Result<(), Failure> {
    if out_buf.is_null() {
        return Err(Failure::null("out_buf"));
    }
    if out_len.is_null() {
        return Err(Failure::null("out_len"));
    }
    Ok(())
}

/// Flushes now: takes everything aggregated since the previous flush into one batch,
/// hands it to every configured pipeline, and returns it encoded in `format` in a new
/// buffer (`*out_buf`, `*out_len` bytes, followed by a NUL byte not counted) that the
/// caller frees with `weir_buffer_free`. A batch with no series gives a buffer of
/// length 0 for the protobuf formats.
///
/// Returns `WEIR_STATUS_OK`, `WEIR_STATUS_NULL_ARGUMENT`,
/// `WEIR_STATUS_INVALID_ARGUMENT` (unknown `format`; nothing is flushed),
/// `WEIR_STATUS_CLOSED` or `WEIR_STATUS_BATCH_TOO_LARGE`. The outputs are set only on
/// success.
///
/// # Safety
/// `instance` is NULL or live; `out_buf` and `out_len` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_flush(
    instance: *const weir_instance,
    format: weir_format,
    out_buf: *mut *mut u8,
    out_len: *mut usize,
) -> weir_status {
    guard(|| {
        // SAFETY: NULL or live (the caller's contract).
        let inst = unsafe { instance.as_ref() }.ok_or_else(|| Failure::null("instance"))?;
        check_out(out_buf, out_len)?;
        let protobuf = |temporality| EncodeOptions {
            max_request_bytes: MAX_REQUEST_BYTES,
            temporality,
            ..EncodeOptions::default()
        };
        let encoder: fn(&weir_core::FlushBatch, &EncodeOptions) -> Vec<_> = match format {
            WEIR_FORMAT_PROMETHEUS_TEXT => |b, _| {
                vec![weir_core::encode::EncodedRequest {
                    body: prometheus_text(b).into_bytes(),
                    points: 0,
                }]
            },
            WEIR_FORMAT_OTLP_CUMULATIVE | WEIR_FORMAT_OTLP_DELTA => otlp::encode,
            WEIR_FORMAT_REMOTE_WRITE => remote_write::encode,
            other => {
                return Err(Failure::new(
                    weir_status::InvalidArgument,
                    format!("unknown format {other}: use one of the WEIR_FORMAT_* values"),
                ));
            }
        };
        let opts = protobuf(if format == WEIR_FORMAT_OTLP_DELTA {
            Temporality::Delta
        } else {
            Temporality::Cumulative
        });
        let batch = inst.runtime.flush().ok_or_else(|| {
            Failure::new(
                weir_status::Closed,
                "the instance is closed: nothing flushed",
            )
        })?;
        let mut requests = encoder(&batch, &opts);
        if requests.len() > 1 {
            return Err(Failure::new(
                weir_status::BatchTooLarge,
                format!(
                    "the batch of {} series needs {} requests of at most 1 GiB; it went to the pipelines only",
                    batch.series.len(),
                    requests.len()
                ),
            ));
        }
        let body = requests.pop().map(|r| r.body).unwrap_or_default();
        // SAFETY: both checked non-NULL above, writable (the caller's contract).
        unsafe { give_buffer(body, out_buf, out_len) };
        Ok(())
    })
}

/// weir's own metrics for this instance (series, refusals by reason, flushes, pipelines)
/// in the Prometheus text format, in a new buffer freed with `weir_buffer_free`.
/// Arguments refused by the C ABI itself in calls that name this instance (a NULL,
/// non-UTF-8 name or label, too many labels) are in
/// `weir_ffi_rejected_total{reason="null_argument"|"invalid_utf8"|"too_many_labels"}`;
/// a NULL instance or handle has no instance to be counted in and only gets its status.
///
/// # Safety
/// `instance` is NULL or live; `out_buf` and `out_len` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_self_metrics(
    instance: *const weir_instance,
    out_buf: *mut *mut u8,
    out_len: *mut usize,
) -> weir_status {
    guard(|| {
        // SAFETY: NULL or live (the caller's contract).
        let inst = unsafe { instance.as_ref() }.ok_or_else(|| Failure::null("instance"))?;
        check_out(out_buf, out_len)?;
        let mut text = inst.runtime.self_metrics();
        text.push_str("# TYPE weir_ffi_rejected_total counter\n");
        for r in InputRefusal::ALL {
            // Relaxed: a statistic; see `refuse`.
            let n = inst.refused[r.index()].load(Ordering::Relaxed);
            text.push_str(&format!(
                "weir_ffi_rejected_total{{reason=\"{}\"}} {n}\n",
                r.as_str()
            ));
        }
        // SAFETY: both checked non-NULL above, writable (the caller's contract).
        unsafe { give_buffer(text.into_bytes(), out_buf, out_len) };
        Ok(())
    })
}

/// Frees a buffer from `weir_flush` or `weir_self_metrics`. `len` is the length that
/// call returned. NULL is ignored.
///
/// # Safety
/// `buf` is NULL or a buffer from weir with its returned `len`, not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn weir_buffer_free(buf: *mut u8, len: usize) {
    let _ = guard(|| {
        if !buf.is_null() {
            let slice = std::ptr::slice_from_raw_parts_mut(buf, len + 1);
            // SAFETY: made by `Box::into_raw` of a boxed slice of `len + 1` bytes in
            // `give_buffer` and not freed yet (the caller's contract).
            drop(unsafe { Box::from_raw(slice) });
        }
        Ok(())
    });
}
