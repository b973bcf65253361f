//! weir-ffi: the C ABI of weir, with its header in `include/weir.h` (generated from
//! these doc comments by cbindgen in `build.rs`; `tests/header.rs` fails when the
//! committed copy is stale).
//!
//! A `weir_instance` is the collector's embeddable runtime
//! (`weir_collector::instance::Instance`): the aggregator, the periodic flush and the
//! configured pipelines with their write-ahead logs, the same code the daemon runs.
//!
//! # Contract (what every exported function keeps)
//! - **Results**: every fallible function returns a [`weir_status`] with stable
//!   numeric codes; on failure [`weir_last_error`] gives a one-line message on the same
//!   thread. Outputs (`*out`, `*out_buf`) are written only on success.
//! - **No unwinding into C**: every exported body runs inside [`std::panic::catch_unwind`]
//!   (`status`); a panic becomes `WEIR_STATUS_PANIC`.
//! - **Bad input is a status, never undefined behaviour**: NULL pointers, invalid
//!   UTF-8, invalid metric or label names, more than [`WEIR_MAX_LABELS`] labels and a
//!   full series limit each have a status. Refusals are counted: the aggregator's under
//!   `weir_rejected_total{reason}`, the ABI's own (NULL, UTF-8, too many labels) under
//!   `weir_ffi_rejected_total{reason}` (see [`weir_self_metrics`]; a NULL instance or
//!   handle has nowhere to be counted and only gets its status). What C cannot be
//!   protected from stays undefined, as with `free`: dangling or wrong-typed pointers,
//!   freeing twice, strings without a NUL.
//! - **Types**: opaque, each a `Box` owned by C between its `_new` and `_free`;
//!   [`weir_instance`] and the handles may be used from any number of threads at once.
//! - **Hot path**: a handle update is one atomic operation on the series' cell: no
//!   lock, no allocation, no lookup.
//!
//! Must never: let a panic cross the boundary, read a C argument after the call
//! returns, or keep a lock across a call.
#![deny(missing_docs)]
#![allow(non_camel_case_types)]

mod input;
mod instance;
mod runtime;
mod series;
mod status;

pub use input::{WEIR_MAX_LABELS, weir_label};
pub use instance::{
    WEIR_FORMAT_OTLP_CUMULATIVE, WEIR_FORMAT_OTLP_DELTA, WEIR_FORMAT_PROMETHEUS_TEXT,
    WEIR_FORMAT_REMOTE_WRITE, weir_buffer_free, weir_flush, weir_format, weir_instance,
    weir_instance_close, weir_instance_free, weir_instance_new, weir_self_metrics,
};
pub use series::{
    weir_counter, weir_counter_add, weir_counter_add_double, weir_counter_free, weir_counter_new,
    weir_gauge, weir_gauge_add, weir_gauge_free, weir_gauge_new, weir_gauge_set, weir_histogram,
    weir_histogram_free, weir_histogram_new, weir_histogram_observe, weir_record_counter,
    weir_record_gauge, weir_record_observe,
};
pub use status::{weir_last_error, weir_status};

/// The header cbindgen generated from this build's sources (compared with the
/// committed `include/weir.h` by `tests/header.rs`).
#[doc(hidden)]
pub const GENERATED_HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/weir.h"));
