//! Label values from outside the event: enrichers keyed by the cgroup id in
//! every record header.

use std::sync::Arc;

/// Turns a cgroup id into label values. Implementations are shared between
/// the ring reader thread (which only calls `notice`, and must never block)
/// and scrapes (which call `resolve`).
pub trait Enricher: Send + Sync {
    /// The label names it provides, in order (e.g. ["cgroup"]).
    fn labels(&self) -> &[&'static str];
    /// A new cgroup id was seen on the event path: resolve it soon, while
    /// the cgroup still exists. Returns at once.
    fn notice(&self, cgroup_id: u64);
    /// The label values for the id, in `labels()` order, or None when it
    /// cannot be known. May block briefly (called at scrape time).
    fn resolve(&self, cgroup_id: u64) -> Option<Arc<[String]>>;
}

/// The `cgroup` enricher for this machine.
pub fn cgroup_enricher() -> Result<Arc<dyn Enricher>, String> {
    Err("the cgroup enricher is not built yet".into())
}
