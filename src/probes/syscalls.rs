//! `syscalls`: every system call by name, with latency.

use super::{comm_key, comm_str, HookKind, HookSpec, MetricKind, MetricSpec, Probe, ProbeSpec};
use crate::config::ProbeConfig;
use crate::events::{decode, DecodeError, EventSink};
use crate::loader;
use crate::metrics::{label_values, Counter, Histogram, Metrics, SeriesCache};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/syscalls.skel.rs"));
}
use skel::{types, SyscallsSkelBuilder};

unsafe impl plain::Plain for types::event {}
unsafe impl plain::Plain for types::event_head {}

/// The probe's ring buffer records, as the skeleton generates them from C:
/// `EventHead` alone without the comm label, `Event` with it.
pub type Event = types::event;
pub type EventHead = types::event_head;

const CALLS: &str = "syscalls_total";
const DURATION: &str = "syscall_duration_seconds";

pub const PROBE: Probe = Probe { spec: &SPEC, load, sink };

static SPEC: ProbeSpec = ProbeSpec {
    name: "syscalls",
    summary: "System calls by name (and optionally process name), with latency.",
    hooks: &[HookSpec {
        kind: HookKind::BtfTracepoint,
        programs: &[("handle_sys_enter", "raw_syscalls/sys_enter"), ("handle_sys_exit", "raw_syscalls/sys_exit")],
    }],
    metrics: &[
        MetricSpec { name: CALLS, kind: MetricKind::Counter, help: "System calls completed." },
        MetricSpec { name: DURATION, kind: MetricKind::Histogram, help: "System call latency." },
    ],
    labels: &["syscall", "comm"],
    default_labels: &["syscall"],
    ring_bytes_per_cpu: 512 << 10,
};

loader::skeleton_loader!(SyscallsSkelBuilder, |rodata, config| {
    rodata.want_comm = config.has_label("comm");
});

/// The syscall's name on this architecture, or `syscall_<nr>`.
pub fn syscall_name(nr: u32) -> String {
    match syscalls::Sysno::new(nr as usize) {
        Some(sysno) => sysno.name().to_string(),
        None => format!("syscall_{nr}"),
    }
}

type Handles = (Counter, Histogram);

struct Sink {
    key_syscall: bool,
    key_comm: bool,
    series: SeriesCache<(u32, u128), Handles>,
    labels: Vec<&'static str>,
}

fn sink(config: &ProbeConfig, metrics: &Metrics) -> Result<Box<dyn EventSink>, prometheus::Error> {
    Ok(Box::new(Sink {
        key_syscall: config.has_label("syscall"),
        key_comm: config.has_label("comm"),
        series: super::series(metrics, &SPEC, config)?,
        labels: config.labels.clone(),
    }))
}

impl EventSink for Sink {
    fn handle(&mut self, data: &[u8]) -> Result<(), DecodeError> {
        // The programs send the comm only when the comm label is on.
        let (head, comm): (&types::event_head, &[i8; 16]) = if self.key_comm {
            let event: &types::event = decode(data)?;
            (&event.head, &event.comm)
        } else {
            (decode(data)?, &NO_COMM)
        };
        let nr = if self.key_syscall { head.nr } else { 0 };
        let labels = &self.labels;
        let (count, latency) = self.series.get((nr, comm_key(comm)), || {
            label_values(labels, |l| match l {
                "syscall" => syscall_name(nr),
                _ => comm_str(comm),
            })
        });
        count.add(1);
        latency.observe_ns(head.duration_ns);
        Ok(())
    }
}

const NO_COMM: [i8; 16] = [0; 16];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_syscalls_for_this_arch() {
        let getpid = syscalls::Sysno::getpid.id() as u32;
        assert_eq!(syscall_name(getpid), "getpid");
        assert_eq!(syscall_name(100_000), "syscall_100000");
    }
}
