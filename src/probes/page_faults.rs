//! `page_faults`: page faults taken in user mode, major or minor as the
//! kernel accounts them. handle_mm_fault() is hooked with fexit, or with a
//! kprobe pair where fentry is missing; the x86 exception tracepoint is the
//! last resort and cannot tell major from minor (kind `unknown`).

use std::sync::Arc;

use super::{keep, Builtin};
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/page_faults.skel.rs"));
}
use skel::{types, PageFaultsSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    let summary = "Page faults taken in user mode, by kind (major, minor) and optionally process name.";
    ProbeSpec::new("page_faults", summary, &["kind"], &["kind"])
        .hook(HookSpec::new(HookKind::Fentry, &[("fexit_mm_fault", "handle_mm_fault (fexit)")]))
        .hook(HookSpec::new(
            HookKind::Kprobe,
            &[("kprobe_mm_fault", "handle_mm_fault"), ("kretprobe_mm_fault", "handle_mm_fault (return)")],
        ))
        .hook(HookSpec::new(HookKind::Tracepoint, &[("tp_page_fault_user", "exceptions/page_fault_user")]))
        .metric(MetricSpec::counter(
            "page_faults_total",
            "Page faults taken in user mode; `kind` is major (it waited for I/O), minor, or unknown where the hook \
             cannot tell.",
        ))
        .ring_bytes_per_cpu(256 << 10)
        // the kind (minor, major, unknown) indexes the kernel's array
        .aggregated_in_kernel(3)
}

crate::loader::skeleton_loader!(PageFaultsSkelBuilder);

struct PageFaults {
    by_kind: bool,
}

fn decoder(settings: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(PageFaults { by_kind: settings.has_label("kind") })
}

impl Decoder for PageFaults {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        Ok(Decoded { key: keep(self.by_kind, u64::from(event.kind)), values: [1, 0, 0, 0] })
    }

    fn label(&self, _: &str, key: u64) -> String {
        use types::fault_kind;
        match fault_kind(key as u32) {
            fault_kind::FAULT_MINOR => "minor",
            fault_kind::FAULT_MAJOR => "major",
            _ => "unknown",
        }
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_key_series_and_name_them() {
        let decoder = decoder(&ProbeSettings::defaults(Arc::new(spec())));
        for (kind, name) in [(0, "minor"), (1, "major"), (2, "unknown")] {
            let event = types::event { kind, ..Default::default() };
            // SAFETY: a plain C struct viewed as its bytes.
            let decoded = decoder.decode(unsafe { plain::as_bytes(&event) }).expect("decodes");
            assert_eq!(decoded.values[0], 1);
            assert_eq!(decoder.label("kind", decoded.key), name);
        }
    }
}
