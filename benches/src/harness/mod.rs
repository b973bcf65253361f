//! The library behind the `weir-bench` binary: it starts weir and the collectors
//! people would pick instead on free 127.0.0.1 ports, drives the same load through
//! each, reads back what each produced, and reports side by side.
//!
//! - [`process`]: spawning, `/proc` readings, receive buffers, clean-up on Ctrl-C.
//! - [`statsd`], [`otlp`], [`http_server`]: the load generators (StatsD over UDP, OTLP
//!   gRPC, scrape targets) and the remote-write receiver that counts what arrives.
//! - [`peers`]: weir, collectd and etsy StatsD: configs and how to read each back.
//! - [`prom_text`]: reading a text exposition page.
//! - [`scenario`]: one module per scenario of `weir-bench`.
//! - [`report`]: JSON, Markdown and SVG output.
//!
//! Owns: everything the harness measures with. Must never: leave a process or a
//! temporary directory behind, or call a run loss-free without comparing what it
//! sent with what it read back.

pub mod http_server;
pub mod otlp;
pub mod peers;
pub mod process;
pub mod prom_text;
pub mod report;
pub mod scenario;
pub mod statsd;
