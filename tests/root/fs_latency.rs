//! fs_latency: exact counts of a named thread's reads, writes, opens and
//! fsyncs of a file on ext4, on each hook and through both the in-kernel
//! and the ring path; the xfs functions a kernel lacks listed as absent.
//! Its hooks need kprobes or fentry: where the kernel has neither, it must
//! be reported unsupported instead.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use libtest_mimic::{Completion, Failed, Trial};

use crate::agent::{sonde, Agent};
use crate::kernel;
use crate::workload;

const OPENS: usize = 7;
const WRITES: usize = 11;
const FSYNCS: usize = 5;
const READS: usize = 13;

/// Where the VM suite mounts the ext4 disk it attaches (run-in-vm.sh's
/// `VM_EXT4_MB`).
const VM_EXT4: &str = "/mnt/ext4";
const EXT4_SUPER_MAGIC: u64 = 0xEF53;

pub fn trials() -> Vec<Trial> {
    if !kernel::has_kprobes() && !kernel::expects_fentry() {
        let needs_hooks = |name: &str| {
            Trial::ignorable_test(name, || {
                Ok(Completion::ignored_with("needs kprobes or fentry, which this kernel lacks (the VM suite runs it)"))
            })
        };
        return vec![
            Trial::test("fs_latency_reported_unsupported_without_kprobes_or_fentry", unsupported),
            needs_hooks("fs_latency_times_ext4_ops_in_kernel_on_the_best_hook"),
            needs_hooks("fs_latency_kprobe_ring_mode_times_ext4_ops"),
            needs_hooks("fs_latency_lists_the_absent_xfs_functions"),
        ];
    }
    let best = if kernel::expects_fentry() { "fentry" } else { "kprobe" };
    let mut trials = vec![
        Trial::ignorable_test("fs_latency_times_ext4_ops_in_kernel_on_the_best_hook", move || {
            with_ext4(|dir| ext4_ops(dir, None, best, true))
        }),
        Trial::test("fs_latency_lists_the_absent_xfs_functions", absent_xfs),
    ];
    if kernel::has_kprobes() {
        trials.push(Trial::ignorable_test("fs_latency_kprobe_ring_mode_times_ext4_ops", || {
            with_ext4(|dir| ext4_ops(dir, Some("kprobe"), "kprobe", false))
        }));
    }
    trials
}

fn check(what: &str, got: f64, want: f64) -> Result<(), Failed> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want {want}").into())
    }
}

/// Runs `test` in a writable directory on ext4, or says why there is none.
fn with_ext4(test: impl FnOnce(&Path) -> Result<(), Failed>) -> Result<Completion, Failed> {
    // The VM suite made the mount point: its disk must be there.
    if Path::new(VM_EXT4).is_dir() && !is_ext4(Path::new(VM_EXT4)) {
        return Err(format!("{VM_EXT4} exists but is not an ext4 mount: the VM's ext4 disk did not mount").into());
    }
    let candidates = [PathBuf::from(VM_EXT4), std::env::temp_dir(), std::env::current_dir().unwrap_or_default()];
    match candidates.iter().find(|dir| is_ext4(dir) && writable(dir)) {
        Some(dir) => test(dir).map(|()| Completion::Completed),
        None => Ok(Completion::ignored_with(format!(
            "no writable ext4 directory ({VM_EXT4}, the temporary directory, the working directory); the VM suite \
             mounts one at {VM_EXT4}"
        ))),
    }
}

fn is_ext4(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs writes only into `stat`; `path` is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(path.as_ptr(), &mut stat) } == 0) && stat.f_type as u64 == EXT4_SUPER_MAGIC
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".sonde-write-{}", std::process::id()));
    let ok = File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// A thread named uniquely opens a file on ext4 OPENS times, writes it
/// WRITES times, fsyncs it FSYNCS times and reads it READS times, one call
/// each: the probe must time exactly those, as ext4's, on `want_hook`.
fn ext4_ops(dir: &Path, hook: Option<&str>, want_hook: &str, aggregate: bool) -> Result<(), Failed> {
    let comm = workload::unique_comm("fsl");
    let path = dir.join(format!("sonde-fs-latency-{comm}"));
    std::fs::write(&path, vec![7u8; 4096])?;
    // In the kernel by (fs, op) alone, filtered to the thread (the direct
    // array); on the ring by comm, unfiltered.
    let settings = match (hook, aggregate) {
        (None, true) => format!("    filter: {{comm: [{comm}]}}\n"),
        (Some(hook), false) => format!("    hook: {hook}\n    aggregate: false\n    labels: [fs, op, comm]\n"),
        _ => unreachable!("the two configurations tested"),
    };
    let agent = Agent::start(&format!("probes:\n  fs_latency:\n{settings}"), &[]);
    check(
        &format!("sonde_probe_up{{probe=fs_latency,hook={want_hook}}}"),
        agent.scrape().value("sonde_probe_up", &[("probe", "fs_latency"), ("hook", want_hook)]),
        1.0,
    )?;
    let workload_path = path.clone();
    workload::on_named_thread(&comm, move || file_ops(&workload_path));
    let _ = std::fs::remove_file(&path);
    let labels = |op: &'static str| {
        let mut labels = vec![("fs", "ext4"), ("op", op)];
        if !aggregate {
            labels.push(("comm", comm.as_str()));
        }
        labels
    };
    for (op, want) in [("open", OPENS), ("write", WRITES), ("fsync", FSYNCS), ("read", READS)] {
        let labels = labels(op);
        let got = agent.settle(want as f64, |m| m.value("sonde_fs_latency_seconds_count", &labels));
        check(&format!("sonde_fs_latency_seconds_count{{fs=ext4,op={op}}}"), got, want as f64)?;
        let mut inf = labels.clone();
        inf.push(("le", "+Inf"));
        check(
            &format!("sonde_fs_latency_seconds_bucket{{op={op},le=+Inf}}"),
            agent.scrape().value("sonde_fs_latency_seconds_bucket", &inf),
            want as f64,
        )?;
        let sum = agent.scrape().value("sonde_fs_latency_seconds_sum", &labels);
        // every call takes some time, and none of these a second
        if !(sum > 0.0 && sum < want as f64) {
            return Err(format!("sonde_fs_latency_seconds_sum{{op={op}}} = {sum}").into());
        }
    }
    let xfs = agent.scrape().series("sonde_fs_latency_seconds_count");
    let xfs_counted = xfs.iter().any(|(l, v)| *v > 0.0 && l.iter().any(|(k, v)| k == "fs" && v == "xfs"));
    if aggregate && xfs_counted {
        return Err(format!("the ext4 workload was counted as xfs: {xfs:?}").into());
    }
    println!("SONDE_MATRIX probe=fs_latency hook={want_hook} result=ok");
    Ok(())
}

fn file_ops(path: &Path) {
    let file = OpenOptions::new().read(true).write(true).open(path).expect("open for writing");
    for _ in 1..OPENS {
        drop(File::open(path).expect("open"));
    }
    for i in 0..WRITES {
        assert_eq!(file.write_at(&[i as u8; 512], (i * 512) as u64).expect("pwrite"), 512);
    }
    for _ in 0..FSYNCS {
        file.sync_all().expect("fsync");
    }
    let mut buf = [0u8; 512];
    for i in 0..READS {
        assert_eq!(file.read_at(&mut buf, (i % 8 * 512) as u64).expect("pread"), 512);
    }
}

/// `sonde probes` names each xfs function this kernel lacks (xfs not built
/// in, or its module not loaded) as absent, and the probe still attaches.
fn absent_xfs() -> Result<(), Failed> {
    let listing = probes_listing()?;
    let block: Vec<&str> = listing.lines().collect();
    let kallsyms = std::fs::read_to_string("/proc/kallsyms")?;
    let has = |function: &str| kallsyms.lines().any(|l| l.split_whitespace().nth(2) == Some(function));
    let want: Vec<String> = ["xfs_file_read_iter", "xfs_file_write_iter", "xfs_file_open", "xfs_file_fsync"]
        .iter()
        .filter(|f| !has(f))
        .map(|f| format!("  absent   {f}: not hooked (not in /proc/kallsyms: "))
        .collect();
    let absent: Vec<&&str> = block.iter().filter(|l| l.starts_with("  absent   ")).collect();
    let matches = absent.len() == want.len() && absent.iter().zip(&want).all(|(line, want)| line.starts_with(want));
    if !matches {
        return Err(format!("want absent lines starting {want:#?}, got {block:#?}").into());
    }
    if !block.iter().any(|l| l.starts_with("  kernel   supported, via ")) {
        return Err(format!("fs_latency not supported: {block:#?}").into());
    }
    Ok(())
}

/// Without kprobes or fentry the probe is down with its reasons, and the
/// other probes run.
fn unsupported() -> Result<(), Failed> {
    let agent = Agent::start("probes:\n  fs_latency: {}\n  exec: {}\n", &[]);
    let metrics = agent.scrape();
    check(
        "sonde_probe_up{fs_latency,hook=none}",
        metrics.value("sonde_probe_up", &[("probe", "fs_latency"), ("hook", "none")]),
        0.0,
    )?;
    check("sonde_probe_up{exec}", metrics.value("sonde_probe_up", &[("probe", "exec"), ("hook", "tracepoint")]), 1.0)?;
    let listing = probes_listing()?;
    let block: Vec<&str> = listing.lines().collect();
    let said = block.contains(&"  kernel   unsupported: no hook loads and attaches here")
        && block.iter().any(|l| l.starts_with("  skipped  fentry: "))
        && block.iter().any(|l| l.starts_with("  skipped  kprobe: no kprobe PMU"));
    if !said {
        return Err(format!("sonde probes should say why fs_latency is unsupported: {block:#?}").into());
    }
    println!("SONDE_MATRIX probe=fs_latency hook=none result=unsupported");
    Ok(())
}

/// fs_latency's block of `sonde probes`, without its first line.
fn probes_listing() -> Result<String, Failed> {
    let out = sonde(&["probes"]);
    if !out.status.success() {
        return Err(format!("sonde probes failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let block: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("fs_latency: "))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .collect();
    Ok(block.join("\n"))
}
