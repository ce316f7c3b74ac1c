//! The labels `container_id`, `container`, `pod`, `namespace` and `service`: who a cgroup id belongs
//! to.
//!
//! The id becomes a path through the `cgroup` enricher; the path gives the container id and the
//! systemd service ([`container_path`](super::container_path)); the CRI runtime (containerd, CRI-O)
//! names the container, its pod and the pod's namespace — what the kubelet itself knows, with no
//! Kubernetes API access. Names are cached by container id. A container the cache lacks is looked up
//! by the `sonde-cri` thread (never on the ring thread or in a scrape), with one listing of the
//! runtime's pods and containers that answers every miss since the last one; listings are at least
//! [`MIN_REFRESH_INTERVAL`] apart, and each replaces the cache, so containers that went leave it.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};

use super::container_path::identify;
use super::cri::{
    CriConnection, CriError, ListContainersRequest, ListContainersResponse, ListPodSandboxRequest,
    ListPodSandboxResponse, RUNTIME_SERVICE,
};
use super::{CgroupEnricher, Enricher, Resolution};
use crate::labels::render_bytes;

/// The labels, in the order of their values.
pub const LABELS: &[&str] = &["container_id", "container", "pod", "namespace", "service"];

/// Where containerd and CRI-O listen by default, tried in this order when no `cri_socket` is set.
pub const CRI_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/containerd/containerd.sock",
    "/var/run/crio/crio.sock",
];

/// Shortest time between two listings: a burst of new containers costs one.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(500);
/// How often the cache is listed again while nothing is missing, so gone containers leave it.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Deadline of the connection and of each call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Most containers kept: a node runs a few hundred at most.
const MAX_CONTAINERS: usize = 16_384;
/// Most ids remembered as unknown to the runtime.
const MAX_UNKNOWN: usize = 16_384;
/// How long an id the runtime did not know is answered without names before it is asked again.
const UNKNOWN_TTL: Duration = Duration::from_secs(300);
/// Requests waiting for the thread; past this `notice` drops them and a scrape asks again.
const QUEUE: usize = 4096;
/// How long a noticed cgroup id waits for the `cgroup` enricher to find its path.
const PATH_WAIT: Duration = Duration::from_secs(5);

/// What the CRI runtime says of a container, as label values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Names {
    container: String,
    pod: String,
    namespace: String,
}

enum Ask {
    /// A cgroup id seen on the event path: name its container while it runs.
    Cgroup(u64),
    /// A container id a scrape could not name.
    Container(String),
}

pub struct ContainerEnricher {
    cgroups: Arc<CgroupEnricher>,
    shared: Arc<Shared>,
    /// None when there is no CRI socket: containers then have ids but no names. Dropping it stops the
    /// thread.
    queue: Option<SyncSender<Ask>>,
    worker: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    containers: FxHashMap<String, Arc<Names>>,
    /// Ids no listing that started after they were asked for had, with when that was.
    unknown: FxHashMap<String, Instant>,
}

impl ContainerEnricher {
    /// Names containers through the CRI socket `socket` (None: the first of [`CRI_SOCKETS`] that
    /// exists; none: ids only, which is logged).
    pub fn new(cgroups: Arc<CgroupEnricher>, socket: Option<&Path>) -> Result<Self, std::io::Error> {
        let socket = match socket {
            Some(path) => Some(path.to_path_buf()),
            None => detect_socket(CRI_SOCKETS.iter().map(Path::new)),
        };
        let shared = Arc::new(Shared::default());
        let Some(socket) = socket else {
            tracing::info!(
                tried = CRI_SOCKETS.join(", "),
                "no CRI socket found: container_id comes from cgroup paths; container, pod and namespace stay empty"
            );
            return Ok(Self { cgroups, shared, queue: None, worker: None });
        };
        tracing::info!(socket = %socket.display(), "naming containers through the CRI socket");
        let (queue, asks) = mpsc::sync_channel(QUEUE);
        let worker = Worker { cgroups: cgroups.clone(), shared: shared.clone(), socket, failing: false };
        let worker = std::thread::Builder::new().name("sonde-cri".into()).spawn(move || worker.run(&asks))?;
        Ok(Self { cgroups, shared, queue: Some(queue), worker: Some(worker) })
    }

    fn ask(&self, ask: Ask) {
        if let Some(queue) = &self.queue {
            let _ = queue.try_send(ask);
        }
    }

    /// The names of a CRI container; None until the thread has asked the runtime.
    fn names(&self, id: &str) -> Option<Names> {
        if self.queue.is_none() {
            return Some(Names::empty());
        }
        let state = self.shared.lock();
        if let Some(names) = state.containers.get(id) {
            return Some(Names::clone(names));
        }
        if state.unknown.contains_key(id) {
            return Some(Names::empty());
        }
        drop(state);
        self.ask(Ask::Container(id.to_string()));
        None
    }
}

impl Enricher for ContainerEnricher {
    fn labels(&self) -> &[&'static str] {
        LABELS
    }

    fn notice(&self, cgroup_id: u64) {
        self.cgroups.notice(cgroup_id);
        self.ask(Ask::Cgroup(cgroup_id));
    }

    fn resolve(&self, cgroup_id: u64) -> Resolution {
        let path = match self.cgroups.resolve(cgroup_id) {
            Resolution::Known(values) => values,
            other => return other,
        };
        let identity = identify(&path[0]);
        let service = identity.service.unwrap_or_default().to_string();
        let Some(container) = identity.container else {
            return Resolution::Known(Arc::from([String::new(), String::new(), String::new(), String::new(), service]));
        };
        let names = if container.runtime.is_cri() { self.names(container.id) } else { Some(Names::empty()) };
        let Some(names) = names else { return Resolution::Pending };
        Resolution::Known(Arc::from([container.id.to_string(), names.container, names.pod, names.namespace, service]))
    }
}

impl Drop for ContainerEnricher {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::error!("the sonde-cri thread panicked");
            }
        }
    }
}

impl Names {
    fn empty() -> Names {
        Names { container: String::new(), pod: String::new(), namespace: String::new() }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a whole map swap or a single insert, so a panicked holder leaves it whole.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The first path that is a socket.
fn detect_socket<'a>(candidates: impl Iterator<Item = &'a Path>) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    candidates
        .into_iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()))
        .map(Path::to_path_buf)
}

/// The `sonde-cri` thread's side.
struct Worker {
    cgroups: Arc<CgroupEnricher>,
    shared: Arc<Shared>,
    socket: PathBuf,
    /// The last listing failed; kept so a lasting failure is logged once.
    failing: bool,
}

/// What the thread is waiting on.
#[derive(Default)]
struct Waiting {
    /// Noticed cgroup ids whose path is not known yet, with when they came.
    cgroups: Vec<(u64, Instant)>,
    /// Container ids to look up, with when they were asked for.
    containers: FxHashMap<String, Instant>,
}

impl Worker {
    fn run(mut self, asks: &Receiver<Ask>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(err) => {
                tracing::error!(error = %err, "the sonde-cri thread cannot start its runtime: containers stay unnamed");
                return;
            }
        };
        let mut waiting = Waiting::default();
        let mut last_listing: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let next_listing = last_listing.map_or(now, |at| at + MIN_REFRESH_INTERVAL);
            let wake = if !waiting.containers.is_empty() {
                next_listing
            } else if !waiting.cgroups.is_empty() {
                now + MIN_REFRESH_INTERVAL / 5
            } else {
                last_listing.map_or(now + PRUNE_INTERVAL, |at| at + PRUNE_INTERVAL)
            };
            match asks.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(ask) => self.take(ask, &mut waiting),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Everything queued meanwhile joins this round.
            while let Ok(ask) = asks.try_recv() {
                self.take(ask, &mut waiting);
            }
            self.settle_paths(&mut waiting);
            let now = Instant::now();
            let due = last_listing.is_none_or(|at| now >= at + MIN_REFRESH_INTERVAL);
            let prune =
                last_listing.is_some_and(|at| now >= at + PRUNE_INTERVAL) && !self.shared.lock().containers.is_empty();
            if due && (!waiting.containers.is_empty() || prune) {
                last_listing = Some(now);
                let listed = runtime.block_on(list(&self.socket));
                self.record(listed, now, &mut waiting);
            }
        }
    }

    fn take(&self, ask: Ask, waiting: &mut Waiting) {
        match ask {
            Ask::Cgroup(id) if waiting.cgroups.len() < QUEUE => waiting.cgroups.push((id, Instant::now())),
            Ask::Cgroup(_) => {}
            Ask::Container(id) => self.want(id, Instant::now(), waiting),
        }
    }

    fn want(&self, id: String, asked: Instant, waiting: &mut Waiting) {
        let state = self.shared.lock();
        if !state.containers.contains_key(&id) && !state.unknown.contains_key(&id) && waiting.containers.len() < QUEUE {
            waiting.containers.entry(id).or_insert(asked);
        }
    }

    /// Turns noticed cgroup ids whose path is known into the container ids to look up.
    fn settle_paths(&self, waiting: &mut Waiting) {
        let cgroups = std::mem::take(&mut waiting.cgroups);
        for (cgroup, came) in cgroups {
            match self.cgroups.resolve(cgroup) {
                Resolution::Known(path) => {
                    if let Some(container) = identify(&path[0]).container.filter(|c| c.runtime.is_cri()) {
                        self.want(container.id.to_string(), came, waiting);
                    }
                }
                Resolution::Pending if came.elapsed() < PATH_WAIT => waiting.cgroups.push((cgroup, came)),
                Resolution::Pending | Resolution::Gone => {}
            }
        }
    }

    /// Replaces the cache with a listing; containers asked for before it started and not in it are
    /// unknown to the runtime (a container is listed from its creation, before any process runs).
    fn record(
        &mut self,
        listed: Result<FxHashMap<String, Arc<Names>>, CriError>,
        started: Instant,
        waiting: &mut Waiting,
    ) {
        let mut state = self.shared.lock();
        match listed {
            Ok(containers) => {
                if self.failing {
                    tracing::info!(socket = %self.socket.display(), "the CRI runtime answers again");
                }
                self.failing = false;
                state.containers = containers;
            }
            Err(err) => {
                if !self.failing {
                    tracing::warn!(socket = %self.socket.display(), error = %err, "cannot list containers: their container, pod and namespace labels stay empty");
                }
                self.failing = true;
            }
        }
        let asked_before: Vec<String> =
            waiting.containers.iter().filter(|(_, asked)| **asked <= started).map(|(id, _)| id.clone()).collect();
        for id in asked_before {
            waiting.containers.remove(&id);
            if !state.containers.contains_key(&id) && state.unknown.len() < MAX_UNKNOWN {
                state.unknown.insert(id, started);
            }
        }
        state.unknown.retain(|_, when| started.saturating_duration_since(*when) < UNKNOWN_TTL);
    }
}

/// The runtime's containers with their names, pods and namespaces, from one connection.
async fn list(socket: &Path) -> Result<FxHashMap<String, Arc<Names>>, CriError> {
    let mut connection = CriConnection::connect(socket, CALL_TIMEOUT).await?;
    let pods: ListPodSandboxResponse =
        connection.call(RUNTIME_SERVICE, "ListPodSandbox", &ListPodSandboxRequest {}).await?;
    let containers: ListContainersResponse =
        connection.call(RUNTIME_SERVICE, "ListContainers", &ListContainersRequest {}).await?;
    Ok(names_of(pods, containers))
}

/// Joins containers to their pods, as label values, keeping at most [`MAX_CONTAINERS`].
fn names_of(pods: ListPodSandboxResponse, containers: ListContainersResponse) -> FxHashMap<String, Arc<Names>> {
    let pods: FxHashMap<String, (String, String)> = pods
        .items
        .into_iter()
        .map(|pod| {
            let meta = pod.metadata.unwrap_or_default();
            (pod.id, (render_bytes(meta.name.as_bytes()), render_bytes(meta.namespace.as_bytes())))
        })
        .collect();
    let mut seen = FxHashSet::default();
    containers
        .containers
        .into_iter()
        .filter(|c| seen.insert(c.id.clone()))
        .take(MAX_CONTAINERS)
        .map(|c| {
            let (pod, namespace) = pods.get(&c.pod_sandbox_id).cloned().unwrap_or_default();
            let container = render_bytes(c.metadata.unwrap_or_default().name.as_bytes());
            (c.id, Arc::new(Names { container, pod, namespace }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::super::cri::{fake, Container, ContainerMetadata, PodSandbox, PodSandboxMetadata};
    use super::*;

    const POD: &str = "kubepods/besteffort/pod5b6fa2d0-1c7e-4f3a-9d2b-8e4c6a0f1b3d";
    const APP: &str = "3f1c9a0b7e6d5c4b3a29180716f5e4d3c2b1a09f8e7d6c5b4a3928170615f4e3";
    const STRANGER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const DOCKER: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    /// A directory tree standing in for the cgroup2 hierarchy: ids are its directories' inodes.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            let dir = std::env::temp_dir().join(format!("sonde-containers-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Tree(dir)
        }

        fn cgroup(&self, path: &str) -> u64 {
            let dir = self.0.join(path);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::metadata(&dir).unwrap().ino()
        }

        fn enricher(&self, socket: Option<&Path>) -> ContainerEnricher {
            ContainerEnricher::new(Arc::new(CgroupEnricher::with_root(&self.0).unwrap()), socket).unwrap()
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Asks until the answer is no longer pending, as scrapes do.
    fn settled(enricher: &ContainerEnricher, id: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match enricher.resolve(id) {
                Resolution::Known(values) => return values.to_vec(),
                Resolution::Gone => panic!("cgroup {id} gone"),
                Resolution::Pending => {
                    assert!(Instant::now() < deadline, "cgroup {id} still pending");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn values(list: [&str; 5]) -> Vec<String> {
        list.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn pods_containers_hosts_and_strangers_get_their_labels() {
        let tree = Tree::new("labels");
        let app = tree.cgroup(&format!("{POD}/{APP}"));
        let stranger = tree.cgroup(&format!("{POD}/{STRANGER}"));
        let docker = tree.cgroup(&format!("docker/{DOCKER}"));
        let nginx = tree.cgroup("system.slice/nginx.service");
        let runtime = fake::Server::start("labels");
        runtime.set(&[("p1", "web", "shop")], &[(APP, "p1", "app")]);
        let enricher = tree.enricher(Some(&runtime.socket));
        assert_eq!(enricher.labels(), LABELS);
        assert_eq!(settled(&enricher, app), values([APP, "app", "web", "shop", ""]));
        // Not in the runtime's list: an id without names, asked once.
        let lists = runtime.lists();
        assert_eq!(settled(&enricher, stranger), values([STRANGER, "", "", "", ""]));
        assert_eq!(settled(&enricher, stranger), values([STRANGER, "", "", "", ""]));
        assert_eq!(runtime.lists(), lists + 1, "one listing for the unknown container, then remembered");
        // Docker's own containers and host processes are answered without asking the runtime.
        let lists = runtime.lists();
        assert_eq!(enricher.resolve(docker).known().unwrap().to_vec(), values([DOCKER, "", "", "", ""]));
        assert_eq!(enricher.resolve(nginx).known().unwrap().to_vec(), values(["", "", "", "", "nginx.service"]));
        assert_eq!(runtime.lists(), lists);
    }

    #[test]
    fn noticed_containers_are_named_before_any_scrape_and_gone_ones_leave_the_cache() {
        let tree = Tree::new("notice");
        let app = tree.cgroup(&format!("{POD}/{APP}"));
        let runtime = fake::Server::start("notice");
        runtime.set(&[("p1", "web", "shop")], &[(APP, "p1", "app")]);
        let enricher = tree.enricher(Some(&runtime.socket));
        enricher.notice(app);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !enricher.shared.lock().containers.contains_key(APP) {
            assert!(Instant::now() < deadline, "the noticed container was not looked up");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The container goes; the next listing (for another miss) drops it.
        runtime.set(&[("p1", "web", "shop")], &[(STRANGER, "p1", "sidecar")]);
        let sidecar = tree.cgroup(&format!("{POD}/{STRANGER}"));
        assert_eq!(settled(&enricher, sidecar), values([STRANGER, "sidecar", "web", "shop", ""]));
        assert!(!enricher.shared.lock().containers.contains_key(APP));
    }

    #[test]
    fn a_runtime_that_does_not_answer_leaves_names_empty() {
        let tree = Tree::new("absent");
        let app = tree.cgroup(&format!("{POD}/{APP}"));
        let nowhere = tree.0.join("no.sock");
        let enricher = tree.enricher(Some(&nowhere));
        assert_eq!(settled(&enricher, app), values([APP, "", "", "", ""]));
    }

    #[test]
    fn notice_never_blocks() {
        let tree = Tree::new("queue");
        let runtime = fake::Server::start("queue");
        let enricher = tree.enricher(Some(&runtime.socket));
        // Holding the cache stalls the thread, so the queue fills and stays full.
        let held = enricher.shared.lock();
        let start = Instant::now();
        for id in 0..100_000 {
            enricher.notice(1_000_000 + id);
        }
        drop(held);
        assert!(start.elapsed() < Duration::from_secs(1), "100,000 notices took {:?}", start.elapsed());
    }

    fn pod(id: &str, name: &str, namespace: &str) -> PodSandbox {
        PodSandbox {
            id: id.into(),
            metadata: Some(PodSandboxMetadata { name: name.into(), namespace: namespace.into() }),
        }
    }

    fn container(id: &str, pod: &str, name: &str) -> Container {
        Container { id: id.into(), pod_sandbox_id: pod.into(), metadata: Some(ContainerMetadata { name: name.into() }) }
    }

    #[test]
    fn containers_are_joined_to_their_pods() {
        let pods = ListPodSandboxResponse { items: vec![pod("p1", "web", "shop"), pod("p2", "db", "store")] };
        let containers = ListContainersResponse {
            containers: vec![
                container("c1", "p1", "app"),
                container("c2", "p2", "pg"),
                container("c3", "p9", "orphan"),
            ],
        };
        let names = names_of(pods, containers);
        let get = |id: &str| Names::clone(&names[id]);
        assert_eq!(get("c1"), Names { container: "app".into(), pod: "web".into(), namespace: "shop".into() });
        assert_eq!(get("c2"), Names { container: "pg".into(), pod: "db".into(), namespace: "store".into() });
        assert_eq!(get("c3"), Names { container: "orphan".into(), pod: String::new(), namespace: String::new() });
    }

    #[test]
    fn names_are_rendered_like_every_label_value() {
        let pods = ListPodSandboxResponse { items: vec![pod("p1", "overflow", "a\tb")] };
        let containers = ListContainersResponse { containers: vec![container("c1", "p1", "x\\y")] };
        let names = names_of(pods, containers);
        assert_eq!(
            Names::clone(&names["c1"]),
            Names { container: "x\\\\y".into(), pod: "\\overflow".into(), namespace: "a\\x09b".into() }
        );
    }

    #[test]
    fn the_first_socket_that_exists_is_used() {
        let dir = std::env::temp_dir().join(format!("sonde-cri-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file.sock");
        std::fs::write(&file, b"").unwrap();
        let socket = dir.join("real.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let missing = dir.join("missing.sock");
        let candidates = [missing.as_path(), file.as_path(), socket.as_path()];
        assert_eq!(detect_socket(candidates.into_iter()), Some(socket.clone()));
        assert_eq!(detect_socket([missing.as_path(), file.as_path()].into_iter()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
