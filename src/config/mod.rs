//! The agent's configuration: parsed from YAML and validated in one place,
//! before anything touches the kernel. Every error names the file, line and
//! column it comes from.

mod custom;
mod guard;
mod probes;
mod scalar;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use custom::Defined;
pub use guard::MAX_CONFIG_DEPTH;
pub use probes::{MAX_BUCKET_BOUNDS, MAX_COMM_FILTERS};
pub use scalar::MAX_QUOTED_CHARS;
use scalar::{int_in, is_metric_name, quoted, scalar, OneOf, Scalar};

use crate::spec::{Catalog, ProbeSettings};

/// The configuration used when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("default.yaml");
/// How the embedded default config is named in messages.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default config>";

pub const DEFAULT_LISTEN: &str = "0.0.0.0:19477";
pub const DEFAULT_METRIC_PREFIX: &str = "sonde";
pub const DEFAULT_SERIES_LIMIT: usize = 10_000;
/// Series not updated for this long are removed.
pub const DEFAULT_SERIES_TTL: Duration = Duration::from_secs(3600);

/// The largest config file read, in bytes (1 MiB): sonde's full example is
/// about 5 KiB. A larger file is refused before it is read or parsed.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The most constant labels (`const_labels`): each is on every series.
pub const MAX_CONST_LABELS: usize = 32;
/// The longest constant label name, in bytes.
pub const MAX_LABEL_NAME_BYTES: usize = 128;
/// The longest constant label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;
/// The longest `metric_prefix`, in bytes.
pub const MAX_METRIC_PREFIX_BYTES: usize = 64;
/// The largest `ring_buffer.size_bytes` (256 MiB): each probe's ring is
/// locked kernel memory.
pub const MAX_RING_BYTES: u32 = 256 << 20;
/// The most ring memory a config may ask for in all, `size_bytes` times the
/// number of configured probes (1 GiB).
pub const MAX_TOTAL_RING_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot read config: it is {kind}, not a regular file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{path}: config is {size} bytes, over the limit of {MAX_CONFIG_BYTES} bytes (1 MiB); not parsed")]
    TooLarge { path: PathBuf, size: u64 },
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
    /// The CRI runtime's socket, for the `container`, `pod` and `namespace` labels; None: the usual
    /// containerd and CRI-O sockets are tried.
    pub cri_socket: Option<PathBuf>,
    /// Drop every capability once the probes are attached.
    pub drop_capabilities: bool,
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
    "cri_socket",
    "drop_capabilities",
    "probes",
];

struct ConfigVisitor<'c> {
    catalog: &'c Catalog,
    defined: &'c Defined,
    /// How many probes the file configures, when an earlier pass found out:
    /// lets `ring_buffer`, read before `probes`, check its total at itself.
    probe_count: Option<usize>,
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
            cri_socket: None,
            drop_capabilities: false,
            probes: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key_seed(OneOf { keys: CONFIG_KEYS, what: "top-level", seen: &seen })? {
            seen.insert(key);
            let probe_count = self.probe_count.or(seen.contains("probes").then_some(config.probes.len()));
            let (catalog, defined) = (self.catalog, self.defined);
            map.next_value_seed(ConfigValue { key, config: &mut config, catalog, defined, probe_count })?;
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
    defined: &'a Defined,
    probe_count: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for ConfigValue<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let config = self.config;
        match self.key {
            "listen" => config.listen = listen_addr(d)?,
            "metric_prefix" => config.metric_prefix = metric_prefix(d)?,
            "const_labels" => config.const_labels = d.deserialize_any(ConstLabels { catalog: self.catalog })?,
            "ring_buffer" => config.ring_buffer = RingBufferVisitor { probe_count: self.probe_count }.deserialize(d)?,
            "series_limit" => config.series_limit = series_limit(d)?,
            "series_ttl" => config.series_ttl = series_ttl(d)?,
            "bpf_stats" => config.bpf_stats = bool::deserialize(d)?,
            "strict" => config.strict = bool::deserialize(d)?,
            "cri_socket" => config.cri_socket = Some(cri_socket(d)?),
            "drop_capabilities" => config.drop_capabilities = bool::deserialize(d)?,
            "probes" => config.probes = probes::deserialize(d, self.catalog, self.defined)?,
            _ => unreachable!("OneOf only yields CONFIG_KEYS"),
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingBufferConfig {
    /// Bytes of every probe's ring (a power of two from one page to
    /// [`MAX_RING_BYTES`], and at most [`MAX_TOTAL_RING_BYTES`] for all
    /// probes together), or None to size each probe's ring from the CPU
    /// count and its rate.
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

struct RingBufferVisitor {
    /// The number of configured probes, if known by now.
    probe_count: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for RingBufferVisitor {
    type Value = RingBufferConfig;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RingBufferConfig, D::Error> {
        d.deserialize_any(self)
    }
}

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
                "size_bytes" => {
                    size = Some(map.next_value_seed(RingSizeSeed { wakeup, probe_count: self.probe_count })?)
                }
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
    /// The number of configured probes, if known by now.
    probe_count: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for RingSizeSeed {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        scalar(d, "a size in bytes", |v| match v {
            Scalar::Int(n) if (4096..=i128::from(MAX_RING_BYTES)).contains(&n) && (n as u64).is_power_of_two() => {
                let size = n as u32;
                if let Some(message) = self.probe_count.and_then(|probes| ring_total_error(size, probes)) {
                    return Err(message);
                }
                match self.wakeup {
                    Some(wakeup) if wakeup >= size => {
                        Err(format!("{size} must be larger than wakeup_bytes ({wakeup})"))
                    }
                    _ => Ok(size),
                }
            }
            other => Err(format!("{other} is not a power of two from 4096 (one page) to {MAX_RING_BYTES} (256 MiB)")),
        })
    }
}

/// Why `size_bytes` for each of `probes` rings is too much in all, if it is.
fn ring_total_error(size: u32, probes: usize) -> Option<String> {
    let total = u64::from(size) * probes as u64;
    if total <= MAX_TOTAL_RING_BYTES {
        return None;
    }
    let most = (MAX_TOTAL_RING_BYTES / probes as u64).checked_ilog2().map_or(0, |bits| 1u64 << bits);
    Some(format!(
        "{size} bytes for each of the {probes} configured probes is {total} bytes of ring memory, over the \
         {MAX_TOTAL_RING_BYTES}-byte (1 GiB) total; use at most {most}"
    ))
}

struct WakeupBytes {
    /// size_bytes, if it came earlier in the mapping.
    size: Option<u32>,
}

impl<'de> DeserializeSeed<'de> for WakeupBytes {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        scalar(d, "a number of bytes", |v| match v {
            Scalar::Int(n) if (0..i128::from(MAX_RING_BYTES)).contains(&n) => {
                let wakeup = n as u32;
                match self.size {
                    Some(size) if wakeup >= size => Err(format!("{wakeup} must be smaller than size_bytes ({size})")),
                    _ => Ok(wakeup),
                }
            }
            Scalar::Int(n) => Err(format!("{n} is out of range: expected 0..={}", MAX_RING_BYTES - 1)),
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
    /// Reads and validates a config file: a regular file of at most
    /// [`MAX_CONFIG_BYTES`], in UTF-8.
    pub fn load(path: &Path, catalog: &Catalog) -> Result<Config, ConfigError> {
        let bytes = read_config(path)?;
        let origin = path.display().to_string();
        // Editors on Windows start UTF-8 files with a byte-order mark; it is
        // no character of the config, nor counted in columns.
        let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(&bytes);
        let text = std::str::from_utf8(bytes).map_err(|err| invalid_utf8(bytes, &err, &origin))?;
        Self::parse(text, &origin, catalog)
    }

    /// The embedded default config.
    pub fn embedded_default(catalog: &Catalog) -> Result<Config, ConfigError> {
        Self::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME, catalog)
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, catalog: &Catalog) -> Result<Config, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        guard::check(text).map_err(|fault| {
            let (line, column) = guard::position(text, fault.offset);
            ConfigError::Invalid { origin: origin.to_string(), line, column, message: fault.message }
        })?;
        let defined = Defined::scan(text);
        let config = parse_pass(text, origin, catalog, &defined, None)?;
        let ring_total = config.ring_buffer.size_bytes.and_then(|size| ring_total_error(size, config.probes.len()));
        if let Some(message) = ring_total {
            // `size_bytes` came before `probes`, so the total could not be
            // checked at it: parsed again with the probe count known, the
            // error is reported at `size_bytes`.
            let located = parse_pass(text, origin, catalog, &defined, Some(config.probes.len())).err();
            return Err(located.unwrap_or(ConfigError::Unlocated { origin: origin.to_string(), message }));
        }
        Ok(config)
    }
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fn parse_pass(
    text: &str,
    origin: &str,
    catalog: &Catalog,
    defined: &Defined,
    probe_count: Option<usize>,
) -> Result<Config, ConfigError> {
    let visitor = ConfigVisitor { catalog, defined, probe_count };
    let config = serde_yaml::Deserializer::from_str(text).deserialize_map(visitor);
    config.map_err(|err| locate(with_location(err, text), origin))
}

/// serde_yaml reports text after the top-level value that starts no
/// document as "more than one document", without a location (a real second
/// document is refused by the guard before): the error of that second
/// "document" has the location.
fn with_location(err: serde_yaml::Error, text: &str) -> serde_yaml::Error {
    if err.location().is_some() {
        return err;
    }
    let second =
        serde_yaml::Deserializer::from_str(text).nth(1).and_then(|doc| doc.deserialize_any(de::IgnoredAny).err());
    second.filter(|e| e.location().is_some()).unwrap_or(err)
}

/// Reads at most [`MAX_CONFIG_BYTES`] of a regular file.
fn read_config(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let read_error = |source| ConfigError::Read { path: path.to_path_buf(), source };
    let mut file = open_regular(path)?;
    let size = file.metadata().map_err(read_error)?.len();
    if size > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge { path: path.to_path_buf(), size });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    (&mut file).take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        // it grew while being read
        let size = file.metadata().map_or(0, |m| m.len()).max(bytes.len() as u64);
        return Err(ConfigError::TooLarge { path: path.to_path_buf(), size });
    }
    Ok(bytes)
}

/// Opens `path` if it is a regular file. Its kind is checked before
/// opening, because opening a FIFO waits for a writer and opening a device
/// can act on it; and again on the open file, in case the path was
/// replaced in between — opened without blocking, so that a FIFO swapped in
/// cannot hold the agent either.
fn open_regular(path: &Path) -> Result<File, ConfigError> {
    let read_error = |source| ConfigError::Read { path: path.to_path_buf(), source };
    refuse_unless_regular(path, &std::fs::metadata(path).map_err(read_error)?)?;
    open_nonblocking(path)
}

fn open_nonblocking(path: &Path) -> Result<File, ConfigError> {
    let read_error = |source| ConfigError::Read { path: path.to_path_buf(), source };
    let file =
        OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).map_err(read_error)?;
    refuse_unless_regular(path, &file.metadata().map_err(read_error)?)?;
    Ok(file)
}

fn refuse_unless_regular(path: &Path, meta: &Metadata) -> Result<(), ConfigError> {
    let kind = meta.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "of an unknown kind"
    };
    Err(ConfigError::NotAFile { path: path.to_path_buf(), kind: what })
}

/// Where `bytes` stop being UTF-8, as `FILE:LINE:COLUMN`.
fn invalid_utf8(bytes: &[u8], err: &std::str::Utf8Error, origin: &str) -> ConfigError {
    let valid = &bytes[..err.valid_up_to()];
    // the prefix is valid UTF-8 by definition of valid_up_to
    let prefix = std::str::from_utf8(valid).unwrap_or_default();
    let (line, column) = guard::position(prefix, valid.len());
    let message = match (bytes, err.error_len()) {
        ([0xFF, 0xFE, ..] | [0xFE, 0xFF, ..], _) => "invalid UTF-8: the file is UTF-16 (it starts with a UTF-16 \
                                                   byte-order mark); save it as UTF-8"
            .to_string(),
        (_, Some(_)) => format!(
            "invalid UTF-8: byte 0x{:02X} is not part of a UTF-8 character; a config is UTF-8 text",
            bytes[valid.len()]
        ),
        (_, None) => "invalid UTF-8: the file ends in the middle of a character".to_string(),
    };
    ConfigError::Invalid { origin: origin.to_string(), line, column, message }
}

/// `origin:line:column: message`, with serde_yaml's own location suffix
/// moved to the front where editors and CI annotators look for it.
fn locate(err: serde_yaml::Error, origin: &str) -> ConfigError {
    let text = shorten_serde_strings(&err.to_string());
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

/// serde's own messages quote a string value whole, Rust-escaped
/// (`invalid type: string "..."`): cut past [`MAX_QUOTED_CHARS`] as
/// [`quoted`] cuts, with the value's length.
fn shorten_serde_strings(message: &str) -> String {
    const OPEN: &str = "string \"";
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find(OPEN) {
        let (head, body) = rest.split_at(at + OPEN.len());
        out.push_str(head);
        let Some(string) = EscapedString::scan(body) else {
            rest = body;
            break;
        };
        if string.chars > MAX_QUOTED_CHARS {
            out.push_str(&body[..string.cut]);
            out.push_str(&format!("…\" ({} bytes)", string.bytes));
        } else {
            out.push_str(&body[..=string.close]);
        }
        rest = &body[string.close + 1..];
    }
    out.push_str(rest);
    out
}

/// A Rust-escaped string's text up to its closing quote.
struct EscapedString {
    /// Where the closing quote is.
    close: usize,
    /// Where the first MAX_QUOTED_CHARS characters end, escapes kept whole.
    cut: usize,
    /// Its characters, an escape counting as one.
    chars: usize,
    /// The length of the string it stands for, in bytes.
    bytes: usize,
}

impl EscapedString {
    fn scan(body: &str) -> Option<Self> {
        let mut string = EscapedString { close: 0, cut: 0, chars: 0, bytes: 0 };
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            let bytes = match c {
                '"' => {
                    string.close = i;
                    return Some(string);
                }
                // \u{...} stands for one character of any length
                '\\' => match chars.next()? {
                    (_, 'u') => {
                        let hex: String = chars.by_ref().map(|(_, c)| c).take_while(|&c| c != '}').skip(1).collect();
                        u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32).map_or(1, char::len_utf8)
                    }
                    _ => 1,
                },
                c => c.len_utf8(),
            };
            string.bytes += bytes;
            string.chars += 1;
            if string.chars <= MAX_QUOTED_CHARS {
                string.cut = chars.clone().next().map_or(body.len(), |(next, _)| next);
            }
        }
        None
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("DEFAULT_LISTEN is a valid socket address")
}

fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    scalar(d, "an address such as 0.0.0.0:19477", |v| match v {
        Scalar::Str(s) => s.parse().map_err(|_| {
            format!("invalid listen address {}: expected IP:PORT, e.g. 0.0.0.0:19477 or [::]:19477", quoted(s))
        }),
        other => Err(format!("expected an address such as 0.0.0.0:19477, found {other}")),
    })
}

fn metric_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    scalar(d, "a metric name prefix", |v| match v {
        Scalar::Str(s) if s.len() > MAX_METRIC_PREFIX_BYTES => Err(format!(
            "metric_prefix {} is {} bytes, over the limit of {MAX_METRIC_PREFIX_BYTES}",
            quoted(s),
            s.len()
        )),
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

/// An absolute path. It need not exist yet: the runtime may start after sonde, and a socket that is
/// missing when containers are looked up is logged then.
fn cri_socket<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    scalar(d, "the absolute path of a CRI socket", |v| match v {
        Scalar::Str(s) if s.len() > MAX_PATH_BYTES => {
            Err(format!("cri_socket {} is {} bytes, over the limit of {MAX_PATH_BYTES}", quoted(s), s.len()))
        }
        Scalar::Str(s) if s.starts_with('/') && !s.contains('\0') => Ok(PathBuf::from(s)),
        other => Err(format!(
            "invalid cri_socket {other}: expected an absolute path such as /run/containerd/containerd.sock"
        )),
    })
}

/// The longest `cri_socket`: a unix socket's address holds at most 107 bytes.
pub const MAX_PATH_BYTES: usize = 107;

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
            if self.seen.len() >= MAX_CONST_LABELS {
                return Err(format!("at most {MAX_CONST_LABELS} constant labels are supported"));
            }
            let name_q = quoted(name);
            if name.len() > MAX_LABEL_NAME_BYTES {
                return Err(format!(
                    "label name {name_q} is {} bytes, over the limit of {MAX_LABEL_NAME_BYTES}",
                    name.len()
                ));
            }
            if !is_metric_name(name, false) || name.starts_with("__") {
                return Err(format!(
                    "invalid label name {name_q}: expected [a-zA-Z_][a-zA-Z0-9_]*, not starting with __"
                ));
            }
            if crate::metrics::SELF_LABELS.contains(&name) || self.catalog.has_label(name) {
                return Err(format!("label {name_q} is set by sonde itself and cannot be a constant label"));
            }
            if self.seen.contains_key(name) {
                return Err(format!("label {name_q} is listed twice"));
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
        if v.len() > MAX_LABEL_VALUE_BYTES {
            return Err(E::custom(format!(
                "label value {} is {} bytes, over the limit of {MAX_LABEL_VALUE_BYTES}",
                quoted(v),
                v.len()
            )));
        }
        Ok(v.to_string())
    }
}

#[cfg(test)]
mod tests;
