//! Every metric sonde exports, behind one registry that knows every family
//! name and refuses clashes: sonde's own metrics (the `prometheus` crate)
//! and each probe's families (single-writer cells with their own encoder).

mod cells;
mod family;
mod selfmetrics;
mod series;

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::TextEncoder;

pub use cells::{Cells, Layout};
pub use family::{escape, FamilyError, ProbeFamilies, RenderLabels};
pub use selfmetrics::{SelfMetrics, SELF_LABELS};
pub use series::{Entry, Key, Limits, Published, SeriesTable, TableCounters};

use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metric `{name}` of probe `{probe}` clashes with {other}")]
    Clash { probe: String, name: String, other: String },
    #[error(transparent)]
    Prometheus(#[from] prometheus::Error),
    #[error(transparent)]
    Family(#[from] FamilyError),
}

pub struct Registry {
    prefix: String,
    const_labels: Vec<(String, String)>,
    prom: prometheus::Registry,
    /// Names of sonde's own families, and every name their samples use.
    self_names: Vec<String>,
    probes: Mutex<Vec<Arc<ProbeFamilies>>>,
    /// The size of the last scrape's text, plus room to grow.
    last_len: std::sync::atomic::AtomicUsize,
    pub agent: SelfMetrics,
}

impl Registry {
    pub fn new(prefix: &str, const_labels: &BTreeMap<String, String>) -> Result<Registry, MetricsError> {
        let prom = prometheus::Registry::new();
        let (agent, self_names) = SelfMetrics::register(&prom, prefix, const_labels)?;
        Ok(Registry {
            prefix: prefix.to_string(),
            const_labels: const_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            prom,
            self_names,
            probes: Mutex::new(Vec::new()),
            last_len: std::sync::atomic::AtomicUsize::new(0),
            agent,
        })
    }

    /// The full name a metric is exported under.
    pub fn full_name(&self, name: &str) -> String {
        format!("{}_{}", self.prefix, name)
    }

    pub fn const_labels(&self) -> &[(String, String)] {
        &self.const_labels
    }

    /// Adds a probe's families; refused if any name (or a histogram's
    /// `_bucket`/`_sum`/`_count` series) is already taken.
    pub fn add_probe(&self, families: Arc<ProbeFamilies>) -> Result<(), MetricsError> {
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        for name in families.names() {
            let clash = |taken: &str| sample_names(name).iter().any(|n| sample_names(taken).contains(n));
            if let Some(other) = self.self_names.iter().find(|n| clash(n)) {
                return Err(MetricsError::Clash {
                    probe: families.probe().into(),
                    name: name.into(),
                    other: format!("sonde's own `{other}`"),
                });
            }
            for p in probes.iter() {
                if let Some(other) = p.names().find(|n| clash(n)) {
                    return Err(MetricsError::Clash {
                        probe: families.probe().into(),
                        name: name.into(),
                        other: format!("`{other}` of probe `{}`", p.probe()),
                    });
                }
            }
        }
        probes.push(families);
        Ok(())
    }

    /// Removes a probe's families: its series are gone from the next scrape.
    pub fn remove_probe(&self, probe: &str) {
        self.probes.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| p.probe() != probe);
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        // As large as the last scrape, so that the text is not copied as it
        // grows.
        let mut out = String::with_capacity(self.last_len.load(std::sync::atomic::Ordering::Relaxed).max(64 * 1024));
        TextEncoder::new().encode_utf8(&self.prom.gather(), &mut out)?;
        let probes: Vec<Arc<ProbeFamilies>> = self.probes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut order: Vec<(&str, &ProbeFamilies, usize)> =
            probes.iter().flat_map(|p| (0..p.metric_count()).map(move |i| (p.metric_name(i), &**p, i))).collect();
        order.sort_by(|a, b| a.0.cmp(b.0));
        for (_, families, index) in order {
            families.encode(index, &mut out);
        }
        self.last_len.store(out.len() + out.len() / 8, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }
}

/// Every sample name a family of `name` may use (a counter's own name, or
/// a histogram's series): a family named `x_count` would clash with the
/// `_count` series of a histogram `x`.
fn sample_names(name: &str) -> [String; 4] {
    [name.to_string(), format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count")]
}

fn libbpf_version() -> String {
    // SAFETY: both only return constants compiled into libbpf.
    let (major, minor) =
        unsafe { (libbpf_rs::libbpf_sys::libbpf_major_version(), libbpf_rs::libbpf_sys::libbpf_minor_version()) };
    format!("{major}.{minor}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{MetricSpec, Unit};

    struct NoLabels;
    impl RenderLabels for NoLabels {
        fn values(&self, _: &Key) -> Option<Vec<String>> {
            Some(Vec::new())
        }
    }

    fn families(probe: &str, specs: &[MetricSpec]) -> Arc<ProbeFamilies> {
        let layout = Arc::new(Layout::new(specs, &crate::spec::Buckets::Explicit(vec![1.0])));
        Arc::new(
            ProbeFamilies::new(
                probe,
                specs,
                specs.iter().map(|s| format!("sonde_{}", s.name)).collect(),
                vec![],
                0,
                &[],
                layout,
                Arc::new(Published::default()),
                Arc::new(NoLabels),
            )
            .expect("families"),
        )
    }

    #[test]
    fn clashing_names_are_refused() {
        let registry = Registry::new("sonde", &BTreeMap::new()).expect("registry");
        registry.add_probe(families("a", &[MetricSpec::histogram("lat", Unit::Seconds, "h")])).expect("first");
        let err = registry.add_probe(families("b", &[MetricSpec::counter("lat_count", "c")]));
        assert!(matches!(err, Err(MetricsError::Clash { .. })), "histogram series clash");
        let err = registry.add_probe(families("c", &[MetricSpec::counter("probe_up", "c")]));
        assert!(matches!(err, Err(MetricsError::Clash { .. })), "self-metric clash");
        registry.remove_probe("a");
        registry.add_probe(families("b", &[MetricSpec::counter("lat_count", "c")])).expect("after removal");
    }
}
