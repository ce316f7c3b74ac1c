//! The agent's configuration: parsed from YAML and validated in one place,
//! before anything touches the kernel. Every error names the file, line and
//! column it comes from.

mod probes;
mod scalar;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

pub use probes::MAX_COMM_FILTERS;
use scalar::{int_in, is_metric_name, scalar, OneOf, Scalar};

use crate::spec::{Catalog, ProbeSettings};

/// The configuration used when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("default.yaml");
/// How the embedded default config is named in messages.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default config>";

pub const DEFAULT_LISTEN: &str = "0.0.0.0:9477";
pub const DEFAULT_METRIC_PREFIX: &str = "sonde";
pub const DEFAULT_SERIES_LIMIT: usize = 10_000;
/// Series not updated for this long are removed.
pub const DEFAULT_SERIES_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid { origin: String, line: usize, column: usize, message: String },
    #[error("{origin}: {message}")]
    Unlocated { origin: String, message: String },
}

/// Deserialized by hand rather than derived: serde's derive reports a
/// repeated key, or anything checked once the mapping is read, at the start
/// of the mapping instead of at the key or value at fault.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where `/metrics` is served.
    pub listen: SocketAddr,
    /// Prepended, with `_`, to every metric name.
    pub metric_prefix: String,
    /// Labels added to every series.
    pub const_labels: BTreeMap<String, String>,
    pub ring_buffer: RingBufferConfig,
    /// Label sets per metric before new ones fold into `overflow`.
    pub series_limit: usize,
    /// Label sets not updated for this long are removed; None keeps them.
    pub series_ttl: Option<Duration>,
    /// Turn on the kernel's BPF run-time statistics while the agent runs.
    pub bpf_stats: bool,
    /// Any probe failing to load or attach is fatal.
    pub strict: bool,
    pub probes: Vec<ProbeSettings>,
}

const CONFIG_KEYS: &[&str] = &[
    "listen",
    "metric_prefix",
    "const_labels",
    "ring_buffer",
    "series_limit",
    "series_ttl",
    "bpf_stats",
    "strict",
    "probes",
];

/// Reads a config against the probes in `catalog`.
struct ConfigSeed<'c> {
    catalog: &'c Catalog,
}

impl<'de> DeserializeSeed<'de> for ConfigSeed<'_> {
    type Value = Config;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Config, D::Error> {
        d.deserialize_map(ConfigVisitor { catalog: self.catalog })
    }
}

struct ConfigVisitor<'c> {
    catalog: &'c Catalog,
}

impl<'de> Visitor<'de> for ConfigVisitor<'_> {
    type Value = Config;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a config mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Config, A::Error> {
        let mut config = Config {
            listen: default_listen(),
            metric_prefix: DEFAULT_METRIC_PREFIX.to_string(),
            const_labels: BTreeMap::new(),
            ring_buffer: RingBufferConfig::default(),
            series_limit: DEFAULT_SERIES_LIMIT,
            series_ttl: Some(DEFAULT_SERIES_TTL),
            bpf_stats: false,
            strict: false,
            probes: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key_seed(OneOf { keys: CONFIG_KEYS, what: "top-level", seen: &seen })? {
            seen.insert(key);
            map.next_value_seed(ConfigValue { key, config: &mut config, catalog: self.catalog })?;
        }
        if !seen.contains("probes") {
            return Err(de::Error::custom(format!(
                "no probes configured: the `probes` key is missing; known probes: {}",
                self.catalog.names().join(", ")
            )));
        }
        Ok(config)
    }
}

/// The value of one top-level key, stored into `config` as it is read.
struct ConfigValue<'a> {
    key: &'static str,
    config: &'a mut Config,
    catalog: &'a Catalog,
}

impl<'de> DeserializeSeed<'de> for ConfigValue<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let config = self.config;
        match self.key {
            "listen" => config.listen = listen_addr(d)?,
            "metric_prefix" => config.metric_prefix = metric_prefix(d)?,
            "const_labels" => config.const_labels = d.deserialize_any(ConstLabels { catalog: self.catalog })?,
            "ring_buffer" => config.ring_buffer = RingBufferConfig::deserialize(d)?,
            "series_limit" => config.series_limit = series_limit(d)?,
            "series_ttl" => config.series_ttl = series_ttl(d)?,
            "bpf_stats" => config.bpf_stats = bool::deserialize(d)?,
            "strict" => config.strict = bool::deserialize(d)?,
            "probes" => config.probes = probes::deserialize(d, self.catalog)?,
            _ => unreachable!("OneOf only yields CONFIG_KEYS"),
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingBufferConfig {
    /// Bytes of every probe's ring (a power of two, at least one page), or
    /// None to size each probe's ring from the CPU count and its rate.
    pub size_bytes: Option<u32>,
    /// Wake the reader each time another this many bytes wait; 0 lets the
    /// kernel wake it per event. None: 64 KiB, at most a quarter of the ring.
    pub wakeup_bytes: Option<u32>,
    /// How often the reader drains the rings when no wakeup came.
    pub poll_interval_ms: u32,
}

/// Default `wakeup_bytes`, capped at a quarter of the ring.
pub const DEFAULT_WAKEUP_BYTES: u32 = 64 << 10;

impl Default for RingBufferConfig {
    fn default() -> Self {
        Self { size_bytes: None, wakeup_bytes: None, poll_interval_ms: 100 }
    }
}

/// One probe's ring, resolved from the config and the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSize {
    pub size_bytes: u32,
    pub wakeup_bytes: u32,
}

impl RingBufferConfig {
    /// The ring for a probe that needs `per_cpu_bytes` of room per CPU at its
    /// expected rate, on a machine with `cpus` CPUs: every CPU can fill the
    /// one ring at once, so its size grows with them (up to 64 MiB).
    pub fn for_probe(&self, per_cpu_bytes: u32, cpus: usize) -> RingSize {
        let size_bytes = self.size_bytes.unwrap_or_else(|| {
            let wanted = u64::from(per_cpu_bytes).saturating_mul(cpus.max(1) as u64);
            wanted.clamp(16 << 10, 64 << 20).next_power_of_two() as u32
        });
        let wakeup_bytes = match (self.size_bytes, self.wakeup_bytes) {
            // both given: validated against each other when parsed
            (Some(_), Some(wakeup)) => wakeup,
            (_, wakeup) => wakeup.unwrap_or(DEFAULT_WAKEUP_BYTES).min(size_bytes / 4),
        };
        RingSize { size_bytes, wakeup_bytes }
    }
}

impl<'de> Deserialize<'de> for RingBufferConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RingBufferConfig, D::Error> {
        d.deserialize_any(RingBufferVisitor)
    }
}

struct RingBufferVisitor;

impl<'de> Visitor<'de> for RingBufferVisitor {
    type Value = RingBufferConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a ring_buffer mapping with size_bytes, wakeup_bytes and/or poll_interval_ms")
    }

    fn visit_unit<E: de::Error>(self) -> Result<RingBufferConfig, E> {
        Ok(RingBufferConfig::default())
    }

    /// `wakeup_bytes < size_bytes` is checked at whichever of the two comes
    /// second, so the error points at a value rather than at the mapping.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RingBufferConfig, A::Error> {
        const KEYS: &[&str] = &["size_bytes", "wakeup_bytes", "poll_interval_ms"];
        let defaults = RingBufferConfig::default();
        let (mut size, mut wakeup, mut poll) = (None, None, None);
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key_seed(OneOf { keys: KEYS, what: "ring_buffer", seen: &seen })? {
            seen.insert(key);
            match key {
                "size_bytes" => size = Some(map.next_value_seed(RingSizeSeed { wakeup })?),
                "wakeup_bytes" => wakeup = Some(map.next_value_seed(WakeupBytes { size })?),
                "poll_interval_ms" => poll = Some(map.next_value_seed(PollInterval)?),
                _ => unreachable!("OneOf only yields KEYS"),
            }
        }
        Ok(RingBufferConfig {
            size_bytes: size,
            wakeup_bytes: wakeup,
            poll_interval_ms: poll.unwrap_or(defaults.poll_interval_ms),
        })
    }
}

struct RingSizeSeed {
    /// wakeup_bytes, if it came earlier in the mapping.
    wakeup: Option<u32>,
}

impl<'de> DeserializeSeed<'de> for RingSizeSeed {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        scalar(d, "a size in bytes", |v| match v {
            Scalar::Int(n) if (4096..=1 << 30).contains(&n) && (n as u64).is_power_of_two() => {
                let size = n as u32;
                match self.wakeup {
                    Some(wakeup) if wakeup >= size => {
                        Err(format!("{size} must be larger than wakeup_bytes ({wakeup})"))
                    }
                    _ => Ok(size),
                }
            }
            other => Err(format!("{other} is not a power of two from 4096 (one page) to 1073741824 (1 GiB)")),
        })
    }
}

struct WakeupBytes {
    /// size_bytes, if it came earlier in the mapping.
    size: Option<u32>,
}

impl<'de> DeserializeSeed<'de> for WakeupBytes {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        scalar(d, "a number of bytes", |v| match v {
            Scalar::Int(n) if (0..1 << 30).contains(&n) => {
                let wakeup = n as u32;
                match self.size {
                    Some(size) if wakeup >= size => Err(format!("{wakeup} must be smaller than size_bytes ({size})")),
                    _ => Ok(wakeup),
                }
            }
            Scalar::Int(n) => Err(format!("{n} is out of range: expected 0..=1073741823")),
            other => Err(format!("expected an integer, found {other}")),
        })
    }
}

struct PollInterval;

impl<'de> DeserializeSeed<'de> for PollInterval {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        int_in(d, 1, 10_000).map(|n| n as u32)
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path, catalog: &Catalog) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, &path.display().to_string(), catalog)
    }

    /// The embedded default config.
    pub fn embedded_default(catalog: &Catalog) -> Result<Config, ConfigError> {
        Self::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME, catalog)
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, catalog: &Catalog) -> Result<Config, ConfigError> {
        ConfigSeed { catalog }.deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|err| locate(err, origin))
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

/// `0` keeps series forever; otherwise a duration such as `90s` or `1h`.
fn series_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    scalar(d, "a duration such as 30m or 1h, or 0 for never", |v| match v {
        Scalar::Int(0) => Ok(None),
        Scalar::Str(s) => match scalar::duration(s) {
            Some(ttl) if ttl.is_zero() => Ok(None),
            Some(ttl) if ttl < MIN_SERIES_TTL => {
                Err(format!("series_ttl {s} is too short: at least {}ms", MIN_SERIES_TTL.as_millis()))
            }
            Some(ttl) => Ok(Some(ttl)),
            None => Err(format!("invalid duration `{s}`: expected a number and a unit (ms, s, m, h, d), e.g. 1h")),
        },
        other => Err(format!("expected a duration such as 1h, or 0 for never, found {other}")),
    })
}

/// Shorter would make series flicker between scrapes.
pub const MIN_SERIES_TTL: Duration = Duration::from_millis(100);

struct ConstLabels<'c> {
    catalog: &'c Catalog,
}

impl<'de> Visitor<'de> for ConstLabels<'_> {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of label names to values")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(name) = map.next_key_seed(ConstLabelName { seen: &out, catalog: self.catalog })? {
            let value = map.next_value_seed(LabelValue)?;
            out.insert(name, value);
        }
        Ok(out)
    }
}

struct ConstLabelName<'a> {
    seen: &'a BTreeMap<String, String>,
    catalog: &'a Catalog,
}

impl<'de> DeserializeSeed<'de> for ConstLabelName<'_> {
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
            if crate::metrics::SELF_LABELS.contains(&name) || self.catalog.has_label(name) {
                return Err(format!("label `{name}` is set by sonde itself and cannot be a constant label"));
            }
            if self.seen.contains_key(name) {
                return Err(format!("label `{name}` is listed twice"));
            }
            Ok(name.to_string())
        })
    }
}

/// A constant label's value: any scalar, as the text written, so that
/// `version: 1.10` stays "1.10" rather than becoming the number 1.1.
struct LabelValue;

impl<'de> DeserializeSeed<'de> for LabelValue {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        // serde_yaml gives any scalar's text to `str`; sequences and
        // mappings are refused at their own location.
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for LabelValue {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a label value (a string, number or boolean)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        // Prometheus reads an empty label value as no label at all, and a
        // YAML null is no value either (`str` sees it as its text, `~`).
        if matches!(v, "" | "~" | "null" | "Null" | "NULL") {
            return Err(E::custom(format!("a constant label needs a value, not `{v}`")));
        }
        Ok(v.to_string())
    }
}

#[cfg(test)]
mod tests;
