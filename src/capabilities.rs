//! The process's Linux capabilities: which ones sonde holds, their names
//! for messages, and dropping all of them once every probe is attached
//! (`drop_capabilities`).
//!
//! Capabilities belong to each thread, not to the process: capset(2)
//! changes only the calling thread's. By the time probes are attached the
//! agent runs several threads (signals, HTTP, ring reader, enrichers), so
//! each thread is made to drop its own from a signal handler, and every
//! thread's sets are then read back from /proc before the drop is reported
//! done.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const CAP_SETPCAP: u32 = 8;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Capability names by number (linux/capability.h), for messages.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub fn name(cap: u32) -> String {
    NAMES.get(cap as usize).map_or_else(|| format!("capability {cap}"), |n| n.to_string())
}

/// A set of capabilities, as the kernel's bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(pub u64);

impl CapSet {
    pub fn has(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    pub fn of(caps: &[u32]) -> CapSet {
        CapSet(caps.iter().fold(0, |mask, cap| mask | (1 << cap)))
    }

    /// `CAP_BPF, CAP_PERFMON`, or `none`.
    pub fn describe(self) -> String {
        let names: Vec<String> = (0..64).filter(|&c| self.has(c)).map(name).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CapError {
    #[error("reading this thread's capabilities (capget) failed: {0}")]
    Get(std::io::Error),
    #[error("dropping this thread's capabilities (capset) failed: {0}")]
    Set(std::io::Error),
    #[error("installing the signal handler that drops other threads' capabilities failed: {0}")]
    Handler(std::io::Error),
    #[error("listing this process's threads ({0}) failed")]
    Threads(std::io::Error),
    #[error("thread(s) {threads} still hold capabilities {waited:?} after being told to drop them")]
    Stuck { threads: String, waited: Duration },
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two `CapData`, for 64 capabilities.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's (effective, permitted) sets. Async-signal-safe.
fn get_current() -> Result<(CapSet, CapSet), i32> {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: the kernel writes two CapData, which `data` holds.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(errno());
    }
    let join = |lo: u32, hi: u32| CapSet(u64::from(lo) | (u64::from(hi) << 32));
    Ok((join(data[0].effective, data[1].effective), join(data[0].permitted, data[1].permitted)))
}

/// Sets the calling thread's effective and permitted sets (each within
/// what it is permitted) and empties its inheritable set.
/// Async-signal-safe.
fn set_current(effective: CapSet, permitted: CapSet) -> Result<(), i32> {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let half = |set: CapSet, high: bool| if high { (set.0 >> 32) as u32 } else { set.0 as u32 };
    let data = [false, true].map(|high| CapData {
        effective: half(effective, high),
        permitted: half(permitted, high),
        inheritable: 0,
    });
    // SAFETY: the kernel reads two CapData from `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(errno());
    }
    Ok(())
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The calling thread's effective capabilities.
pub fn effective() -> Result<CapSet, CapError> {
    get_current().map(|(effective, _)| effective).map_err(|e| CapError::Get(std::io::Error::from_raw_os_error(e)))
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(63)
}

/// What a drop left in place, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Capabilities every thread still holds: CAP_BPF on kernels that
    /// refuse every bpf() command without it (see `bpf_needs_cap_for_fds`).
    pub kept: CapSet,
    /// Whether the bounding set was emptied too (it takes CAP_SETPCAP).
    pub bounding_emptied: bool,
    pub threads: usize,
}

/// What the signal handler drops to; set before any thread is signalled.
static KEEP: AtomicU64 = AtomicU64::new(0);
static LAST_CAP: AtomicU32 = AtomicU32::new(63);

/// Drops the calling thread's capabilities, all but `keep`: the bounding
/// set first (that takes CAP_SETPCAP, which the capset then removes;
/// without it the bounding set stays), the ambient set, then effective,
/// permitted and inheritable. Async-signal-safe: raw system calls only.
fn drop_current_thread(keep: CapSet, last_cap: u32) -> Result<(), i32> {
    for cap in (0..=last_cap).filter(|&c| !keep.has(c)) {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) };
    let (_, permitted) = get_current()?;
    let kept = CapSet(permitted.0 & keep.0);
    set_current(kept, kept)
}

extern "C" fn drop_on_signal(_: libc::c_int) {
    let saved = errno();
    let _ = drop_current_thread(CapSet(KEEP.load(Ordering::SeqCst)), LAST_CAP.load(Ordering::SeqCst));
    // SAFETY: restores errno for the code this handler interrupted.
    unsafe { *libc::__errno_location() = saved };
}

/// Whether this kernel refuses bpf() commands on descriptors already open
/// (map lookups, program info) to a process without CAP_BPF. Kernels
/// before 5.19 do when `kernel.unprivileged_bpf_disabled` is set; later
/// ones check capabilities only to create maps and load programs. Asked of
/// the kernel itself: with no effective capabilities, a command on fd -1
/// fails EBADF where descriptors are enough and EPERM where they are not.
fn bpf_needs_cap_for_fds() -> Result<bool, CapError> {
    let (effective, permitted) = get_current().map_err(|e| CapError::Get(std::io::Error::from_raw_os_error(e)))?;
    set_current(CapSet(0), permitted).map_err(|e| CapError::Set(std::io::Error::from_raw_os_error(e)))?;
    let mut info = libbpf_rs::libbpf_sys::bpf_map_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let rc = unsafe {
        libbpf_rs::libbpf_sys::bpf_obj_get_info_by_fd(-1, (&mut info as *mut _ as *mut libc::c_void).cast(), &mut len)
    };
    set_current(effective, permitted).map_err(|e| CapError::Set(std::io::Error::from_raw_os_error(e)))?;
    Ok(rc == -libc::EPERM)
}

/// Drops every capability of every thread of the process, keeping only
/// CAP_BPF where the kernel needs it to use the maps already open, and
/// returns what it left. Fails if any thread still holds more after two
/// seconds.
pub fn drop_all() -> Result<Dropped, CapError> {
    let (_, permitted) = get_current().map_err(|e| CapError::Get(std::io::Error::from_raw_os_error(e)))?;
    let keep = if permitted.has(CAP_BPF) && bpf_needs_cap_for_fds()? { CapSet::of(&[CAP_BPF]) } else { CapSet(0) };
    let could_empty_bounding = has_setpcap();
    let last_cap = last_cap();
    KEEP.store(keep.0, Ordering::SeqCst);
    LAST_CAP.store(last_cap, Ordering::SeqCst);
    let signal = libc::SIGRTMIN() + DROP_SIGNAL_OFFSET;
    install_handler(signal)?;

    drop_current_thread(keep, last_cap).map_err(|e| CapError::Set(std::io::Error::from_raw_os_error(e)))?;
    let want = Want { keep, bounding: could_empty_bounding };
    let deadline = Instant::now() + DROP_WAIT;
    loop {
        let holding = threads_holding_more(&want)?;
        if holding.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let threads = holding.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
            return Err(CapError::Stuck { threads, waited: DROP_WAIT });
        }
        // SAFETY: getpid cannot fail.
        let pid = unsafe { libc::getpid() };
        for tid in holding {
            // SAFETY: signals a thread of this process; a thread that has
            // ended meanwhile makes this fail with ESRCH, which is fine.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let threads = thread_ids()?.len();
    Ok(Dropped { kept: keep, bounding_emptied: could_empty_bounding, threads })
}

/// Which real-time signal (from SIGRTMIN) tells a thread to drop its
/// capabilities; nothing else in sonde uses real-time signals.
const DROP_SIGNAL_OFFSET: i32 = 3;
const DROP_WAIT: Duration = Duration::from_secs(2);

fn install_handler(signal: i32) -> Result<(), CapError> {
    // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = drop_on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // Restart what the signal interrupts, where the kernel can.
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(CapError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// What every thread must be down to.
struct Want {
    keep: CapSet,
    /// The bounding set must be within `keep` too.
    bounding: bool,
}

fn has_setpcap() -> bool {
    get_current().is_ok_and(|(effective, _)| effective.has(CAP_SETPCAP))
}

fn thread_ids() -> Result<BTreeSet<u32>, CapError> {
    let entries = std::fs::read_dir("/proc/self/task").map_err(CapError::Threads)?;
    Ok(entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
}

/// Threads whose sets, as /proc shows them, still exceed `want`.
fn threads_holding_more(want: &Want) -> Result<Vec<u32>, CapError> {
    let mut holding = Vec::new();
    for tid in thread_ids()? {
        // A thread that ended meanwhile has no status: it holds nothing.
        let Ok(status) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")) else { continue };
        let sets = ThreadCaps::parse(&status);
        if !sets.within(want) {
            holding.push(tid);
        }
    }
    Ok(holding)
}

/// The capability sets of one thread, from its /proc status.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ThreadCaps {
    pub inheritable: CapSet,
    pub permitted: CapSet,
    pub effective: CapSet,
    pub bounding: CapSet,
    pub ambient: CapSet,
}

impl ThreadCaps {
    /// Reads the `Cap*:` lines of a /proc/<pid>/status; a missing or
    /// unreadable line counts as the full set, so it is never taken for
    /// dropped.
    pub fn parse(status: &str) -> ThreadCaps {
        let field = |name: &str| {
            CapSet(
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                    .unwrap_or(u64::MAX),
            )
        };
        ThreadCaps {
            inheritable: field("CapInh:"),
            permitted: field("CapPrm:"),
            effective: field("CapEff:"),
            bounding: field("CapBnd:"),
            ambient: field("CapAmb:"),
        }
    }

    fn within(&self, want: &Want) -> bool {
        let inside = |set: CapSet| set.0 & !want.keep.0 == 0;
        inside(self.effective)
            && inside(self.permitted)
            && self.inheritable.0 == 0
            && self.ambient.0 == 0
            && (!want.bounding || inside(self.bounding))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_sets_by_name() {
        assert_eq!(CapSet::of(&[CAP_BPF, CAP_PERFMON]).describe(), "CAP_PERFMON, CAP_BPF");
        assert_eq!(CapSet(0).describe(), "none");
        assert_eq!(CapSet::of(&[0, 63]).describe(), "CAP_CHOWN, capability 63");
    }

    #[test]
    fn parses_status_and_treats_a_missing_line_as_full() {
        let status = "Name:\tsonde\nCapInh:\t0000000000000000\nCapPrm:\t0000008000000000\n\
                      CapEff:\t0000008000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
        let caps = ThreadCaps::parse(status);
        assert_eq!(caps.effective, CapSet::of(&[CAP_BPF]));
        assert_eq!(caps.bounding, CapSet(0x1ff_ffff_ffff));
        let keep_bpf = Want { keep: CapSet::of(&[CAP_BPF]), bounding: false };
        assert!(caps.within(&keep_bpf));
        assert!(!caps.within(&Want { keep: CapSet::of(&[CAP_BPF]), bounding: true }));
        assert!(!caps.within(&Want { keep: CapSet(0), bounding: false }));
        assert_eq!(ThreadCaps::parse("Name:\tx\n").effective, CapSet(u64::MAX));
    }
}
