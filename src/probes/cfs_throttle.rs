//! `cfs_throttle`: CFS bandwidth throttling (cgroup `cpu.max`): how often a
//! group's run queue ran out of quota, and for how long, by cgroup. No
//! tracepoint exists: the scheduler's functions are hooked with
//! fexit/fentry, else kprobes.

use std::ops::Range;
use std::sync::Arc;

use super::Builtin;
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec, Unit};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/cfs_throttle.skel.rs"));
}
use skel::{types, CfsThrottleSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    let summary = "CFS bandwidth throttling (cpu.max): throttlings and time throttled, by cgroup.";
    ProbeSpec::new("cfs_throttle", summary, &[], &["cgroup"])
        .hook(HookSpec::new(
            HookKind::Fentry,
            &[
                ("fexit_throttle_cfs_rq", "throttle_cfs_rq (fexit)"),
                ("fentry_unthrottle_cfs_rq", "unthrottle_cfs_rq (fentry)"),
            ],
        ))
        .hook(HookSpec::new(
            HookKind::Kprobe,
            &[
                ("kprobe_throttle_cfs_rq", "throttle_cfs_rq"),
                ("kretprobe_throttle_cfs_rq", "throttle_cfs_rq (return)"),
                ("kprobe_unthrottle_cfs_rq", "unthrottle_cfs_rq"),
            ],
        ))
        .metric(MetricSpec::counter(
            "cfs_throttles_total",
            "Times a cgroup's run queue on one CPU used up its CPU quota and was throttled for the rest of the period; a group running on one CPU is throttled once per throttled period (cpu.stat nr_throttled).",
        ))
        .metric(MetricSpec::histogram(
            "cfs_throttled_seconds",
            Unit::Seconds,
            "How long each throttling lasted, until the period timer (or a quota change) unthrottled the run queue; the sum is the time throttled, per CPU.",
        ))
}

crate::loader::skeleton_loader!(CfsThrottleSkelBuilder);

/// Record kinds (`enum throttle_kind` in cfs_throttle.bpf.c), which are
/// also the key: each counts in its own metric.
const THROTTLED: u64 = 1;
const UNTHROTTLED: u64 = 2;

struct CfsThrottle;

fn decoder(_: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(CfsThrottle)
}

impl Decoder for CfsThrottle {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        let kind = u64::from(event.kind);
        let value = if kind == UNTHROTTLED { event.duration_ns } else { 1 };
        Ok(Decoded { key: kind, values: [value, 0, 0, 0] })
    }

    fn label(&self, label: &str, _: u64) -> String {
        format!("unknown label {label}")
    }

    fn metrics(&self, key: u64) -> Range<usize> {
        match key {
            THROTTLED => 0..1,
            UNTHROTTLED => 1..2,
            _ => 0..0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(8))]
    struct Record([u8; std::mem::size_of::<types::event>()]);

    fn record(kind: u32, duration_ns: u64) -> Record {
        let event = types::event { kind, duration_ns, ..Default::default() };
        // SAFETY: a plain C struct; its padding is spelled out as fields.
        let bytes = unsafe { plain::as_bytes(&event) };
        let mut out = Record([0; std::mem::size_of::<types::event>()]);
        out.0.copy_from_slice(bytes);
        out
    }

    #[test]
    fn throttles_count_and_unthrottles_observe_their_duration() {
        let throttle = CfsThrottle.decode(&record(1, 0).0).expect("a record");
        assert_eq!((throttle.key, throttle.values[0]), (THROTTLED, 1));
        assert_eq!(CfsThrottle.metrics(throttle.key), 0..1);
        let unthrottle = CfsThrottle.decode(&record(2, 7_000_000).0).expect("a record");
        assert_eq!((unthrottle.key, unthrottle.values[0]), (UNTHROTTLED, 7_000_000));
        assert_eq!(CfsThrottle.metrics(unthrottle.key), 1..2);
    }
}
