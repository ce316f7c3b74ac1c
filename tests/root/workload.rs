//! Known workloads, each run under a process or thread name of its own so
//! that the agent's counts for that name are exactly what it did.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// A process name no other test or process uses: at most 15 bytes, so the
/// kernel keeps all of it.
pub fn unique_comm(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 100_000;
    let mut comm = format!("s{tag}{pid}x{n}");
    comm.truncate(15);
    comm
}

/// When run as a workload (`--workload KIND ARGS`), does it and returns the
/// exit code.
pub fn dispatch() -> Option<i32> {
    // The program's own name (argv[0]) may be any bytes: only the
    // arguments after it are text.
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    if args.get(1).map(String::as_str) != Some("--workload") {
        return None;
    }
    Some(match args.get(2).map(String::as_str) {
        Some("exit") => args.get(3).and_then(|c| c.parse().ok()).unwrap_or(0),
        Some("threads-exit") => threads_exit_group(args.get(3).and_then(|n| n.parse().ok()).unwrap_or(2)),
        Some("kill") => {
            // SAFETY: raising a signal at ourselves.
            unsafe { libc::raise(libc::SIGKILL) };
            1
        }
        Some("fork") => fork_children(args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1)),
        Some("catch-usr1") => catch_usr1_until_eof(),
        Some("raise-ignored") => raise_ignored(
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(libc::SIGUSR1),
            args.get(4).and_then(|n| n.parse().ok()).unwrap_or(1),
        ),
        Some("allocate") => allocate_forever(),
        Some("spin") => spin_on_one_cpu(args.get(3).and_then(|ms| ms.parse().ok()).unwrap_or(1000)),
        _ => 100,
    })
}

/// Forks `n` children that exit at once, reaping each; 0 when all exited 0.
fn fork_children(n: usize) -> i32 {
    for _ in 0..n {
        // SAFETY: the child only calls _exit.
        match unsafe { libc::fork() } {
            0 => unsafe { libc::_exit(0) },
            -1 => return 101,
            child => {
                let mut status = 0;
                // SAFETY: waits for our own child.
                if unsafe { libc::waitpid(child, &mut status, 0) } != child || status != 0 {
                    return 102;
                }
            }
        }
    }
    0
}

/// Says on stdout that a signal came, so that a sender can wait for each
/// one to be delivered before it sends the next (a slow guest may not have
/// run the handler within any fixed pause, and a signal sent while the last
/// is pending is merged into it). write(2) is async-signal-safe.
extern "C" fn acknowledge_signal(_: libc::c_int) {
    // SAFETY: writes one byte from a static buffer to stdout.
    unsafe { libc::write(1, b"s".as_ptr().cast(), 1) };
}

/// Catches SIGUSR1 (so that it is delivered, not fatal), says `ready` on
/// stdout, then `s` for each SIGUSR1, and exits 0 when stdin closes.
fn catch_usr1_until_eof() -> i32 {
    use std::io::{Read, Write};
    // SAFETY: installs a handler that only writes one byte.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = acknowledge_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        if libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()) != 0 {
            return 101;
        }
    }
    if writeln!(std::io::stdout(), "ready").and_then(|_| std::io::stdout().flush()).is_err() {
        return 102;
    }
    let mut rest = Vec::new();
    match std::io::stdin().read_to_end(&mut rest) {
        Ok(_) => 0,
        Err(_) => 103,
    }
}

/// Ignores `signal`, then raises it at itself `times` times: each raise is
/// one signal generated, by and for this process; 0 when all were sent.
fn raise_ignored(signal: i32, times: usize) -> i32 {
    // SAFETY: sets this process's disposition of one signal to ignore.
    if unsafe { libc::signal(signal, libc::SIG_IGN) } == libc::SIG_ERR {
        return 101;
    }
    for _ in 0..times {
        // SAFETY: raising an ignored signal at ourselves.
        if unsafe { libc::raise(signal) } != 0 {
            return 102;
        }
    }
    0
}

/// Allocates and touches memory 1 MiB at a time until something stops it.
fn allocate_forever() -> i32 {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&held);
    }
}

/// Keeps CPU 0 busy for `ms` milliseconds of wall time. One CPU only, so
/// that a CPU quota throttles one run queue per throttled period.
fn spin_on_one_cpu(ms: u64) -> i32 {
    // SAFETY: a zeroed cpu_set_t with one CPU set, for this process.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if pinned != 0 {
        return 101;
    }
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    0
}

/// `n` threads that wait until all of them run, then all end the process
/// with `exit_group` at the same moment, racing each other to it.
fn threads_exit_group(n: usize) -> ! {
    let barrier = Arc::new(Barrier::new(n));
    for _ in 0..n {
        let barrier = barrier.clone();
        std::thread::spawn(move || {
            barrier.wait();
            // SAFETY: ends the whole process, which is the point.
            unsafe { libc::syscall(libc::SYS_exit_group, 0) };
        });
    }
    loop {
        std::thread::park();
    }
}

/// A copy of this binary named `name` (any bytes but `/` and NUL), so that
/// exec'ing it sets that comm (its first 15 bytes).
pub struct NamedBinary {
    dir: PathBuf,
    pub path: PathBuf,
}

impl NamedBinary {
    pub fn new(name: impl AsRef<[u8]>) -> NamedBinary {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sonde-test-{}-bin{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join(OsStr::from_bytes(name.as_ref()));
        let me = std::env::current_exe().expect("current_exe");
        std::fs::copy(me, &path).expect("copy test binary");
        NamedBinary { dir, path }
    }

    /// A command that runs it as the workload `args`, with an empty
    /// environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.path);
        command.arg("--workload").args(args).env_clear();
        command
    }

    /// Runs it `times` times with `args`, returning each exit status.
    pub fn run(&self, times: usize, args: &[&str]) -> Vec<ExitStatus> {
        (0..times).map(|_| self.command(args).status().expect("spawn workload")).collect()
    }
}

impl Drop for NamedBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread named `comm` (a thread's comm is its name).
pub fn on_named_thread<T: Send + 'static>(comm: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .name(comm.to_string())
        .spawn(f)
        .expect("spawn named thread")
        .join()
        .expect("workload thread panicked")
}

/// Tries to open `path` (which must not exist) `times` times.
pub fn open_missing(path: &Path, times: usize) {
    for _ in 0..times {
        let err = std::fs::File::open(path).expect_err("path must not exist");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}

/// Reads `len` bytes at offset 0 of `path`, `times` times, one read call each.
pub fn pread_file(path: &Path, len: usize, times: usize) {
    let file = std::fs::File::open(path).expect("open file to read");
    let mut buf = vec![0u8; len];
    for _ in 0..times {
        let n = file.read_at(&mut buf, 0).expect("pread");
        assert_eq!(n, len, "short read");
    }
}

/// Calls getppid(2) `times` times.
pub fn getppid_calls(times: usize) {
    for _ in 0..times {
        // SAFETY: getppid cannot fail.
        unsafe { libc::getppid() };
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host), from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split(' ').next()? != "cgroup2" {
            return None;
        }
        mount.split(' ').nth(4).map(|point| PathBuf::from(unescape_mountinfo(point)))
    })
}

/// mountinfo writes space, tab, newline and backslash in paths as `\NNN`
/// (octal).
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4).and_then(|octal| u8::from_str_radix(octal, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A cgroup created directly under the cgroup v2 root, removed when
/// dropped (on failure too) once the processes run in it are gone.
pub struct Cgroup {
    pub dir: PathBuf,
    name: String,
}

impl Cgroup {
    pub fn create(mount: &Path, name: &str) -> Cgroup {
        let dir = mount.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup { dir, name: name.to_string() }
    }

    /// Its path as seen from the cgroup root: `/<name>`.
    pub fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// Runs `binary` `times` times with `args`, each process moved into
    /// this cgroup between fork and exec.
    pub fn run(&self, binary: &NamedBinary, times: usize, args: &[&str]) -> Vec<ExitStatus> {
        let procs = CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes()).expect("path without NUL");
        (0..times)
            .map(|_| {
                let procs = procs.clone();
                let mut command = binary.command(args);
                // SAFETY: open, write and close are async-signal-safe, and
                // the closure allocates nothing.
                unsafe {
                    command.pre_exec(move || join_cgroup(&procs));
                }
                command.status().expect("spawn workload in cgroup")
            })
            .collect()
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs` ("0" means the writer itself).
fn join_cgroup(procs: &CString) -> std::io::Result<()> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: writes one byte from a static buffer.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let result = if written == 1 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A cgroup can be removed only once empty, and a process that was
        // reaped may still hold it for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = std::fs::remove_dir(&self.dir) {
            if Instant::now() > deadline {
                eprintln!("leaving cgroup {}: {e}", self.dir.display());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
