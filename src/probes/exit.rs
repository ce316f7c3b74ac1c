//! `exit`: processes that ended, by name and how: exit code or fatal signal.

use super::{comm_key, comm_str, HookKind, HookSpec, MetricKind, MetricSpec, Probe, ProbeSpec};
use crate::config::ProbeConfig;
use crate::events::{decode, DecodeError, EventSink};
use crate::loader;
use crate::metrics::{label_values, Counter, Metrics, SeriesCache};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/exit.skel.rs"));
}
use skel::{types, ExitSkelBuilder};

unsafe impl plain::Plain for types::event {}

const EXITS: &str = "exit_total";

pub const PROBE: Probe = Probe { spec: &SPEC, load, sink };

static SPEC: ProbeSpec = ProbeSpec {
    name: "exit",
    summary: "Processes that exited, by name and exit code or fatal signal.",
    hooks: &[HookSpec { kind: HookKind::Tracepoint, programs: &[("handle_exit", "sched/sched_process_exit")] }],
    metrics: &[MetricSpec {
        name: EXITS,
        kind: MetricKind::Counter,
        help: "Process exits; `code` is the exit status when the process exited, `signal` the signal that killed it.",
    }],
    labels: &["comm", "code", "signal"],
    default_labels: &["comm", "code", "signal"],
    ring_bytes_per_cpu: 16 << 10,
};

loader::skeleton_loader!(ExitSkelBuilder);

/// How a wait(2) status reads as labels: (`code`, `signal`).
pub fn status_labels(status: u32) -> (String, String) {
    let signal = status & 0x7f;
    if signal == 0 {
        (((status >> 8) & 0xff).to_string(), String::new())
    } else {
        let name = i32::try_from(signal)
            .ok()
            .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| format!("SIG{signal}"));
        (String::new(), name)
    }
}

struct Sink {
    key_comm: bool,
    key_status: bool,
    labels: Vec<&'static str>,
    series: SeriesCache<(u128, u32), Counter>,
}

fn sink(config: &ProbeConfig, metrics: &Metrics) -> Result<Box<dyn EventSink>, prometheus::Error> {
    Ok(Box::new(Sink {
        key_comm: config.has_label("comm"),
        key_status: config.has_label("code") || config.has_label("signal"),
        series: super::series(metrics, &SPEC, config)?,
        labels: config.labels.clone(),
    }))
}

impl EventSink for Sink {
    fn handle(&mut self, data: &[u8]) -> Result<(), DecodeError> {
        let event: &types::event = decode(data)?;
        let comm = if self.key_comm { comm_key(&event.comm) } else { 0 };
        // Only the bits the labels show: exit status and signal number.
        let status = if self.key_status { event.exit_code & 0xff7f } else { 0 };
        let labels = &self.labels;
        self.series
            .get((comm, status), || {
                let (code, signal) = status_labels(status);
                label_values(labels, |l| match l {
                    "comm" => comm_str(&event.comm),
                    "code" => code.clone(),
                    _ => signal.clone(),
                })
            })
            .add(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_to_labels() {
        assert_eq!(status_labels(0), ("0".into(), "".into()));
        assert_eq!(status_labels(3 << 8), ("3".into(), "".into()));
        assert_eq!(status_labels(9), ("".into(), "SIGKILL".into()));
        assert_eq!(status_labels(11 | 0x80), ("".into(), "SIGSEGV".into()));
    }
}
