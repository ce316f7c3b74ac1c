//! `syscalls`: every system call by name, with latency.

use std::sync::Arc;

use super::{keep, Builtin};
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec, Unit};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/syscalls.skel.rs"));
}
use skel::{types, SyscallsSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

/// The probe's ring buffer record, as the skeleton generates it from C.
pub type Event = types::event;

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    let summary = "System calls by name (and optionally process name), with latency.";
    ProbeSpec::new("syscalls", summary, &["syscall"], &["syscall"])
        .hook(HookSpec::new(
            HookKind::BtfTracepoint,
            &[("handle_sys_enter", "raw_syscalls/sys_enter"), ("handle_sys_exit", "raw_syscalls/sys_exit")],
        ))
        .metric(MetricSpec::counter("syscalls_total", "System calls completed."))
        .metric(MetricSpec::histogram("syscall_duration_seconds", Unit::Seconds, "System call latency."))
        .ring_bytes_per_cpu(512 << 10)
        // syscall numbers are below 512 on every architecture sonde
        // builds for (x32's are not, and take the hash)
        .aggregated_in_kernel(512)
}

crate::loader::skeleton_loader!(SyscallsSkelBuilder);

pub struct Syscalls {
    by_name: bool,
}

pub fn decoder(settings: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(Syscalls { by_name: settings.has_label("syscall") })
}

impl Decoder for Syscalls {
    #[inline]
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &Event = decode(record)?;
        Ok(Decoded { key: keep(self.by_name, u64::from(event.nr)), values: [1, event.duration_ns, 0, 0] })
    }

    fn label(&self, _: &str, key: u64) -> String {
        syscall_name(key as u32)
    }
}

/// The syscall's name on this architecture, or `syscall_<nr>`.
pub fn syscall_name(nr: u32) -> String {
    match syscalls::Sysno::new(nr as usize) {
        Some(sysno) => sysno.name().to_string(),
        None => format!("syscall_{nr}"),
    }
}

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
