//! weir-collector: the daemon around weir-core.
#![forbid(unsafe_code)]
