//! What a probe *is*, as plain run-time data: its hooks and their
//! alternatives, the metrics it produces, the labels they can carry and
//! where each label's value comes from. Built by code for the built-in
//! probes; nothing here knows how a probe is loaded or read.

pub mod custom;
mod settings;

use std::sync::Arc;

pub use custom::{CustomProbe, HookPoint, HookSchemas};
pub use settings::{Buckets, Filter, HookChoice, ProbeSettings};

/// How a program hooks into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// One BPF program of a hook and the kernel hook point it attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramSpec {
    pub program: String,
    pub target: String,
    /// Loaded only where its kernel function exists (say, a filesystem's,
    /// whose module may not be loaded); the hook works without it.
    pub optional: bool,
}

/// One way of hooking a probe in: the programs to load for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSpec {
    pub kind: HookKind,
    pub programs: Vec<ProgramSpec>,
}

/// What a hook costs the traced system, as measured (docs/probes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookCost {
    /// Runs only when the hooked event happens.
    PerEvent,
    /// A system call tracepoint: while it is attached, every system call of
    /// every task takes the kernel's slower syscall path (about 260–400 ns
    /// a call on the benchmark machine), whatever the program does.
    SyscallSlowPath,
}

impl HookCost {
    pub fn describe(self) -> &'static str {
        match self {
            HookCost::PerEvent => "per event: runs only when the hooked event happens",
            HookCost::SyscallSlowPath => "syscall slow path: every system call of every task pays while attached",
        }
    }
}

impl HookSpec {
    /// Syscall tracepoints (`syscalls/*`, `raw_syscalls/*`, as tracepoints
    /// or BTF raw tracepoints) set the syscall-trace flag on every task.
    pub fn cost(&self) -> HookCost {
        let syscall_tracepoint = matches!(self.kind, HookKind::Tracepoint | HookKind::BtfTracepoint)
            && self.programs.iter().any(|p| p.target.starts_with("syscalls/") || p.target.starts_with("raw_syscalls/"));
        if syscall_tracepoint {
            HookCost::SyscallSlowPath
        } else {
            HookCost::PerEvent
        }
    }

    /// `programs`: (BPF program name, hook point) pairs.
    pub fn new(kind: HookKind, programs: &[(&str, &str)]) -> Self {
        HookSpec { kind, programs: program_specs(programs, false) }
    }

    /// Adds programs that are loaded only where their kernel function
    /// exists: the hook attaches what exists and reports the rest absent.
    pub fn optional(mut self, programs: &[(&str, &str)]) -> Self {
        self.programs.extend(program_specs(programs, true));
        self
    }
}

fn program_specs(programs: &[(&str, &str)], optional: bool) -> Vec<ProgramSpec> {
    programs.iter().map(|(p, t)| ProgramSpec { program: p.to_string(), target: t.to_string(), optional }).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Histogram,
    /// A level that goes up and down: events add signed deltas (as
    /// two's-complement u64) and the sum is exported as a signed number.
    Gauge,
}

/// What a metric's observed values measure. Durations are observed in
/// nanoseconds and exported in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
    /// A plain count.
    None,
}

impl Unit {
    /// Multiplies an observed value into the exported base unit.
    pub fn scale(self) -> f64 {
        match self {
            Unit::Seconds => 1e-9,
            Unit::Bytes | Unit::None => 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSpec {
    /// Name without the configured prefix.
    pub name: String,
    pub kind: MetricKind,
    pub unit: Unit,
    pub help: String,
}

impl MetricSpec {
    pub fn counter(name: &str, help: &str) -> Self {
        MetricSpec { name: name.into(), kind: MetricKind::Counter, unit: Unit::None, help: help.into() }
    }

    pub fn gauge(name: &str, help: &str) -> Self {
        MetricSpec { name: name.into(), kind: MetricKind::Gauge, unit: Unit::None, help: help.into() }
    }

    pub fn histogram(name: &str, unit: Unit, help: &str) -> Self {
        MetricSpec { name: name.into(), kind: MetricKind::Histogram, unit, help: help.into() }
    }
}

/// Where a label's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelSource {
    /// The common record header every probe writes (`comm`, `pid`).
    Header,
    /// The probe's own event, decoded by the probe.
    Event,
    /// An enricher, from the cgroup id in the record header.
    Cgroup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSpec {
    pub name: String,
    pub source: LabelSource,
}

/// Labels every probe can carry, from the record header or an enricher.
pub const COMMON_LABELS: &[(&str, LabelSource)] = &[
    ("comm", LabelSource::Header),
    ("pid", LabelSource::Header),
    ("cgroup", LabelSource::Cgroup),
    ("container_id", LabelSource::Cgroup),
    ("container", LabelSource::Cgroup),
    ("pod", LabelSource::Cgroup),
    ("namespace", LabelSource::Cgroup),
    ("service", LabelSource::Cgroup),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub name: String,
    pub summary: String,
    /// Alternatives in order of preference; `hook: auto` takes the first
    /// that loads and attaches.
    pub hooks: Vec<HookSpec>,
    /// Every metric gets one value per event, in this order.
    pub metrics: Vec<MetricSpec>,
    /// Every label its metrics can carry: the common labels, then the
    /// probe's own event labels.
    pub labels: Vec<LabelSpec>,
    pub default_labels: Vec<String>,
    /// Ring buffer room per CPU at the probe's expected event rate, for
    /// rings sized automatically (`ring_buffer.size_bytes` unset).
    pub ring_bytes_per_cpu: u32,
    /// Whether its programs can aggregate in the kernel instead of sending
    /// a record per event (and do so by default).
    pub kernel_aggregation: bool,
    /// Aggregated events whose key is a number below this (and no task
    /// label) are counted in an array rather than a hash: 0 for none.
    pub direct_event_keys: u32,
    /// For a probe defined in the config, what its generic program reads.
    pub custom: Option<CustomProbe>,
}

impl ProbeSpec {
    /// A spec whose labels are the common ones plus `event_labels`.
    pub fn new(name: &str, summary: &str, event_labels: &[&str], default_labels: &[&str]) -> Self {
        let mut labels: Vec<LabelSpec> =
            COMMON_LABELS.iter().map(|(n, source)| LabelSpec { name: n.to_string(), source: *source }).collect();
        labels.extend(event_labels.iter().map(|n| LabelSpec { name: n.to_string(), source: LabelSource::Event }));
        ProbeSpec {
            name: name.into(),
            summary: summary.into(),
            hooks: Vec::new(),
            metrics: Vec::new(),
            labels,
            default_labels: default_labels.iter().map(|l| l.to_string()).collect(),
            ring_bytes_per_cpu: 16 << 10,
            kernel_aggregation: false,
            direct_event_keys: 0,
            custom: None,
        }
    }

    pub fn hook(mut self, hook: HookSpec) -> Self {
        self.hooks.push(hook);
        self
    }

    pub fn metric(mut self, metric: MetricSpec) -> Self {
        self.metrics.push(metric);
        self
    }

    pub fn ring_bytes_per_cpu(mut self, bytes: u32) -> Self {
        self.ring_bytes_per_cpu = bytes;
        self
    }

    /// Aggregates in the kernel by default (see `ProbeSettings::aggregate`);
    /// event keys below `direct_keys` index an array instead of a hash.
    pub fn aggregated_in_kernel(mut self, direct_keys: u32) -> Self {
        self.kernel_aggregation = true;
        self.direct_event_keys = direct_keys;
        self
    }

    pub fn has_histogram(&self) -> bool {
        self.metrics.iter().any(|m| m.kind == MetricKind::Histogram)
    }

    pub fn hook_of(&self, kind: HookKind) -> Option<&HookSpec> {
        self.hooks.iter().find(|h| h.kind == kind)
    }

    pub fn label(&self, name: &str) -> Option<&LabelSpec> {
        self.labels.iter().find(|l| l.name == name)
    }

    /// The probe's own event labels, in the order its decoder numbers them.
    pub fn event_labels(&self) -> impl Iterator<Item = &LabelSpec> {
        self.labels.iter().filter(|l| l.source == LabelSource::Event)
    }

    pub fn label_names(&self) -> Vec<&str> {
        self.labels.iter().map(|l| l.name.as_str()).collect()
    }
}

/// Every probe spec the agent knows, by name: what config validation looks
/// probes up in.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    specs: Vec<Arc<ProbeSpec>>,
    /// Where config-defined probes find their hook's fields; None: such
    /// probes are refused.
    schemas: Option<Arc<dyn HookSchemas>>,
}

impl Catalog {
    pub fn new(specs: Vec<Arc<ProbeSpec>>) -> Self {
        Catalog { specs, schemas: None }
    }

    pub fn with_schemas(mut self, schemas: Arc<dyn HookSchemas>) -> Self {
        self.schemas = Some(schemas);
        self
    }

    pub fn schemas(&self) -> Option<&dyn HookSchemas> {
        self.schemas.as_deref()
    }

    pub fn find(&self, name: &str) -> Option<&Arc<ProbeSpec>> {
        self.specs.iter().find(|s| s.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.specs.iter().map(|s| s.name.as_str()).collect()
    }

    pub fn specs(&self) -> &[Arc<ProbeSpec>] {
        &self.specs
    }

    /// Whether some probe's metrics can carry label `name`.
    pub fn has_label(&self, name: &str) -> bool {
        self.specs.iter().any(|s| s.label(name).is_some())
    }
}
