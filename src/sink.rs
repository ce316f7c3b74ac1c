//! The machinery every probe shares between its decoder and its metrics:
//! the record header becomes the common part of the series key, the probe's
//! decoder the rest, and the series table counts; at scrape time the key
//! is rendered back into label values, from the header, the decoder or an
//! enricher.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::{AsFd, AsRawFd};

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

    fn carries(&self, metric: usize, key: &Key) -> bool {
        self.decoder.metrics(key.event).contains(&metric)
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
        let layout = Arc::new(Layout::new(&spec.metrics, &settings.buckets));
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
        let first = self.decoder.metrics(decoded.key).start;
        if self.series.table.record_from(key, first, &decoded.values) {
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
    /// The directly indexed cells, when events are keyed by a small number.
    direct: Option<DirectArray>,
    /// The kernel's keys of each series at the last read, to delete them
    /// from the kernel when the series expires.
    raw_keys: HashMap<Key, Vec<Vec<u8>>>,
    /// Totals, at the last read, of entries the kernel cannot delete (the
    /// overflow key, the direct array): when such a series expires, it
    /// restarts from these (None: the overflow series).
    undeletable: HashMap<Option<Key>, Vec<u64>>,
    baselines: HashMap<Option<Key>, Vec<u64>>,
    /// Keys counted in the overflow series by user space, each counted
    /// once in `series_dropped_total`.
    folded: HashSet<Key>,
}

struct DirectArray {
    map: MapHandle,
    entries: u32,
    cells: usize,
    cpus: usize,
    /// Whether the kernel reads the array in one batch (per-CPU arrays
    /// gained batch lookups after 5.10, which answers ENOTSUPP).
    batch: bool,
}

impl KernelSink {
    pub fn new(
        settings: &ProbeSettings,
        decoder: Arc<dyn Decoder>,
        registry: &Registry,
        limits: Limits,
        enrichers: &dyn EnricherSource,
        map: MapHandle,
        direct: Option<MapHandle>,
    ) -> Result<KernelSink, SinkError> {
        let series = Series::new(settings, decoder, registry, limits, enrichers)?;
        let direct = direct.map(|map| {
            let info = map.info().ok();
            let entries = info.as_ref().map_or(0, |i| i.info.max_entries);
            let cells = info.as_ref().map_or(0, |i| i.info.value_size as usize / 8);
            DirectArray { map, entries, cells, cpus: libbpf_rs::num_possible_cpus().unwrap_or(1), batch: true }
        });
        Ok(KernelSink {
            series,
            map,
            direct,
            raw_keys: HashMap::new(),
            undeletable: HashMap::new(),
            baselines: HashMap::new(),
            folded: HashSet::new(),
        })
    }

    /// Reads every key's cells from the kernel into the series, then
    /// removes the series idle for the ttl (and their kernel keys).
    pub fn sync(&mut self, now: Instant) -> Result<(), libbpf_rs::Error> {
        let mut merged: HashMap<Key, Vec<u64>> = HashMap::new();
        let mut raw_keys: HashMap<Key, Vec<Vec<u8>>> = HashMap::new();
        self.undeletable.clear();
        for raw in self.map.keys() {
            let Some(per_cpu) = self.map.lookup_percpu(&raw, libbpf_rs::MapFlags::ANY)? else { continue };
            let cells = sum_cells(&per_cpu);
            let mut kernel_key = AggKey::default();
            if plain::copy_from_bytes(&mut kernel_key, &raw).is_err() {
                continue;
            }
            if kernel_key.overflow != 0 {
                self.undeletable.insert(None, cells);
                continue;
            }
            let comm = kernel_key.comm.map(|c| c as u8);
            let key = self.series.key(&comm, kernel_key.cgroup_id, kernel_key.tgid, kernel_key.event);
            // Keys that differ only in bytes the labels do not show (say,
            // after a comm's NUL) are one series.
            add_into(merged.entry(key).or_insert_with(|| vec![0; cells.len()]), &cells);
            raw_keys.entry(key).or_default().push(raw);
        }
        if let Some(direct) = &mut self.direct {
            for (event, cells) in direct.read()? {
                let key = Key { event, ..Key::default() };
                let since = self.since_baseline(Some(key), &cells);
                self.undeletable.insert(Some(key), cells);
                if let Some(since) = since {
                    add_into(merged.entry(key).or_insert_with(|| vec![0; since.len()]), &since);
                }
            }
        }
        // The kernel's overflow key, plus keys past the series limit that
        // the kernel could not fold itself (direct entries).
        let mut overflow = self.undeletable.get(&None).and_then(|cells| self.since_baseline(None, cells));
        let mut keys: Vec<&Key> = merged.keys().collect();
        keys.sort_by_key(|k| (k.event, k.cgroup, k.pid, k.comm));
        for key in keys {
            let cells = &merged[key];
            if self.series.table.has(key) || !self.series.table.is_full() {
                if self.series.table.set(*key, cells) {
                    self.series.notice(key);
                }
                continue;
            }
            if self.folded.insert(*key) {
                self.series.table.count_dropped();
            }
            add_into(overflow.get_or_insert_with(|| vec![0; cells.len()]), cells);
        }
        if let Some(cells) = overflow {
            self.series.table.set_overflow(&cells);
        }
        self.raw_keys = raw_keys;
        for expired in self.series.table.sweep(now) {
            if expired.is_none() {
                // Folded keys went idle with the overflow series: they
                // restart from here, like it.
                for key in self.folded.drain() {
                    if let Some(cells) = self.undeletable.get(&Some(key)) {
                        self.baselines.insert(Some(key), cells.clone());
                    }
                }
            }
            if let Some(cells) = self.undeletable.get(&expired) {
                self.baselines.insert(expired, cells.clone());
                continue;
            }
            // An event counted between the read above and this delete is
            // lost with the key: only keys idle for the whole ttl get here.
            for raw in expired.and_then(|key| self.raw_keys.remove(&key)).unwrap_or_default() {
                let _ = self.map.delete(&raw);
            }
        }
        Ok(())
    }

    /// What an undeletable entry counted since its series last expired;
    /// None if nothing.
    fn since_baseline(&self, key: Option<Key>, cells: &[u64]) -> Option<Vec<u64>> {
        let since: Vec<u64> = match self.baselines.get(&key) {
            Some(base) => cells.iter().zip(base).map(|(c, b)| c.saturating_sub(*b)).collect(),
            None => cells.to_vec(),
        };
        since.iter().any(|&c| c != 0).then_some(since)
    }
}

impl DirectArray {
    /// Every entry with a count, as (index, cells summed over CPUs): in one
    /// batch where the kernel can, else entry by entry.
    fn read(&mut self) -> Result<Vec<(u64, Vec<u64>)>, libbpf_rs::Error> {
        if self.batch {
            match self.read_batch() {
                Ok(counts) => return Ok(counts),
                Err(err) => {
                    tracing::debug!(error = %err, "batch lookup refused: reading the direct array entry by entry");
                    self.batch = false;
                }
            }
        }
        self.read_each()
    }

    fn read_each(&self) -> Result<Vec<(u64, Vec<u64>)>, libbpf_rs::Error> {
        let mut out = Vec::new();
        for index in 0..self.entries {
            let Some(per_cpu) = self.map.lookup_percpu(&index.to_ne_bytes(), libbpf_rs::MapFlags::ANY)? else {
                continue;
            };
            let cells = sum_cells(&per_cpu);
            if cells.iter().any(|&c| c != 0) {
                out.push((u64::from(index), cells));
            }
        }
        Ok(out)
    }

    fn read_batch(&self) -> Result<Vec<(u64, Vec<u64>)>, libbpf_rs::Error> {
        let n = self.entries as usize;
        let mut keys = vec![0u32; n];
        let mut values = vec![0u64; n * self.cpus * self.cells];
        let mut count = self.entries;
        let mut out_batch = 0u32;
        let opts = libbpf_rs::libbpf_sys::bpf_map_batch_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_batch_opts>() as _,
            ..Default::default()
        };
        // SAFETY: the buffers hold `count` keys and `count` per-CPU values
        // of `cells` u64s for each possible CPU, as the kernel writes them.
        let rc = unsafe {
            libbpf_rs::libbpf_sys::bpf_map_lookup_batch(
                self.map.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                (&mut out_batch as *mut u32).cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        // ENOENT: the whole array was read in this batch.
        if rc < 0 && rc != -libc::ENOENT {
            return Err(libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-rc)));
        }
        let mut out = Vec::new();
        for (i, key) in keys.iter().take(count as usize).enumerate() {
            let mut cells = vec![0u64; self.cells];
            for cpu in 0..self.cpus {
                let at = (i * self.cpus + cpu) * self.cells;
                add_into(&mut cells, &values[at..at + self.cells]);
            }
            if cells.iter().any(|&c| c != 0) {
                out.push((u64::from(*key), cells));
            }
        }
        Ok(out)
    }
}

fn add_into(sum: &mut [u64], cells: &[u64]) {
    for (a, b) in sum.iter_mut().zip(cells) {
        *a = a.wrapping_add(*b);
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
