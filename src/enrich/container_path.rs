//! Who a cgroup belongs to, read from its path alone: the container (its id and the runtime that
//! named the cgroup) and the systemd service.
//!
//! Runtimes name a container's cgroup after its id, each in its own way, and the way depends on the
//! cgroup driver (systemd slices and scopes, or plain directories):
//!
//! | runtime | systemd driver | cgroupfs driver |
//! |---|---|---|
//! | containerd (Kubernetes) | `…/kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope` | `/kubepods/<qos>/pod<uid>/<id>` |
//! | CRI-O | `…/crio-<id>.scope` | `/kubepods/<qos>/pod<uid>/crio-<id>` |
//! | docker | `/system.slice/docker-<id>.scope` | `/docker/<id>` |
//! | podman | `/machine.slice/libpod-<id>.scope[/container]` | `/libpod_parent/libpod-<id>` |
//!
//! Guaranteed-QoS pods have no `<qos>` level. The same names appear on cgroup v2 and on the unified
//! hierarchy of a v1/v2 hybrid. A path may have anything before the container's part: a cgroup
//! namespace's view (`/../../kubepods/…`), or containers nested in containers, where the innermost
//! (the last one in the path) is the one the process runs in. A runtime's monitor processes
//! (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`) are not the container.

/// Which runtime named the cgroup, as far as the path tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    /// A bare id in a Kubernetes pod's cgroup (cgroupfs driver): containerd names its containers
    /// this way, and so did the kubelet's docker integration before it was removed.
    KubernetesCgroupfs,
}

impl Runtime {
    /// Whether a CRI runtime (one the kubelet talks to) may know the container: docker's and
    /// podman's own containers are not in any CRI runtime's lists.
    pub fn is_cri(self) -> bool {
        matches!(self, Runtime::Containerd | Runtime::CriO | Runtime::KubernetesCgroupfs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerRef<'a> {
    /// The runtime's id: 64 lowercase hex digits.
    pub id: &'a str,
    pub runtime: Runtime,
}

/// What a cgroup path says about the processes in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathIdentity<'a> {
    /// The innermost container the cgroup is in.
    pub container: Option<ContainerRef<'a>>,
    /// The innermost systemd service (`nginx.service`) below that container, or anywhere in the path
    /// of a cgroup that is in no container.
    pub service: Option<&'a str>,
}

/// Reads the container and service of a cgroup from its path; see the module documentation.
pub fn identify(path: &str) -> PathIdentity<'_> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let found = (0..parts.len()).rev().find_map(|i| {
        let parent = i.checked_sub(1).map(|p| parts[p]);
        container_of(parts[i], parent, &parts[..i]).map(|container| (i, container))
    });
    let (after, container) = match found {
        Some((i, container)) => (i + 1, Some(container)),
        None => (0, None),
    };
    let service = parts[after..].iter().rev().copied().find(|p| is_service_unit(p));
    PathIdentity { container, service }
}

/// The container a path component names, given its parent and all its ancestors.
fn container_of<'a>(part: &'a str, parent: Option<&str>, ancestors: &[&str]) -> Option<ContainerRef<'a>> {
    let unit = part.strip_suffix(".scope");
    let prefixed = |prefix: &str, runtime| {
        let id = unit.unwrap_or(part).strip_prefix(prefix)?;
        is_container_id(id).then_some(ContainerRef { id, runtime })
    };
    // `crio-conmon-<id>` and `libpod-conmon-<id>` fail the id check, so monitors never match.
    let named = prefixed("cri-containerd-", Runtime::Containerd)
        .or_else(|| prefixed("crio-", Runtime::CriO))
        .or_else(|| prefixed("libpod-", Runtime::Podman));
    if named.is_some() {
        return named;
    }
    if let Some(unit) = unit {
        let id = unit.strip_prefix("docker-")?;
        return is_container_id(id).then_some(ContainerRef { id, runtime: Runtime::Docker });
    }
    if !is_container_id(part) {
        return None;
    }
    let runtime = match parent {
        Some("docker") => Runtime::Docker,
        Some(pod) if is_pod_dir(pod) && ancestors.contains(&"kubepods") => Runtime::KubernetesCgroupfs,
        _ => return None,
    };
    Some(ContainerRef { id: part, runtime })
}

/// `pod<uid>`: a pod's directory under `/kubepods` with the cgroupfs driver.
fn is_pod_dir(name: &str) -> bool {
    name.strip_prefix("pod")
        .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
}

/// Runtimes' container ids are 64 lowercase hex digits (a SHA-256).
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_service_unit(name: &str) -> bool {
    name.strip_suffix(".service").is_some_and(|unit| !unit.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c9a0b7e6d5c4b3a29180716f5e4d3c2b1a09f8e7d6c5b4a3928170615f4e3";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "5b6fa2d0-1c7e-4f3a-9d2b-8e4c6a0f1b3d";
    const UID_UNDERSCORES: &str = "5b6fa2d0_1c7e_4f3a_9d2b_8e4c6a0f1b3d";

    fn container(path: &str) -> Option<(String, Runtime)> {
        identify(path).container.map(|c| (c.id.to_string(), c.runtime))
    }

    fn is(path: &str, runtime: Runtime) {
        assert_eq!(container(path), Some((ID.to_string(), runtime)), "{path}");
        assert_eq!(identify(path).service, None, "{path}");
    }

    #[test]
    fn containerd_with_the_cgroupfs_driver() {
        for qos in ["besteffort", "burstable"] {
            is(&format!("/kubepods/{qos}/pod{UID}/{ID}"), Runtime::KubernetesCgroupfs);
        }
    }

    #[test]
    fn containerd_with_the_systemd_driver() {
        for qos in ["besteffort", "burstable"] {
            is(
                &format!(
                    "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{UID_UNDERSCORES}.slice/cri-containerd-{ID}.scope"
                ),
                Runtime::Containerd,
            );
        }
    }

    #[test]
    fn guaranteed_pods_have_no_qos_level() {
        is(&format!("/kubepods/pod{UID}/{ID}"), Runtime::KubernetesCgroupfs);
        is(
            &format!("/kubepods.slice/kubepods-pod{UID_UNDERSCORES}.slice/cri-containerd-{ID}.scope"),
            Runtime::Containerd,
        );
        is(&format!("/kubepods.slice/kubepods-pod{UID_UNDERSCORES}.slice/crio-{ID}.scope"), Runtime::CriO);
    }

    #[test]
    fn cri_o_with_either_driver() {
        is(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_UNDERSCORES}.slice/crio-{ID}.scope"), Runtime::CriO);
        is(&format!("/kubepods/besteffort/pod{UID}/crio-{ID}"), Runtime::CriO);
    }

    #[test]
    fn docker_with_either_driver() {
        is(&format!("/docker/{ID}"), Runtime::Docker);
        is(&format!("/system.slice/docker-{ID}.scope"), Runtime::Docker);
    }

    #[test]
    fn podman_with_either_driver() {
        is(&format!("/libpod_parent/libpod-{ID}"), Runtime::Podman);
        is(&format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman);
        // With the systemd driver and cgroup v2, podman runs the container one level down.
        is(&format!("/machine.slice/libpod-{ID}.scope/container"), Runtime::Podman);
    }

    #[test]
    fn monitor_processes_are_not_the_container() {
        let conmon = format!("/kubepods.slice/kubepods-pod{UID_UNDERSCORES}.slice/crio-conmon-{ID}.scope");
        assert_eq!(identify(&conmon), PathIdentity::default());
        let conmon = format!("/machine.slice/libpod-conmon-{ID}.scope");
        assert_eq!(identify(&conmon), PathIdentity::default());
    }

    #[test]
    fn seen_from_inside_a_cgroup_namespace() {
        // The hierarchy's root as a container with its own cgroup namespace sees it.
        is(&format!("/../../../kubepods/burstable/pod{UID}/{ID}"), Runtime::KubernetesCgroupfs);
        is(
            &format!("/../../kubepods-besteffort-pod{UID_UNDERSCORES}.slice/cri-containerd-{ID}.scope"),
            Runtime::Containerd,
        );
        // A subtree mounted on its own: the path starts at the pod.
        is(&format!("/kubepods/pod{UID}/{ID}"), Runtime::KubernetesCgroupfs);
    }

    #[test]
    fn nested_containers_name_the_innermost() {
        let path = format!("/system.slice/docker-{ID2}.scope/docker/{ID}");
        is(&path, Runtime::Docker);
        let path = format!("/kubepods/besteffort/pod{UID}/{ID2}/machine.slice/libpod-{ID}.scope/container");
        is(&path, Runtime::Podman);
    }

    #[test]
    fn bare_ids_elsewhere_are_not_containers() {
        assert_eq!(container(&format!("/{ID}")), None);
        assert_eq!(container(&format!("/system.slice/{ID}")), None);
        // A pod directory outside /kubepods is just a name.
        assert_eq!(container(&format!("/pod{UID}/{ID}")), None);
        assert_eq!(container(&format!("/kubepods/besteffort/pod{UID}")), None);
    }

    #[test]
    fn ids_must_be_64_lowercase_hex_digits() {
        assert_eq!(container(&format!("/docker/{}", &ID[..63])), None);
        assert_eq!(container(&format!("/docker/{ID}0")), None);
        assert_eq!(container(&format!("/docker/{}", ID.to_uppercase())), None);
        assert_eq!(container(&format!("/system.slice/docker-{}x.scope", &ID[..63])), None);
        assert_eq!(container("/system.slice/docker.service"), None);
        assert_eq!(container(&format!("/machine.slice/libpod-{ID}.service")), None);
    }

    #[test]
    fn host_processes_get_their_systemd_service() {
        let nginx = identify("/system.slice/nginx.service");
        assert_eq!(nginx, PathIdentity { container: None, service: Some("nginx.service") });
        let user = identify("/user.slice/user-1000.slice/user@1000.service/app.slice/gpg-agent.service");
        assert_eq!(user.service, Some("gpg-agent.service"));
        assert_eq!(identify("/user.slice/user-1000.slice/session-3.scope"), PathIdentity::default());
        assert_eq!(identify("/"), PathIdentity::default());
        assert_eq!(identify(""), PathIdentity::default());
        assert_eq!(identify("/system.slice/.service").service, None);
    }

    #[test]
    fn a_service_inside_a_container_is_the_containers_own() {
        let path = format!("/system.slice/docker-{ID}.scope/system.slice/nginx.service");
        let inside = identify(&path);
        assert_eq!(inside.container.map(|c| c.id), Some(ID));
        assert_eq!(inside.service, Some("nginx.service"));
        // The host's service around a container is not the container's.
        let path = format!("/system.slice/containerd.service/kubepods/pod{UID}/{ID}");
        let around = identify(&path);
        assert_eq!(around.container.map(|c| c.id), Some(ID));
        assert_eq!(around.service, None);
    }

    #[test]
    fn only_cri_runtimes_are_asked_for_names() {
        assert!(Runtime::Containerd.is_cri());
        assert!(Runtime::CriO.is_cri());
        assert!(Runtime::KubernetesCgroupfs.is_cri());
        assert!(!Runtime::Docker.is_cri());
        assert!(!Runtime::Podman.is_cri());
    }
}
