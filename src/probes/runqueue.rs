//! `runqueue`: run-queue latency, the time a runnable task waited for a
//! CPU: from its wakeup (or its preemption, when it stayed runnable) to its
//! switch-in. Counted in the kernel by default: the scheduler hooks run on
//! every context switch.

use std::sync::Arc;

use super::Builtin;
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec, Unit};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/runqueue.skel.rs"));
}
use skel::{types, RunqueueSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    let summary = "Run-queue latency: time runnable tasks waited for a CPU (by process name or cgroup when asked).";
    ProbeSpec::new("runqueue", summary, &[], &[])
        // tp_btf reads the task switched in directly; the tracepoint names
        // it only by pid, so it counts each wait one switch later (see
        // runqueue.bpf.c)
        .hook(HookSpec::new(
            HookKind::BtfTracepoint,
            &[
                ("handle_wakeup", "sched/sched_wakeup"),
                ("handle_wakeup_new", "sched/sched_wakeup_new"),
                ("handle_switch", "sched/sched_switch"),
            ],
        ))
        .hook(HookSpec::new(
            HookKind::Tracepoint,
            &[
                ("handle_wakeup_tp", "sched/sched_wakeup"),
                ("handle_wakeup_new_tp", "sched/sched_wakeup_new"),
                ("handle_switch_tp", "sched/sched_switch"),
            ],
        ))
        .metric(MetricSpec::histogram(
            "runqueue_latency_seconds",
            Unit::Seconds,
            "Time a runnable task waited in a run queue before it ran; `comm`, `pid` and `cgroup` are the waiting task's.",
        ))
        .ring_bytes_per_cpu(512 << 10)
        // no event labels: without task labels, every wait counts in one slot
        .aggregated_in_kernel(1)
}

crate::loader::skeleton_loader!(RunqueueSkelBuilder);

struct Runqueue;

fn decoder(_: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(Runqueue)
}

impl Decoder for Runqueue {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        Ok(Decoded { key: 0, values: [event.waited_ns, 0, 0, 0] })
    }

    fn label(&self, label: &str, _: u64) -> String {
        format!("unknown label {label}")
    }
}
