//! sonde: small probes in the Linux kernel, read out as Prometheus metrics.
//!
//! The binary (`src/main.rs`) is the command line around this library; the
//! library is public so that benchmarks can drive the same code paths.

pub mod agent;
pub mod bpf_stats;
pub mod config;
pub mod enrich;
pub mod events;
pub mod http;
pub mod loader;
pub mod metrics;
pub mod probes;
pub mod scrape;
pub mod system;
