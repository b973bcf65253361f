//! weir-ffi: the C ABI over `weir-core`, with its header in `include/weir.h`.
//!
//! Status: empty. No function is exported yet, so no header is generated; the binding
//! work adds both together.
