//! The Prometheus registry with sonde's naming (prefix, constant labels),
//! the self-metrics, and the per-probe series cache.

pub mod local;
mod series;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use local::Encode;
pub use local::{Counter, Family, Histogram};
pub use series::{Build, SeriesCache};

use crate::config::Config;

/// Label names used by the self-metrics.
pub const SELF_LABELS: &[&str] = &["probe", "hook", "stage", "metric", "version", "libbpf", "program"];

pub struct Metrics {
    registry: Registry,
    prefix: String,
    const_labels: BTreeMap<String, String>,
    /// Probe metrics and events_received, rendered after the registry.
    families: Mutex<Vec<Arc<dyn Encode>>>,
    pub series_limit: usize,
    pub agent: SelfMetrics,
}

/// What sonde reports about itself.
pub struct SelfMetrics {
    pub probe_up: IntGaugeVec,
    pub probe_errors: IntCounterVec,
    pub events_received: Family<Counter>,
    pub events_lost: IntCounterVec,
    pub decode_errors: IntCounterVec,
    pub series_dropped: IntCounterVec,
    pub prog_run_count: IntCounterVec,
    pub prog_run_seconds: prometheus::CounterVec,
}

impl Metrics {
    pub fn new(config: &Config) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let prefix = config.metric_prefix.clone();
        let const_labels = config.const_labels.clone();
        let hashed: HashMap<String, String> = const_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(&prefix).const_labels(hashed.clone());
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(opts(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(opts(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let prog_run_seconds = prometheus::CounterVec::new(
            opts("bpf_prog_run_seconds_total", "Kernel time spent running the program (needs BPF stats on)."),
            &["probe", "program"],
        )?;
        registry.register(Box::new(prog_run_seconds.clone()))?;
        let agent = SelfMetrics {
            probe_up: gauge(
                "probe_up",
                "1 if the probe is attached, with the hook it uses; 0 if it failed.",
                &["probe", "hook"],
            )?,
            probe_errors: counter(
                "probe_errors_total",
                "Probe load and attach failures, by stage.",
                &["probe", "stage"],
            )?,
            events_received: Family::new(
                &format!("{prefix}_events_received_total"),
                "Events read from the probe's ring buffer.",
                &["probe"],
                &const_labels,
                Vec::new(),
            )?,
            events_lost: counter(
                "events_lost_total",
                "Events the probe produced but its ring buffer had no room for.",
                &["probe"],
            )?,
            decode_errors: counter("decode_errors_total", "Events that could not be decoded.", &["probe"])?,
            series_dropped: counter(
                "series_dropped_total",
                "Label sets folded into the overflow series by the series limit.",
                &["metric"],
            )?,
            prog_run_count: counter(
                "bpf_prog_runs_total",
                "Times the kernel ran the program (needs BPF stats on).",
                &["probe", "program"],
            )?,
            prog_run_seconds,
        };
        let build_info =
            gauge("build_info", "sonde's version and the libbpf it was built with.", &["version", "libbpf"])?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), &libbpf_version()]).set(1);
        let families: Vec<Arc<dyn Encode>> = vec![Arc::new(agent.events_received.clone())];
        Ok(Metrics {
            registry,
            prefix,
            const_labels,
            families: Mutex::new(families),
            series_limit: config.series_limit,
            agent,
        })
    }

    /// The full name a metric is exported under.
    pub fn full_name(&self, name: &str) -> String {
        format!("{}_{}", self.prefix, name)
    }

    /// A counter family written by the event reader thread only.
    pub fn counter_family(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<Family<Counter>, prometheus::Error> {
        let family = Family::new(&self.full_name(name), help, labels, &self.const_labels, Vec::new())?;
        self.add_family(Arc::new(family.clone()))?;
        Ok(family)
    }

    /// A duration histogram family (bounds in seconds) written by the event
    /// reader thread only.
    pub fn histogram_family(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        bounds: Vec<f64>,
    ) -> Result<Family<Histogram>, prometheus::Error> {
        let family = Family::new(&self.full_name(name), help, labels, &self.const_labels, bounds)?;
        self.add_family(Arc::new(family.clone()))?;
        Ok(family)
    }

    fn add_family(&self, family: Arc<dyn Encode>) -> Result<(), prometheus::Error> {
        let mut families = self.families.lock().map_err(|_| prometheus::Error::Msg("metrics lock poisoned".into()))?;
        if families.iter().any(|f| f.name() == family.name()) {
            return Err(prometheus::Error::AlreadyReg);
        }
        families.push(family);
        families.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(())
    }

    /// A cache of label sets for metrics `names` (unprefixed) carrying
    /// `label_count` labels, bounded by the configured series limit.
    pub fn series_cache<K: std::hash::Hash + Eq, H>(
        &self,
        names: &[&str],
        label_count: usize,
        build: series::Build<H>,
    ) -> SeriesCache<K, H> {
        let dropped =
            names.iter().map(|n| self.agent.series_dropped.with_label_values(&[&self.full_name(n)])).collect();
        SeriesCache::new(self.series_limit, label_count, build, dropped)
    }

    /// Everything in the Prometheus text format.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut out = String::with_capacity(64 * 1024);
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)?;
        let families = self.families.lock().map_err(|_| prometheus::Error::Msg("metrics lock poisoned".into()))?;
        for family in families.iter() {
            family.encode(&mut out);
        }
        Ok(out)
    }
}

fn libbpf_version() -> String {
    // SAFETY: both only return constants compiled into libbpf.
    let (major, minor) =
        unsafe { (libbpf_rs::libbpf_sys::libbpf_major_version(), libbpf_rs::libbpf_sys::libbpf_minor_version()) };
    format!("{major}.{minor}")
}

/// The label values for `wanted` labels, in order, taken from `value`.
pub fn label_values(wanted: &[&'static str], mut value: impl FnMut(&str) -> String) -> Vec<String> {
    wanted.iter().map(|l| value(l)).collect()
}
