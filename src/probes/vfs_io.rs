//! `vfs_io`: vfs_read()/vfs_write() calls and bytes by process name. The
//! kernel functions are hooked with kretprobes, or with fexit where kprobes
//! are missing.

use super::{comm_key, comm_str, HookKind, HookSpec, MetricKind, MetricSpec, Probe, ProbeSpec};
use crate::config::ProbeConfig;
use crate::events::{decode, DecodeError, EventSink};
use crate::loader;
use crate::metrics::{label_values, Counter, Metrics, SeriesCache};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/vfs_io.skel.rs"));
}
use skel::{types, VfsIoSkelBuilder};

unsafe impl plain::Plain for types::event {}

const CALLS: &str = "vfs_calls_total";
const BYTES: &str = "vfs_bytes_total";

pub const PROBE: Probe = Probe { spec: &SPEC, load, sink };

static SPEC: ProbeSpec = ProbeSpec {
    name: "vfs_io",
    summary: "vfs_read()/vfs_write() calls and bytes moved, by process name and operation.",
    hooks: &[
        HookSpec {
            kind: HookKind::Kprobe,
            programs: &[("kretprobe_vfs_read", "vfs_read (return)"), ("kretprobe_vfs_write", "vfs_write (return)")],
        },
        HookSpec {
            kind: HookKind::Fentry,
            programs: &[("fexit_vfs_read", "vfs_read (fexit)"), ("fexit_vfs_write", "vfs_write (fexit)")],
        },
    ],
    metrics: &[
        MetricSpec {
            name: CALLS,
            kind: MetricKind::Counter,
            help: "vfs_read()/vfs_write() calls, failed ones included.",
        },
        MetricSpec { name: BYTES, kind: MetricKind::Counter, help: "Bytes read or written through the VFS." },
    ],
    labels: &["comm", "op"],
    default_labels: &["comm", "op"],
    ring_bytes_per_cpu: 512 << 10,
};

loader::skeleton_loader!(VfsIoSkelBuilder);

fn op_name(op: u32) -> &'static str {
    if op == types::vfs_op::VFS_OP_WRITE.0 {
        "write"
    } else {
        "read"
    }
}

type Handles = (Counter, Counter);

struct Sink {
    key_comm: bool,
    key_op: bool,
    series: SeriesCache<(u128, u32), Handles>,
    labels: Vec<&'static str>,
}

fn sink(config: &ProbeConfig, metrics: &Metrics) -> Result<Box<dyn EventSink>, prometheus::Error> {
    Ok(Box::new(Sink {
        key_comm: config.has_label("comm"),
        key_op: config.has_label("op"),
        series: super::series(metrics, &SPEC, config)?,
        labels: config.labels.clone(),
    }))
}

impl EventSink for Sink {
    fn handle(&mut self, data: &[u8]) -> Result<(), DecodeError> {
        let event: &types::event = decode(data)?;
        let comm = if self.key_comm { comm_key(&event.comm) } else { 0 };
        let op = if self.key_op { event.op } else { 0 };
        let labels = &self.labels;
        let (count, moved) = self.series.get((comm, op), || {
            label_values(labels, |l| match l {
                "comm" => comm_str(&event.comm),
                _ => op_name(op).to_string(),
            })
        });
        count.add(1);
        if event.ret > 0 {
            moved.add(event.ret as u64);
        }
        Ok(())
    }
}
