//! What the kernel needs from the process before BPF programs can load:
//! privileges, a mounted tracefs, and (on old kernels) locked memory.

use std::path::Path;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(
        "sonde needs root, or the capabilities CAP_BPF and CAP_PERFMON (plus CAP_SYS_ADMIN on kernels \
         before 5.8 and for `bpf_stats`); in a container run it with --privileged"
    )]
    NotPrivileged,
    #[error("tracefs is not mounted and mounting it at {TRACEFS} failed: {0}")]
    Tracefs(std::io::Error),
    #[error(
        "tracefs is mounted at {0} but this process may not read it ({1}); it is usually mode 0700 and \
         owned by root: run as root, or grant CAP_DAC_READ_SEARCH (see docs/deployment.md)"
    )]
    TracefsUnreadable(String, std::io::Error),
}

/// Effective capability bits of this process.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn has_bpf_privileges() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
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

/// Checks privileges, mounts tracefs if needed and lifts the memlock limit.
pub fn prepare() -> Result<(), SystemError> {
    if !has_bpf_privileges() {
        return Err(SystemError::NotPrivileged);
    }
    ensure_tracefs()?;
    raise_memlock_limit();
    Ok(())
}

/// libbpf finds tracepoint ids in tracefs; many hosts and containers do not
/// mount it.
fn ensure_tracefs() -> Result<(), SystemError> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        match std::fs::metadata(Path::new(dir).join("events")) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            // Mounted, but closed to this process: mounting it again would
            // not help, and "not mounted" would send the user the wrong way.
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(SystemError::TracefsUnreadable(dir.to_string(), err));
            }
            _ => {}
        }
    }
    let rc = unsafe {
        libc::mount(c"tracefs".as_ptr(), c"/sys/kernel/tracing".as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        return Err(SystemError::Tracefs(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
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
