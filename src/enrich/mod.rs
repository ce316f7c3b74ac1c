//! Label values derived from the cgroup id that every event header carries.
//!
//! The ring reader thread only tells an enricher which ids it has seen (`notice`, never blocking);
//! the work of turning an id into text (walking a filesystem, reading a container runtime's state)
//! happens on the enricher's own thread or at scrape time (`resolve`). The container enricher
//! (`container_id`, `container`, `pod`, `namespace`, `service`) builds on the cgroup one: it names
//! the path that one finds.

pub mod cgroup;
pub mod cgroup_paths;
pub mod container;
pub mod container_path;
pub mod cri;
mod mountinfo;

use std::path::Path;
use std::sync::Arc;

pub use cgroup::{CgroupEnricher, CgroupError, TreeChange};
pub use container::ContainerEnricher;

/// Turns a cgroup id into label values. Implementations are shared between the ring reader thread
/// (which only calls `notice`, and must never block) and scrapes (which call `resolve`).
pub trait Enricher: Send + Sync {
    /// The label names it provides, in order (e.g. ["cgroup"]).
    fn labels(&self) -> &[&'static str];
    /// A new cgroup id was seen on the event path: resolve it soon, while the cgroup still exists.
    /// Must return at once (a bounded queue; when full the id is dropped and resolved at scrape).
    fn notice(&self, cgroup_id: u64);
    /// The label values for the id, in `labels()` order. May block briefly (called at scrape time,
    /// off the event path).
    fn resolve(&self, cgroup_id: u64) -> Resolution;
}

/// What an enricher knows of an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Known(Arc<[String]>),
    /// It cannot be known: the cgroup is gone, or unreadable.
    Gone,
    /// Not yet: ask again at the next scrape.
    Pending,
}

impl Resolution {
    pub fn known(self) -> Option<Arc<[String]>> {
        match self {
            Resolution::Known(values) => Some(values),
            Resolution::Gone | Resolution::Pending => None,
        }
    }
}

/// The `cgroup` enricher for this machine.
pub fn cgroup_enricher() -> Result<Arc<CgroupEnricher>, String> {
    CgroupEnricher::new().map(Arc::new).map_err(|e| e.to_string())
}

/// The container enricher, naming containers through the CRI socket `cri_socket` (None: detected).
pub fn container_enricher(
    cgroups: Arc<CgroupEnricher>,
    cri_socket: Option<&Path>,
) -> Result<Arc<dyn Enricher>, String> {
    ContainerEnricher::new(cgroups, cri_socket)
        .map(|e| Arc::new(e) as Arc<dyn Enricher>)
        .map_err(|e| format!("the sonde-cri thread could not start: {e}"))
}
