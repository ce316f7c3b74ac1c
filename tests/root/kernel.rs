//! What the kernel under test can do, and which sonde programs it holds.

use std::path::Path;

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A kprobe PMU means kprobes attach (CONFIG_KPROBES).
pub fn has_kprobes() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

/// Whether fentry is expected to work here: `SONDE_EXPECT_FENTRY=0|1` says
/// so explicitly; otherwise the kernels this suite runs on have either both
/// kprobes and fentry (distribution kernels) or neither (the sandboxed CI
/// host, where fentry loads fail with EPERM).
pub fn expects_fentry() -> bool {
    match std::env::var("SONDE_EXPECT_FENTRY").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => has_kprobes(),
    }
}

/// Names (as the kernel truncates them, 15 bytes) of sonde's programs.
const PROGRAM_NAMES: &[&str] = &[
    "custom_tracepoint",
    "handle_exec",
    "handle_exit",
    "handle_openat_enter",
    "handle_openat_exit",
    "fentry_openat2",
    "fexit_openat2",
    "kprobe_openat2",
    "kretprobe_openat2",
    "handle_sys_enter",
    "handle_sys_exit",
    "kretprobe_vfs_read",
    "kretprobe_vfs_write",
    "fexit_vfs_read",
    "fexit_vfs_write",
    "handle_signal_generate",
    "handle_mark_victim",
    "handle_fork",
    // the cgroup path tracker, loaded with any cgroup-derived label
    "cgroup_made",
    "cgroup_removed",
    "handle_set_state",
    "handle_retransmit",
    "handle_retransmit_synack",
    "handle_send_reset",
    "handle_receive_reset",
];

/// Waits (up to 2 s: the kernel frees programs after the last reference
/// goes, not synchronously with process exit) until `sonde_programs()` is
/// `want`, and returns the last count.
pub fn sonde_programs_become(want: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let now = sonde_programs();
        if now == want || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// sonde programs present before a test: an earlier test's agent may have
/// exited moments ago, so give the kernel time to free its programs.
pub fn baseline_programs() -> usize {
    sonde_programs_become(0)
}

/// BPF programs loaded in the kernel whose names are sonde's.
pub fn sonde_programs() -> usize {
    libbpf_rs::query::ProgInfoIter::default()
        .filter(|info| {
            let name = info.name.to_string_lossy();
            PROGRAM_NAMES.iter().any(|p| p.starts_with(name.as_ref()) && !name.is_empty())
        })
        .count()
}
