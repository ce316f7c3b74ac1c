//! What the kernel needs from the process before BPF programs can load:
//! privileges, a mounted tracefs, and (on old kernels) locked memory.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::capabilities::{self, CapError, CapSet, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
const PERF_EVENT_PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(
        "sonde lacks {missing} (its effective capabilities: {have}): creating BPF maps and loading \
         programs takes CAP_BPF, loading tracing programs and attaching them to tracepoints takes \
         CAP_PERFMON (CAP_SYS_ADMIN stands for both, and is needed instead on kernels before 5.8). Run \
         it as root, or grant these capabilities (docs/deployment.md#capabilities); in a container, add \
         them to its capabilities or run it privileged"
    )]
    MissingCapabilities { missing: String, have: String },
    #[error("reading this process's capabilities failed: {0}")]
    Capabilities(#[from] CapError),
    #[error(
        "tracefs is not mounted at {TRACEFS} (nor at {DEBUGFS_TRACING}), and mounting it there failed: {error}{}",
        mount_hint(error)
    )]
    Tracefs { error: std::io::Error },
    #[error(
        "tracefs is mounted at {dir}, but it is mode {mode:04o} (owner uid {owner}, gid {group}) and sonde runs \
         as uid {uid} without CAP_DAC_READ_SEARCH, so it may not read the tracepoint ids under {dir}/events \
         ({error}): grant sonde CAP_DAC_READ_SEARCH, run it as uid {owner}, or remount tracefs so that its \
         group may read it (`mount -o remount,gid=GID,mode=0750 {dir}` with GID a group sonde runs in); \
         see docs/deployment.md#capabilities"
    )]
    TracefsUnreadable { dir: String, mode: u32, owner: u32, group: u32, uid: u32, error: std::io::Error },
}

fn mount_hint(err: &std::io::Error) -> &'static str {
    if err.kind() == std::io::ErrorKind::PermissionDenied {
        " (mounting takes CAP_SYS_ADMIN): mount it on the host (`mount -t tracefs tracefs /sys/kernel/tracing`) \
         and, in a container, bind-mount the host's /sys/kernel/tracing"
    } else {
        ""
    }
}

/// Kernels before 5.8 have neither CAP_BPF nor CAP_PERFMON, and take
/// CAP_SYS_ADMIN for what they cover; later ones accept either.
fn missing_bpf_capabilities(effective: CapSet) -> Vec<u32> {
    if effective.has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [CAP_BPF, CAP_PERFMON].into_iter().filter(|&cap| !effective.has(cap)).collect()
}

/// Whether this process may load and attach probes, as far as its
/// capabilities tell.
pub fn has_bpf_privileges() -> bool {
    capabilities::effective().is_ok_and(|caps| missing_bpf_capabilities(caps).is_empty())
}

/// Fails, naming what is missing, unless the process holds what loading
/// and attaching probes takes.
fn check_capabilities() -> Result<(), SystemError> {
    let effective = capabilities::effective()?;
    let missing = missing_bpf_capabilities(effective);
    if missing.is_empty() {
        return Ok(());
    }
    let missing: Vec<String> = missing.into_iter().map(capabilities::name).collect();
    Err(SystemError::MissingCapabilities { missing: missing.join(" and "), have: effective.describe() })
}

/// Keeps memory that a scrape used from staying resident: buffers of 256 KiB
/// and more (the text of a large /metrics) are mapped and unmapped rather
/// than kept in the heap, and the few threads share two malloc arenas.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only adjusts glibc's allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Why perf_event_open(), which tracepoint and kprobe hooks attach with,
/// may be refused despite CAP_PERFMON: some distributions' kernels (Debian's,
/// Ubuntu's) allow it at `kernel.perf_event_paranoid` above 2 only with
/// CAP_SYS_ADMIN, where the upstream kernel treats those levels as 2. None
/// when the level or the process's capabilities rule that out.
pub fn perf_event_restriction() -> Option<String> {
    let level: i32 = std::fs::read_to_string(PERF_EVENT_PARANOID).ok()?.trim().parse().ok()?;
    if level <= 2 || capabilities::effective().is_ok_and(|caps| caps.has(CAP_SYS_ADMIN)) {
        return None;
    }
    Some(format!(
        "kernel.perf_event_paranoid is {level}, and kernels that restrict perf events above 2 (Debian's, Ubuntu's) \
         allow perf_event_open only with CAP_SYS_ADMIN: set `sysctl kernel.perf_event_paranoid=2`, with which \
         CAP_PERFMON is enough, or grant CAP_SYS_ADMIN"
    ))
}

/// Why bpf() may be refused despite CAP_BPF: a seccomp filter, such as the
/// default profile of container runtimes from before they admitted bpf()
/// with CAP_BPF (they admit it only with CAP_SYS_ADMIN). None when no
/// filter is on this process.
pub fn seccomp_restriction() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let mode = status.lines().find_map(|l| l.strip_prefix("Seccomp:"))?.trim();
    // 2: SECCOMP_MODE_FILTER.
    (mode == "2").then(|| {
        "sonde runs under a seccomp filter (Seccomp: 2 in /proc/self/status), which may refuse bpf() to a \
         process without CAP_SYS_ADMIN, as older container runtimes' default profiles do: use a runtime whose \
         default profile admits bpf() with CAP_BPF, or an Unconfined seccomp profile"
            .to_string()
    })
}

/// Checks privileges, mounts tracefs if needed and lifts the memlock limit.
pub fn prepare() -> Result<(), SystemError> {
    check_capabilities()?;
    if let Some(restriction) = perf_event_restriction() {
        tracing::warn!("tracepoint and kprobe hooks may fail to attach: {restriction}");
    }
    ensure_tracefs()?;
    raise_memlock_limit();
    Ok(())
}

/// libbpf finds tracepoint ids in tracefs; many hosts and containers do not
/// mount it.
fn ensure_tracefs() -> Result<(), SystemError> {
    tracefs_events().map(|_| ())
}

/// The `events` directory of tracefs (tracepoint ids and record formats),
/// mounting tracefs first if no usual place has it.
pub fn tracefs_events() -> Result<PathBuf, SystemError> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        let events = Path::new(dir).join("events");
        match std::fs::metadata(&events) {
            Ok(meta) if meta.is_dir() => return Ok(events),
            // Mounted, but closed to this process: mounting it again would
            // not help, and "not mounted" would send the user the wrong way.
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => return Err(unreadable(dir, err)),
            _ => {}
        }
    }
    let rc = unsafe {
        libc::mount(c"tracefs".as_ptr(), c"/sys/kernel/tracing".as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        return Err(SystemError::Tracefs { error: std::io::Error::last_os_error() });
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(Path::new(TRACEFS).join("events"))
}

/// Why `dir` is closed to this process: its owner and mode, and who runs.
fn unreadable(dir: &str, error: std::io::Error) -> SystemError {
    let (mode, owner, group) =
        std::fs::metadata(dir).map(|m| (m.mode() & 0o7777, m.uid(), m.gid())).unwrap_or((0, 0, 0));
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    SystemError::TracefsUnreadable { dir: dir.to_string(), mode, owner, group, uid, error }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the
/// memory cgroup, where this is harmless.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not lift RLIMIT_MEMLOCK (only matters before Linux 5.11)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_named_unless_sys_admin_covers_them() {
        assert_eq!(missing_bpf_capabilities(CapSet(0)), [CAP_BPF, CAP_PERFMON]);
        assert_eq!(missing_bpf_capabilities(CapSet::of(&[CAP_PERFMON])), [CAP_BPF]);
        assert!(missing_bpf_capabilities(CapSet::of(&[CAP_BPF, CAP_PERFMON])).is_empty());
        assert!(missing_bpf_capabilities(CapSet::of(&[CAP_SYS_ADMIN])).is_empty());
    }
}
