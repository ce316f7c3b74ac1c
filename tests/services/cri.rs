//! A Kubernetes pod without Kubernetes: Debian's containerd with its CRI plugin on a private socket,
//! a pod sandbox `web` in namespace `shop` and a container `app` created through the CRI API as the
//! kubelet would, from an image this test builds. sonde, given that socket, must count the execs in
//! the container under the pod's names, and a host process's under empty container labels.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use sonde::enrich::cri::{ContainerStatusRequest, ContainerStatusResponse, CriConnection, RUNTIME_SERVICE};

use crate::agent::{Agent, Labels, Metrics};
use crate::packages;

pub fn trials() -> Vec<Trial> {
    vec![Trial::test("cri_pod_labels", cri_pod_labels)]
}

/// Execs of the uniquely named program, in the container and on the host.
const IN_POD: usize = 7;
const ON_HOST: usize = 4;
const IMAGE: &str = "docker.io/local/busybox:1";
const PAUSE: &str = "docker.io/local/pause:1";

fn cri_pod_labels() -> Result<(), Failed> {
    let bin = packages::unpacked(&["containerd", "runc", "busybox-static"])?;
    let scratch = Scratch::new()?;
    build_image(&bin, &scratch.0)?;
    let containerd = Containerd::start(&bin, &scratch.0)?;
    containerd.ctr(&["images", "import", &scratch.0.join("image.tar").to_string_lossy()])?;
    let mut cri = Cri::connect(&containerd.socket)?;
    let uid = pod_uid();
    let _cgroups = PodCgroups::new(&uid);
    let mut pod = Pod::run(&mut cri, &uid, &scratch.0)?;
    let container = pod.container(&mut cri)?;

    let socket = containerd.socket.to_string_lossy().into_owned();
    let agent = Agent::start(
        &format!(
            "cri_socket: {socket}\nprobes:\n  exec:\n    labels: [comm, container_id, container, pod, namespace]\n"
        ),
        &[],
    );
    let in_pod = unique_name("pod");
    let script = format!(
        "printf '#!/bin/sh\\nexit 0\\n' > /tmp/{in_pod} && chmod +x /tmp/{in_pod} && \
         i=0; while [ $i -lt {IN_POD} ]; do /tmp/{in_pod} || exit 1; i=$((i+1)); done"
    );
    let exec: ExecSyncResponse =
        cri.call("ExecSync", &ExecSyncRequest { container_id: container.clone(), cmd: sh(&script), timeout: 30 })?;
    if exec.exit_code != 0 {
        return Err(format!("ExecSync exited {}: {}", exec.exit_code, String::from_utf8_lossy(&exec.stderr)).into());
    }
    let on_host = unique_name("host");
    let host_program = HostProgram::new(&scratch.0, &on_host)?;
    for _ in 0..ON_HOST {
        let status = Command::new(&host_program.0).status()?;
        if !status.success() {
            return Err(format!("{on_host} on the host: {status}").into());
        }
    }

    let pod_labels = [("comm", in_pod.as_str()), ("pod", "web"), ("namespace", "shop"), ("container", "app")];
    let counted = agent.settle(IN_POD as f64, |m| m.value("sonde_exec_total", &pod_labels));
    if counted != IN_POD as f64 {
        return Err(format!(
            "sonde_exec_total{{pod=\"web\",namespace=\"shop\",container=\"app\",comm={in_pod:?}}} = {counted}, want \
             {IN_POD}; series of {in_pod}: {:?}",
            series_of(&agent.scrape(), &in_pod)
        )
        .into());
    }
    let metrics = agent.scrape();
    let pod_series = series_of(&metrics, &in_pod);
    let want_id = ("container_id".to_string(), container.clone());
    if pod_series.len() != 1 || !pod_series[0].0.contains(&want_id) {
        return Err(format!("want one series of {in_pod} with container_id {container}: {pod_series:?}").into());
    }
    let host_count = agent.settle(ON_HOST as f64, |m| m.value("sonde_exec_total", &[("comm", on_host.as_str())]));
    let host_series = series_of(&agent.scrape(), &on_host);
    let empty =
        |name: &str| host_series.iter().all(|(labels, _)| labels.iter().any(|(k, v)| k == name && v.is_empty()));
    if host_count != ON_HOST as f64
        || host_series.len() != 1
        || !["container_id", "container", "pod", "namespace"].iter().all(|l| empty(l))
    {
        return Err(format!("want {ON_HOST} host execs with empty container labels: {host_series:?}").into());
    }
    println!(
        "pod web/shop container app ({}): {IN_POD} execs counted; host: {ON_HOST} execs with empty container labels",
        &container[..12]
    );
    drop(agent);
    pod.remove(&mut cri)
}

fn series_of(metrics: &Metrics, comm: &str) -> Vec<(Labels, f64)> {
    metrics
        .series("sonde_exec_total")
        .into_iter()
        .filter(|(labels, _)| labels.iter().any(|(k, v)| k == "comm" && v == comm))
        .collect()
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// A process name no other test or process has (at most 15 bytes, the kernel's comm).
fn unique_name(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("s{tag}{:x}", (std::process::id() ^ nanos) & 0xff_ffff)
}

/// A pod uid in the Kubernetes form (a UUID).
fn pod_uid() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:08x}-5e1d-4c0a-8b7e-{:012x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// The test's directory, removed (after unmounting anything left below it) when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, Failed> {
        // Short: containerd's socket path must fit a unix socket address.
        let dir = PathBuf::from(format!("/tmp/sonde-cri-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for mount in mounts_below(&self.0) {
            let path = std::ffi::CString::new(mount).unwrap_or_default();
            // SAFETY: a NUL-terminated path; a lazy unmount of a mount of this test's own.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        if let Err(err) = std::fs::remove_dir_all(&self.0) {
            eprintln!("leaving {}: {err}", self.0.display());
        }
    }
}

/// Mount points under `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts
}

/// A docker-archive image (`docker save`'s layout) of one layer: static busybox with its applets as
/// relative links, and `/tmp`; tagged both as the sandbox (pause) image and the container's image.
fn build_image(bin: &Path, dir: &Path) -> Result<(), Failed> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    let busybox = rootfs.join("bin/busybox");
    std::fs::copy(bin.join("bin/busybox"), &busybox)?;
    let list = Command::new(&busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    let image = dir.join("image");
    std::fs::create_dir_all(image.join("layer"))?;
    let layer = image.join("layer/layer.tar");
    tool(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&layer).arg("."), "tar")?;
    let diff_id = sha256(&layer)?;
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/sleep","2147483647"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}}}}"#
    );
    std::fs::write(image.join("config.json"), &config)?;
    let manifest =
        format!(r#"[{{"Config":"config.json","RepoTags":["{PAUSE}","{IMAGE}"],"Layers":["layer/layer.tar"]}}]"#);
    std::fs::write(image.join("manifest.json"), manifest)?;
    tool(
        Command::new("tar").arg("-C").arg(&image).arg("-cf").arg(dir.join("image.tar")).args([
            "manifest.json",
            "config.json",
            "layer/layer.tar",
        ]),
        "tar",
    )
}

fn sha256(path: &Path) -> Result<String, Failed> {
    let output = Command::new("sha256sum").arg(path).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().next().filter(|h| h.len() == 64).map(str::to_string).ok_or_else(|| "sha256sum".into())
}

fn tool(command: &mut Command, what: &str) -> Result<(), Failed> {
    let output = command.output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!("{what}: {}: {}", output.status, String::from_utf8_lossy(&output.stderr)).into())
}

/// A script on the host, named `name`.
struct HostProgram(PathBuf);

impl HostProgram {
    fn new(dir: &Path, name: &str) -> Result<HostProgram, Failed> {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\nexit 0\n")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(HostProgram(path))
    }
}

/// containerd on a private socket, stopped by its pid when dropped.
struct Containerd {
    child: Child,
    socket: PathBuf,
    path_env: String,
}

impl Containerd {
    fn start(bin: &Path, dir: &Path) -> Result<Containerd, Failed> {
        let socket = dir.join("containerd.sock");
        std::fs::write(dir.join("config.toml"), containerd_config(dir))?;
        let path_env = format!(
            "{}:{}:{}",
            bin.join("usr/bin").display(),
            bin.join("usr/sbin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // containerd's shims detach from it; as a subreaper this process inherits and reaps them,
        // rather than leave them to an init that may not.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new(bin.join("usr/bin/containerd"))
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", &path_env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("INFRA: cannot start containerd: {e}"))?;
        let containerd = Containerd { child, socket, path_env };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Cri::connect(&containerd.socket).and_then(|mut cri| {
                cri.call::<_, VersionResponse>("Version", &VersionRequest { version: "v1".into() })
            });
            match ready {
                Ok(version) if version.runtime_api_version == "v1" => return Ok(containerd),
                Ok(version) => return Err(format!("containerd speaks CRI {}", version.runtime_api_version).into()),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(err) => {
                    let log = std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    return Err(format!(
                        "containerd's CRI did not answer within 30 s: {}\n{}",
                        err.message().unwrap_or_default(),
                        tail.join("\n")
                    )
                    .into());
                }
            }
        }
    }

    fn ctr(&self, args: &[&str]) -> Result<(), Failed> {
        let ctr = Path::new(self.path_env.split(':').next().unwrap_or_default()).join("ctr");
        tool(Command::new(ctr).arg("-a").arg(&self.socket).args(["-n", "k8s.io"]).args(args), "ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signals the containerd this test started, by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        reap_shims(Duration::from_secs(5));
    }
}

/// Waits for the shims this process inherited to exit (they do once their pod is removed).
fn reap_shims(within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child of this test process; the agent has been waited for already.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid < 0 || Instant::now() > deadline {
            return;
        }
        if pid == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The pod's cgroups in every hierarchy, which runc leaves behind (it removes only the containers'),
/// and the `kubepods` levels above them if the test made them.
struct PodCgroups {
    pod: String,
    made_kubepods: bool,
}

impl PodCgroups {
    fn new(uid: &str) -> PodCgroups {
        let made_kubepods = !cgroup_hierarchies().iter().any(|h| h.join("kubepods").exists());
        PodCgroups { pod: format!("kubepods/besteffort/pod{uid}"), made_kubepods }
    }
}

impl Drop for PodCgroups {
    fn drop(&mut self) {
        for hierarchy in cgroup_hierarchies() {
            if self.made_kubepods {
                remove_empty_tree(&hierarchy.join("kubepods"));
            } else {
                remove_empty_tree(&hierarchy.join(&self.pod));
            }
        }
    }
}

/// Every mounted cgroup hierarchy (v1 controllers and the v2 one) under /sys/fs/cgroup.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let fs_type = fs.split(' ').next()?;
            let point = mount.split(' ').nth(4)?;
            matches!(fs_type, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// Removes a tree of cgroups bottom up; rmdir only removes empty cgroups, so nothing in use goes.
fn remove_empty_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_tree(&entry.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// containerd's config: everything below `dir`, the CRI plugin with the cgroupfs driver, the local
/// image as the sandbox image, and no OOM score below the runtime's own (this machine cannot lower it).
fn containerd_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE}"
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{d}/cni/bin"
      conf_dir = "{d}/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
"#
    )
}

/// A CRI connection with the test's own tokio runtime.
struct Cri {
    runtime: tokio::runtime::Runtime,
    connection: CriConnection,
}

impl Cri {
    fn connect(socket: &Path) -> Result<Cri, Failed> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let connection = runtime.block_on(CriConnection::connect(socket, Duration::from_secs(60)))?;
        Ok(Cri { runtime, connection })
    }

    fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &mut self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, Failed> {
        Ok(self.runtime.block_on(self.connection.call(RUNTIME_SERVICE, method, request))?)
    }
}

/// The pod sandbox, removed (with its containers) by `remove`, or when dropped.
struct Pod {
    id: String,
    config: PodSandboxConfig,
    socket_dir: PathBuf,
    removed: bool,
}

impl Pod {
    fn run(cri: &mut Cri, uid: &str, dir: &Path) -> Result<Pod, Failed> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                uid: uid.into(),
                namespace: "shop".into(),
                attempt: 0,
            }),
            log_directory: logs.to_string_lossy().into_owned(),
            labels: HashMap::from([("app".into(), "web".into())]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                security_context: Some(LinuxSandboxSecurityContext { namespace_options: Some(host_network()) }),
            }),
        };
        let response: RunPodSandboxResponse =
            cri.call("RunPodSandbox", &RunPodSandboxRequest { config: Some(config.clone()) })?;
        Ok(Pod { id: response.pod_sandbox_id, config, socket_dir: dir.to_path_buf(), removed: false })
    }

    /// Creates and starts the container `app`, and waits until it runs; returns its id.
    fn container(&self, cri: &mut Cri) -> Result<String, Failed> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: "app".into(), attempt: 0 }),
            image: Some(ImageSpec { image: IMAGE.into() }),
            command: vec!["/bin/sleep".into(), "3600".into()],
            log_path: "app/0.log".into(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext { namespace_options: Some(host_network()) }),
            }),
        };
        let created: CreateContainerResponse = cri.call(
            "CreateContainer",
            &CreateContainerRequest {
                pod_sandbox_id: self.id.clone(),
                config: Some(config),
                sandbox_config: Some(self.config.clone()),
            },
        )?;
        let id = created.container_id;
        let _: StartContainerResponse =
            cri.call("StartContainer", &StartContainerRequest { container_id: id.clone() })?;
        let status: ContainerStatusResponse =
            cri.call("ContainerStatus", &ContainerStatusRequest { container_id: id.clone() })?;
        let state = status.status.map(|s| s.state);
        if state != Some(CONTAINER_RUNNING) {
            return Err(format!("container app is in state {state:?} after StartContainer, not running").into());
        }
        Ok(id)
    }

    fn remove(&mut self, cri: &mut Cri) -> Result<(), Failed> {
        stop_and_remove(cri, &self.id)?;
        self.removed = true;
        Ok(())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let removed = Cri::connect(&self.socket_dir.join("containerd.sock"))
            .and_then(|mut cri| stop_and_remove(&mut cri, &self.id));
        if let Err(err) = removed {
            eprintln!("removing pod sandbox {}: {}", self.id, err.message().unwrap_or_default());
        }
    }
}

fn stop_and_remove(cri: &mut Cri, id: &str) -> Result<(), Failed> {
    let _: Empty = cri.call("StopPodSandbox", &PodSandboxId { pod_sandbox_id: id.into() })?;
    let _: Empty = cri.call("RemovePodSandbox", &PodSandboxId { pod_sandbox_id: id.into() })?;
    Ok(())
}

fn host_network() -> NamespaceOption {
    NamespaceOption { network: NAMESPACE_NODE }
}

// The CRI messages the test writes with (runtime.v1), with only the fields it sets or reads.

/// `NamespaceMode.NODE`: the host's namespace.
const NAMESPACE_NODE: i32 = 2;
/// `ContainerState.CONTAINER_RUNNING`.
const CONTAINER_RUNNING: i32 = 1;

#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
struct VersionRequest {
    #[prost(string, tag = "1")]
    version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct VersionResponse {
    #[prost(string, tag = "4")]
    runtime_api_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    uid: String,
    #[prost(string, tag = "3")]
    namespace: String,
    #[prost(uint32, tag = "4")]
    attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NamespaceOption {
    #[prost(int32, tag = "1")]
    network: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LinuxSandboxSecurityContext {
    #[prost(message, optional, tag = "1")]
    namespace_options: Option<NamespaceOption>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LinuxPodSandboxConfig {
    #[prost(string, tag = "1")]
    cgroup_parent: String,
    #[prost(message, optional, tag = "2")]
    security_context: Option<LinuxSandboxSecurityContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "3")]
    log_directory: String,
    #[prost(map = "string, string", tag = "6")]
    labels: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    linux: Option<LinuxPodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    config: Option<PodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RunPodSandboxResponse {
    #[prost(string, tag = "1")]
    pod_sandbox_id: String,
}

/// Stop- and RemovePodSandboxRequest.
#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxId {
    #[prost(string, tag = "1")]
    pod_sandbox_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ContainerMetadata {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint32, tag = "2")]
    attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ImageSpec {
    #[prost(string, tag = "1")]
    image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LinuxContainerSecurityContext {
    #[prost(message, optional, tag = "3")]
    namespace_options: Option<NamespaceOption>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LinuxContainerConfig {
    #[prost(message, optional, tag = "2")]
    security_context: Option<LinuxContainerSecurityContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ContainerConfig {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ContainerMetadata>,
    #[prost(message, optional, tag = "2")]
    image: Option<ImageSpec>,
    #[prost(string, repeated, tag = "3")]
    command: Vec<String>,
    #[prost(string, tag = "11")]
    log_path: String,
    #[prost(message, optional, tag = "15")]
    linux: Option<LinuxContainerConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CreateContainerRequest {
    #[prost(string, tag = "1")]
    pod_sandbox_id: String,
    #[prost(message, optional, tag = "2")]
    config: Option<ContainerConfig>,
    #[prost(message, optional, tag = "3")]
    sandbox_config: Option<PodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CreateContainerResponse {
    #[prost(string, tag = "1")]
    container_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StartContainerRequest {
    #[prost(string, tag = "1")]
    container_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StartContainerResponse {}

#[derive(Clone, PartialEq, prost::Message)]
struct ExecSyncRequest {
    #[prost(string, tag = "1")]
    container_id: String,
    #[prost(string, repeated, tag = "2")]
    cmd: Vec<String>,
    #[prost(int64, tag = "3")]
    timeout: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExecSyncResponse {
    #[prost(bytes = "vec", tag = "1")]
    stdout: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    stderr: Vec<u8>,
    #[prost(int32, tag = "3")]
    exit_code: i32,
}
