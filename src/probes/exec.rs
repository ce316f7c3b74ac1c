//! `exec`: successful execve() calls by the new program's name.

use super::{comm_key, comm_str, HookKind, HookSpec, MetricKind, MetricSpec, Probe, ProbeSpec};
use crate::config::ProbeConfig;
use crate::events::{decode, DecodeError, EventSink};
use crate::loader;
use crate::metrics::{label_values, Counter, Metrics, SeriesCache};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/exec.skel.rs"));
}
use skel::{types, ExecSkelBuilder};

unsafe impl plain::Plain for types::event {}

const EXECS: &str = "exec_total";

pub const PROBE: Probe = Probe { spec: &SPEC, load, sink };

static SPEC: ProbeSpec = ProbeSpec {
    name: "exec",
    summary: "Programs started (execve), by process name.",
    hooks: &[HookSpec { kind: HookKind::Tracepoint, programs: &[("handle_exec", "sched/sched_process_exec")] }],
    metrics: &[MetricSpec { name: EXECS, kind: MetricKind::Counter, help: "Successful execve() calls." }],
    labels: &["comm"],
    default_labels: &["comm"],
    ring_bytes_per_cpu: 16 << 10,
};

loader::skeleton_loader!(ExecSkelBuilder);

struct Sink {
    by_comm: bool,
    labels: Vec<&'static str>,
    series: SeriesCache<u128, Counter>,
}

fn sink(config: &ProbeConfig, metrics: &Metrics) -> Result<Box<dyn EventSink>, prometheus::Error> {
    Ok(Box::new(Sink {
        by_comm: config.has_label("comm"),
        series: super::series(metrics, &SPEC, config)?,
        labels: config.labels.clone(),
    }))
}

impl EventSink for Sink {
    fn handle(&mut self, data: &[u8]) -> Result<(), DecodeError> {
        let event: &types::event = decode(data)?;
        let key = if self.by_comm { comm_key(&event.comm) } else { 0 };
        let labels = &self.labels;
        self.series.get(key, || label_values(labels, |_| comm_str(&event.comm))).add(1);
        Ok(())
    }
}
