//! sonde: small probes in the Linux kernel, read out as Prometheus metrics.
//!
//! The data path reads one way: `spec` (what a probe is) → `loader` (its
//! programs in the kernel) → `ring` (records) → `decode` (keys and values)
//! → `sink` and `enrich` (labels) → `metrics` (series, families, encoding)
//! → `http`. `config` turns YAML into settings that refer to specs; `agent`
//! runs the whole. The binary (`src/main.rs`) is the command line around
//! this library; the library is public so that benchmarks can drive the
//! same code paths.

pub mod agent;
pub mod bpf_stats;
pub mod capabilities;
pub mod config;
pub mod decode;
pub mod enrich;
pub mod http;
pub mod labels;
pub mod listing;
pub mod loader;
pub mod metrics;
pub mod probes;
pub mod ring;
pub mod scrape;
pub mod sink;
pub mod spec;
pub mod system;
pub mod web;
