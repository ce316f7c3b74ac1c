//! Known workloads, each run under a process or thread name of its own so
//! that the agent's counts for that name are exactly what it did.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

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
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("--workload") {
        return None;
    }
    Some(match args.get(2).map(String::as_str) {
        Some("exit") => args.get(3).and_then(|c| c.parse().ok()).unwrap_or(0),
        Some("kill") => {
            // SAFETY: raising a signal at ourselves.
            unsafe { libc::raise(libc::SIGKILL) };
            1
        }
        _ => 100,
    })
}

/// A copy of this binary named `comm`, so that exec'ing it sets that comm.
pub struct NamedBinary {
    dir: PathBuf,
    pub path: PathBuf,
}

impl NamedBinary {
    pub fn new(comm: &str) -> NamedBinary {
        let dir = std::env::temp_dir().join(format!("sonde-test-{}-{comm}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join(comm);
        let me = std::env::current_exe().expect("current_exe");
        std::fs::copy(me, &path).expect("copy test binary");
        NamedBinary { dir, path }
    }

    /// Runs it `times` times with `args`, returning each exit status.
    pub fn run(&self, times: usize, args: &[&str]) -> Vec<std::process::ExitStatus> {
        (0..times)
            .map(|_| {
                Command::new(&self.path).arg("--workload").args(args).env_clear().status().expect("spawn workload")
            })
            .collect()
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
