//! `file_open`: openat() calls by process name and result, with latency.

use super::{comm_key, comm_str, HookKind, HookSpec, MetricKind, MetricSpec, Probe, ProbeSpec};
use crate::config::ProbeConfig;
use crate::events::{decode, DecodeError, EventSink};
use crate::loader;
use crate::metrics::{label_values, Counter, Histogram, Metrics, SeriesCache};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/file_open.skel.rs"));
}
use skel::{types, FileOpenSkelBuilder};

unsafe impl plain::Plain for types::event {}

const OPENS: &str = "file_open_total";
const DURATION: &str = "file_open_duration_seconds";

pub const PROBE: Probe = Probe { spec: &SPEC, load, sink };

static SPEC: ProbeSpec = ProbeSpec {
    name: "file_open",
    summary: "openat() calls by process name and result (`ok` or the errno name), with latency.",
    hooks: &[HookSpec {
        kind: HookKind::Tracepoint,
        programs: &[
            ("handle_openat_enter", "syscalls/sys_enter_openat"),
            ("handle_openat_exit", "syscalls/sys_exit_openat"),
        ],
    }],
    metrics: &[
        MetricSpec { name: OPENS, kind: MetricKind::Counter, help: "openat() calls." },
        MetricSpec { name: DURATION, kind: MetricKind::Histogram, help: "openat() latency." },
    ],
    labels: &["comm", "result"],
    default_labels: &["comm", "result"],
    ring_bytes_per_cpu: 128 << 10,
};

loader::skeleton_loader!(FileOpenSkelBuilder);

/// `ok` for a descriptor, else the errno's name (`ENOENT`).
pub fn result_label(ret: i32) -> String {
    if ret >= 0 {
        return "ok".to_string();
    }
    match nix::errno::Errno::from_raw(-ret) {
        nix::errno::Errno::UnknownErrno => format!("errno_{}", -ret),
        errno => format!("{errno:?}"),
    }
}

type Handles = (Counter, Histogram);

struct Sink {
    key_comm: bool,
    key_result: bool,
    series: SeriesCache<(u128, i32), Handles>,
    labels: Vec<&'static str>,
}

fn sink(config: &ProbeConfig, metrics: &Metrics) -> Result<Box<dyn EventSink>, prometheus::Error> {
    Ok(Box::new(Sink {
        key_comm: config.has_label("comm"),
        key_result: config.has_label("result"),
        series: super::series(metrics, &SPEC, config)?,
        labels: config.labels.clone(),
    }))
}

impl EventSink for Sink {
    fn handle(&mut self, data: &[u8]) -> Result<(), DecodeError> {
        let event: &types::event = decode(data)?;
        let comm = if self.key_comm { comm_key(&event.comm) } else { 0 };
        let result = if self.key_result { event.ret.min(0) } else { 0 };
        let labels = &self.labels;
        let (count, latency) = self.series.get((comm, result), || {
            label_values(labels, |l| match l {
                "comm" => comm_str(&event.comm),
                _ => result_label(result),
            })
        });
        count.add(1);
        latency.observe_ns(event.duration_ns);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_name_errnos() {
        assert_eq!(result_label(3), "ok");
        assert_eq!(result_label(0), "ok");
        assert_eq!(result_label(-2), "ENOENT");
        assert_eq!(result_label(-13), "EACCES");
        assert_eq!(result_label(-4000), "errno_4000");
    }
}
