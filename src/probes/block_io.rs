//! `block_io`: block requests from issue to the driver until completion:
//! latency and bytes by disk and operation. Disks are named in user space
//! from their device numbers (see `disk_names`).

use std::sync::Arc;

use super::disk_names::{DiskNames, SYSFS_DEV_BLOCK};
use super::kernel_btf::KernelBtf;
use super::{keep, Builtin};
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec, Unit};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/block_io.skel.rs"));
}
use skel::{types, BlockIoSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    let summary = "Block requests from issue to completion: latency and bytes, by disk and operation.";
    ProbeSpec::new("block_io", summary, &["disk", "op"], &["disk", "op"])
        .hook(HookSpec::new(
            HookKind::BtfTracepoint,
            &[("handle_rq_issue", "block/block_rq_issue"), ("handle_rq_complete", "block/block_rq_complete")],
        ))
        .hook(HookSpec::new(
            HookKind::Tracepoint,
            &[("tp_rq_issue", "block/block_rq_issue"), ("tp_rq_complete", "block/block_rq_complete")],
        ))
        .metric(MetricSpec::counter(
            "block_io_bytes_total",
            "Bytes of completed block requests (for discards, the bytes discarded).",
        ))
        .metric(MetricSpec::histogram(
            "block_io_latency_seconds",
            Unit::Seconds,
            "Time from a block request's issue to the driver until its completion.",
        ))
        .ring_bytes_per_cpu(256 << 10)
        // keys hold a device number: a hash, not an array
        .aggregated_in_kernel(0)
}

crate::loader::skeleton_loader!(BlockIoSkelBuilder, |rodata, settings| {
    rodata.want_disk = settings.has_label("disk");
    rodata.want_op = settings.has_label("op");
    rodata.issue_has_queue = issue_has_queue(&KernelBtf::load());
});

/// Whether this kernel's `block_rq_issue` passes the request's queue before
/// the request (5.10: context, queue, request; 5.11 on: context, request).
fn issue_has_queue(kernel: &KernelBtf) -> bool {
    kernel.param_count("btf_trace_block_rq_issue") == Some(3)
}

/// The key: the disk's device number above the op's byte, as the kernel
/// builds it when it aggregates.
const DEV_SHIFT: u32 = types::block_key_layout::KEY_DEV_SHIFT.0;
const OP_MASK: u64 = (1 << DEV_SHIFT) - 1;

struct BlockIo {
    by_disk: bool,
    by_op: bool,
    names: DiskNames,
}

fn decoder(settings: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(BlockIo {
        by_disk: settings.has_label("disk"),
        by_op: settings.has_label("op"),
        names: DiskNames::new(SYSFS_DEV_BLOCK),
    })
}

impl Decoder for BlockIo {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        let key = keep(self.by_disk, u64::from(event.dev)) << DEV_SHIFT | keep(self.by_op, u64::from(event.op));
        Ok(Decoded { key, values: [u64::from(event.bytes), event.latency_ns, 0, 0] })
    }

    fn label(&self, label: &str, key: u64) -> String {
        match label {
            "disk" => self.names.name((key >> DEV_SHIFT) as u32),
            _ => op_name(key & OP_MASK).to_string(),
        }
    }
}

fn op_name(op: u64) -> &'static str {
    use types::block_op;
    match block_op(op as u32) {
        block_op::BLOCK_OP_READ => "read",
        block_op::BLOCK_OP_WRITE => "write",
        block_op::BLOCK_OP_FLUSH => "flush",
        block_op::BLOCK_OP_DISCARD => "discard",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_records_key_like_the_kernel_and_name_their_ops() {
        let settings = ProbeSettings::defaults(Arc::new(spec()));
        let decoder = decoder(&settings);
        let mut event = types::event { bytes: 4096, latency_ns: 1500, op: 1, ..Default::default() };
        event.dev = 254 << 20 | 7;
        // SAFETY: a plain C struct viewed as its bytes.
        let record = unsafe { plain::as_bytes(&event) };
        let decoded = decoder.decode(record).expect("decodes");
        assert_eq!(decoded.key, (254 << 20 | 7) << 8 | 1);
        assert_eq!(decoded.values[..2], [4096, 1500]);
        assert_eq!(decoder.label("op", decoded.key), "write");
        assert_eq!(decoder.label("op", 2), "flush");
        assert_eq!(decoder.label("op", 3), "discard");
        assert_eq!(decoder.label("op", 4), "other");
        assert_eq!(decoder.label("op", 0), "read");
    }

    #[test]
    fn labels_that_are_off_do_not_split_series() {
        let mut settings = ProbeSettings::defaults(Arc::new(spec()));
        settings.labels = vec!["op".into()];
        let decoder = decoder(&settings);
        let event = types::event { dev: 8 << 20, op: 3, ..Default::default() };
        // SAFETY: a plain C struct viewed as its bytes.
        let key = decoder.decode(unsafe { plain::as_bytes(&event) }).expect("decodes").key;
        assert_eq!(key, 3);
    }
}
