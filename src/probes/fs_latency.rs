//! `fs_latency`: how long ext4's and xfs's read, write, open and fsync take,
//! by filesystem and operation. Their file operations are hooked with
//! fentry/fexit, or kprobes where fentry is missing; a filesystem whose
//! functions this kernel lacks (xfs as a module not loaded) is left out,
//! and the other is still timed.

use std::sync::Arc;

use super::{keep, Builtin};
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec, Unit};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/fs_latency.skel.rs"));
}
use skel::{types, FsLatencySkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

/// Operations per filesystem in a key (`FS_OPS` in the C program).
const OPS: u64 = 4;

/// (program name prefix, kernel function) for each filesystem, in the
/// order of `enum fs_op`.
const EXT4: [(&str, &str); 4] = [
    ("ext4_read", "ext4_file_read_iter"),
    ("ext4_write", "ext4_file_write_iter"),
    ("ext4_open", "ext4_file_open"),
    ("ext4_fsync", "ext4_sync_file"),
];
const XFS: [(&str, &str); 4] = [
    ("xfs_read", "xfs_file_read_iter"),
    ("xfs_write", "xfs_file_write_iter"),
    ("xfs_open", "xfs_file_open"),
    ("xfs_fsync", "xfs_file_fsync"),
];

fn spec() -> ProbeSpec {
    let summary = "ext4 and xfs read, write, open and fsync latency, by filesystem and operation.";
    ProbeSpec::new("fs_latency", summary, &["fs", "op"], &["fs", "op"])
        .hook(hook(HookKind::Fentry, [("fe", "fentry"), ("fx", "fexit")]))
        .hook(hook(HookKind::Kprobe, [("kp", "entry"), ("kr", "return")]))
        .metric(MetricSpec::histogram(
            "fs_latency_seconds",
            Unit::Seconds,
            "Time in the filesystem's read, write, open or fsync, failed calls included.",
        ))
        .ring_bytes_per_cpu(256 << 10)
        // (fs, op) indexes the kernel's array
        .aggregated_in_kernel(2 * OPS as u32)
}

/// Both filesystems' programs for `kind`: each function gets one program
/// per `(suffix, what)` of `ends` (its entry and its return). Every one is
/// optional, so that either filesystem alone is enough.
fn hook(kind: HookKind, ends: [(&str, &str); 2]) -> HookSpec {
    let programs: Vec<(String, String)> = EXT4
        .iter()
        .chain(XFS.iter())
        .flat_map(|(name, function)| {
            ends.iter().map(move |(suffix, what)| (format!("{name}_{suffix}"), format!("{function} ({what})")))
        })
        .collect();
    let pairs: Vec<(&str, &str)> = programs.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    HookSpec::new(kind, &[]).optional(&pairs)
}

crate::loader::skeleton_loader!(FsLatencySkelBuilder, |rodata, settings| {
    rodata.want_fs = settings.has_label("fs");
    rodata.want_op = settings.has_label("op");
});

struct FsLatency {
    by_fs: bool,
    by_op: bool,
}

fn decoder(settings: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(FsLatency { by_fs: settings.has_label("fs"), by_op: settings.has_label("op") })
}

impl Decoder for FsLatency {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        let key = keep(self.by_fs, u64::from(event.fs)) * OPS + keep(self.by_op, u64::from(event.op));
        Ok(Decoded { key, values: [event.duration_ns, 0, 0, 0] })
    }

    fn label(&self, label: &str, key: u64) -> String {
        if label == "fs" { fs_name(key / OPS) } else { op_name(key % OPS) }.to_string()
    }
}

fn fs_name(fs: u64) -> &'static str {
    if fs == u64::from(types::fs_kind::FS_XFS.0) {
        "xfs"
    } else {
        "ext4"
    }
}

fn op_name(op: u64) -> &'static str {
    match op {
        op if op == u64::from(types::fs_op::FS_OP_WRITE.0) => "write",
        op if op == u64::from(types::fs_op::FS_OP_OPEN.0) => "open",
        op if op == u64::from(types::fs_op::FS_OP_FSYNC.0) => "fsync",
        _ => "read",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(fs: types::fs_kind, op: types::fs_op, duration_ns: u64) -> types::event {
        types::event { duration_ns, fs: fs.0, op: op.0, ..Default::default() }
    }

    fn decode(decoder: &FsLatency, event: &types::event) -> Decoded {
        // SAFETY: a plain C struct, viewed in place (so aligned).
        decoder.decode(unsafe { plain::as_bytes(event) }).expect("decodes")
    }

    fn decoder_with(labels: &[&str]) -> FsLatency {
        FsLatency { by_fs: labels.contains(&"fs"), by_op: labels.contains(&"op") }
    }

    #[test]
    fn keys_render_back_to_fs_and_op() {
        let decoder = decoder_with(&["fs", "op"]);
        let decoded = decode(&decoder, &event(types::fs_kind::FS_XFS, types::fs_op::FS_OP_FSYNC, 1500));
        assert_eq!(decoded.values[0], 1500);
        assert_eq!(decoder.label("fs", decoded.key), "xfs");
        assert_eq!(decoder.label("op", decoded.key), "fsync");
    }

    #[test]
    fn a_label_that_is_off_does_not_split_keys() {
        let decoder = decoder_with(&["op"]);
        let ext4 = decode(&decoder, &event(types::fs_kind::FS_EXT4, types::fs_op::FS_OP_OPEN, 1));
        let xfs = decode(&decoder, &event(types::fs_kind::FS_XFS, types::fs_op::FS_OP_OPEN, 1));
        assert_eq!(ext4.key, xfs.key);
        assert_eq!(decoder.label("op", xfs.key), "open");
    }

    #[test]
    fn every_key_fits_the_direct_array() {
        let spec = spec();
        let decoder = decoder_with(&["fs", "op"]);
        let largest = decode(&decoder, &event(types::fs_kind::FS_XFS, types::fs_op::FS_OP_FSYNC, 1)).key;
        assert_eq!(largest + 1, u64::from(spec.direct_event_keys));
    }

    #[test]
    fn both_hooks_time_every_function_with_optional_programs() {
        let spec = spec();
        for hook in &spec.hooks {
            assert_eq!(hook.programs.len(), 16, "{:?}", hook.kind);
            assert!(hook.programs.iter().all(|p| p.optional && p.program.len() <= 15), "{hook:?}");
        }
        let fentry = &spec.hooks[0];
        assert_eq!(fentry.programs[0].program, "ext4_read_fe");
        assert_eq!(fentry.programs[0].target, "ext4_file_read_iter (fentry)");
        assert_eq!(fentry.programs[15].program, "xfs_fsync_fx");
        assert_eq!(fentry.programs[15].target, "xfs_file_fsync (fexit)");
    }
}
