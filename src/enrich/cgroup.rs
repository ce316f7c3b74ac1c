//! The `cgroup` label: a cgroup id turned into that cgroup's path in the cgroup2 hierarchy
//! (`/system.slice/nginx.service`, `/` for the root).
//!
//! On cgroup v2 the id that `bpf_get_current_cgroup_id()` returns is the inode number of the cgroup's
//! directory in the cgroup2 filesystem, so one walk of that tree maps every live id to its path. On
//! 64-bit kernels these numbers are never reused within a boot (the upper half counts wraparounds of
//! the lower), so an id that a walk no longer finds belongs to a cgroup that is gone for good.
//!
//! Ids are named three ways:
//! - At start, one walk names every cgroup that exists.
//! - While sonde runs, the kernel reports each cgroup it makes and removes (`cgroup_paths.bpf.c`,
//!   read by the ring reader, applied through `learn`): a made cgroup is named at once, from its
//!   parent's path and its own name, so a container that lives for milliseconds is named even though
//!   no walk could ever see it. A removed cgroup keeps its path for `GONE_TTL`, so the series of a
//!   container that already exited keep their labels.
//! - Where that program cannot load (an old kernel, no permission), or a report was lost, an id seen
//!   on the event path and not known yet is named by walking the tree again, which finds it only if
//!   the cgroup still exists by then.
//!
//! A walk lists every directory of the hierarchy, and that costs: on the 2-core development VM the
//! cgroup2 mount holds 1 directory, walked in about 25 µs; with 500 cgroups made for the measurement
//! (50 slices of 9 services), a walk of the 501 directories took about 11 ms of CPU, 22 µs per
//! directory, nearly all of it in the kernel's cgroupfs readdir and path lookup (with a busy machine
//! and another agent tracing every syscall). So walks are rate-limited, not done per unknown id: at
//! least `RESCAN_INTERVAL` apart, and further apart on a hierarchy large enough that walking every
//! `RESCAN_INTERVAL` would take more than 1/`WALK_GAP_FACTOR` of a core. Cgroups that a walk no longer
//! finds keep their paths for `GONE_TTL` too.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::mountinfo::{find_cgroup2, Cgroup2Mount};
use super::{Enricher, Resolution};

/// Most cgroups whose paths are kept (a few MB at most). A hierarchy larger than this gets labels for
/// the directories a walk reaches first; the rest resolve to None rather than grow the cache.
pub const MAX_ENTRIES: usize = 65_536;
/// Most ids remembered as gone; past it, a gone id costs a (rate-limited) walk when asked for again.
const MAX_GONE: usize = 65_536;
/// Most removed cgroups whose paths are kept; past it, a removed cgroup's id resolves as gone.
const MAX_DEPARTED: usize = 65_536;
/// How long an id is remembered as gone, and a removed cgroup's path kept. Scrapes keep asking about a
/// gone cgroup only while its series exist; after this they stop, and the entry makes room.
const GONE_TTL: Duration = Duration::from_secs(600);
/// Shortest time between two walks: a burst of unknown ids is answered by one walk, not one each.
const RESCAN_INTERVAL: Duration = Duration::from_millis(200);
/// The time between two walks is also at least this many times the last walk's duration, so that
/// cgroups coming and going without pause cost at most 1/20 of a core (a node with 2,000 cgroups,
/// about 45 ms a walk by the measurement above, walks at most every 0.9 s).
const WALK_GAP_FACTOR: u32 = 20;
/// Ids waiting for the `sonde-cgroup` thread; `notice` drops ids past this rather than wait.
const NOTICE_QUEUE: usize = 4096;

const LABELS: &[&str] = &["cgroup"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(io::Error),
    #[error("no cgroup2 file system is mounted (none in /proc/self/mountinfo), so cgroup ids cannot be named")]
    NoCgroup2,
    #[error("cannot read the cgroup2 root {}: {source}", path.display())]
    Root { path: PathBuf, source: io::Error },
    #[error("the sonde-cgroup thread could not start: {0}")]
    Spawn(io::Error),
}

/// Names cgroup ids by walking the cgroup2 file system; see the module documentation.
pub struct CgroupEnricher {
    shared: Arc<Shared>,
    /// Dropping it stops the thread, which then is joined.
    queue: Option<SyncSender<u64>>,
    worker: Option<JoinHandle<()>>,
}

struct Shared {
    /// Where the cgroup2 file system is read.
    mount_point: PathBuf,
    /// The hierarchy path of `mount_point` (`/` unless a subtree is mounted).
    hierarchy_root: Vec<u8>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Cgroups that exist, as walks found them and the kernel reported them made.
    paths: FxHashMap<u64, Arc<[String]>>,
    /// Cgroups that existed with a known path and were removed since: their events' series keep
    /// their labels for `GONE_TTL`.
    departed: FxHashMap<u64, Departed>,
    /// Ids a complete walk did not find, with the time of that walk, and ids removed unnamed.
    gone: FxHashMap<u64, Instant>,
    last_walk: Option<LastWalk>,
    /// The last walk failed to read the root; kept so a lasting failure is logged once.
    failing: bool,
}

struct Departed {
    values: Arc<[String]>,
    since: Instant,
}

/// A change to the cgroup2 tree as the kernel reports it, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeChange {
    /// The cgroup `id` was made, named `name` (one path component), in the cgroup `parent`.
    Made {
        id: u64,
        parent: u64,
        name: Vec<u8>,
    },
    Removed {
        id: u64,
    },
}

#[derive(Clone, Copy)]
struct LastWalk {
    started: Instant,
    took: Duration,
    /// It saw every directory, so an id it did not find is gone.
    complete: bool,
}

impl CgroupEnricher {
    /// Reads the cgroup2 mount from `/proc/self/mountinfo`.
    pub fn new() -> Result<Self, CgroupError> {
        let mountinfo = std::fs::read("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
        let mount = find_cgroup2(&mountinfo).ok_or(CgroupError::NoCgroup2)?;
        Self::start(mount)
    }

    /// Reads the cgroup2 hierarchy mounted at `root` (for a host's cgroupfs mounted elsewhere).
    pub fn with_root(root: impl Into<PathBuf>) -> Result<Self, CgroupError> {
        Self::start(Cgroup2Mount { mount_point: root.into(), root: b"/".to_vec() })
    }

    /// Walks the tree once, so ids of cgroups that exist at start resolve without waiting, and starts
    /// the thread that resolves noticed ids.
    fn start(mount: Cgroup2Mount) -> Result<Self, CgroupError> {
        let shared = Arc::new(Shared {
            mount_point: mount.mount_point,
            hierarchy_root: mount.root,
            state: Mutex::new(State::default()),
        });
        let first = walk(&shared.mount_point, MAX_ENTRIES)
            .map_err(|source| CgroupError::Root { path: shared.mount_point.clone(), source })?;
        shared.lock().record(first, &shared.hierarchy_root, Instant::now());
        let (queue, noticed) = mpsc::sync_channel(NOTICE_QUEUE);
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name("sonde-cgroup".into())
            .spawn(move || resolve_noticed(&worker_shared, &noticed))
            .map_err(CgroupError::Spawn)?;
        Ok(Self { shared, queue: Some(queue), worker: Some(worker) })
    }

    /// Hands an id to the thread, without waiting; when the queue is full the id waits for a scrape.
    fn defer(&self, cgroup_id: u64) {
        if let Some(queue) = &self.queue {
            let _ = queue.try_send(cgroup_id);
        }
    }

    /// Applies `changes` in order and empties it, unless a walk or a scrape holds the state right now:
    /// then they stay for the next call, so the ring reader thread never waits for a walk.
    pub fn try_learn(&self, changes: &mut Vec<TreeChange>) {
        let state = match self.shared.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        learn_into(state, changes);
    }

    /// Applies `changes` in order and empties it, waiting for the state if it must.
    pub fn learn(&self, changes: &mut Vec<TreeChange>) {
        learn_into(self.shared.lock(), changes);
    }
}

fn learn_into(mut state: MutexGuard<'_, State>, changes: &mut Vec<TreeChange>) {
    let now = Instant::now();
    for change in changes.drain(..) {
        state.learn(change, now);
    }
}

impl Enricher for CgroupEnricher {
    fn labels(&self) -> &[&'static str] {
        LABELS
    }

    fn notice(&self, cgroup_id: u64) {
        self.defer(cgroup_id);
    }

    fn resolve(&self, cgroup_id: u64) -> Resolution {
        let asked = Instant::now();
        let mut state = self.shared.lock();
        if let Some(values) = state.paths.get(&cgroup_id) {
            return Resolution::Known(values.clone());
        }
        if let Some(departed) = state.departed.get(&cgroup_id) {
            if asked.saturating_duration_since(departed.since) < GONE_TTL {
                return Resolution::Known(departed.values.clone());
            }
            return Resolution::Gone;
        }
        if state.gone.contains_key(&cgroup_id) {
            return Resolution::Gone;
        }
        if !state.walk_due(asked) {
            // The cgroup may be newer than the last walk; the thread walks again once that is allowed,
            // in time for the next scrape.
            drop(state);
            self.defer(cgroup_id);
            return Resolution::Pending;
        }
        self.shared.walk_into(&mut state);
        match state.paths.get(&cgroup_id).cloned() {
            Some(values) => Resolution::Known(values),
            None if state.settle_missing(cgroup_id, asked) => Resolution::Gone,
            None => Resolution::Pending,
        }
    }
}

impl Drop for CgroupEnricher {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::error!("the sonde-cgroup thread panicked");
            }
        }
    }
}

/// The `sonde-cgroup` thread: collects unknown ids and settles them with one walk as soon as walking is
/// allowed, so a short-lived cgroup is named while it still exists. Returns when the enricher drops.
fn resolve_noticed(shared: &Shared, noticed: &Receiver<u64>) {
    // Unknown ids with the time they arrived; bounded by the queue's size, the rest wait for a scrape.
    let mut pending: Vec<(u64, Instant)> = Vec::new();
    loop {
        let next = if pending.is_empty() {
            noticed.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            let now = Instant::now();
            let due = shared.lock().next_walk_at();
            if due <= now {
                shared.settle(&mut pending);
                continue;
            }
            noticed.recv_timeout(due - now)
        };
        match next {
            Ok(id) => {
                if pending.len() < NOTICE_QUEUE && !shared.lock().knows(id) {
                    pending.push((id, Instant::now()));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is a whole map swap or
        // a single insert.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Walks if allowed, then drops from `pending` every id that is now known or, by a walk that
    /// started after the id arrived, known to be gone.
    fn settle(&self, pending: &mut Vec<(u64, Instant)>) {
        let mut state = self.lock();
        if state.walk_due(Instant::now()) {
            self.walk_into(&mut state);
        }
        pending.retain(|&(id, arrived)| !state.knows(id) && !state.settle_missing(id, arrived));
        // A walk that could not see everything (the root unreadable, the cache full) will not do
        // better next time; what is left waits for a scrape to ask.
        if state.last_walk.is_some_and(|last| !last.complete) {
            pending.clear();
        }
    }

    /// Walks the tree while holding the state, so concurrent misses wait for this walk instead of
    /// starting their own.
    fn walk_into(&self, state: &mut State) {
        let started = Instant::now();
        match walk(&self.mount_point, MAX_ENTRIES) {
            Ok(found) => {
                state.failing = false;
                state.record(found, &self.hierarchy_root, started);
            }
            Err(err) => {
                if !state.failing {
                    tracing::warn!(root = %self.mount_point.display(), error = %err, "cannot read the cgroup2 tree");
                }
                state.failing = true;
                state.last_walk = Some(LastWalk { started, took: started.elapsed(), complete: false });
            }
        }
    }
}

impl State {
    fn knows(&self, id: u64) -> bool {
        self.paths.contains_key(&id) || self.departed.contains_key(&id) || self.gone.contains_key(&id)
    }

    /// Takes in one change the kernel reported. A made cgroup is named from its parent's path, as a
    /// walk would name it; when the parent is not known (its record was lost, or it lies outside the
    /// mounted tree) or the cache is full, the id is left to a walk.
    fn learn(&mut self, change: TreeChange, now: Instant) {
        match change {
            TreeChange::Made { id, parent, name } => {
                let Some(parent_path) = self.paths.get(&parent) else { return };
                if self.paths.len() >= MAX_ENTRIES && !self.paths.contains_key(&id) {
                    return;
                }
                let path = child_text(&parent_path[0], &name);
                self.gone.remove(&id);
                self.departed.remove(&id);
                if self.paths.get(&id).is_none_or(|known| known[0] != path) {
                    self.paths.insert(id, Arc::from([path]));
                }
            }
            TreeChange::Removed { id } => match self.paths.remove(&id) {
                Some(values) => self.depart(id, values, now),
                None if !self.departed.contains_key(&id) => self.mark_gone(id, now),
                None => {}
            },
        }
    }

    /// Keeps a removed cgroup's path for `GONE_TTL`, making room by forgetting expired ones first.
    fn depart(&mut self, id: u64, values: Arc<[String]>, since: Instant) {
        if self.departed.len() >= MAX_DEPARTED {
            self.departed.retain(|_, d| since.saturating_duration_since(d.since) < GONE_TTL);
        }
        if self.departed.len() < MAX_DEPARTED {
            self.departed.insert(id, Departed { values, since });
        } else {
            self.mark_gone(id, since);
        }
    }

    fn next_walk_at(&self) -> Instant {
        self.last_walk.map_or_else(Instant::now, |last| last.started + RESCAN_INTERVAL.max(last.took * WALK_GAP_FACTOR))
    }

    fn walk_due(&self, now: Instant) -> bool {
        self.next_walk_at() <= now
    }

    /// Marks an id that the last walk did not find as gone, if that walk was complete and started
    /// after `since`, when the cgroup was known to exist; returns whether it did.
    fn settle_missing(&mut self, id: u64, since: Instant) -> bool {
        match self.last_walk {
            Some(last) if last.complete && last.started >= since => {
                self.mark_gone(id, last.started);
                true
            }
            _ => false,
        }
    }

    fn mark_gone(&mut self, id: u64, when: Instant) {
        if self.gone.len() < MAX_GONE {
            self.gone.insert(id, when);
        }
    }

    /// Replaces the paths with what a walk found. Cgroups that disappeared leave the cache (and, when
    /// the walk saw everything, keep their paths as departed); a path that did not change keeps its
    /// `Arc`.
    fn record(&mut self, found: Walk, hierarchy_root: &[u8], started: Instant) {
        let mut paths = FxHashMap::with_capacity_and_hasher(found.dirs.len(), Default::default());
        for (id, relative) in found.dirs {
            let text = crate::labels::render_bytes(&hierarchy_path(hierarchy_root, &relative));
            let values = match self.paths.remove(&id) {
                Some(old) if old[0] == text => old,
                _ => Arc::from([text]),
            };
            paths.insert(id, values);
        }
        let disappeared = std::mem::replace(&mut self.paths, paths);
        self.gone.retain(|_, when| started.saturating_duration_since(*when) < GONE_TTL);
        self.departed.retain(|_, d| started.saturating_duration_since(d.since) < GONE_TTL);
        if found.complete {
            for (id, values) in disappeared {
                self.depart(id, values, started);
            }
        }
        self.last_walk = Some(LastWalk { started, took: started.elapsed(), complete: found.complete });
    }
}

/// Every directory of a cgroup2 tree: its inode number (the cgroup id) and its path below the root
/// (empty for the root itself).
struct Walk {
    dirs: Vec<(u64, Vec<u8>)>,
    /// No directory was skipped for lack of room or an error other than its removal during the walk.
    complete: bool,
}

/// Walks the tree under `root` breadth first, with the directories found so far as the queue. Inode
/// numbers and types come from the directory entries themselves (no stat per directory), and only one
/// directory is open at a time, however wide the tree. Fails only if the root cannot be read.
fn walk(root: &Path, limit: usize) -> io::Result<Walk> {
    let root_id = std::fs::metadata(root)?.ino();
    let mut walked = Walk { dirs: vec![(root_id, Vec::new())], complete: true };
    let mut root_listing = Some(std::fs::read_dir(root)?);
    let mut parent = 0;
    while parent < walked.dirs.len() {
        let listing = match root_listing.take() {
            Some(listing) => Ok(listing),
            None => std::fs::read_dir(root.join(below_root(&walked.dirs[parent].1))),
        };
        match listing {
            Ok(listing) => {
                if !walked.add_subdirectories(listing, parent, limit) {
                    walked.complete = false;
                    break;
                }
            }
            // Removed since its parent was read: nothing below it to find.
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(_) => walked.complete = false,
        }
        parent += 1;
    }
    Ok(walked)
}

impl Walk {
    /// Adds the subdirectories of `dirs[parent]`; false when `limit` left no room for all of them.
    fn add_subdirectories(&mut self, listing: std::fs::ReadDir, parent: usize, limit: usize) -> bool {
        for entry in listing {
            let Ok(entry) = entry else {
                self.complete = false;
                continue;
            };
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => {}
                Ok(_) => continue,
                Err(_) => {
                    self.complete = false;
                    continue;
                }
            }
            if self.dirs.len() >= limit {
                return false;
            }
            let path = child_path(&self.dirs[parent].1, &entry.file_name());
            self.dirs.push((entry.ino(), path));
        }
        true
    }
}

/// A path below the root (`/a/b`) as a path to join onto the root.
fn below_root(relative: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(relative.strip_prefix(b"/").unwrap_or(relative)))
}

fn child_path(parent: &[u8], name: &OsStr) -> Vec<u8> {
    let mut path = Vec::with_capacity(parent.len() + 1 + name.len());
    path.extend_from_slice(parent);
    path.push(b'/');
    path.extend_from_slice(name.as_bytes());
    path
}

/// The rendered path of a cgroup named `name` inside the cgroup whose rendered path is `parent`. The
/// rendering escapes byte by byte and `/` is never part of an escape, so this is the text the walk
/// renders from the whole path.
fn child_text(parent: &str, name: &[u8]) -> String {
    let mut below = Vec::with_capacity(name.len() + 1);
    below.push(b'/');
    below.extend_from_slice(name);
    let mut path = parent.strip_suffix('/').unwrap_or(parent).to_string();
    path.push_str(&crate::labels::render_bytes(&below));
    path
}

/// The cgroup's path as the kernel names it: the mounted subtree's path, then the path below it.
fn hierarchy_path(hierarchy_root: &[u8], relative: &[u8]) -> Vec<u8> {
    let mut path = hierarchy_root.strip_suffix(b"/").unwrap_or(hierarchy_root).to_vec();
    path.extend_from_slice(relative);
    if path.is_empty() {
        path.push(b'/');
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory standing in for a cgroup2 root, removed when dropped.
    struct TempTree(PathBuf);

    impl TempTree {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("sonde-enrich-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        /// Creates a directory (with a file beside it, as cgroupfs has) and returns its id.
        fn mkdir(&self, relative: &str) -> u64 {
            let path = self.0.join(relative);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("cgroup.procs"), b"").unwrap();
            id_of(&path)
        }
    }

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn id_of(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    fn path_of(enricher: &CgroupEnricher, id: u64) -> Option<String> {
        enricher.resolve(id).known().map(|values| values[0].clone())
    }

    /// Sleeps until the enricher may walk again.
    fn wait_until_walk_due(enricher: &CgroupEnricher) {
        let due = enricher.shared.lock().next_walk_at();
        std::thread::sleep(due.saturating_duration_since(Instant::now()) + Duration::from_millis(10));
    }

    /// Polls until the thread has put `id` in the cache.
    fn wait_until_cached(enricher: &CgroupEnricher, id: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !enricher.shared.lock().paths.contains_key(&id) {
            assert!(Instant::now() < deadline, "the thread did not resolve id {id}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn known_ids_resolve_to_their_paths() {
        let tree = TempTree::new();
        let web = tree.mkdir("system.slice/nginx.service");
        let slice = id_of(&tree.0.join("system.slice"));
        let enricher = CgroupEnricher::with_root(&tree.0).unwrap();
        assert_eq!(enricher.labels(), ["cgroup"]);
        assert_eq!(path_of(&enricher, id_of(&tree.0)).as_deref(), Some("/"));
        assert_eq!(path_of(&enricher, slice).as_deref(), Some("/system.slice"));
        assert_eq!(path_of(&enricher, web).as_deref(), Some("/system.slice/nginx.service"));
        let file = id_of(&tree.0.join("system.slice/nginx.service/cgroup.procs"));
        assert_eq!(enricher.resolve(file).known(), None, "only directories are cgroups");
    }

    #[test]
    fn a_directory_created_after_the_first_walk_is_found() {
        let tree = TempTree::new();
        let enricher = CgroupEnricher::with_root(&tree.0).unwrap();
        let late = tree.mkdir("late");
        wait_until_walk_due(&enricher);
        assert_eq!(path_of(&enricher, late).as_deref(), Some("/late"));
    }

    #[test]
    fn a_miss_right_after_a_walk_is_retried_not_remembered_as_gone() {
        let tree = TempTree::new();
        let enricher = CgroupEnricher::with_root(&tree.0).unwrap();
        let fresh = tree.mkdir("fresh");
        // Within the interval this defers to the thread (or, on a slow machine, walks itself).
        let first = path_of(&enricher, fresh);
        assert!(first.is_none() || first.as_deref() == Some("/fresh"));
        wait_until_cached(&enricher, fresh);
        assert_eq!(path_of(&enricher, fresh).as_deref(), Some("/fresh"));
    }

    #[test]
    fn noticed_ids_are_resolved_by_the_thread() {
        let tree = TempTree::new();
        let enricher = CgroupEnricher::with_root(&tree.0).unwrap();
        let noticed = tree.mkdir("a/b");
        enricher.notice(noticed);
        wait_until_cached(&enricher, noticed);
        assert_eq!(path_of(&enricher, noticed).as_deref(), Some("/a/b"));
    }

    #[test]
    fn a_removed_directory_leaves_the_cache_but_keeps_its_path() {
        let tree = TempTree::new();
        let doomed = tree.mkdir("doomed");
        let enricher = CgroupEnricher::with_root(&tree.0).unwrap();
        assert_eq!(path_of(&enricher, doomed).as_deref(), Some("/doomed"));
        // Created first: file systems other than cgroupfs may give a freed inode number to the next
        // directory.
        let newcomer = tree.mkdir("newcomer");
        std::fs::remove_dir_all(tree.0.join("doomed")).unwrap();
        wait_until_walk_due(&enricher);
        // The miss on the new id walks the tree, which no longer has the removed directory.
        assert_eq!(path_of(&enricher, newcomer).as_deref(), Some("/newcomer"));
        assert!(!enricher.shared.lock().paths.contains_key(&doomed));
        assert!(enricher.shared.lock().departed.contains_key(&doomed));
        assert_eq!(path_of(&enricher, doomed).as_deref(), Some("/doomed"), "series of a removed cgroup keep it");
    }

    /// Ids no file system hands out, for cgroups only the learned changes tell of.
    const MADE: u64 = 1 << 62;

    fn made(id: u64, parent: u64, name: &[u8]) -> TreeChange {
        TreeChange::Made { id, parent, name: name.to_vec() }
    }

    #[test]
    fn learned_cgroups_resolve_without_a_walk() {
        let tree = TempTree::new();
        let enricher = CgroupEnricher::with_root(&tree.0).unwrap();
        let walked = enricher.shared.lock().last_walk.unwrap().started;
        let root = id_of(&tree.0);
        let mut changes = vec![made(MADE, root, b"pod"), made(MADE + 1, MADE, b"ctr\\\xff")];
        enricher.learn(&mut changes);
        assert!(changes.is_empty());
        assert_eq!(path_of(&enricher, MADE).as_deref(), Some("/pod"));
        assert_eq!(path_of(&enricher, MADE + 1).as_deref(), Some("/pod/ctr\\\\\\xff"), "rendered as a walk does");
        assert_eq!(enricher.shared.lock().last_walk.unwrap().started, walked, "no walk");
    }

    #[test]
    fn a_learned_cgroup_stays_named_after_its_removal_until_the_ttl() {
        let tree = TempTree::new();
        let enricher = CgroupEnricher::with_root(&tree.0).unwrap();
        let mut changes = vec![made(MADE, id_of(&tree.0), b"job"), TreeChange::Removed { id: MADE }];
        enricher.learn(&mut changes);
        assert_eq!(path_of(&enricher, MADE).as_deref(), Some("/job"));
        // A walk does not find it, and does not forget it.
        wait_until_walk_due(&enricher);
        let never = MADE + 99;
        assert_eq!(enricher.resolve(never), Resolution::Gone);
        assert_eq!(path_of(&enricher, MADE).as_deref(), Some("/job"));
        let Some(expired) = Instant::now().checked_sub(GONE_TTL + Duration::from_secs(1)) else { return };
        enricher.shared.lock().departed.get_mut(&MADE).unwrap().since = expired;
        assert_eq!(enricher.resolve(MADE), Resolution::Gone, "kept for GONE_TTL only");
    }

    #[test]
    fn a_cgroup_of_an_unknown_parent_is_left_to_a_walk() {
        let mut state = State::default();
        state.learn(made(MADE, 12345, b"orphan"), Instant::now());
        assert!(!state.knows(MADE));
        state.learn(TreeChange::Removed { id: MADE }, Instant::now());
        assert!(state.gone.contains_key(&MADE), "removed unnamed: gone, without a walk");
    }

    #[test]
    fn learning_is_bounded() {
        let now = Instant::now();
        let mut state = State::default();
        state.paths.insert(1, Arc::from([String::from("/")]));
        for id in 2..MAX_ENTRIES as u64 + 1 {
            state.paths.insert(id, Arc::from([format!("/{id}")]));
        }
        state.learn(made(MADE, 1, b"one-too-many"), now);
        assert!(!state.paths.contains_key(&MADE), "the cache is full");

        let mut state = State::default();
        let values: Arc<[String]> = Arc::from([String::from("/x")]);
        for id in 0..MAX_DEPARTED as u64 {
            state.departed.insert(id, Departed { values: values.clone(), since: now });
        }
        state.paths.insert(MADE, values.clone());
        state.learn(TreeChange::Removed { id: MADE }, now);
        assert_eq!(state.departed.len(), MAX_DEPARTED);
        assert!(state.gone.contains_key(&MADE), "no room: remembered as gone");

        let Some(expired) = now.checked_sub(GONE_TTL + Duration::from_secs(1)) else { return };
        state.departed.values_mut().for_each(|d| d.since = expired);
        state.paths.insert(MADE + 1, values);
        state.learn(TreeChange::Removed { id: MADE + 1 }, now);
        assert_eq!(state.departed.len(), 1, "expired entries make room");
        assert!(state.departed.contains_key(&(MADE + 1)));
    }

    #[test]
    fn a_busy_enricher_keeps_changes_for_later() {
        let tree = TempTree::new();
        let enricher = CgroupEnricher::with_root(&tree.0).unwrap();
        let mut changes = vec![made(MADE, id_of(&tree.0), b"later")];
        let held = enricher.shared.lock();
        enricher.try_learn(&mut changes);
        assert_eq!(changes.len(), 1, "not applied while the state is held");
        drop(held);
        enricher.try_learn(&mut changes);
        assert!(changes.is_empty());
        assert_eq!(path_of(&enricher, MADE).as_deref(), Some("/later"));
    }

    #[test]
    fn a_gone_id_does_not_walk_again() {
        let tree = TempTree::new();
        let enricher = CgroupEnricher::with_root(&tree.0).unwrap();
        wait_until_walk_due(&enricher);
        let never = u64::MAX - 7;
        assert_eq!(enricher.resolve(never).known(), None);
        let walked = enricher.shared.lock().last_walk.unwrap().started;
        assert!(enricher.shared.lock().gone.contains_key(&never));
        wait_until_walk_due(&enricher);
        assert_eq!(enricher.resolve(never).known(), None);
        assert_eq!(enricher.shared.lock().last_walk.unwrap().started, walked, "no second walk");
    }

    #[test]
    fn notice_never_blocks_even_when_the_queue_is_full() {
        let tree = TempTree::new();
        let enricher = CgroupEnricher::with_root(&tree.0).unwrap();
        // Holding the state stalls the thread at its first id, so the queue fills and stays full.
        let held = enricher.shared.lock();
        let start = Instant::now();
        for id in 0..100_000 {
            enricher.notice(1_000_000 + id);
        }
        let elapsed = start.elapsed();
        let queue = enricher.queue.as_ref().unwrap();
        assert!(queue.try_send(1).is_err(), "the queue is full");
        drop(held);
        assert!(elapsed < Duration::from_secs(1), "100,000 notices took {elapsed:?}");
    }

    #[test]
    fn drop_stops_the_thread_promptly() {
        let tree = TempTree::new();
        let enricher = CgroupEnricher::with_root(&tree.0).unwrap();
        for id in 0..100 {
            enricher.notice(5_000_000 + id);
        }
        let start = Instant::now();
        drop(enricher);
        assert!(start.elapsed() < RESCAN_INTERVAL * 2, "drop took {:?}", start.elapsed());
    }

    #[test]
    fn the_cache_is_bounded() {
        let tree = TempTree::new();
        for i in 0..5 {
            tree.mkdir(&format!("c{i}"));
        }
        let found = walk(&tree.0, 3).unwrap();
        assert_eq!(found.dirs.len(), 3);
        assert!(!found.complete, "a truncated walk proves nothing about missing ids");
        let mut state = State::default();
        let started = Instant::now();
        state.paths.insert(42, Arc::from([String::from("/old")]));
        state.record(found, b"/", started);
        assert_eq!(state.paths.len(), 3);
        assert!(!state.settle_missing(43, started));
        assert!(state.gone.is_empty());
    }

    #[test]
    fn slow_walks_are_spaced_further_apart() {
        let started = Instant::now();
        let after = |took| State { last_walk: Some(LastWalk { started, took, complete: true }), ..State::default() };
        assert_eq!(after(Duration::from_micros(30)).next_walk_at(), started + RESCAN_INTERVAL);
        assert_eq!(after(Duration::from_millis(50)).next_walk_at(), started + Duration::from_secs(1));
    }

    #[test]
    fn unreadable_root_is_an_error() {
        let missing = std::env::temp_dir().join(format!("sonde-enrich-missing-{}", std::process::id()));
        assert!(matches!(CgroupEnricher::with_root(&missing), Err(CgroupError::Root { .. })));
    }

    #[test]
    fn paths_below_a_mounted_subtree_start_with_its_path() {
        assert_eq!(hierarchy_path(b"/", b""), b"/");
        assert_eq!(hierarchy_path(b"/", b"/a/b"), b"/a/b");
        assert_eq!(hierarchy_path(b"/kubepods", b""), b"/kubepods");
        assert_eq!(hierarchy_path(b"/kubepods", b"/pod1"), b"/kubepods/pod1");
    }

    #[test]
    fn names_with_any_bytes_are_rendered_losslessly() {
        let tree = TempTree::new();
        let odd = tree.0.join(OsString::from_vec(b"we\xffird\\name\tx".to_vec()));
        std::fs::create_dir(&odd).unwrap();
        let enricher = CgroupEnricher::with_root(&tree.0).unwrap();
        assert_eq!(path_of(&enricher, id_of(&odd)).as_deref(), Some("/we\\xffird\\\\name\\x09x"));
    }

    /// This process's cgroup on the running kernel's cgroup2 file system.
    #[test]
    fn resolves_this_process_cgroup_on_the_real_machine() {
        let mountinfo = std::fs::read("/proc/self/mountinfo").unwrap();
        let Some(mount) = find_cgroup2(&mountinfo) else {
            println!("skipped: no cgroup2 file system is mounted");
            return;
        };
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = cgroups.lines().find_map(|l| l.strip_prefix("0::")).expect("a 0:: line with cgroup2 mounted");
        let dir = mount.mount_point.join(own.trim_start_matches('/'));
        let enricher = CgroupEnricher::new().unwrap();
        assert_eq!(path_of(&enricher, id_of(&dir)).as_deref(), Some(own));
    }

    /// A child cgroup on the real cgroup2 file system: ids come from directory entries there, and must
    /// match the inode numbers that stat reports.
    #[test]
    fn resolves_a_new_cgroup_on_the_real_machine() {
        let mountinfo = std::fs::read("/proc/self/mountinfo").unwrap();
        let Some(mount) = find_cgroup2(&mountinfo) else {
            println!("skipped: no cgroup2 file system is mounted");
            return;
        };
        let name = format!("sonde-enrich-test-{}", std::process::id());
        let dir = mount.mount_point.join(&name);
        if let Err(err) = std::fs::create_dir(&dir) {
            println!("skipped: cannot create a cgroup at {} ({err}); needs root", dir.display());
            return;
        }
        // Nothing here may panic before the cgroup is removed again.
        let found = CgroupEnricher::new().map(|enricher| path_of(&enricher, id_of(&dir)));
        std::fs::remove_dir(&dir).unwrap();
        let found = found.unwrap();
        assert_eq!(found, Some(format!("/{name}")));
    }
}
