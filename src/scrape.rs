//! What a scrape reads besides the registry: counters that live in the
//! kernel (ring buffer drops, program run statistics), brought up to date
//! just before encoding.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use libbpf_rs::MapHandle;

use crate::bpf_stats;
use crate::loader::{read_percpu_counter, LoadedProgram};
use crate::metrics::Metrics;

/// One running probe's kernel-side counters.
pub struct KernelCounters {
    pub probe: &'static str,
    pub lost: MapHandle,
    pub programs: Vec<LoadedProgram>,
}

pub struct Scraper {
    metrics: Arc<Metrics>,
    probes: Mutex<Vec<(KernelCounters, Seen)>>,
    ready: AtomicBool,
    bpf_stats: bool,
}

#[derive(Default)]
struct Seen {
    lost: u64,
    runs: HashMap<String, bpf_stats::RunStats>,
}

impl Scraper {
    pub fn new(metrics: Arc<Metrics>, bpf_stats: bool) -> Self {
        Self { metrics, probes: Mutex::new(Vec::new()), ready: AtomicBool::new(false), bpf_stats }
    }

    pub fn add(&self, counters: KernelCounters) {
        if let Ok(mut probes) = self.probes.lock() {
            probes.push((counters, Seen::default()));
        }
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
        let Ok(mut probes) = self.probes.lock() else { return };
        let agent = &self.metrics.agent;
        for (counters, seen) in probes.iter_mut() {
            match read_percpu_counter(&counters.lost) {
                Ok(lost) => {
                    agent.events_lost.with_label_values(&[counters.probe]).inc_by(lost.saturating_sub(seen.lost));
                    seen.lost = seen.lost.max(lost);
                }
                Err(err) => {
                    tracing::warn!(probe = counters.probe, error = %err, "reading the lost-events counter failed")
                }
            }
            if !self.bpf_stats {
                continue;
            }
            for prog in &counters.programs {
                let Ok(now) = bpf_stats::prog_stats(&prog.fd) else { continue };
                let before = seen.runs.entry(prog.name.clone()).or_default();
                let labels = [counters.probe, prog.name.as_str()];
                agent.prog_run_count.with_label_values(&labels).inc_by(now.run_count.saturating_sub(before.run_count));
                let ns = now.run_time_ns.saturating_sub(before.run_time_ns);
                agent.prog_run_seconds.with_label_values(&labels).inc_by(ns as f64 * 1e-9);
                *before = now;
            }
        }
    }
}
