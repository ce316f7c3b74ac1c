//! The machinery every probe shares between its decoder and its metrics:
//! the record header becomes the common part of the series key, the probe's
//! decoder the rest, and the series table counts; at scrape time the key
//! is rendered back into label values, from the header, the decoder or an
//! enricher.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapHandle};

use crate::decode::{decode, header_comm, AggKey, DecodeError, Decoder, Header};
use crate::enrich::{Enricher, Resolution};
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
    fn values(&self, key: &Key) -> Option<Vec<String>> {
        self.parts
            .iter()
            .map(|part| match part {
                LabelPart::Comm => Some(render_comm_key(key.comm)),
                LabelPart::Pid => Some(key.pid.to_string()),
                LabelPart::Event(label) => Some(self.decoder.label(label, key.event)),
                LabelPart::Enriched { enricher, index } => match enricher.resolve(key.cgroup) {
                    Resolution::Known(values) => Some(values.get(*index).cloned().unwrap_or_default()),
                    // A cgroup gone before it could be resolved: empty,
                    // which Prometheus reads as no label at all.
                    Resolution::Gone => Some(String::new()),
                    Resolution::Pending => None,
                },
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

/// A configured probe's series and how its keys are made, shared by both
/// transports.
struct Series {
    table: SeriesTable,
    families: Arc<ProbeFamilies>,
    key_comm: bool,
    key_pid: bool,
    key_cgroup: bool,
    /// Told about each new cgroup id, so they resolve it while it exists.
    enrichers: Vec<Arc<dyn Enricher>>,
}

impl Series {
    /// Sets up a configured probe's series and families, and registers the
    /// families (name clashes are refused there).
    fn new(
        settings: &ProbeSettings,
        decoder: Arc<dyn Decoder>,
        registry: &Registry,
        limits: Limits,
        enrichers: &dyn EnricherSource,
    ) -> Result<Series, SinkError> {
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
        let plan = LabelPlan { parts, decoder };
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
        Ok(Series { table, families, key_comm, key_pid, key_cgroup, enrichers: notify })
    }

    /// The series key of a task's comm, cgroup and pid (each only if its
    /// label is on) and the probe's part.
    #[inline]
    fn key(&self, comm: &[u8; 16], cgroup: u64, pid: u32, event: u64) -> Key {
        Key {
            comm: if self.key_comm { comm_key(comm) } else { 0 },
            cgroup: if self.key_cgroup { cgroup } else { 0 },
            event,
            pid: if self.key_pid { pid } else { 0 },
        }
    }

    fn notice(&self, key: &Key) {
        for enricher in &self.enrichers {
            enricher.notice(key.cgroup);
        }
    }
}

/// One running probe's event path: records in, series out.
pub struct ProbeSink {
    decoder: Arc<dyn Decoder>,
    series: Series,
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
        let series = Series::new(settings, decoder.clone(), registry, limits, enrichers)?;
        let families = series.families.clone();
        let sweep_every = limits.sweep_interval();
        let next_sweep = Instant::now() + sweep_every.unwrap_or_default();
        Ok((ProbeSink { decoder, series, sweep_every, next_sweep }, families))
    }
}

impl Sink for ProbeSink {
    #[inline]
    fn handle(&mut self, record: &[u8]) -> Result<(), DecodeError> {
        let header: &Header = decode(record)?;
        let decoded = self.decoder.decode(record)?;
        let key = self.series.key(&header_comm(header), header.cgroup_id, header.tgid, decoded.key);
        if self.series.table.record(key, &decoded.values) {
            self.series.notice(&key);
        }
        Ok(())
    }

    fn tick(&mut self, now: Instant) {
        let Some(every) = self.sweep_every else { return };
        if now >= self.next_sweep {
            self.series.table.sweep(now);
            self.next_sweep = now + every;
        }
    }
}

/// A probe that counts in the kernel: its per-CPU cells are read whole and
/// merged into its series at each scrape.
pub struct KernelSink {
    series: Series,
    map: MapHandle,
    /// The kernel's keys of each series at the last read, to delete them
    /// from the kernel when the series expires.
    raw_keys: HashMap<Key, Vec<Vec<u8>>>,
    /// Counts of the overflow key when its series last expired: the kernel
    /// keeps counting into that key, so its series restarts from here.
    overflow_base: Vec<u64>,
}

impl KernelSink {
    pub fn new(
        settings: &ProbeSettings,
        decoder: Arc<dyn Decoder>,
        registry: &Registry,
        limits: Limits,
        enrichers: &dyn EnricherSource,
        map: MapHandle,
    ) -> Result<KernelSink, SinkError> {
        let series = Series::new(settings, decoder, registry, limits, enrichers)?;
        Ok(KernelSink { series, map, raw_keys: HashMap::new(), overflow_base: Vec::new() })
    }

    /// Reads every key's cells from the kernel into the series, then
    /// removes the series idle for the ttl (and their kernel keys).
    pub fn sync(&mut self, now: Instant) -> Result<(), libbpf_rs::Error> {
        let mut merged: HashMap<Key, Vec<u64>> = HashMap::new();
        let mut raw_keys: HashMap<Key, Vec<Vec<u8>>> = HashMap::new();
        let mut overflow = None;
        for raw in self.map.keys() {
            let Some(per_cpu) = self.map.lookup_percpu(&raw, libbpf_rs::MapFlags::ANY)? else { continue };
            let cells = sum_cells(&per_cpu);
            let mut kernel_key = AggKey::default();
            if plain::copy_from_bytes(&mut kernel_key, &raw).is_err() {
                continue;
            }
            if kernel_key.overflow != 0 {
                overflow = Some(cells);
                continue;
            }
            let comm = kernel_key.comm.map(|c| c as u8);
            let key = self.series.key(&comm, kernel_key.cgroup_id, kernel_key.tgid, kernel_key.event);
            // Keys that differ only in bytes the labels do not show (say,
            // after a comm's NUL) are one series.
            let sum = merged.entry(key).or_insert_with(|| vec![0; cells.len()]);
            for (a, b) in sum.iter_mut().zip(&cells) {
                *a = a.wrapping_add(*b);
            }
            raw_keys.entry(key).or_default().push(raw);
        }
        for (key, cells) in &merged {
            if self.series.table.set(*key, cells) {
                self.series.notice(key);
            }
        }
        if let Some(cells) = overflow {
            self.overflow_base.resize(cells.len(), 0);
            let since: Vec<u64> = cells.iter().zip(&self.overflow_base).map(|(c, b)| c.saturating_sub(*b)).collect();
            if since.iter().any(|&c| c != 0) {
                self.series.table.set_overflow(&since);
            }
        }
        self.raw_keys = raw_keys;
        for expired in self.series.table.sweep(now) {
            match expired {
                Some(key) => {
                    // An event counted between the read above and this
                    // delete is lost with the key: only keys idle for the
                    // whole ttl get here.
                    for raw in self.raw_keys.remove(&key).unwrap_or_default() {
                        let _ = self.map.delete(&raw);
                    }
                }
                None => {
                    if let Some(cells) = merged_overflow(&self.map) {
                        self.overflow_base = cells;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sums per-CPU values of `u64` cells.
fn sum_cells(per_cpu: &[Vec<u8>]) -> Vec<u64> {
    let width = per_cpu.first().map_or(0, |v| v.len() / 8);
    let mut cells = vec![0u64; width];
    for cpu in per_cpu {
        for (cell, chunk) in cells.iter_mut().zip(cpu.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *cell = cell.wrapping_add(u64::from_ne_bytes(bytes));
        }
    }
    cells
}

/// The overflow key's cells, summed over CPUs.
fn merged_overflow(map: &MapHandle) -> Option<Vec<u64>> {
    let key = AggKey { overflow: 1, ..Default::default() };
    // SAFETY: a plain C struct whose padding is spelled out as fields.
    let raw = unsafe { plain::as_bytes(&key) };
    map.lookup_percpu(raw, libbpf_rs::MapFlags::ANY).ok().flatten().map(|v| sum_cells(&v))
}
