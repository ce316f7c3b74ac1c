//! `vfs_io`: vfs_read()/vfs_write() calls and bytes by process name. The
//! kernel functions are hooked with fexit, or with kretprobes where fentry
//! is missing (fexit costs less per call).

use std::sync::Arc;

use super::{keep, Builtin};
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/vfs_io.skel.rs"));
}
use skel::{types, VfsIoSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    let summary = "vfs_read()/vfs_write() calls and bytes moved, by process name and operation.";
    ProbeSpec::new("vfs_io", summary, &["op"], &["comm", "op"])
        .hook(HookSpec::new(
            HookKind::Fentry,
            &[("fexit_vfs_read", "vfs_read (fexit)"), ("fexit_vfs_write", "vfs_write (fexit)")],
        ))
        .hook(HookSpec::new(
            HookKind::Kprobe,
            &[("kretprobe_vfs_read", "vfs_read (return)"), ("kretprobe_vfs_write", "vfs_write (return)")],
        ))
        .metric(MetricSpec::counter("vfs_calls_total", "vfs_read()/vfs_write() calls, failed ones included."))
        .metric(MetricSpec::counter("vfs_bytes_total", "Bytes read or written through the VFS."))
        .ring_bytes_per_cpu(512 << 10)
        // op (read, write) indexes the kernel's array
        .aggregated_in_kernel(2)
}

crate::loader::skeleton_loader!(VfsIoSkelBuilder);

struct VfsIo {
    by_op: bool,
}

fn decoder(settings: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(VfsIo { by_op: settings.has_label("op") })
}

impl Decoder for VfsIo {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        let moved = u64::try_from(event.ret).unwrap_or(0);
        Ok(Decoded { key: keep(self.by_op, u64::from(event.op)), values: [1, moved, 0, 0] })
    }

    fn label(&self, _: &str, key: u64) -> String {
        if key == u64::from(types::vfs_op::VFS_OP_WRITE.0) { "write" } else { "read" }.to_string()
    }
}
