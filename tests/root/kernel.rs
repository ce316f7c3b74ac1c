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
/// host, where fentry loads fail with EPERM) — except that fentry on a kernel
/// function also needs ftrace direct calls, which arm64 gained only in 6.4
/// (there its programs load but attaching them fails with ENOTSUPP).
pub fn expects_fentry() -> bool {
    match std::env::var("SONDE_EXPECT_FENTRY").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => has_kprobes() && has_ftrace_direct_calls(),
    }
}

/// The hook a probe on a kernel function picks here (`hook: auto`):
/// fentry, else kprobe; None when the kernel has neither.
pub fn best_function_hook() -> Option<&'static str> {
    if expects_fentry() {
        Some("fentry")
    } else if has_kprobes() {
        Some("kprobe")
    } else {
        None
    }
}

/// CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, seen through the function it
/// builds (`register_ftrace_direct`, `_multi` on 6.1).
pub fn has_ftrace_direct_calls() -> bool {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("read /proc/kallsyms");
    kallsyms.lines().filter_map(|line| line.split_whitespace().nth(2)).any(|s| s.starts_with("register_ftrace_direct"))
}

/// Names (as the kernel truncates them, 15 bytes) of sonde's programs.
const PROGRAM_NAMES: &[&str] = &[
    "custom_tracepoint",
    // config-defined function probes (custom_kretprobe[_entry] as truncated)
    "custom_fentry",
    "custom_fexit",
    "custom_kprobe",
    "custom_kretprob",
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
    // fs_latency: <fs>_<op>_<fe|fx|kp|kr>, all of them
    "ext4_read_fe",
    "ext4_read_fx",
    "ext4_read_kp",
    "ext4_read_kr",
    "ext4_write_fe",
    "ext4_write_fx",
    "ext4_write_kp",
    "ext4_write_kr",
    "ext4_open_fe",
    "ext4_open_fx",
    "ext4_open_kp",
    "ext4_open_kr",
    "ext4_fsync_fe",
    "ext4_fsync_fx",
    "ext4_fsync_kp",
    "ext4_fsync_kr",
    "xfs_read_fe",
    "xfs_read_fx",
    "xfs_read_kp",
    "xfs_read_kr",
    "xfs_write_fe",
    "xfs_write_fx",
    "xfs_write_kp",
    "xfs_write_kr",
    "xfs_open_fe",
    "xfs_open_fx",
    "xfs_open_kp",
    "xfs_open_kr",
    "xfs_fsync_fe",
    "xfs_fsync_fx",
    "xfs_fsync_kp",
    "xfs_fsync_kr",
    "handle_rq_issue",
    "handle_rq_complete",
    "tp_rq_issue",
    "tp_rq_complete",
    "fexit_mm_fault",
    "kprobe_mm_fault",
    "kretprobe_mm_fault",
    "tp_page_fault_user",
    "skb_drop_btf",
    "skb_drop_tp",
    "pc_fentry_folio",
    "pc_fentry_page",
    "pc_kprobe_folio",
    "pc_kprobe_page",
    "pc_added",
    "pc_dirty_folio",
    "pc_dirty_page",
    "handle_wakeup",
    "handle_wakeup_new",
    "handle_switch",
    "handle_wakeup_tp",
    "handle_wakeup_new_tp",
    "handle_switch_tp",
    "fexit_throttle_cfs_rq",
    "fentry_unthrottle_cfs_rq",
    "kprobe_throttle_cfs_rq",
    "kretprobe_throttle_cfs_rq",
    "kprobe_unthrottle_cfs_rq",
    "handle_softirq_entry",
    "handle_softirq_exit",
    "handle_softirq_entry_tp",
    "handle_softirq_exit_tp",
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
