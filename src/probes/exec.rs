//! `exec`: successful execve() calls by the new program's name.

use std::sync::Arc;

use super::Builtin;
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/exec.skel.rs"));
}
use skel::{types, ExecSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    ProbeSpec::new("exec", "Programs started (execve), by process name.", &[], &["comm"])
        .hook(HookSpec::new(HookKind::Tracepoint, &[("handle_exec", "sched/sched_process_exec")]))
        .metric(MetricSpec::counter("exec_total", "Successful execve() calls."))
}

crate::loader::skeleton_loader!(ExecSkelBuilder);

struct Exec;

fn decoder(_: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(Exec)
}

impl Decoder for Exec {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let _: &types::event = decode(record)?;
        Ok(Decoded { key: 0, values: [1, 0, 0, 0] })
    }

    fn label(&self, label: &str, _: u64) -> String {
        format!("unknown label {label}")
    }
}
