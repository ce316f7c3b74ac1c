//! The agent's configuration: parsed from YAML and validated in one place,
//! before anything touches the kernel. Every error names the file, line and
//! column it comes from.

mod probes;
mod scalar;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

pub use probes::MAX_COMM_FILTERS;
use scalar::{int_in, is_metric_name, scalar, string, Scalar};

use crate::probes::{HookKind, ProbeSpec};

/// The configuration used when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("default.yaml");
/// How the embedded default config is named in messages.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default config>";

pub const DEFAULT_LISTEN: &str = "0.0.0.0:9477";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid { origin: String, line: usize, column: usize, message: String },
    #[error("{origin}: {message}")]
    Unlocated { origin: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where `/metrics` is served.
    #[serde(default = "default_listen", deserialize_with = "listen_addr")]
    pub listen: SocketAddr,
    /// Prepended, with `_`, to every metric name.
    #[serde(default = "default_prefix", deserialize_with = "metric_prefix")]
    pub metric_prefix: String,
    /// Labels added to every series.
    #[serde(default, deserialize_with = "const_labels")]
    pub const_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ring_buffer: RingBufferConfig,
    /// Label sets per metric before new ones fold into `overflow`.
    #[serde(default = "default_series_limit", deserialize_with = "series_limit")]
    pub series_limit: usize,
    /// Turn on the kernel's BPF run-time statistics while the agent runs.
    #[serde(default)]
    pub bpf_stats: bool,
    /// Any probe failing to load or attach is fatal.
    #[serde(default)]
    pub strict: bool,
    #[serde(deserialize_with = "probes::deserialize")]
    pub probes: Vec<ProbeConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawRingBuffer")]
pub struct RingBufferConfig {
    /// Bytes of each probe's ring: a power of two, at least one page.
    pub size_bytes: u32,
    /// The reader is woken once this many bytes wait; 0 wakes it per event.
    pub wakeup_bytes: u32,
    /// How often the reader drains the rings when no wakeup came.
    pub poll_interval_ms: u32,
}

impl Default for RingBufferConfig {
    fn default() -> Self {
        Self { size_bytes: 1 << 20, wakeup_bytes: 1 << 16, poll_interval_ms: 100 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRingBuffer {
    #[serde(default, deserialize_with = "ring_size")]
    size_bytes: Option<u32>,
    #[serde(default, deserialize_with = "wakeup_bytes")]
    wakeup_bytes: Option<u32>,
    #[serde(default, deserialize_with = "poll_interval")]
    poll_interval_ms: Option<u32>,
}

impl TryFrom<RawRingBuffer> for RingBufferConfig {
    type Error = String;

    fn try_from(raw: RawRingBuffer) -> Result<Self, String> {
        let d = RingBufferConfig::default();
        let config = RingBufferConfig {
            size_bytes: raw.size_bytes.unwrap_or(d.size_bytes),
            wakeup_bytes: raw.wakeup_bytes.unwrap_or(d.wakeup_bytes.min(raw.size_bytes.unwrap_or(u32::MAX) / 4)),
            poll_interval_ms: raw.poll_interval_ms.unwrap_or(d.poll_interval_ms),
        };
        if config.wakeup_bytes >= config.size_bytes {
            return Err(format!(
                "ring_buffer.wakeup_bytes ({}) must be smaller than ring_buffer.size_bytes ({})",
                config.wakeup_bytes, config.size_bytes
            ));
        }
        Ok(config)
    }
}

/// One configured probe.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub spec: &'static ProbeSpec,
    /// The labels its metrics carry, a subset of `spec.labels`.
    pub labels: Vec<&'static str>,
    pub filter: Filter,
    pub buckets: Buckets,
    pub hook: HookChoice,
}

impl ProbeConfig {
    pub fn defaults(spec: &'static ProbeSpec) -> Self {
        Self {
            spec,
            labels: spec.default_labels.to_vec(),
            filter: Filter::default(),
            buckets: Buckets::Exp2,
            hook: HookChoice::Auto,
        }
    }

    pub fn has_label(&self, label: &str) -> bool {
        self.labels.contains(&label)
    }
}

/// Applied in the kernel: events from other processes are never produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Process names (comm) to keep; empty keeps all.
    pub comm: Vec<String>,
    /// Thread group (process) id to keep.
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Buckets {
    /// Powers of two from 1 µs to ~8.4 s.
    Exp2,
    /// Upper bounds in seconds.
    Explicit(Vec<f64>),
}

impl Buckets {
    pub fn bounds(&self) -> Vec<f64> {
        match self {
            Buckets::Exp2 => (0..24).map(|i| 1e-6 * f64::from(1u32 << i)).collect(),
            Buckets::Explicit(b) => b.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookChoice {
    /// The first of the probe's hooks that loads and attaches.
    Auto,
    Only(HookKind),
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded default config.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Self::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME)
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        serde_yaml::from_str(text).map_err(|err| locate(err, origin))
    }
}

/// `origin:line:column: message`, with serde_yaml's own location suffix
/// moved to the front where editors and CI annotators look for it.
fn locate(err: serde_yaml::Error, origin: &str) -> ConfigError {
    let text = err.to_string();
    match err.location() {
        Some(loc) => {
            let message = match text.rfind(" at line ") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            ConfigError::Invalid { origin: origin.to_string(), line: loc.line(), column: loc.column(), message }
        }
        None => ConfigError::Unlocated { origin: origin.to_string(), message: text },
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("DEFAULT_LISTEN is a valid socket address")
}

fn default_prefix() -> String {
    "sonde".to_string()
}

fn default_series_limit() -> usize {
    10_000
}

fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    scalar(d, "an address such as 0.0.0.0:9477", |v| match v {
        Scalar::Str(s) => s
            .parse()
            .map_err(|_| format!("invalid listen address `{s}`: expected IP:PORT, e.g. 0.0.0.0:9477 or [::]:9477")),
        other => Err(format!("expected an address such as 0.0.0.0:9477, found {other}")),
    })
}

fn metric_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    scalar(d, "a metric name prefix", |v| match v {
        Scalar::Str(s) if is_metric_name(s, true) => Ok(s.to_string()),
        other => Err(format!("invalid metric_prefix {other}: expected [a-zA-Z_:][a-zA-Z0-9_:]*")),
    })
}

fn series_limit<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    int_in(d, 1, 10_000_000).map(|n| n as usize)
}

fn ring_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    scalar(d, "a size in bytes", |v| match v {
        Scalar::Int(n) if (4096..=1 << 30).contains(&n) && (n as u64).is_power_of_two() => Ok(Some(n as u32)),
        other => Err(format!(
            "ring_buffer.size_bytes {other} must be a power of two from 4096 (one page) to 1073741824 (1 GiB)"
        )),
    })
}

fn wakeup_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    int_in(d, 0, 1 << 30).map(|n| Some(n as u32))
}

fn poll_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    int_in(d, 1, 10_000).map(|n| Some(n as u32))
}

fn const_labels<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    d.deserialize_map(ConstLabels)
}

struct ConstLabels;

impl<'de> Visitor<'de> for ConstLabels {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of label names to values")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(name) = map.next_key_seed(ConstLabelName { seen: &out })? {
            let value = map.next_value_seed(StringSeed)?;
            out.insert(name, value);
        }
        Ok(out)
    }
}

struct ConstLabelName<'a> {
    seen: &'a BTreeMap<String, String>,
}

impl<'de> de::DeserializeSeed<'de> for ConstLabelName<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        scalar(d, "a label name", |v| {
            let Scalar::Str(name) = v else {
                return Err(format!("expected a label name, found {v}"));
            };
            if !is_metric_name(name, false) || name.starts_with("__") {
                return Err(format!(
                    "invalid label name `{name}`: expected [a-zA-Z_][a-zA-Z0-9_]*, not starting with __"
                ));
            }
            if crate::probes::reserved_label(name) {
                return Err(format!("label `{name}` is set by sonde itself and cannot be a constant label"));
            }
            if self.seen.contains_key(name) {
                return Err(format!("label `{name}` is listed twice"));
            }
            Ok(name.to_string())
        })
    }
}

struct StringSeed;

impl<'de> de::DeserializeSeed<'de> for StringSeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        string(d)
    }
}

#[cfg(test)]
mod tests;
