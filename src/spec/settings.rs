//! A configured probe: the spec it instantiates and the user's choices for
//! it. Plain data, compared as a whole to decide what a reload changes.

use std::sync::Arc;

use super::{HookKind, ProbeSpec, Unit};

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSettings {
    pub spec: Arc<ProbeSpec>,
    /// The labels its metrics carry, a subset of the spec's, in config order.
    pub labels: Vec<String>,
    pub filter: Filter,
    pub buckets: Buckets,
    pub hook: HookChoice,
    /// Count in the kernel and read the counts at scrape time, rather than
    /// send a ring buffer record per event.
    pub aggregate: bool,
}

impl ProbeSettings {
    pub fn defaults(spec: Arc<ProbeSpec>) -> Self {
        Self {
            aggregate: spec.kernel_aggregation,
            labels: spec.default_labels.clone(),
            spec,
            filter: Filter::default(),
            buckets: Buckets::Exp2,
            hook: HookChoice::Auto,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn has_label(&self, label: &str) -> bool {
        self.labels.iter().any(|l| l == label)
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

/// Histogram bucket upper bounds, in the histogram's base unit (seconds or
/// bytes) as exported.
#[derive(Debug, Clone, PartialEq)]
pub enum Buckets {
    /// Powers of two over the range the unit usually spans: 1 µs to ~8.4 s
    /// for durations, 1 B to 1 GiB for sizes, 1 to ~8.4 million for counts.
    Exp2,
    /// `count` bounds `start, start + width, …`.
    Linear { start: f64, width: f64, count: usize },
    /// Listed bounds.
    Explicit(Vec<f64>),
}

impl Buckets {
    /// Upper bounds in `unit`'s base unit.
    pub fn bounds(&self, unit: Unit) -> Vec<f64> {
        match self {
            Buckets::Exp2 => match unit {
                Unit::Seconds => (0..24).map(|i| 1e-6 * f64::from(1u32 << i)).collect(),
                Unit::Bytes => (0..31).map(|i| f64::from(1u32 << i)).collect(),
                Unit::None => (0..24).map(|i| f64::from(1u32 << i)).collect(),
            },
            Buckets::Linear { start, width, count } => (0..*count).map(|i| start + width * i as f64).collect(),
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
