//! Least privilege: the agent as a non-root uid, or as uid 0 with all but
//! a few capabilities dropped, counts exactly; without a capability it
//! needs it says which; and `drop_capabilities` leaves no thread any
//! capability while scrapes, series expiry, BPF statistics, the cgroup
//! label and reloads of unchanged probes go on working.
//!
//! The test binary switches the agent's uid and capabilities itself
//! between fork and exec, so these tests run where no `setpriv` exists
//! (the VMs' busybox).

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Completion, Failed, Trial};

use crate::agent::{sonde_bin, Agent, ConfigFile, Metrics};
use crate::foundation::{check, exec_count, reload_ok, run_ok, Trigger, RELOADED, RELOADED_AT};
use crate::kernel;
use crate::lifecycle::expect;
use crate::workload::{self, Cgroup, NamedBinary};

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The unprivileged uid (and gid) the non-root tests run the agent as.
const NOBODY: u32 = 65534;

/// What the agent needs as a uid other than tracefs's owner: CAP_BPF and
/// CAP_PERFMON for the programs, CAP_DAC_READ_SEARCH to read tracepoint
/// ids in a tracefs of mode 0700.
const NON_ROOT_CAPS: &[u32] = &[CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH];
/// What it needs as uid 0, the owner of tracefs (the least-privilege pod).
const ROOT_CAPS: &[u32] = &[CAP_BPF, CAP_PERFMON];

const TRACEFS: &str = "/sys/kernel/tracing";

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("least_privilege_non_root_uid_with_bpf_perfmon_dac_read_search_counts_exactly", non_root_counts),
        Trial::test(
            "least_privilege_uid0_with_only_bpf_and_perfmon_and_drop_capabilities_counts_exactly",
            root_least_privilege,
        ),
        Trial::test("least_privilege_without_cap_bpf_or_cap_perfmon_exits_1_naming_it", missing_capability),
        Trial::test("least_privilege_bpf_refused_by_seccomp_is_named", seccomp_named),
        Trial::test(
            "least_privilege_drop_capabilities_leaves_no_thread_a_capability_and_scrapes_stay_exact",
            drop_keeps_working,
        ),
        Trial::test(
            "least_privilege_drop_capabilities_keeps_series_expiry_deleting_kernel_keys",
            drop_keeps_series_expiry,
        ),
        Trial::test(
            "least_privilege_drop_capabilities_refuses_a_reload_that_loads_and_keeps_counting",
            drop_refuses_loading_reload,
        ),
        // Ignored, with the reason, where the kernel treats levels above 2
        // as 2 (upstream kernels): nothing is refused to name.
        Trial::ignorable_test("least_privilege_perf_event_paranoid_above_2_is_named_when_it_refuses", paranoid_named),
        // Ignored, with the reason, where the kernel has no kprobes (and so,
        // on the kernels this suite runs on, no fentry either).
        Trial::ignorable_test("least_privilege_uid0_with_bpf_and_perfmon_attaches_kprobe_and_fentry", || {
            if kernel::has_kprobes() {
                kernel_hooks_attach().map(|()| Completion::Completed)
            } else {
                Ok(Completion::ignored_with("needs a kernel with kprobes"))
            }
        }),
        // Ignored, with the reason, where tracefs is not the kernel's usual
        // mode 0700 at /sys/kernel/tracing: there is nothing closed to test.
        Trial::ignorable_test(
            "least_privilege_unreadable_tracefs_is_reported_with_its_mount_mode_and_capability",
            || match tracefs_closed_to_others() {
                Ok(()) => unreadable_tracefs().map(|()| Completion::Completed),
                Err(why) => Ok(Completion::ignored_with(why)),
            },
        ),
    ]
}

/// Whether tracefs is mounted at TRACEFS with a mode that keeps other
/// uids out, as the kernel mounts it (0700); Err says why not.
fn tracefs_closed_to_others() -> Result<(), String> {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading mountinfo: {e}"))?
        .lines()
        .filter_map(|l| l.split_once(" - "))
        .any(|(mount, fs)| fs.starts_with("tracefs ") && mount.split(' ').nth(4) == Some(TRACEFS));
    if !mounted {
        return Err(format!("needs tracefs mounted at {TRACEFS}"));
    }
    let mode = std::fs::metadata(TRACEFS).map_err(|e| format!("stat {TRACEFS}: {e}"))?.mode();
    if mode & 0o001 != 0 {
        return Err(format!("needs {TRACEFS} closed to other uids; it is mode {:04o}", mode & 0o7777));
    }
    Ok(())
}

const PERF_EVENT_PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";

/// Sets `kernel.perf_event_paranoid` while it lives, then restores it.
struct Paranoid {
    was: String,
}

impl Paranoid {
    fn set(level: i32) -> Paranoid {
        let was = std::fs::read_to_string(PERF_EVENT_PARANOID).expect("read perf_event_paranoid");
        std::fs::write(PERF_EVENT_PARANOID, level.to_string()).expect("set perf_event_paranoid");
        Paranoid { was }
    }

    /// At most 2, as docs/deployment.md asks of nodes for the
    /// least-privilege variant: Debian's and Ubuntu's kernels refuse
    /// perf_event_open (tracepoint and kprobe attachment) above 2 without
    /// CAP_SYS_ADMIN. Left alone where it already is.
    fn at_most_2() -> Option<Paranoid> {
        let level: i32 = std::fs::read_to_string(PERF_EVENT_PARANOID).ok()?.trim().parse().ok()?;
        (level > 2).then(|| Paranoid::set(2))
    }
}

impl Drop for Paranoid {
    fn drop(&mut self) {
        let _ = std::fs::write(PERF_EVENT_PARANOID, self.was.trim());
    }
}

/// A uid and the only capabilities a child runs with, and whether a
/// seccomp filter refuses it bpf() as old container runtimes' default
/// profiles do to a process without CAP_SYS_ADMIN.
#[derive(Clone, Copy)]
struct Identity {
    uid: u32,
    caps: u64,
    refuse_bpf: bool,
}

impl Identity {
    fn new(uid: u32, caps: &[u32]) -> Identity {
        Identity { uid, caps: caps.iter().fold(0, |mask, cap| mask | (1 << cap)), refuse_bpf: false }
    }

    fn refusing_bpf(self) -> Identity {
        Identity { refuse_bpf: true, ..self }
    }

    /// A `sonde` command that runs as this identity.
    fn sonde(self) -> Command {
        let mut command = Command::new(sonde_bin());
        // SAFETY: the closure makes raw system calls only and allocates
        // nothing, as the child of a fork must.
        unsafe { command.pre_exec(move || become_identity(self)) };
        command
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check_rc(rc: libc::c_long) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// In the forked child: keep only `id.caps` in the bounding set, become
/// `id.uid` (gid the same, no supplementary groups) keeping capabilities,
/// then hold exactly `id.caps` as effective, permitted, inheritable and
/// ambient, so that they survive exec for any uid.
fn become_identity(id: Identity) -> std::io::Result<()> {
    // SAFETY (all below): system calls with integer arguments or pointers to
    // live locals.
    unsafe {
        for cap in 0..64u64 {
            // Fails with EINVAL past the kernel's last capability.
            if id.caps & (1 << cap) == 0 {
                libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            }
        }
        check_rc(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0).into())?;
        check_rc(libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()))?;
        check_rc(libc::syscall(libc::SYS_setresgid, id.uid, id.uid, id.uid))?;
        check_rc(libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid))?;
        let mut header = CapHeader { version: 0x2008_0522, pid: 0 };
        let half = |high: bool| if high { (id.caps >> 32) as u32 } else { id.caps as u32 };
        let data =
            [false, true].map(|high| CapData { effective: half(high), permitted: half(high), inheritable: half(high) });
        check_rc(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()))?;
        for cap in (0..64u64).filter(|cap| id.caps & (1 << cap) != 0) {
            let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
            check_rc(libc::prctl(libc::PR_CAP_AMBIENT, raise, cap as libc::c_ulong, 0, 0).into())?;
        }
        if id.refuse_bpf {
            // A process without CAP_SYS_ADMIN may install a filter only
            // with no_new_privs.
            check_rc(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
            let mut filter = BPF_REFUSING_FILTER;
            let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
            let mode = libc::SECCOMP_MODE_FILTER as libc::c_ulong;
            check_rc(libc::prctl(libc::PR_SET_SECCOMP, mode, &program as *const libc::sock_fprog).into())?;
        }
    }
    Ok(())
}

const fn statement(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

/// bpf() fails with EPERM, every other call is allowed. (It does not check
/// the architecture: it only has to stand in for a runtime's profile in a
/// test.)
const BPF_REFUSING_FILTER: [libc::sock_filter; 4] = [
    // The system call's number: offset 0 of struct seccomp_data.
    statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt: 0,
        jf: 1,
        k: libc::SYS_bpf as u32,
    },
    statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
    statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
];

/// Runs `command` to its end, killing it if it runs longer than `within`
/// (an agent that should have refused to start but serves instead).
fn run_to_exit(mut command: Command, within: Duration) -> Result<Output, Failed> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {within:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output().map_err(|e| e.to_string())?)
}

/// The `Cap*` sets and `Uid` of a process's threads, from /proc.
struct TaskStatus {
    tid: String,
    uid: Option<u32>,
    sets: [(&'static str, u64); 5],
}

fn task_statuses(pid: i32) -> Vec<TaskStatus> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list the agent's threads");
    tasks
        .filter_map(|entry| {
            let tid = entry.ok()?.file_name().to_string_lossy().into_owned();
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
            let hex = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(u64::MAX);
            let uid = field("Uid:").and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok());
            let sets = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"].map(|n| (n, hex(n)));
            Some(TaskStatus { tid, uid, sets })
        })
        .collect()
}

/// Every thread of `pid` runs as `uid` with effective, permitted,
/// inheritable and ambient sets within `allowed`, and a bounding set
/// within `bounding`.
fn threads_hold_at_most(pid: i32, uid: u32, allowed: u64, bounding: u64) -> Result<(), Failed> {
    let tasks = task_statuses(pid);
    expect(!tasks.is_empty(), "the agent has no threads in /proc")?;
    for task in tasks {
        expect(task.uid == Some(uid), format!("thread {} runs as uid {:?}, want {uid}", task.tid, task.uid))?;
        for (name, set) in task.sets {
            let limit = if name == "CapBnd:" { bounding } else { allowed };
            expect(set & !limit == 0, format!("thread {} has {name} {set:016x}, want within {limit:016x}", task.tid))?;
        }
    }
    Ok(())
}

/// exec and exit count exactly for a known workload, under `identity`.
fn counts_exactly(agent: &Agent) -> Result<(), Failed> {
    let comm = workload::unique_comm("lp");
    let statuses = NamedBinary::new(&comm).run(7, &["exit", "3"]);
    expect(statuses.iter().all(|s| s.code() == Some(3)), format!("workload exit statuses: {statuses:?}"))?;
    check("sonde_exec_total", agent.settle(7.0, exec_count(&comm)), 7.0)?;
    let exits = agent.settle(7.0, |m| m.value("sonde_exit_total", &[("comm", &comm), ("code", "3")]));
    check("sonde_exit_total{code=3}", exits, 7.0)?;
    let metrics = agent.scrape();
    for probe in ["exec", "exit"] {
        check(&format!("sonde_probe_up{{probe={probe}}}"), metrics.value("sonde_probe_up", &[("probe", probe)]), 1.0)?;
    }
    Ok(())
}

const EXEC_EXIT: &str = "probes:\n  exec: {}\n  exit: {}\n";

/// uid 65534 with CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH only: the
/// probes attach and count exactly, and the agent holds nothing more.
fn non_root_counts() -> Result<(), Failed> {
    let _paranoid = Paranoid::at_most_2();
    let identity = Identity::new(NOBODY, NON_ROOT_CAPS);
    let agent = Agent::start_with(EXEC_EXIT, &[], identity.sonde());
    threads_hold_at_most(agent.pid(), NOBODY, identity.caps, identity.caps)?;
    counts_exactly(&agent)
}

/// uid 0 with only CAP_BPF and CAP_PERFMON, as the least-privilege pod runs
/// it, and `drop_capabilities` as its config has it: the probes attach
/// without CAP_DAC_READ_SEARCH (uid 0 owns tracefs), every capability is
/// gone once it is ready (the bounding set stays: emptying it takes
/// CAP_SETPCAP), and it counts exactly.
fn root_least_privilege() -> Result<(), Failed> {
    let _paranoid = Paranoid::at_most_2();
    let identity = Identity::new(0, ROOT_CAPS);
    let agent = Agent::start_with(&format!("drop_capabilities: true\n{EXEC_EXIT}"), &[], identity.sonde());
    threads_hold_at_most(agent.pid(), 0, kept_after_drop(), identity.caps)?;
    counts_exactly(&agent)
}

/// The hooks that do not use tracefs attach with the same two
/// capabilities: kprobes (perf_event_open of the kprobe PMU, which takes
/// CAP_PERFMON) and, where the kernel has it, fentry.
fn kernel_hooks_attach() -> Result<(), Failed> {
    let _paranoid = Paranoid::at_most_2();
    let mut hooks = vec!["kprobe"];
    if kernel::expects_fentry() {
        hooks.push("fentry");
    }
    for hook in hooks {
        let config = ConfigFile::new(&format!("probes:\n  vfs_io:\n    hook: {hook}\n"));
        let mut command = Identity::new(0, ROOT_CAPS).sonde();
        command.args(["check", "--attach", "--config", &config.path.display().to_string()]);
        let out = run_to_exit(command, Duration::from_secs(30))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let want = format!("hook={hook}");
        expect(
            out.status.success()
                && stdout.lines().any(|l| l.starts_with("vfs_io") && l.contains(" ok ") && l.contains(&want)),
            format!(
                "vfs_io with hook {hook}: exit {:?}, stdout {stdout:?}, stderr {:?}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        )?;
    }
    Ok(())
}

/// At `kernel.perf_event_paranoid` 3, a kernel that restricts perf events
/// above 2 refuses the exec tracepoint to uid 0 with CAP_BPF and
/// CAP_PERFMON only; the failure then names the setting and its fix.
fn paranoid_named() -> Result<Completion, Failed> {
    let _paranoid = Paranoid::set(3);
    let config = ConfigFile::new("probes:\n  exec: {}\n");
    let mut command = Identity::new(0, ROOT_CAPS).sonde();
    command.args(["check", "--attach", "--config", &config.path.display().to_string()]);
    let out = run_to_exit(command, Duration::from_secs(30))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        return Ok(Completion::ignored_with("this kernel does not restrict perf events above perf_event_paranoid 2"));
    }
    for want in ["exec       FAILED", "kernel.perf_event_paranoid is 3", "sysctl kernel.perf_event_paranoid=2"] {
        expect(stdout.contains(want), format!("stdout {stdout:?} lacks {want:?}"))?;
    }
    Ok(Completion::Completed)
}

/// Under a seccomp filter that refuses bpf() (as old container runtimes'
/// default profiles do without CAP_SYS_ADMIN), holding CAP_BPF does not
/// help: the failure says a seccomp filter is on and what to change.
fn seccomp_named() -> Result<(), Failed> {
    let config = ConfigFile::new("probes:\n  exec: {}\n");
    let mut command = Identity::new(0, ROOT_CAPS).refusing_bpf().sonde();
    command.args(["check", "--attach", "--config", &config.path.display().to_string()]);
    let out = run_to_exit(command, Duration::from_secs(30))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    expect(out.status.code() == Some(1), format!("exit {:?}, want 1; stdout {stdout:?}", out.status))?;
    for want in ["exec       FAILED", "Operation not permitted", "seccomp filter (Seccomp: 2", "Unconfined"] {
        expect(stdout.contains(want), format!("stdout {stdout:?} lacks {want:?}"))?;
    }
    Ok(())
}

/// Without CAP_BPF (or CAP_PERFMON) the agent exits 1 before loading
/// anything, naming the capability it lacks.
fn missing_capability() -> Result<(), Failed> {
    let before = kernel::baseline_programs();
    let config = ConfigFile::new(&format!("listen: \"127.0.0.1:0\"\n{EXEC_EXIT}"));
    let path = config.path.display().to_string();
    let cases = [
        (vec![CAP_PERFMON, CAP_DAC_READ_SEARCH], "sonde lacks CAP_BPF"),
        (vec![CAP_BPF, CAP_DAC_READ_SEARCH], "sonde lacks CAP_PERFMON"),
        (vec![CAP_DAC_READ_SEARCH], "sonde lacks CAP_BPF and CAP_PERFMON"),
    ];
    for (caps, want) in cases {
        let mut command = Identity::new(NOBODY, &caps).sonde();
        command.args(["run", "--config", &path]);
        let out = run_to_exit(command, Duration::from_secs(10))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        expect(
            out.status.code() == Some(1),
            format!("caps {caps:?}: exit {:?}, want 1; stderr: {stderr}", out.status),
        )?;
        expect(stderr.contains(want), format!("caps {caps:?}: stderr {stderr:?} lacks {want:?}"))?;
    }
    let after = kernel::sonde_programs_become(before);
    expect(after == before, format!("{after} sonde programs loaded, want {before}"))
}

/// As uid 65534 without CAP_DAC_READ_SEARCH, tracefs (mode 0700, owned by
/// root) is closed: the agent says it is mounted, its mode and owner, and
/// the capability that opens it, not that it is missing.
fn unreadable_tracefs() -> Result<(), Failed> {
    let meta = std::fs::metadata(TRACEFS)?;
    let config = ConfigFile::new(&format!("listen: \"127.0.0.1:0\"\n{EXEC_EXIT}"));
    let mut command = Identity::new(NOBODY, ROOT_CAPS).sonde();
    command.args(["run", "--config", &config.path.display().to_string()]);
    let out = run_to_exit(command, Duration::from_secs(10))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    expect(out.status.code() == Some(1), format!("exit {:?}, want 1; stderr: {stderr}", out.status))?;
    let wants = [
        format!("tracefs is mounted at {TRACEFS}"),
        format!("mode {:04o} (owner uid {}, gid {})", meta.mode() & 0o7777, meta.uid(), meta.gid()),
        format!("runs as uid {NOBODY} without CAP_DAC_READ_SEARCH"),
        "mount -o remount,gid=GID,mode=0750".to_string(),
    ];
    for want in wants {
        expect(stderr.contains(&want), format!("stderr {stderr:?} lacks {want:?}"))?;
    }
    expect(!stderr.contains("not mounted"), format!("stderr {stderr:?} says tracefs is not mounted"))
}

/// Capabilities a dropped agent keeps: none, except CAP_BPF on kernels
/// that refuse every bpf() command without it (before 5.19, with
/// `kernel.unprivileged_bpf_disabled` set).
fn kept_after_drop() -> u64 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release.trim().split(['.', '-']).map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let unprivileged_disabled =
        std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").map_or(true, |v| v.trim() != "0");
    if version < (5, 19) && unprivileged_disabled {
        1 << CAP_BPF
    } else {
        0
    }
}

/// `--drop-capabilities` as root: once ready, no thread holds any
/// capability (bounding set included); then everything that reads through
/// descriptors opened before keeps working, exactly: ring-buffer probes,
/// the `cgroup` label of a cgroup made after the drop, BPF run-time
/// statistics, and a SIGHUP reload of the unchanged config.
fn drop_keeps_working() -> Result<(), Failed> {
    let mount = workload::cgroup2_mount().ok_or("no cgroup2 mount in /proc/self/mountinfo")?;
    let comm = workload::unique_comm("dc");
    let yaml = format!(
        "bpf_stats: true\nprobes:\n  exec:\n    labels: [comm, cgroup]\n    filter: {{comm: [{comm}]}}\n  \
         exit:\n    filter: {{comm: [{comm}]}}\n"
    );
    let agent = Agent::start(&yaml, &["--drop-capabilities"]);
    let kept = kept_after_drop();
    threads_hold_at_most(agent.pid(), 0, kept, kept)?;

    let runs = |m: &Metrics| m.value("sonde_bpf_prog_runs_total", &[("program", "handle_exec")]);
    let runs_before = runs(&agent.scrape());
    let cgroup = Cgroup::create(&mount, &format!("sonde-test-{comm}"));
    let binary = NamedBinary::new(&comm);
    let statuses = cgroup.run(&binary, 4, &["exit", "0"]);
    expect(statuses.iter().all(|s| s.code() == Some(0)), format!("workload exit statuses: {statuses:?}"))?;
    let path = cgroup.path();
    let in_cgroup = [("comm", comm.as_str()), ("cgroup", path.as_str())];
    check("sonde_exec_total{cgroup}", agent.settle(4.0, |m| m.value("sonde_exec_total", &in_cgroup)), 4.0)?;
    let exits = agent.settle(4.0, |m| m.value("sonde_exit_total", &[("comm", &comm), ("code", "0")]));
    check("sonde_exit_total", exits, 4.0)?;
    let runs_after = runs(&agent.scrape());
    expect(runs_after >= runs_before + 4.0, format!("handle_exec ran {runs_before} then {runs_after} times"))?;

    reload_ok(&agent, &yaml, Trigger::Sighup)?;
    let statuses = cgroup.run(&binary, 3, &["exit", "0"]);
    expect(statuses.iter().all(|s| s.code() == Some(0)), format!("workload exit statuses: {statuses:?}"))?;
    check("sonde_exec_total after the reload", agent.settle(7.0, |m| m.value("sonde_exec_total", &in_cgroup)), 7.0)?;
    threads_hold_at_most(agent.pid(), 0, kept, kept)
}

/// With capabilities dropped, a probe that counts in the kernel still has
/// its expired series' keys deleted from the kernel's map (through the
/// descriptor it holds): the series comes back from zero, not from the
/// old total.
fn drop_keeps_series_expiry() -> Result<(), Failed> {
    let busy = workload::unique_comm("ds");
    let agent = Agent::start(
        &format!("series_ttl: 1s\nprobes:\n  syscalls:\n    labels: [syscall, comm]\n    filter: {{comm: [{busy}]}}\n"),
        &["--drop-capabilities"],
    );
    let kept = kept_after_drop();
    threads_hold_at_most(agent.pid(), 0, kept, kept)?;
    let getppid = [("syscall", "getppid"), ("comm", busy.as_str())];
    let calls = |m: &Metrics| m.value("sonde_syscalls_total", &getppid);
    workload::on_named_thread(&busy, || workload::getppid_calls(31));
    check("getppid calls", agent.settle(31.0, calls), 31.0)?;
    agent.wait_for("the getppid series expires", Duration::from_secs(5), |m| {
        m.get("sonde_syscalls_total", &getppid).is_none()
    })?;
    workload::on_named_thread(&busy, || workload::getppid_calls(5));
    check("getppid calls after expiry (the kernel's key was deleted)", agent.settle(5.0, calls), 5.0)
}

/// With capabilities dropped, a reload that would load a probe is refused
/// whole (by SIGHUP: `sonde_config_last_reload_successful 0`; by POST: 400
/// naming CAP_BPF and drop_capabilities), nothing new is loaded, and the
/// running probe keeps counting; reloading the unchanged config then
/// succeeds again.
fn drop_refuses_loading_reload() -> Result<(), Failed> {
    let comm = workload::unique_comm("dr");
    let exec_only = format!("probes:\n  exec:\n    filter: {{comm: [{comm}]}}\n");
    let before = kernel::baseline_programs();
    let agent = Agent::start(&exec_only, &["--drop-capabilities"]);
    // exec has one program.
    let programs = before + 1;
    let binary = NamedBinary::new(&comm);
    run_ok(&binary, 2)?;
    check("execs before", agent.settle(2.0, exec_count(&comm)), 2.0)?;

    agent.rewrite_config(&format!("{exec_only}  exit: {{}}\n"));
    agent.signal(libc::SIGHUP);
    agent.wait_for("the reload reported failed", Duration::from_secs(10), |m| m.value(RELOADED, &[]) == 0.0)?;
    let (status, body) = agent.post("/-/reload")?;
    expect(status == 400, format!("POST /-/reload → {status} {body}, want 400"))?;
    for want in ["exit", "CAP_BPF", "drop_capabilities", "nothing was changed"] {
        expect(body.contains(want), format!("reload answer {body:?} lacks {want:?}"))?;
    }
    let metrics = agent.scrape();
    expect(metrics.get("sonde_probe_up", &[("probe", "exit")]).is_none(), "the exit probe appeared")?;
    check("exec probe up", metrics.value("sonde_probe_up", &[("probe", "exec")]), 1.0)?;
    let now = kernel::sonde_programs();
    expect(now == programs, format!("{now} sonde programs after the refused reload, want {programs}"))?;

    run_ok(&binary, 3)?;
    check("execs after the refused reload", agent.settle(5.0, exec_count(&comm)), 5.0)?;
    let at = agent.scrape().value(RELOADED_AT, &[]);
    reload_ok(&agent, &exec_only, Trigger::Post)?;
    expect(agent.scrape().value(RELOADED_AT, &[]) > at, "the unchanged reload did not move the success time")?;
    run_ok(&binary, 1)?;
    check("execs after the unchanged reload", agent.settle(6.0, exec_count(&comm)), 6.0)
}
