//! `file_open`: file opens by process name and result, with latency.

use std::sync::Arc;

use super::{keep, Builtin};
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec, Unit};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/file_open.skel.rs"));
}
use skel::{types, FileOpenSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    let summary = "File opens by process name and result (`ok` or the errno name), with latency.";
    ProbeSpec::new("file_open", summary, &["result"], &["comm", "result"])
        .hook(HookSpec::new(
            HookKind::Fentry,
            &[("fentry_openat2", "do_sys_openat2 (fentry)"), ("fexit_openat2", "do_sys_openat2 (fexit)")],
        ))
        .hook(HookSpec::new(
            HookKind::Kprobe,
            &[("kprobe_openat2", "do_sys_openat2"), ("kretprobe_openat2", "do_sys_openat2 (return)")],
        ))
        .hook(HookSpec::new(
            HookKind::Tracepoint,
            &[("handle_openat_enter", "syscalls/sys_enter_openat"), ("handle_openat_exit", "syscalls/sys_exit_openat")],
        ))
        .metric(MetricSpec::counter("file_open_total", "File opens (open, openat, openat2, creat)."))
        .metric(MetricSpec::histogram("file_open_duration_seconds", Unit::Seconds, "File open latency."))
        .ring_bytes_per_cpu(128 << 10)
}

crate::loader::skeleton_loader!(FileOpenSkelBuilder);

struct FileOpen {
    by_result: bool,
}

fn decoder(settings: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(FileOpen { by_result: settings.has_label("result") })
}

impl Decoder for FileOpen {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        // every descriptor is `ok`: one key for all of them
        let errno = u64::from(event.ret.min(0).unsigned_abs());
        Ok(Decoded { key: keep(self.by_result, errno), values: [1, event.duration_ns, 0, 0] })
    }

    fn label(&self, _: &str, key: u64) -> String {
        result_label(key as i32)
    }
}

/// `ok` for errno 0 (a descriptor), else the errno's name (`ENOENT`).
pub fn result_label(errno: i32) -> String {
    if errno == 0 {
        return "ok".to_string();
    }
    match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::UnknownErrno => format!("errno_{errno}"),
        errno => format!("{errno:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_name_errnos() {
        assert_eq!(result_label(0), "ok");
        assert_eq!(result_label(2), "ENOENT");
        assert_eq!(result_label(13), "EACCES");
        assert_eq!(result_label(4000), "errno_4000");
    }
}
