//! Config-defined probes: exact counts through the generic tracepoint
//! program, and located errors for what the kernel's formats refuse.

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use libtest_mimic::{Failed, Trial};

use crate::agent::{sonde, Agent, ConfigFile};
use crate::foundation::{reload_ok, Trigger};
use crate::lifecycle::expect;
use crate::workload::{self, Cgroup, NamedBinary};

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("custom_signal_generate_counts_usr2_by_sig", signal_generate),
        Trial::test("custom_openat_string_filter_counts_opens_of_one_path", openat_filename),
        Trial::test("custom_pread64_value_sums_bytes", pread_value),
        Trial::test("custom_errors_are_located", located_errors),
        Trial::test("custom_probe_has_cgroup_labels_series_limit_and_reload", limits_labels_reload),
    ]
}

fn check(what: &str, got: f64, want: f64) -> Result<(), Failed> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want {want}").into())
    }
}

/// N SIGUSR2 to a uniquely named child that ignores it: exactly N, by sig,
/// kept by string (the target's inline comm) and number filters.
fn signal_generate() -> Result<(), Failed> {
    const N: usize = 11;
    let target = workload::unique_comm("cus");
    let yaml = format!(
        "probes:\n  usr2_sent:\n    tracepoint: signal/signal_generate\n    labels: [sig]\n    \
         filter: {{fields: {{comm: [{target}], sig: [12]}}}}\n"
    );
    let agent = Agent::start(&yaml, &[]);
    let binary = NamedBinary::new(&target);
    let mut command = binary.command(&["catch-usr1"]);
    // SAFETY: only sets a signal disposition between fork and exec; an
    // ignored disposition survives exec, so every SIGUSR2 is generated and
    // ignored rather than fatal.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGUSR2, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn");
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut ready)
        .expect("read ready");
    assert_eq!(ready.trim(), "ready");
    for _ in 0..N {
        // SAFETY: signals our own child, which ignores SIGUSR2.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR2) }, 0);
    }
    drop(child.stdin.take());
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    let got = agent.settle(N as f64, |m| m.value("sonde_usr2_sent_total", &[("sig", "12")]));
    check("sonde_usr2_sent_total{sig=12}", got, N as f64)?;
    let all: f64 = agent.scrape().series("sonde_usr2_sent_total").iter().map(|(_, v)| v).sum();
    check("sonde_usr2_sent_total over all series", all, N as f64)
}

/// N failed opens of a path no one else opens: exactly N, kept by a filter
/// on openat's `filename`, a string in the calling process's memory.
fn openat_filename() -> Result<(), Failed> {
    const N: usize = 17;
    let path = std::env::temp_dir().join(format!("sonde-custom-{}-missing", workload::unique_comm("op")));
    let yaml = format!(
        "probes:\n  opens_of_one:\n    tracepoint: syscalls/sys_enter_openat\n    labels: [comm]\n    \
         filter: {{fields: {{filename: [\"{}\"]}}}}\n",
        path.display()
    );
    let agent = Agent::start(&yaml, &[]);
    let comm = workload::unique_comm("opn");
    let opened = path.clone();
    workload::on_named_thread(&comm, move || workload::open_missing(&opened, N));
    let got = agent.settle(N as f64, |m| m.value("sonde_opens_of_one_total", &[("comm", &comm)]));
    check("sonde_opens_of_one_total{comm}", got, N as f64)?;
    let all: f64 = agent.scrape().series("sonde_opens_of_one_total").iter().map(|(_, v)| v).sum();
    check("sonde_opens_of_one_total over all series", all, N as f64)
}

/// N preads of LEN bytes from a named thread: `value: count` observes each
/// request, so the histogram counts N and sums N × LEN bytes.
fn pread_value() -> Result<(), Failed> {
    const N: usize = 9;
    const LEN: usize = 1000;
    let comm = workload::unique_comm("prd");
    let yaml = format!(
        "probes:\n  pread_bytes:\n    tracepoint: syscalls/sys_enter_pread64\n    value: count\n    unit: bytes\n    \
         filter: {{comm: [{comm}]}}\n"
    );
    let agent = Agent::start(&yaml, &[]);
    let file = ConfigFile::new(&"x".repeat(LEN));
    let path = file.path.clone();
    workload::on_named_thread(&comm, move || workload::pread_file(&path, LEN, N));
    let count = agent.settle(N as f64, |m| m.value("sonde_pread_bytes_bytes_count", &[]));
    check("sonde_pread_bytes_bytes_count", count, N as f64)?;
    check("sonde_pread_bytes_bytes_sum", agent.scrape().value("sonde_pread_bytes_bytes_sum", &[]), (N * LEN) as f64)?;
    check("sonde_pread_bytes_total", agent.scrape().value("sonde_pread_bytes_total", &[]), N as f64)
}

/// What the running kernel's formats refuse is a config error at its node:
/// exit 2 from `check` and from a start, with FILE:LINE:COLUMN.
fn located_errors() -> Result<(), Failed> {
    let cases = [
        ("    tracepoint: signal/no_such_event\n", "3:17", "unknown tracepoint `signal/no_such_event`"),
        (
            "    tracepoint: signal/signal_generate\n    labels: [sig, no_such_field]\n",
            "4:19",
            "no field `no_such_field`",
        ),
        ("    tracepoint: signal/signal_generate\n    value: comm\n", "4:12", "is a string, not a number"),
    ];
    for (body, at, message) in cases {
        let config = ConfigFile::new(&format!("probes:\n  mine:\n{body}"));
        let path = config.path.display().to_string();
        for args in [vec!["check", "--config", path.as_str()], vec!["run", "--config", path.as_str()]] {
            let out = sonde(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let want = format!("{path}:{at}: ");
            if out.status.code() != Some(2) || !stderr.contains(&want) || !stderr.contains(message) {
                return Err(format!(
                    "{args:?}: exit {:?}, stderr {stderr:?}; want 2, {want:?}, {message:?}",
                    out.status
                )
                .into());
            }
        }
    }
    Ok(())
}

/// A config-defined probe has what the built-in ones have: an enrichment
/// label (`cgroup`, the sending process's), the series limit with its
/// overflow series, and a reload that restarts it with a new filter.
fn limits_labels_reload() -> Result<(), Failed> {
    let mount = workload::cgroup2_mount().ok_or("no cgroup2 mount in /proc/self/mountinfo")?;
    let comm = workload::unique_comm("cl");
    let cgroup = Cgroup::create(&mount, &format!("sonde-test-{comm}"));
    let binary = NamedBinary::new(&comm);
    let config = |limit: usize, sigs: &str| {
        format!(
            "series_limit: {limit}\nprobes:\n  raised:\n    tracepoint: signal/signal_generate\n    \
             labels: [sig, cgroup]\n    filter: {{comm: [{comm}]{sigs}}}\n"
        )
    };
    // Each workload's exit also generates a SIGCHLD (from it, for the
    // test): the filter keeps the signals raised.
    let agent = Agent::start(&config(2, ", fields: {sig: [10, 12, 28]}"), &[]);
    let path = cgroup.path();
    let of = |sig: &'static str| [("sig", sig), ("cgroup", path.as_str())];
    let raise = |sig: i32, times: usize| -> Result<(), Failed> {
        let statuses = cgroup.run(&binary, 1, &["raise-ignored", &sig.to_string(), &times.to_string()]);
        expect(statuses.iter().all(|s| s.code() == Some(0)), format!("raise {sig}: {statuses:?}"))
    };
    // Two label sets fit; the third signal's events go to the overflow
    // series, whose every label reads `overflow`.
    for (sig, name, times) in [(libc::SIGUSR1, "10", 3), (libc::SIGUSR2, "12", 4)] {
        raise(sig, times)?;
        let got = agent.settle(times as f64, |m| m.value("sonde_raised_total", &of(name)));
        check(&format!("sonde_raised_total{{sig={name}}}"), got, times as f64)?;
    }
    raise(libc::SIGWINCH, 5)?;
    let overflow = [("sig", "overflow"), ("cgroup", "overflow")];
    check("overflow series", agent.settle(5.0, |m| m.value("sonde_raised_total", &overflow)), 5.0)?;
    let metrics = agent.scrape();
    let dropped = metrics.value("sonde_series_dropped_total", &[("metric", "sonde_raised_total")]);
    expect(dropped >= 1.0, format!("sonde_series_dropped_total = {dropped}"))?;
    expect(metrics.get("sonde_raised_total", &of("28")).is_none(), "SIGWINCH got a series past the limit")?;

    // A new filter restarts the probe: its series start again, and only
    // SIGWINCH is counted.
    reload_ok(&agent, &config(10, ", fields: {sig: [28]}"), Trigger::Sighup)?;
    raise(libc::SIGUSR1, 2)?;
    raise(libc::SIGWINCH, 6)?;
    check("SIGWINCH after the reload", agent.settle(6.0, |m| m.value("sonde_raised_total", &of("28"))), 6.0)?;
    let series = agent.scrape().series("sonde_raised_total");
    expect(series.len() == 1, format!("after the reload, series other than SIGWINCH's: {series:?}"))
}
