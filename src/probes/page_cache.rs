//! `page_cache`: page-cache pages accessed, added (misses) and dirtied,
//! so that the hit ratio is computable as 1 - misses / accesses.
//!
//! Additions and dirtyings have tracepoints on every kernel; accesses have
//! only functions, which need fentry or kprobes. Every hook set therefore
//! carries the tracepoints, and the function hooks add accesses to them:
//! a kernel without fentry and kprobes still counts misses and dirtied
//! pages (hook `tracepoint`), and `page_cache_accesses_total` then has no
//! series at all rather than a zero that would read as a 100 % miss ratio.
//! Each kind of event counts in its own metric (see `Decoder::metrics`).
//!
//! Functions and tracepoints were renamed for folios (5.16, 5.17): the spec
//! names whichever this kernel has, from its BTF.

use std::ops::Range;
use std::sync::Arc;

use super::kernel_btf::KernelBtf;
use super::Builtin;
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/page_cache.skel.rs"));
}
use skel::{types, PageCacheSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

const ACCESS: u64 = types::page_cache_kind::PAGE_CACHE_ACCESS.0 as u64;
const MISS: u64 = types::page_cache_kind::PAGE_CACHE_MISS.0 as u64;
const DIRTY: u64 = types::page_cache_kind::PAGE_CACHE_DIRTY.0 as u64;

/// A hook point that has had two names: (BPF program, target) for the
/// current name, then for the name before it.
type Renamed = [(&'static str, &'static str); 2];

const ADDED: (&str, &str) = ("pc_added", "filemap/mm_filemap_add_to_page_cache");
const DIRTIED: Renamed =
    [("pc_dirty_folio", "writeback/writeback_dirty_folio"), ("pc_dirty_page", "writeback/writeback_dirty_page")];
const ACCESSED_FENTRY: Renamed =
    [("pc_fentry_folio", "folio_mark_accessed (fentry)"), ("pc_fentry_page", "mark_page_accessed (fentry)")];
const ACCESSED_KPROBE: Renamed =
    [("pc_kprobe_folio", "folio_mark_accessed (kprobe)"), ("pc_kprobe_page", "mark_page_accessed (kprobe)")];

/// What this kernel calls the renamed hook points: the index into a
/// `Renamed` pair.
struct Names {
    dirtied: usize,
    accessed: usize,
}

impl Names {
    fn of(kernel: &KernelBtf) -> Names {
        let pick = |names: [&'static str; 2]| usize::from(kernel.first_present(&names) == names[1]);
        Names {
            dirtied: pick(["btf_trace_writeback_dirty_folio", "btf_trace_writeback_dirty_page"]),
            accessed: pick(["folio_mark_accessed", "mark_page_accessed"]),
        }
    }
}

fn spec() -> ProbeSpec {
    spec_for(&Names::of(&KernelBtf::load()))
}

fn spec_for(names: &Names) -> ProbeSpec {
    let summary = "Page-cache pages accessed, added (misses) and dirtied, by cgroup; accesses need fentry or kprobes.";
    let dirtied = DIRTIED[names.dirtied];
    ProbeSpec::new("page_cache", summary, &[], &[])
        .hook(HookSpec::new(HookKind::Fentry, &[ACCESSED_FENTRY[names.accessed], ADDED, dirtied]))
        .hook(HookSpec::new(HookKind::Kprobe, &[ACCESSED_KPROBE[names.accessed], ADDED, dirtied]))
        .hook(HookSpec::new(HookKind::Tracepoint, &[ADDED, dirtied]))
        .metric(MetricSpec::counter(
            "page_cache_accesses_total",
            "Page-cache pages marked accessed (a large folio counts all its pages); only with the fentry or kprobe hook.",
        ))
        .metric(MetricSpec::counter(
            "page_cache_misses_total",
            "Pages added to the page cache: reads and writes that found no cached page, and readahead.",
        ))
        .metric(MetricSpec::counter("page_cache_dirtied_total", "Page-cache pages of files made dirty by writes."))
        .ring_bytes_per_cpu(512 << 10)
        // the kind (access, miss, dirty) indexes the kernel's array
        .aggregated_in_kernel(3)
}

crate::loader::skeleton_loader!(PageCacheSkelBuilder);

struct PageCache;

fn decoder(_: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(PageCache)
}

impl Decoder for PageCache {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        // the kind is never masked: it picks the metric
        Ok(Decoded { key: u64::from(event.kind), values: [event.pages, 0, 0, 0] })
    }

    fn metrics(&self, key: u64) -> Range<usize> {
        match key {
            ACCESS => 0..1,
            MISS => 1..2,
            DIRTY => 2..3,
            _ => 0..0,
        }
    }

    fn label(&self, label: &str, _: u64) -> String {
        // the probe has no labels of its own
        format!("unknown label {label}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(spec: &ProbeSpec, kind: HookKind) -> Vec<&str> {
        spec.hook_of(kind).expect("hook").programs.iter().map(|p| p.target.as_str()).collect()
    }

    #[test]
    fn every_hook_counts_misses_and_dirtied_and_function_hooks_add_accesses() {
        let spec = spec_for(&Names { dirtied: 0, accessed: 0 });
        let kinds: Vec<HookKind> = spec.hooks.iter().map(|h| h.kind).collect();
        assert_eq!(kinds, [HookKind::Fentry, HookKind::Kprobe, HookKind::Tracepoint]);
        assert_eq!(
            targets(&spec, HookKind::Fentry),
            ["folio_mark_accessed (fentry)", "filemap/mm_filemap_add_to_page_cache", "writeback/writeback_dirty_folio"]
        );
        assert_eq!(
            targets(&spec, HookKind::Tracepoint),
            ["filemap/mm_filemap_add_to_page_cache", "writeback/writeback_dirty_folio"]
        );
    }

    #[test]
    fn kernels_before_folios_get_the_old_names() {
        let spec = spec_for(&Names { dirtied: 1, accessed: 1 });
        assert_eq!(targets(&spec, HookKind::Kprobe)[0], "mark_page_accessed (kprobe)");
        assert_eq!(targets(&spec, HookKind::Tracepoint)[1], "writeback/writeback_dirty_page");
    }

    #[test]
    fn each_kind_counts_in_its_own_metric() {
        let decoder = PageCache;
        assert_eq!(decoder.metrics(ACCESS), 0..1);
        assert_eq!(decoder.metrics(MISS), 1..2);
        assert_eq!(decoder.metrics(DIRTY), 2..3);
        assert_eq!(decoder.metrics(7), 0..0);
    }

    /// This kernel (6.18) has folios: the new names.
    #[test]
    fn this_kernel_names_its_hook_points() {
        let kernel = KernelBtf::load();
        if kernel.has("folio_mark_accessed") {
            let names = Names::of(&kernel);
            assert_eq!((names.accessed, names.dirtied), (0, 0));
        }
    }
}
