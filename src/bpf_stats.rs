//! What the kernel says of a loaded program (`bpf_prog_info`): its run
//! statistics (run_cnt / run_time_ns, collected only while BPF stats are
//! on), and what the verifier and the JIT made of it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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
    let (info, _) = prog_info(fd.as_fd())?;
    Ok(RunStats { run_count: info.run_cnt, run_time_ns: info.run_time_ns })
}

/// The fixed part of `bpf_prog_info`, and how many of its bytes this kernel
/// filled in (older kernels know fewer fields).
///
/// Asked directly rather than through libbpf-rs's `ProgramInfo`: that type
/// is reachable only by walking every program on the system, and it reports
/// the translated and JITed sizes only by copying the instructions.
fn prog_info(fd: BorrowedFd<'_>) -> std::io::Result<(libbpf_sys::bpf_prog_info, usize)> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is a plain C struct of `len` bytes, and every pointer
    // field in it is zero, so the kernel copies out no arrays.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info as *mut _ as *mut _, &mut len) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    Ok((info, len as usize))
}

/// What the verifier and the JIT made of a loaded program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ProgramFacts {
    /// Instructions the verifier processed (walking every path), which is
    /// what its complexity limit counts; None before Linux 5.16.
    pub verified_insns: Option<u32>,
    /// Size of the program as the kernel rewrote it (BPF instructions).
    pub xlated_bytes: u32,
    /// Size of its machine code; 0 when it runs in the interpreter.
    pub jited_bytes: u32,
}

impl ProgramFacts {
    pub fn jited(&self) -> bool {
        self.jited_bytes > 0
    }
}

pub fn program_facts(fd: BorrowedFd<'_>) -> std::io::Result<ProgramFacts> {
    let (info, filled) = prog_info(fd)?;
    let verified_end = std::mem::offset_of!(libbpf_sys::bpf_prog_info, verified_insns) + 4;
    Ok(ProgramFacts {
        verified_insns: (filled >= verified_end).then_some(info.verified_insns),
        xlated_bytes: info.xlated_prog_len,
        jited_bytes: info.jited_prog_len,
    })
}

/// The BPF JIT's setting (sysctl net.core.bpf_jit_enable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitSetting {
    Off,
    On,
    /// On, and the kernel logs each program's machine code.
    OnWithDebugOutput,
    /// The sysctl is missing or unreadable.
    Unknown,
}

impl JitSetting {
    pub fn read() -> JitSetting {
        Self::parse(&std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").unwrap_or_default())
    }

    fn parse(value: &str) -> JitSetting {
        match value.trim() {
            "0" => JitSetting::Off,
            "1" => JitSetting::On,
            "2" => JitSetting::OnWithDebugOutput,
            _ => JitSetting::Unknown,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            JitSetting::Off => "off (programs run in the interpreter)",
            JitSetting::On => "on",
            JitSetting::OnWithDebugOutput => "on, logging each program's machine code",
            JitSetting::Unknown => "unknown (net.core.bpf_jit_enable is unreadable)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jit_setting_reads_the_sysctl_values() {
        assert_eq!(JitSetting::parse("0\n"), JitSetting::Off);
        assert_eq!(JitSetting::parse("1\n"), JitSetting::On);
        assert_eq!(JitSetting::parse("2"), JitSetting::OnWithDebugOutput);
        assert_eq!(JitSetting::parse(""), JitSetting::Unknown);
    }
}
