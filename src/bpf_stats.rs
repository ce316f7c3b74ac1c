//! Kernel-side run statistics of the loaded programs (`bpf_prog_info`
//! run_cnt / run_time_ns), collected only while BPF stats are on.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys;

/// Keeps the kernel's BPF run-time statistics on while it lives.
pub struct StatsGuard {
    _fd: OwnedFd,
}

pub fn enable() -> std::io::Result<StatsGuard> {
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd));
    }
    Ok(StatsGuard { _fd: unsafe { OwnedFd::from_raw_fd(fd) } })
}

/// Whether stats are on, by sonde or anyone else (sysctl kernel.bpf_stats_enabled).
pub fn sysctl_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").map(|s| s.trim() == "1").unwrap_or(false)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub run_count: u64,
    pub run_time_ns: u64,
}

pub fn prog_stats(fd: &OwnedFd) -> std::io::Result<RunStats> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info as *mut _ as *mut _, &mut len) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    Ok(RunStats { run_count: info.run_cnt, run_time_ns: info.run_time_ns })
}
