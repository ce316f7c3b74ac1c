//! `oom`: OOM kills, by the victim's name and cgroup (the header's comm,
//! pid and cgroup are the victim's, not the allocating task's).

use std::sync::Arc;

use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec};

use super::Builtin;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/oom.skel.rs"));
}
use skel::{types, OomSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    ProbeSpec::new("oom", "Processes killed by the OOM killer, by the victim's name.", &[], &["comm"])
        // signal_generate notes the victim the OOM killer sends SIGKILL to,
        // mark_victim counts it (see oom.bpf.c)
        .hook(HookSpec::new(
            HookKind::BtfTracepoint,
            &[("handle_signal_generate", "signal/signal_generate"), ("handle_mark_victim", "oom/mark_victim")],
        ))
        .metric(MetricSpec::counter(
            "oom_kills_total",
            "Processes killed by the OOM killer; `comm`, `pid` and `cgroup` are the victim's.",
        ))
}

crate::loader::skeleton_loader!(OomSkelBuilder);

struct Oom;

fn decoder(_: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(Oom)
}

impl Decoder for Oom {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let _: &types::event = decode(record)?;
        Ok(Decoded { key: 0, values: [1, 0, 0, 0] })
    }

    fn label(&self, label: &str, _: u64) -> String {
        format!("unknown label {label}")
    }
}
