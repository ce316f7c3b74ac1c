//! `process`: new processes by parent name, and how long processes lived.

use std::sync::Arc;

use super::Builtin;
use crate::decode::{decode, DecodeError, Decoded, Decoder, NOT_OBSERVED};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec, Unit};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/process.skel.rs"));
}
use skel::{types, ProcessSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    let summary = "Processes created (by the parent's name) and their lifetimes at exit (by their name).";
    ProbeSpec::new("process", summary, &[], &["comm"])
        // The exit half is a plain tracepoint (shared with `exit`, whose
        // record says on new kernels which thread ends the group); fork
        // needs the BTF-typed one to tell a new process from a new thread.
        .hook(HookSpec::new(
            HookKind::BtfTracepoint,
            &[("handle_fork", "sched/sched_process_fork"), ("handle_exit", "sched/sched_process_exit")],
        ))
        .metric(MetricSpec::counter(
            "process_forks_total",
            "New processes (fork, vfork, clone without CLONE_THREAD); `comm` is the parent's.",
        ))
        .metric(MetricSpec::histogram(
            "process_lifetime_seconds",
            Unit::Seconds,
            "How long processes lived, observed when they exit; `comm` is the exiting process's.",
        ))
}

crate::loader::skeleton_loader!(ProcessSkelBuilder);

struct Process;

fn decoder(_: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(Process)
}

impl Decoder for Process {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        let values = if event.kind == types::process_event_kind::PROCESS_EXIT.0 {
            [0, event.lifetime_ns, 0, 0]
        } else {
            [1, NOT_OBSERVED, 0, 0]
        };
        Ok(Decoded { key: 0, values })
    }

    fn label(&self, label: &str, _: u64) -> String {
        format!("unknown label {label}")
    }
}
