//! The built-in probes. Each is one `src/bpf/<probe>.bpf.c` and one module
//! here; the module is the only code that knows its skeleton. A probe
//! describes itself as data (`ProbeSpec`) and turns its events into metric
//! updates (`EventSink`).

mod exec;
mod exit;
mod file_open;
pub mod syscalls;
mod vfs_io;

use crate::config::ProbeConfig;
use crate::events::EventSink;
use crate::loader::{LoadContext, LoadError, Loaded};
use crate::metrics::{Build, Counter, Family, Histogram, Metrics, SeriesCache};

/// How a program hooks into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookKind {
    Tracepoint,
    /// BTF-typed raw tracepoint (`tp_btf`).
    BtfTracepoint,
    Kprobe,
    Fentry,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Tracepoint => "tracepoint",
            HookKind::BtfTracepoint => "tp_btf",
            HookKind::Kprobe => "kprobe",
            HookKind::Fentry => "fentry",
        }
    }
}

/// One way of hooking a probe in: the programs to load for it.
#[derive(Debug)]
pub struct HookSpec {
    pub kind: HookKind,
    /// (BPF program name, the kernel hook it attaches to)
    pub programs: &'static [(&'static str, &'static str)],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Histogram,
}

#[derive(Debug)]
pub struct MetricSpec {
    /// Name without the configured prefix.
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
}

#[derive(Debug)]
pub struct ProbeSpec {
    pub name: &'static str,
    pub summary: &'static str,
    /// Alternatives in order of preference; `hook: auto` takes the first
    /// that loads and attaches.
    pub hooks: &'static [HookSpec],
    pub metrics: &'static [MetricSpec],
    /// Every label its metrics can carry.
    pub labels: &'static [&'static str],
    pub default_labels: &'static [&'static str],
    /// Ring buffer room per CPU at the probe's expected event rate, for
    /// rings sized automatically (`ring_buffer.size_bytes` unset).
    pub ring_bytes_per_cpu: u32,
}

impl ProbeSpec {
    pub fn has_histogram(&self) -> bool {
        self.metrics.iter().any(|m| m.kind == MetricKind::Histogram)
    }

    pub fn hook(&self, kind: HookKind) -> Option<&'static HookSpec> {
        self.hooks.iter().find(|h| h.kind == kind)
    }
}

pub type MakeSink = fn(&ProbeConfig, &Metrics) -> Result<Box<dyn EventSink>, prometheus::Error>;

/// What a probe module provides.
pub struct Probe {
    pub spec: &'static ProbeSpec,
    /// Opens, loads and attaches the probe's programs for one hook.
    pub load: fn(&ProbeConfig, &'static HookSpec, &LoadContext) -> Result<Loaded, LoadError>,
    /// Registers the probe's metrics and returns what turns events into updates.
    pub sink: MakeSink,
}

pub static PROBES: &[Probe] = &[exec::PROBE, exit::PROBE, file_open::PROBE, syscalls::PROBE, vfs_io::PROBE];

pub fn find(name: &str) -> Option<&'static ProbeSpec> {
    probe(name).map(|p| p.spec)
}

pub fn probe(name: &str) -> Option<&'static Probe> {
    PROBES.iter().find(|p| p.spec.name == name)
}

pub fn names() -> Vec<&'static str> {
    PROBES.iter().map(|p| p.spec.name).collect()
}

/// Labels that sonde sets itself, which constant labels may not shadow.
pub fn reserved_label(name: &str) -> bool {
    crate::metrics::SELF_LABELS.contains(&name) || PROBES.iter().any(|p| p.spec.labels.contains(&name))
}

/// The metric cells a probe updates per label set, one per metric in its
/// spec, in order.
pub trait Handles: Sized + 'static {
    fn build(metrics: &Metrics, specs: &[MetricSpec], config: &ProbeConfig) -> prometheus::Result<Build<Self>>;
}

fn counter(metrics: &Metrics, spec: &MetricSpec, config: &ProbeConfig) -> prometheus::Result<Family<Counter>> {
    metrics.counter_family(spec.name, spec.help, &config.labels)
}

fn histogram(metrics: &Metrics, spec: &MetricSpec, config: &ProbeConfig) -> prometheus::Result<Family<Histogram>> {
    metrics.histogram_family(spec.name, spec.help, &config.labels, config.buckets.bounds())
}

impl Handles for Counter {
    fn build(metrics: &Metrics, specs: &[MetricSpec], config: &ProbeConfig) -> prometheus::Result<Build<Self>> {
        let family = counter(metrics, &specs[0], config)?;
        Ok(Box::new(move |values: &[String]| family.child(values)))
    }
}

impl Handles for (Counter, Counter) {
    fn build(metrics: &Metrics, specs: &[MetricSpec], config: &ProbeConfig) -> prometheus::Result<Build<Self>> {
        let (a, b) = (counter(metrics, &specs[0], config)?, counter(metrics, &specs[1], config)?);
        Ok(Box::new(move |values: &[String]| (a.child(values), b.child(values))))
    }
}

impl Handles for (Counter, Histogram) {
    fn build(metrics: &Metrics, specs: &[MetricSpec], config: &ProbeConfig) -> prometheus::Result<Build<Self>> {
        let (a, b) = (counter(metrics, &specs[0], config)?, histogram(metrics, &specs[1], config)?);
        Ok(Box::new(move |values: &[String]| (a.child(values), b.child(values))))
    }
}

/// Registers `spec`'s metrics with the configured labels and returns the
/// cache that resolves their cells once per label set.
pub fn series<K: std::hash::Hash + Eq, H: Handles>(
    metrics: &Metrics,
    spec: &ProbeSpec,
    config: &ProbeConfig,
) -> prometheus::Result<SeriesCache<K, H>> {
    let build = H::build(metrics, spec.metrics, config)?;
    let names: Vec<&str> = spec.metrics.iter().map(|m| m.name).collect();
    Ok(metrics.series_cache(&names, config.labels.len(), build))
}

/// `comm` bytes up to the first NUL, as the label value.
pub fn comm_str(comm: &[i8; 16]) -> String {
    let bytes: Vec<u8> = comm.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `comm` as a hashable key: the bytes up to the first NUL, zero after it.
/// The kernel may leave bytes of an earlier, longer name behind the NUL,
/// and two keys for one label value would make two series of one name.
///
/// One 16-byte load and a mask, rather than a byte loop: a key built byte
/// by byte on the stack and then read as a whole stalls the hot path.
#[inline]
pub fn comm_key(comm: &[i8; 16]) -> u128 {
    let v = u128::from_le_bytes(comm.map(|c| c as u8));
    const ONES: u128 = u128::MAX / 255; // 0x0101...01
    const HIGHS: u128 = ONES << 7; // 0x8080...80
                                   // The lowest set bit marks the first zero byte (bits above it may be
                                   // wrong, and do not matter).
    let zeros = v.wrapping_sub(ONES) & !v & HIGHS;
    if zeros == 0 {
        return v;
    }
    let first_zero_byte = zeros.trailing_zeros() / 8;
    v & ((1u128 << (first_zero_byte * 8)) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_labels_sane() {
        let mut names = names();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PROBES.len());
        for p in PROBES {
            assert!(!p.spec.hooks.is_empty(), "{} has no hook", p.spec.name);
            for l in p.spec.default_labels {
                assert!(p.spec.labels.contains(l), "{}: default label {l} not in labels", p.spec.name);
            }
        }
    }

    /// Each probe's handles match its declared metrics (the `Handles`
    /// impls index the spec's metrics), with default and with no labels.
    #[test]
    fn every_sink_builds_its_declared_metrics() {
        for probe in PROBES {
            for labels in ["", "\n    labels: []"] {
                let yaml = format!("probes:\n  {}:{labels}\n", probe.spec.name);
                let config = crate::config::Config::parse(&yaml, "test.yaml").expect("valid config");
                let metrics = Metrics::new(&config).expect("metrics");
                assert!((probe.sink)(&config.probes[0], &metrics).is_ok(), "{}: sink", probe.spec.name);
            }
        }
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut comm = [0i8; 16];
        for (i, b) in b"bash".iter().enumerate() {
            comm[i] = *b as i8;
        }
        comm[6] = b'x' as i8;
        assert_eq!(comm_str(&comm), "bash");
        assert_eq!(comm_key(&comm), u128::from_le_bytes(*b"bash\0\0\0\0\0\0\0\0\0\0\0\0"), "bytes after the NUL");
        let full = [b'x' as i8; 16];
        assert_eq!(comm_key(&full), u128::from_le_bytes([b'x'; 16]));
        assert_eq!(comm_key(&[0; 16]), 0);
        // bytes of 0x01 and 0x81 next to a NUL are where the zero-byte
        // trick can misfire; the key must still end at the first NUL
        let mut tricky = [0i8; 16];
        tricky[0] = 1;
        tricky[1] = 0;
        tricky[2] = 1;
        tricky[3] = -127;
        assert_eq!(comm_key(&tricky), 1);
    }
}
