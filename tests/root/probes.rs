//! Exact-delta tests: each probe against a known workload.

use libtest_mimic::{Failed, Trial};

use crate::agent::Agent;
use crate::kernel;
use crate::workload::{self, NamedBinary};

pub fn trials() -> Vec<Trial> {
    let mut trials = vec![
        Trial::test("exec_and_exit_count_a_unique_comm", exec_and_exit),
        Trial::test("exit_reports_the_fatal_signal", exit_by_signal),
        Trial::test("file_open_counts_enoent_by_comm_on_the_cheapest_hook", || file_open_enoent(None)),
        Trial::test("file_open_tracepoint_fallback_counts_enoent", || file_open_enoent(Some("tracepoint"))),
        Trial::test("syscalls_count_and_time_by_name", syscalls_by_name),
        Trial::test("syscalls_without_comm_filtered_by_pid", syscalls_by_pid),
        Trial::test("syscalls_ring_mode_counts_by_name", syscalls_ring_mode),
        Trial::test("syscalls_in_kernel_fold_past_the_limit_exactly", syscalls_kernel_overflow),
        Trial::test("syscalls_in_kernel_expire_and_restart_from_zero", syscalls_kernel_expiry),
        Trial::test("filter_keeps_only_the_configured_comm", comm_filter),
        Trial::test("series_limit_folds_into_overflow", series_limit),
    ];
    // Each hook either works here and is proven, or is proven to be
    // reported unsupported: nothing is skipped.
    if kernel::has_kprobes() {
        trials.push(Trial::test("file_open_kprobe_counts_enoent", || file_open_enoent(Some("kprobe"))));
        trials.push(Trial::test("vfs_io_kprobe_counts_calls_and_bytes", || vfs_io_counts("kprobe", true)));
        trials.push(Trial::test("vfs_io_kprobe_ring_mode_counts_calls_and_bytes", || vfs_io_counts("kprobe", false)));
    } else {
        trials.push(Trial::test("vfs_io_kprobe_reported_unsupported", || vfs_io_unsupported("kprobe")));
    }
    if kernel::expects_fentry() {
        trials.push(Trial::test("vfs_io_fentry_counts_calls_and_bytes", || vfs_io_counts("fentry", true)));
    } else {
        trials.push(Trial::test("vfs_io_fentry_reported_unsupported", || vfs_io_unsupported("fentry")));
    }
    trials
}

/// The line the VM harness collects into the kernel matrix.
fn matrix(probe: &str, hook: &str, result: &str) {
    println!("SONDE_MATRIX probe={probe} hook={hook} result={result}");
}

fn check(what: &str, got: f64, want: f64) -> Result<(), Failed> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want {want}").into())
    }
}

fn exec_and_exit() -> Result<(), Failed> {
    let comm = workload::unique_comm("ex");
    let agent = Agent::start("probes:\n  exec: {}\n  exit: {}\n", &[]);
    let binary = NamedBinary::new(&comm);
    for status in binary.run(25, &["exit", "3"]) {
        assert_eq!(status.code(), Some(3));
    }
    let execs = agent.settle(25.0, |m| m.value("sonde_exec_total", &[("comm", &comm)]));
    check("sonde_exec_total", execs, 25.0)?;
    let exits = agent.settle(25.0, |m| m.value("sonde_exit_total", &[("comm", &comm), ("code", "3"), ("signal", "")]));
    check("sonde_exit_total{code=3}", exits, 25.0)?;
    matrix("exec", "tracepoint", "ok");
    matrix("exit", "tracepoint", "ok");
    Ok(())
}

fn exit_by_signal() -> Result<(), Failed> {
    let comm = workload::unique_comm("kl");
    let agent = Agent::start("probes:\n  exit: {}\n", &[]);
    let binary = NamedBinary::new(&comm);
    for status in binary.run(6, &["kill"]) {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
    let killed =
        agent.settle(6.0, |m| m.value("sonde_exit_total", &[("comm", &comm), ("code", ""), ("signal", "SIGKILL")]));
    check("sonde_exit_total{signal=SIGKILL}", killed, 6.0)
}

/// The hook `hook: auto` should pick on this kernel for probes hooking a
/// kernel function, with a syscall tracepoint as the last resort.
fn expected_function_hook() -> &'static str {
    if kernel::expects_fentry() {
        "fentry"
    } else if kernel::has_kprobes() {
        "kprobe"
    } else {
        "tracepoint"
    }
}

/// `hook`: None for `auto`, which must pick the cheapest hook this kernel has.
fn file_open_enoent(hook: Option<&'static str>) -> Result<(), Failed> {
    let comm = workload::unique_comm("op");
    let setting = hook.map(|h| format!("\n    hook: {h}")).unwrap_or_else(|| " {}".into());
    let agent = Agent::start(&format!("probes:\n  file_open:{setting}\n"), &[]);
    let used = hook.unwrap_or_else(expected_function_hook);
    check(
        &format!("sonde_probe_up{{probe=file_open,hook={used}}}"),
        agent.scrape().value("sonde_probe_up", &[("probe", "file_open"), ("hook", used)]),
        1.0,
    )?;
    let missing = std::env::temp_dir().join(format!("sonde-missing-{comm}"));
    workload::on_named_thread(&comm, move || workload::open_missing(&missing, 17));
    let labels = [("comm", comm.as_str()), ("result", "ENOENT")];
    let opens = agent.settle(17.0, |m| m.value("sonde_file_open_total", &labels));
    check("sonde_file_open_total{result=ENOENT}", opens, 17.0)?;
    let metrics = agent.scrape();
    check(
        "sonde_file_open_duration_seconds_count",
        metrics.value("sonde_file_open_duration_seconds_count", &labels),
        17.0,
    )?;
    check(
        "successful opens by that thread",
        metrics.value("sonde_file_open_total", &[("comm", &comm), ("result", "ok")]),
        0.0,
    )?;
    matrix("file_open", used, "ok");
    Ok(())
}

fn syscalls_by_name() -> Result<(), Failed> {
    let comm = workload::unique_comm("sc");
    let agent = Agent::start(
        &format!("probes:\n  syscalls:\n    labels: [syscall, comm]\n    filter: {{comm: [{comm}]}}\n"),
        &[],
    );
    workload::on_named_thread(&comm, || workload::getppid_calls(31));
    let labels = [("syscall", "getppid"), ("comm", comm.as_str())];
    let calls = agent.settle(31.0, |m| m.value("sonde_syscalls_total", &labels));
    check("sonde_syscalls_total{syscall=getppid}", calls, 31.0)?;
    let metrics = agent.scrape();
    check("histogram count", metrics.value("sonde_syscall_duration_seconds_count", &labels), 31.0)?;
    let le_8s = metrics.value("sonde_syscall_duration_seconds_bucket", &[labels[0], labels[1], ("le", "+Inf")]);
    check("histogram +Inf bucket", le_8s, 31.0)?;
    matrix("syscalls", "tp_btf", "ok");
    Ok(())
}

/// Without the comm label the probe sends shorter records; a pid filter
/// keeps only this process.
fn syscalls_by_pid() -> Result<(), Failed> {
    let pid = std::process::id();
    let agent =
        Agent::start(&format!("probes:\n  syscalls:\n    labels: [syscall]\n    filter: {{pid: {pid}}}\n"), &[]);
    workload::getppid_calls(29);
    let labels = [("syscall", "getppid")];
    let calls = agent.settle(29.0, |m| m.value("sonde_syscalls_total", &labels));
    check("sonde_syscalls_total{syscall=getppid}", calls, 29.0)?;
    let metrics = agent.scrape();
    check("histogram count", metrics.value("sonde_syscall_duration_seconds_count", &labels), 29.0)?;
    check("decode errors", metrics.value("sonde_decode_errors_total", &[("probe", "syscalls")]), 0.0)
}

/// `aggregate: false` sends a ring buffer record per call instead of
/// counting in the kernel: the same counts, and events received.
fn syscalls_ring_mode() -> Result<(), Failed> {
    let comm = workload::unique_comm("sr");
    let agent = Agent::start(
        &format!(
            "probes:\n  syscalls:\n    aggregate: false\n    labels: [syscall, comm]\n    filter: {{comm: [{comm}]}}\n"
        ),
        &[],
    );
    workload::on_named_thread(&comm, || workload::getppid_calls(43));
    let labels = [("syscall", "getppid"), ("comm", comm.as_str())];
    check(
        "sonde_syscalls_total{syscall=getppid}",
        agent.settle(43.0, |m| m.value("sonde_syscalls_total", &labels)),
        43.0,
    )?;
    let metrics = agent.scrape();
    check("histogram count", metrics.value("sonde_syscall_duration_seconds_count", &labels), 43.0)?;
    let received = metrics.value("sonde_events_received_total", &[("probe", "syscalls")]);
    let counted: f64 = metrics.series("sonde_syscalls_total").iter().map(|(_, v)| v).sum();
    check("every record received was counted", counted, received)
}

/// Counted in the kernel with room for two label sets: the third syscall's
/// calls land in the overflow key, and the totals stay exact.
fn syscalls_kernel_overflow() -> Result<(), Failed> {
    let comm = workload::unique_comm("so");
    let agent = Agent::start(
        &format!("series_limit: 2\nprobes:\n  syscalls:\n    labels: [syscall]\n    filter: {{comm: [{comm}]}}\n"),
        &[],
    );
    // The thread's own start-up makes a few calls of other syscalls; the
    // test counts only what it adds beyond them.
    let total = |m: &crate::agent::Metrics| -> f64 { m.series("sonde_syscalls_total").iter().map(|(_, v)| v).sum() };
    let before = total(&agent.scrape());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::Builder::new().name(comm.clone()).spawn(move || {
        while rx.recv().is_ok() {
            workload::getppid_calls(50);
            // SAFETY: getpid and getuid cannot fail.
            for _ in 0..20 {
                unsafe { libc::getpid() };
                unsafe { libc::getuid() };
            }
            let _ = done_tx.send(());
        }
    })?;
    tx.send(())?;
    done_rx.recv()?;
    drop(tx);
    let _ = worker.join();
    let after = agent.settle(before + 90.0, |m| total(m));
    let metrics = agent.scrape();
    let series = metrics.series("sonde_syscalls_total");
    check("label sets (two of their own, and overflow)", series.len() as f64, 3.0)?;
    let overflow = metrics.value("sonde_syscalls_total", &[("syscall", "overflow")]);
    if overflow < 1.0 {
        return Err(format!("the overflow series holds {overflow}: {series:?}").into());
    }
    let dropped = metrics.value("sonde_series_dropped_total", &[("metric", "sonde_syscalls_total")]);
    if dropped < 1.0 {
        return Err(format!("series_dropped_total is {dropped}").into());
    }
    // Every call the thread made is counted somewhere: exact totals.
    if after < before + 90.0 {
        return Err(format!("counted {after} after {before}, want at least {} more", 90).into());
    }
    Ok(())
}

/// Counted in the kernel's array (no task label), a series still expires
/// after `series_ttl` and comes back from zero: the kernel cannot delete an
/// array entry, so the agent counts from what it held at expiry.
fn syscalls_kernel_expiry() -> Result<(), Failed> {
    let comm = workload::unique_comm("se");
    let agent = Agent::start(
        &format!("series_ttl: 1s\nprobes:\n  syscalls:\n    labels: [syscall]\n    filter: {{comm: [{comm}]}}\n"),
        &[],
    );
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::Builder::new().name(comm.clone()).spawn(move || {
        while let Ok(n) = rx.recv() {
            workload::getppid_calls(n);
            let _ = done_tx.send(());
        }
    })?;
    let getppid = [("syscall", "getppid")];
    tx.send(21)?;
    done_rx.recv()?;
    check("first getppid calls", agent.settle(21.0, |m| m.value("sonde_syscalls_total", &getppid)), 21.0)?;
    let gone = agent.wait_for("the getppid series to expire", std::time::Duration::from_secs(5), |m| {
        m.get("sonde_syscalls_total", &getppid).is_none()
    });
    gone.map_err(Failed::from)?;
    tx.send(8)?;
    done_rx.recv()?;
    drop(tx);
    let _ = worker.join();
    check("getppid after expiry", agent.settle(8.0, |m| m.value("sonde_syscalls_total", &getppid)), 8.0)?;
    let expired = agent.scrape().value("sonde_series_expired_total", &[("metric", "sonde_syscalls_total")]);
    if expired < 1.0 {
        return Err(format!("series_expired_total is {expired}").into());
    }
    Ok(())
}

/// With a comm filter, other processes' events are never produced.
fn comm_filter() -> Result<(), Failed> {
    let wanted = workload::unique_comm("fw");
    let other = workload::unique_comm("fo");
    let agent = Agent::start(&format!("probes:\n  exec:\n    filter: {{comm: [{wanted}]}}\n"), &[]);
    NamedBinary::new(&other).run(5, &["exit", "0"]);
    NamedBinary::new(&wanted).run(4, &["exit", "0"]);
    let execs = agent.settle(4.0, |m| m.value("sonde_exec_total", &[("comm", &wanted)]));
    check("exec of the wanted comm", execs, 4.0)?;
    let metrics = agent.scrape();
    check("exec of another comm", metrics.value("sonde_exec_total", &[("comm", &other)]), 0.0)?;
    check("events received", metrics.value("sonde_events_received_total", &[("probe", "exec")]), 4.0)
}

/// With series_limit 2, the third and later comms land in `overflow`.
fn series_limit() -> Result<(), Failed> {
    let comms: Vec<String> = (0..5).map(|_| workload::unique_comm("sl")).collect();
    let filter = comms.join(", ");
    let agent = Agent::start(&format!("series_limit: 2\nprobes:\n  exec:\n    filter: {{comm: [{filter}]}}\n"), &[]);
    for comm in &comms {
        NamedBinary::new(comm).run(2, &["exit", "0"]);
        // one comm at a time, so which ones get their own series is known
        agent.settle(2.0, |m| {
            m.value("sonde_exec_total", &[("comm", comm)]) + m.value("sonde_exec_total", &[("comm", "overflow")])
        });
    }
    let metrics = agent.scrape();
    let total: f64 = metrics.series("sonde_exec_total").iter().map(|(_, v)| v).sum();
    check("all execs counted", total, 10.0)?;
    check("first comm", metrics.value("sonde_exec_total", &[("comm", &comms[0])]), 2.0)?;
    check("second comm", metrics.value("sonde_exec_total", &[("comm", &comms[1])]), 2.0)?;
    check("overflow", metrics.value("sonde_exec_total", &[("comm", "overflow")]), 6.0)?;
    check("series", metrics.series("sonde_exec_total").len() as f64, 3.0)?;
    check("series dropped", metrics.value("sonde_series_dropped_total", &[("metric", "sonde_exec_total")]), 3.0)
}

/// `aggregate`: counted in the kernel (the default) or sent per event.
fn vfs_io_counts(hook: &str, aggregate: bool) -> Result<(), Failed> {
    let comm = workload::unique_comm("io");
    let agent = Agent::start(
        &format!("probes:\n  vfs_io:\n    hook: {hook}\n    aggregate: {aggregate}\n    filter: {{comm: [{comm}]}}\n"),
        &[],
    );
    let metrics = agent.scrape();
    check(
        &format!("sonde_probe_up{{hook={hook}}}"),
        metrics.value("sonde_probe_up", &[("probe", "vfs_io"), ("hook", hook)]),
        1.0,
    )?;
    let file = std::env::temp_dir().join(format!("sonde-read-{comm}"));
    std::fs::write(&file, vec![7u8; 4096])?;
    let path = file.clone();
    workload::on_named_thread(&comm, move || workload::pread_file(&path, 4096, 23));
    let _ = std::fs::remove_file(&file);
    let labels = [("comm", comm.as_str()), ("op", "read")];
    let calls = agent.settle(23.0, |m| m.value("sonde_vfs_calls_total", &labels));
    check("sonde_vfs_calls_total{op=read}", calls, 23.0)?;
    check("sonde_vfs_bytes_total{op=read}", agent.scrape().value("sonde_vfs_bytes_total", &labels), 23.0 * 4096.0)?;
    matrix("vfs_io", hook, "ok");
    Ok(())
}

/// On a kernel without the hook, the probe is reported down with its
/// error, and the other probes keep running.
fn vfs_io_unsupported(hook: &str) -> Result<(), Failed> {
    let comm = workload::unique_comm("un");
    let agent = Agent::start(&format!("probes:\n  vfs_io:\n    hook: {hook}\n  exec: {{}}\n"), &[]);
    let metrics = agent.scrape();
    check("sonde_probe_up{vfs_io}", metrics.value("sonde_probe_up", &[("probe", "vfs_io"), ("hook", "none")]), 0.0)?;
    // fentry fails at load where the kernel withholds trampolines (EPERM, the
    // sandboxed host), at attach where kprobes work but ftrace direct calls
    // are missing (arm64 before 6.4).
    let stage = if hook == "kprobe" || kernel::has_kprobes() { "attach" } else { "load" };
    check(
        &format!("sonde_probe_errors_total{{stage={stage}}}"),
        metrics.value("sonde_probe_errors_total", &[("probe", "vfs_io"), ("stage", stage)]),
        1.0,
    )?;
    check("sonde_probe_up{exec}", metrics.value("sonde_probe_up", &[("probe", "exec"), ("hook", "tracepoint")]), 1.0)?;
    NamedBinary::new(&comm).run(3, &["exit", "0"]);
    check("exec still counted", agent.settle(3.0, |m| m.value("sonde_exec_total", &[("comm", &comm)])), 3.0)?;
    matrix("vfs_io", hook, "unsupported");
    Ok(())
}
