//! What a scrape reads besides the series: counters that live in the
//! kernel (ring buffer drops, program run statistics), brought up to date
//! just before encoding; and the agent's side of the HTTP endpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use libbpf_rs::MapHandle;

use crate::agent::Control;
use crate::bpf_stats;
use crate::loader::{read_percpu_counter, LoadedProgram, LOST_FOLDED, LOST_RING};
use crate::metrics::Registry;
use crate::sink::KernelSink;

/// One running probe's kernel-side counters.
pub struct KernelCounters {
    pub lost: MapHandle,
    pub programs: Vec<LoadedProgram>,
    /// A probe that aggregates in the kernel: read at each scrape.
    pub aggregate: Option<KernelSink>,
    /// Its metrics' full names, for `series_dropped_total`.
    pub metrics: Vec<String>,
}

pub struct Scraper {
    metrics: Arc<Registry>,
    probes: Mutex<BTreeMap<String, (KernelCounters, Seen)>>,
    ready: AtomicBool,
    bpf_stats: bool,
}

#[derive(Default)]
struct Seen {
    lost: u64,
    folded: u64,
    runs: HashMap<String, bpf_stats::RunStats>,
}

impl Scraper {
    pub fn new(metrics: Arc<Registry>, bpf_stats: bool) -> Self {
        Self { metrics, probes: Mutex::new(BTreeMap::new()), ready: AtomicBool::new(false), bpf_stats }
    }

    pub fn add(&self, probe: &str, counters: KernelCounters) {
        self.lock().insert(probe.to_string(), (counters, Seen::default()));
    }

    /// Stops reading a removed probe's counters, after one last read so
    /// that nothing it lost goes uncounted.
    pub fn remove(&self, probe: &str) {
        self.refresh();
        self.lock().remove(probe);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (KernelCounters, Seen)>> {
        self.probes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Brings kernel-side counters up to date, then encodes everything.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        self.refresh();
        self.metrics.encode()
    }

    /// Kernel counters only grow; the exported counters take the delta.
    pub fn refresh(&self) {
        let mut probes = self.lock();
        let agent = &self.metrics.agent;
        let now = Instant::now();
        for (probe, (counters, seen)) in probes.iter_mut() {
            match read_percpu_counter(&counters.lost, LOST_RING) {
                Ok(lost) => {
                    agent.events_lost.with_label_values(&[probe]).inc_by(lost.saturating_sub(seen.lost));
                    seen.lost = seen.lost.max(lost);
                }
                Err(err) => tracing::warn!(probe, error = %err, "reading the lost-events counter failed"),
            }
            if let Some(aggregate) = &mut counters.aggregate {
                if let Err(err) = aggregate.sync(now) {
                    tracing::warn!(probe, error = %err, "reading the in-kernel counts failed");
                }
                // Events the full table counted in its overflow key.
                if let Ok(folded) = read_percpu_counter(&counters.lost, LOST_FOLDED) {
                    for metric in &counters.metrics {
                        agent.series_dropped.with_label_values(&[metric]).inc_by(folded.saturating_sub(seen.folded));
                    }
                    seen.folded = seen.folded.max(folded);
                }
            }
            if !self.bpf_stats {
                continue;
            }
            for prog in &counters.programs {
                let Ok(now) = bpf_stats::prog_stats(&prog.fd) else { continue };
                let before = seen.runs.entry(prog.name.clone()).or_default();
                let labels = [probe.as_str(), prog.name.as_str()];
                agent.prog_run_count.with_label_values(&labels).inc_by(now.run_count.saturating_sub(before.run_count));
                let ns = now.run_time_ns.saturating_sub(before.run_time_ns);
                agent.prog_run_seconds.with_label_values(&labels).inc_by(ns as f64 * 1e-9);
                *before = now;
            }
        }
    }
}

/// The agent as the HTTP endpoint sees it.
pub struct Endpoints {
    pub scraper: Arc<Scraper>,
    pub control: Mutex<mpsc::Sender<Control>>,
}

/// A reload that takes longer than this is reported as such (it goes on).
const RELOAD_WAIT: Duration = Duration::from_secs(60);

impl crate::http::Endpoints for Endpoints {
    fn metrics(&self) -> Result<String, String> {
        self.scraper.render().map_err(|e| format!("encoding metrics failed: {e}"))
    }

    fn ready(&self) -> bool {
        self.scraper.is_ready()
    }

    fn reload(&self) -> Result<String, String> {
        let (tx, rx) = mpsc::channel();
        let sent = self.control.lock().unwrap_or_else(|e| e.into_inner()).send(Control::Reload { reply: Some(tx) });
        if sent.is_err() {
            return Err("the agent is shutting down".into());
        }
        match rx.recv_timeout(RELOAD_WAIT) {
            Ok(result) => result,
            Err(_) => Err("the reload did not finish in time; see the agent's log".into()),
        }
    }
}
