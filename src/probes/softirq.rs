//! `softirq`: time spent in softirq handlers, by kind (net_rx, timer, ...).
//! Counted in the kernel by default, in an array indexed by the kind.

use std::sync::Arc;

use super::{keep, Builtin};
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec, Unit};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/softirq.skel.rs"));
}
use skel::{types, SoftirqSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

/// The softirq vectors' names, in the kernel's order (`enum` in
/// include/linux/interrupt.h, unchanged since 4.x).
const KINDS: [&str; 10] =
    ["hi", "timer", "net_tx", "net_rx", "block", "irq_poll", "tasklet", "sched", "hrtimer", "rcu"];

fn spec() -> ProbeSpec {
    let summary = "Time spent in softirq handlers, by kind (net_rx, timer, ...).";
    ProbeSpec::new("softirq", summary, &["kind"], &["kind"])
        .hook(HookSpec::new(
            HookKind::BtfTracepoint,
            &[("handle_softirq_entry", "irq/softirq_entry"), ("handle_softirq_exit", "irq/softirq_exit")],
        ))
        .hook(HookSpec::new(
            HookKind::Tracepoint,
            &[("handle_softirq_entry_tp", "irq/softirq_entry"), ("handle_softirq_exit_tp", "irq/softirq_exit")],
        ))
        .metric(MetricSpec::histogram(
            "softirq_duration_seconds",
            Unit::Seconds,
            "Time one softirq handler ran, by kind; `comm`, `pid` and `cgroup` are the task it interrupted (or ksoftirqd).",
        ))
        .ring_bytes_per_cpu(256 << 10)
        .aggregated_in_kernel(KINDS.len() as u32)
}

crate::loader::skeleton_loader!(SoftirqSkelBuilder);

struct Softirq {
    by_kind: bool,
}

fn decoder(settings: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(Softirq { by_kind: settings.has_label("kind") })
}

impl Decoder for Softirq {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        Ok(Decoded { key: keep(self.by_kind, u64::from(event.vec)), values: [event.duration_ns, 0, 0, 0] })
    }

    fn label(&self, _: &str, key: u64) -> String {
        kind_name(key)
    }
}

/// The softirq kind of vector `vec`, or `vec_<n>` for one this list lacks.
fn kind_name(vec: u64) -> String {
    match usize::try_from(vec).ok().and_then(|v| KINDS.get(v)) {
        Some(kind) => kind.to_string(),
        None => format!("vec_{vec}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_softirq_vectors() {
        assert_eq!(kind_name(1), "timer");
        assert_eq!(kind_name(3), "net_rx");
        assert_eq!(kind_name(9), "rcu");
        assert_eq!(kind_name(10), "vec_10");
    }
}
