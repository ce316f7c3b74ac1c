//! The machinery every probe shares between its decoder and its metrics:
//! the record header becomes the common part of the series key, the probe's
//! decoder the rest, and the series table counts; at scrape time the key
//! is rendered back into label values, from the header, the decoder or an
//! enricher.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::decode::{decode, header_comm, DecodeError, Decoder, Header};
use crate::enrich::Enricher;
use crate::labels::{comm_key, render_comm_key};
use crate::metrics::{
    Key, Layout, Limits, MetricsError, ProbeFamilies, Registry, RenderLabels, SeriesTable, TableCounters,
};
use crate::ring::Sink;
use crate::spec::{LabelSource, ProbeSettings};

/// Where each configured label's value comes from.
enum LabelPart {
    Comm,
    Pid,
    Event(String),
    Enriched { enricher: Arc<dyn Enricher>, index: usize },
}

struct LabelPlan {
    parts: Vec<LabelPart>,
    decoder: Arc<dyn Decoder>,
}

impl RenderLabels for LabelPlan {
    fn values(&self, key: &Key) -> Vec<String> {
        self.parts
            .iter()
            .map(|part| match part {
                LabelPart::Comm => render_comm_key(key.comm),
                LabelPart::Pid => key.pid.to_string(),
                LabelPart::Event(label) => self.decoder.label(label, key.event),
                // Unknown (a cgroup gone before it could be resolved):
                // empty, which Prometheus reads as no label at all.
                LabelPart::Enriched { enricher, index } => {
                    enricher.resolve(key.cgroup).and_then(|values| values.get(*index).cloned()).unwrap_or_default()
                }
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("label `{0}` needs an enricher that is not available: {1}")]
    Enricher(String, String),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Finds the enricher for a cgroup-derived label.
pub trait EnricherSource {
    fn enricher_for(&self, label: &str) -> Result<(Arc<dyn Enricher>, usize), String>;
}

/// One running probe's event path: records in, series out.
pub struct ProbeSink {
    decoder: Arc<dyn Decoder>,
    key_comm: bool,
    key_pid: bool,
    key_cgroup: bool,
    table: SeriesTable,
    /// Told about each new cgroup id, so they resolve it while it exists.
    enrichers: Vec<Arc<dyn Enricher>>,
    sweep_every: Option<Duration>,
    next_sweep: Instant,
}

impl ProbeSink {
    /// Sets up a configured probe's series and families, and registers the
    /// families (name clashes are refused there).
    pub fn new(
        settings: &ProbeSettings,
        decoder: Arc<dyn Decoder>,
        registry: &Registry,
        limits: Limits,
        enrichers: &dyn EnricherSource,
    ) -> Result<(ProbeSink, Arc<ProbeFamilies>), SinkError> {
        let spec = &settings.spec;
        let mut parts = Vec::new();
        let mut notify: Vec<Arc<dyn Enricher>> = Vec::new();
        for label in &settings.labels {
            let source = spec.label(label).map(|l| l.source).unwrap_or(LabelSource::Event);
            parts.push(match (source, label.as_str()) {
                (LabelSource::Header, "pid") => LabelPart::Pid,
                (LabelSource::Header, _) => LabelPart::Comm,
                (LabelSource::Event, _) => LabelPart::Event(label.clone()),
                (LabelSource::Cgroup, _) => {
                    let (enricher, index) =
                        enrichers.enricher_for(label).map_err(|why| SinkError::Enricher(label.clone(), why))?;
                    if !notify.iter().any(|e| Arc::ptr_eq(e, &enricher)) {
                        notify.push(enricher.clone());
                    }
                    LabelPart::Enriched { enricher, index }
                }
            });
        }
        let key_cgroup = parts.iter().any(|p| matches!(p, LabelPart::Enriched { .. }));
        let key_comm = parts.iter().any(|p| matches!(p, LabelPart::Comm));
        let key_pid = parts.iter().any(|p| matches!(p, LabelPart::Pid));
        let names: Vec<String> = spec.metrics.iter().map(|m| registry.full_name(&m.name)).collect();
        let agent = &registry.agent;
        let counters = TableCounters {
            dropped: names.iter().map(|n| agent.series_dropped.with_label_values(&[n])).collect(),
            expired: names.iter().map(|n| agent.series_expired.with_label_values(&[n])).collect(),
        };
        let layout = Arc::new(Layout::new(&spec.metrics, &settings.buckets.bounds()));
        let table = SeriesTable::new(layout.clone(), limits, counters);
        let label_count = parts.len();
        let plan = LabelPlan { parts, decoder: decoder.clone() };
        let families = Arc::new(
            ProbeFamilies::new(
                &spec.name,
                &spec.metrics,
                names,
                settings.labels.clone(),
                label_count,
                registry.const_labels(),
                layout,
                table.published(),
                Arc::new(plan),
            )
            .map_err(MetricsError::from)?,
        );
        registry.add_probe(families.clone())?;
        let sweep_every = limits.sweep_interval();
        let sink = ProbeSink {
            decoder,
            key_comm,
            key_pid,
            key_cgroup,
            table,
            enrichers: notify,
            sweep_every,
            next_sweep: Instant::now() + sweep_every.unwrap_or_default(),
        };
        Ok((sink, families))
    }
}

impl Sink for ProbeSink {
    #[inline]
    fn handle(&mut self, record: &[u8]) -> Result<(), DecodeError> {
        let header: &Header = decode(record)?;
        let decoded = self.decoder.decode(record)?;
        let key = Key {
            comm: if self.key_comm { comm_key(&header_comm(header)) } else { 0 },
            cgroup: if self.key_cgroup { header.cgroup_id } else { 0 },
            event: decoded.key,
            pid: if self.key_pid { header.tgid } else { 0 },
        };
        if self.table.record(key, &decoded.values) {
            for enricher in &self.enrichers {
                enricher.notice(key.cgroup);
            }
        }
        Ok(())
    }

    fn tick(&mut self, now: Instant) {
        let Some(every) = self.sweep_every else { return };
        if now >= self.next_sweep {
            self.table.sweep(now);
            self.next_sweep = now + every;
        }
    }
}
