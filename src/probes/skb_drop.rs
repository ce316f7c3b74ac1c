//! `skb_drop`: packets the kernel dropped, by drop reason. The reasons'
//! names come from the running kernel's `enum skb_drop_reason` (its BTF):
//! releases add reasons and renumber the ones they have (5.17 started at
//! NOT_SPECIFIED = 0; later kernels put NOT_DROPPED_YET and CONSUMED
//! first). A value the enum lacks (a subsystem's own reasons, in the high
//! 16 bits) is shown as its number.

use std::collections::HashMap;
use std::sync::Arc;

use super::kernel_btf::KernelBtf;
use super::{keep, Builtin};
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/skb_drop.skel.rs"));
}
use skel::{types, SkbDropSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    let summary = "Packets dropped in the kernel (kfree_skb), by the kernel's drop reason.";
    ProbeSpec::new("skb_drop", summary, &["reason"], &["reason"])
        .hook(HookSpec::new(HookKind::BtfTracepoint, &[("skb_drop_btf", "skb/kfree_skb")]))
        .hook(HookSpec::new(HookKind::Tracepoint, &[("skb_drop_tp", "skb/kfree_skb")]))
        .metric(MetricSpec::counter(
            "skb_drops_total",
            "Packets freed as dropped (kfree_skb), by drop reason; unknown where the kernel gives none (before 5.17).",
        ))
        .ring_bytes_per_cpu(256 << 10)
        // the core reasons number about 130 on 7.0; subsystem reasons
        // (the high 16 bits set) take the hash
        .aggregated_in_kernel(256)
}

// Drops happen mostly in softirq context, where the running task is
// whichever one was interrupted: sonde's own threads are no exception, so
// drops while they run are counted too.
crate::loader::skeleton_loader!(SkbDropSkelBuilder, |rodata, _settings| {
    rodata.ignore_tgid = 0;
});

/// The prefix of the drop reasons' enumerator names, left out of labels
/// as the kernel's own tracepoint output leaves it out.
const REASON_PREFIX: &str = "SKB_DROP_REASON_";

/// Reason values to names, as the running kernel defines them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropReasons {
    /// None: the kernel has no drop reasons (every drop is reason 0).
    names: Option<HashMap<u32, String>>,
}

impl DropReasons {
    pub fn from_kernel() -> DropReasons {
        DropReasons::from_enum(KernelBtf::load().enum_values("skb_drop_reason"))
    }

    fn from_enum(values: Option<Vec<(i64, String)>>) -> DropReasons {
        let names = values.map(|values| {
            values
                .into_iter()
                .filter_map(|(value, name)| {
                    let short = name.strip_prefix(REASON_PREFIX).or_else(|| name.strip_prefix("SKB_")).unwrap_or(&name);
                    Some((u32::try_from(value).ok()?, short.to_string()))
                })
                .collect()
        });
        DropReasons { names }
    }

    pub fn name(&self, reason: u32) -> String {
        match &self.names {
            None => "unknown".to_string(),
            Some(names) => names.get(&reason).cloned().unwrap_or_else(|| reason.to_string()),
        }
    }
}

struct SkbDrop {
    by_reason: bool,
    reasons: DropReasons,
}

fn decoder(settings: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(SkbDrop { by_reason: settings.has_label("reason"), reasons: DropReasons::from_kernel() })
}

impl Decoder for SkbDrop {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        Ok(Decoded { key: keep(self.by_reason, u64::from(event.reason)), values: [1, 0, 0, 0] })
    }

    fn label(&self, _: &str, key: u64) -> String {
        self.reasons.name(key as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons() -> DropReasons {
        DropReasons::from_enum(Some(vec![
            (0, "SKB_NOT_DROPPED_YET".into()),
            (1, "SKB_CONSUMED".into()),
            (3, "SKB_DROP_REASON_NO_SOCKET".into()),
            (-1, "NEGATIVE".into()),
        ]))
    }

    #[test]
    fn names_drop_reasons_as_the_kernel_prints_them() {
        let reasons = reasons();
        assert_eq!(reasons.name(3), "NO_SOCKET");
        assert_eq!(reasons.name(1), "CONSUMED");
        assert_eq!(reasons.name(0), "NOT_DROPPED_YET");
    }

    #[test]
    fn reasons_the_kernel_does_not_name_are_numbers() {
        assert_eq!(reasons().name(0x1_0003), "65539");
        assert_eq!(reasons().name(u32::MAX), u32::MAX.to_string());
    }

    #[test]
    fn kernels_without_reasons_count_drops_as_unknown() {
        assert_eq!(DropReasons::from_enum(None).name(0), "unknown");
    }

    /// The running kernel's names, where it has drop reasons (5.17+).
    #[test]
    fn reads_the_running_kernels_reasons() {
        let reasons = DropReasons::from_kernel();
        if KernelBtf::load().has("skb_drop_reason") {
            let names: Vec<String> = (0..512).map(|reason| reasons.name(reason)).collect();
            for wanted in ["NOT_SPECIFIED", "NO_SOCKET"] {
                assert!(names.iter().any(|n| n == wanted), "{wanted} missing from {names:?}");
            }
        } else {
            assert_eq!(reasons.name(0), "unknown");
        }
    }
}
