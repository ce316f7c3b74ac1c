//! The kernel's reports of cgroups made and removed (`src/bpf/cgroup_paths.bpf.c`), loaded beside the
//! cgroup enricher and read through the agent's ring reader: each record becomes a `TreeChange` the
//! enricher learns, so a cgroup is named when it is made rather than by a walk that may come too late.

use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapHandle};

use super::cgroup::{CgroupEnricher, TreeChange};
use crate::decode::{decode, DecodeError};
use crate::loader::{verifier_log, LoadError, LoadedProgram};
use crate::ring::Sink;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/cgroup_paths.skel.rs"));
}
use skel::{types, CgroupPathsSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::cgroup_change {}

/// The name its ring and counters go by in the agent's own metrics (`probe` label).
pub const NAME: &str = "cgroup_paths";

/// Its ring: about 220 records. Cgroups are made at a rate of a few a second even when pods start in
/// bulk, and the program wakes the reader for every record, so this never fills in practice; a record
/// that finds it full is counted in `lost` and its cgroup named by a walk instead.
const RING_BYTES: u32 = 64 * 1024;

/// `kind` values of `struct cgroup_change`, as in cgroup_paths.bpf.c.
const CHANGE_MADE: u32 = 1;
const CHANGE_REMOVED: u32 = 2;

/// The tracepoints it attaches to, by program.
const PROGRAMS: &[(&str, &str)] = &[("cgroup_made", "cgroup_mkdir"), ("cgroup_removed", "cgroup_rmdir")];

/// The loaded and attached programs.
pub struct CgroupPaths {
    /// Dropping these detaches the programs.
    pub links: Vec<Link>,
    pub ring: MapHandle,
    /// Slot 0: records the ring had no room for.
    pub lost: MapHandle,
    pub programs: Vec<LoadedProgram>,
}

/// Loads and attaches the programs.
pub fn load() -> Result<CgroupPaths, LoadError> {
    let mut storage = MaybeUninit::uninit();
    let mut open = CgroupPathsSkelBuilder::default().open(&mut storage).map_err(LoadError::Open)?;
    open.maps.changes.set_max_entries(RING_BYTES).map_err(LoadError::Open)?;
    let skel = verifier_log::capture(|| open.load()).map_err(|(source, log)| LoadError::Load {
        source,
        detail: verifier_log::reason(&log).unwrap_or_default().to_string(),
        verifier_log: verifier_log::verifier_section(&log).unwrap_or_default(),
    })?;
    let object = skel.object();
    let mut links = Vec::new();
    let mut programs = Vec::new();
    for &(name, tracepoint) in PROGRAMS {
        let prog = object.progs_mut().find(|p| p.name() == name).ok_or_else(|| LoadError::Missing(name.to_string()))?;
        let link = verifier_log::capture(|| prog.attach()).map_err(|(source, log)| LoadError::Attach {
            program: name.to_string(),
            kind: "tp_btf",
            target: tracepoint.to_string(),
            source,
            detail: verifier_log::reason(&log).unwrap_or_default().to_string(),
        })?;
        links.push(link);
        let fd = prog.as_fd().try_clone_to_owned().map_err(|e| LoadError::Open(e.into()))?;
        programs.push(LoadedProgram { name: name.to_string(), fd });
    }
    let handle = |map: &libbpf_rs::Map| MapHandle::try_from(map).map_err(LoadError::Open);
    Ok(CgroupPaths { links, ring: handle(&skel.maps.changes)?, lost: handle(&skel.maps.lost)?, programs })
}

/// Changes waiting while the enricher is busy, at most; past it the reader waits for the enricher
/// rather than drop a name.
const MAX_BACKLOG: usize = 4096;

/// Hands the records to the cgroup enricher, on the ring reader thread.
pub struct PathSink {
    cgroups: Arc<CgroupEnricher>,
    /// Changes not applied yet because a walk or a scrape held the enricher's state.
    backlog: Vec<TreeChange>,
}

impl PathSink {
    pub fn new(cgroups: Arc<CgroupEnricher>) -> Self {
        PathSink { cgroups, backlog: Vec::new() }
    }
}

impl Sink for PathSink {
    fn handle(&mut self, record: &[u8]) -> Result<(), DecodeError> {
        let change: &types::cgroup_change = decode(record)?;
        // A kind this build does not know cannot come from the program it built; nothing to learn.
        if let Some(change) = tree_change(change) {
            self.backlog.push(change);
        }
        if self.backlog.len() >= MAX_BACKLOG {
            self.cgroups.learn(&mut self.backlog);
        } else {
            self.cgroups.try_learn(&mut self.backlog);
        }
        Ok(())
    }

    fn tick(&mut self, _: Instant) {
        if !self.backlog.is_empty() {
            self.cgroups.try_learn(&mut self.backlog);
        }
    }
}

/// The change a record reports; None for a kind this build does not know.
fn tree_change(change: &types::cgroup_change) -> Option<TreeChange> {
    match change.kind {
        CHANGE_MADE => {
            let len = (change.name_len as usize).min(change.name.len());
            let name = change.name[..len].iter().map(|&c| c as u8).collect();
            Some(TreeChange::Made { id: change.id, parent: change.parent_id, name })
        }
        CHANGE_REMOVED => Some(TreeChange::Removed { id: change.id }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32, name: &[u8]) -> types::cgroup_change {
        let mut change =
            types::cgroup_change { id: 7, parent_id: 1, kind, name_len: name.len() as u32, ..Default::default() };
        for (dst, src) in change.name.iter_mut().zip(name) {
            *dst = *src as _;
        }
        change
    }

    #[test]
    fn records_become_changes() {
        assert_eq!(
            tree_change(&record(CHANGE_MADE, b"x\xff")),
            Some(TreeChange::Made { id: 7, parent: 1, name: b"x\xff".to_vec() })
        );
        assert_eq!(tree_change(&record(CHANGE_REMOVED, b"")), Some(TreeChange::Removed { id: 7 }));
        assert_eq!(tree_change(&record(9, b"")), None);
    }

    #[test]
    fn a_name_length_past_the_buffer_is_cut_to_it() {
        let mut change = record(CHANGE_MADE, b"abc");
        change.name_len = u32::MAX;
        let Some(TreeChange::Made { name, .. }) = tree_change(&change) else { panic!("not a made cgroup") };
        assert_eq!(name.len(), change.name.len());
    }
}
