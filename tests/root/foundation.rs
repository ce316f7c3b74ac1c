//! The agent's foundations: no duplicate series, label values that keep
//! every byte, series that expire, reloads that keep what did not change,
//! shutdown at any moment, one exit per process, and the cgroup label.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libtest_mimic::{Failed, Trial};

use crate::agent::{Agent, Metrics};
use crate::kernel;
use crate::lifecycle::expect;
use crate::workload::{self, Cgroup, NamedBinary};

pub fn trials() -> Vec<Trial> {
    let mut trials = vec![
        Trial::test("scrape_parser_unescapes_and_refuses_duplicate_series", scrape_parser),
        Trial::test("label_values_keep_invalid_utf8_and_control_bytes", lossless_label_values),
        Trial::test("a_process_named_overflow_is_not_the_overflow_series", process_named_overflow),
        Trial::test("series_expire_after_ttl_and_restart_from_zero", series_expire),
        Trial::test("expired_series_free_their_place_under_series_limit", expiry_frees_series_limit),
        Trial::test("sighup_reload_adds_a_probe_and_keeps_counts", reload_adds_probe),
        Trial::test("bad_reload_keeps_running_and_reports_the_location", bad_reload),
        Trial::test("reload_removing_a_probe_detaches_it_and_drops_its_series", reload_removes_probe),
        Trial::test("reload_with_changed_labels_reloads_the_probe", reload_changes_labels),
        Trial::test("sigterm_at_any_moment_exits_0_and_detaches", sigterm_at_any_moment),
        Trial::test("exit_counts_one_per_process_when_threads_exit_together", threads_exit_together),
        Trial::test("exec_cgroup_label_is_the_cgroup_path", cgroup_label),
        Trial::test("exec_cgroup_label_names_a_cgroup_removed_before_any_scrape", removed_cgroup_label),
    ];
    // vfs_io is the one probe with no tracepoint: where neither of its
    // hooks works, a config of it alone has every probe failing.
    if !kernel::has_kprobes() && !kernel::expects_fentry() {
        trials.push(Trial::test("all_probes_failing_keeps_serving_and_exits_0", all_probes_failing));
    }
    trials
}

pub fn check(what: &str, got: f64, want: f64) -> Result<(), Failed> {
    expect(got == want, format!("{what}: got {got}, want {want}"))
}

pub fn exec_count(comm: &str) -> impl Fn(&Metrics) -> f64 + '_ {
    move |m| m.value("sonde_exec_total", &[("comm", comm)])
}

/// Runs `binary` `times` times, each exiting 0.
pub fn run_ok(binary: &NamedBinary, times: usize) -> Result<(), Failed> {
    let statuses = binary.run(times, &["exit", "0"]);
    expect(statuses.iter().all(|s| s.code() == Some(0)), format!("workload exit statuses: {statuses:?}"))
}

/// Proves the check every scrape of every test goes through: escapes
/// are undone, label order does not make two series different, and a
/// repeated series is refused rather than read as one of the two.
fn scrape_parser() -> Result<(), Failed> {
    let text = "# HELP x_total X.\n\
                # TYPE x_total counter\n\
                x_total{a=\"back\\\\slash\",b=\"q\\\"uote\",c=\"new\\nline\"} 3\n\
                x_total{a=\"\\\\xff\"} 4\n\
                y 5 1700000000000\n";
    let metrics = Metrics::try_parse(text)?;
    check(
        "unescaped values",
        metrics.value("x_total", &[("a", "back\\slash"), ("b", "q\"uote"), ("c", "new\nline")]),
        3.0,
    )?;
    check("escaped backslash before x", metrics.value("x_total", &[("a", "\\xff")]), 4.0)?;
    check("no labels, a timestamp", metrics.value("y", &[]), 5.0)?;
    for bad in [
        "x_total{a=\"1\",b=\"2\"} 1\nx_total{b=\"2\",a=\"1\"} 2\n",
        "y 1\ny 2\n",
        "x_total{a=\"\\x\"} 1\n",
        "x_total{a=\"1\"",
        "x_total{a=\"1\",a=\"2\"} 1\n",
    ] {
        expect(Metrics::try_parse(bad).is_err(), format!("accepted {bad:?}"))?;
    }
    Ok(())
}

/// Process names are bytes: one that is not valid UTF-8 or has control
/// characters or a backslash still gets a series of its own, its bytes
/// written as `\xHH` and `\\`, so that no two names share a series.
fn lossless_label_values() -> Result<(), Failed> {
    let unique = || workload::unique_comm("A")[1..].to_string();
    // (file name, label value after text-format unescaping, execs)
    let (ff, fe, ctl, bs, utf8) = (unique(), unique(), unique(), unique(), unique());
    let cases: Vec<(Vec<u8>, String, usize)> = vec![
        ([b"snu\xff", ff.as_bytes()].concat(), format!("snu\\xff{ff}"), 7),
        ([b"snu\xfe", fe.as_bytes()].concat(), format!("snu\\xfe{fe}"), 9),
        ([b"snu\x01", ctl.as_bytes()].concat(), format!("snu\\x01{ctl}"), 5),
        ([b"snu\\", bs.as_bytes()].concat(), format!("snu\\\\{bs}"), 4),
        (format!("sn\u{fc}{utf8}").into_bytes(), format!("sn\u{fc}{utf8}"), 3),
    ];
    let agent = Agent::start("probes:\n  exec: {}\n", &[]);
    for (name, _, times) in &cases {
        expect(name.len() <= 15, format!("{name:?} is longer than a comm"))?;
        run_ok(&NamedBinary::new(name), *times)?;
    }
    for (name, label, times) in &cases {
        let got = agent.settle(*times as f64, exec_count(label));
        check(&format!("sonde_exec_total{{comm={label:?}}} (file name {name:?})"), got, *times as f64)?;
    }
    Ok(())
}

/// `overflow` is the value of the series past `series_limit`; a process
/// of that name is counted as `\overflow`, never mixed into it.
fn process_named_overflow() -> Result<(), Failed> {
    let agent = Agent::start("probes:\n  exec: {}\n", &[]);
    run_ok(&NamedBinary::new("overflow"), 3)?;
    check("sonde_exec_total{comm=\"\\\\overflow\"}", agent.settle(3.0, exec_count("\\overflow")), 3.0)?;
    let metrics = agent.scrape();
    expect(
        metrics.get("sonde_exec_total", &[("comm", "overflow")]).is_none(),
        "a series comm=\"overflow\" exists though series_limit was not reached",
    )?;
    check(
        "sonde_series_dropped_total",
        metrics.value("sonde_series_dropped_total", &[("metric", "sonde_exec_total")]),
        0.0,
    )
}

/// A label set not updated for `series_ttl` leaves /metrics within
/// 1.5 × ttl, is counted as expired, and starts again from zero; one
/// updated more often stays.
fn series_expire() -> Result<(), Failed> {
    let (a, b) = (workload::unique_comm("ta"), workload::unique_comm("tb"));
    let agent = Agent::start(&format!("series_ttl: 2s\nprobes:\n  exec:\n    filter: {{comm: [{a}, {b}]}}\n"), &[]);
    let (bin_a, bin_b) = (NamedBinary::new(&a), NamedBinary::new(&b));
    run_ok(&bin_a, 3)?;
    let a_last_exec = Instant::now();
    check("A before expiry", agent.settle(3.0, exec_count(&a)), 3.0)?;
    run_ok(&bin_b, 1)?;
    check("B before expiry", agent.settle(1.0, exec_count(&b)), 1.0)?;

    let mut b_execs = 1;
    let mut a_gone_after = None;
    while a_last_exec.elapsed() < Duration::from_millis(4500) {
        run_ok(&bin_b, 1)?;
        b_execs += 1;
        std::thread::sleep(Duration::from_millis(300));
        let metrics = agent.scrape();
        let seen = a_last_exec.elapsed();
        let a_present = metrics.get("sonde_exec_total", &[("comm", &a)]).is_some();
        // The agent saw A's last exec after it happened, so before
        // ttl (less a tick's rounding) A must still be there.
        expect(a_present || seen >= Duration::from_millis(1900), format!("A expired {seen:?} after its last exec"))?;
        if !a_present && a_gone_after.is_none() {
            a_gone_after = Some(seen);
        }
        expect(
            metrics.get("sonde_exec_total", &[("comm", &b)]).is_some(),
            format!("B, exec'd every 300 ms, missing {seen:?} into the test"),
        )?;
    }
    let gone = a_gone_after.ok_or("A was still in /metrics 4.5 s after its last exec (series_ttl 2s)")?;
    expect(gone <= Duration::from_secs(4), format!("A left /metrics only {gone:?} after its last exec"))?;
    check("B", agent.settle(b_execs as f64, exec_count(&b)), b_execs as f64)?;
    let expired = agent.scrape().value("sonde_series_expired_total", &[("metric", "sonde_exec_total")]);
    expect(expired >= 1.0, format!("sonde_series_expired_total = {expired}, want >= 1"))?;

    run_ok(&bin_a, 2)?;
    check("A after expiry (a new counter)", agent.settle(2.0, exec_count(&a)), 2.0)
}

/// An expired label set no longer counts against `series_limit`: the
/// next new one gets its own series instead of `overflow`.
fn expiry_frees_series_limit() -> Result<(), Failed> {
    let (a, b) = (workload::unique_comm("la"), workload::unique_comm("lb"));
    let agent = Agent::start(
        &format!("series_limit: 1\nseries_ttl: 1s\nprobes:\n  exec:\n    filter: {{comm: [{a}, {b}]}}\n"),
        &[],
    );
    run_ok(&NamedBinary::new(&a), 2)?;
    check("A", agent.settle(2.0, exec_count(&a)), 2.0)?;
    agent.wait_for("A expires", Duration::from_secs(4), |m| m.get("sonde_exec_total", &[("comm", &a)]).is_none())?;
    run_ok(&NamedBinary::new(&b), 3)?;
    check("B, after A expired", agent.settle(3.0, exec_count(&b)), 3.0)?;
    let metrics = agent.scrape();
    check("overflow", metrics.value("sonde_exec_total", &[("comm", "overflow")]), 0.0)?;
    check(
        "sonde_series_dropped_total",
        metrics.value("sonde_series_dropped_total", &[("metric", "sonde_exec_total")]),
        0.0,
    )
}

pub enum Trigger {
    Sighup,
    Post,
}

pub const RELOADED: &str = "sonde_config_last_reload_successful";
pub const RELOADED_AT: &str = "sonde_config_last_reload_success_timestamp_seconds";

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Rewrites the agent's config to `yaml`, reloads it by `trigger` and
/// waits until the agent reports that reload successful (its success
/// timestamp grew).
pub fn reload_ok(agent: &Agent, yaml: &str, trigger: Trigger) -> Result<(), Failed> {
    let before = agent.scrape().value(RELOADED_AT, &[]);
    // The timestamp may have a resolution of a second: let one pass so
    // that a successful reload is sure to move it.
    let wait = before + 1.05 - unix_now();
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
    agent.rewrite_config(yaml);
    match trigger {
        Trigger::Sighup => agent.signal(libc::SIGHUP),
        Trigger::Post => {
            let (status, body) = agent.post("/-/reload")?;
            expect(status == 200, format!("POST /-/reload → {status} {body}"))?;
        }
    }
    agent.wait_for("a successful reload", Duration::from_secs(10), |m| {
        m.value(RELOADED, &[]) == 1.0 && m.value(RELOADED_AT, &[]) > before
    })?;
    Ok(())
}

/// A probe added by SIGHUP attaches alone: the running probe keeps its
/// programs and its counts, and goes on counting exactly.
fn reload_adds_probe() -> Result<(), Failed> {
    let comm = workload::unique_comm("ra");
    let agent = Agent::start("probes:\n  exec: {}\n", &[]);
    let programs = kernel::sonde_programs();
    let binary = NamedBinary::new(&comm);
    run_ok(&binary, 5)?;
    check("execs before the reload", agent.settle(5.0, exec_count(&comm)), 5.0)?;

    reload_ok(&agent, "probes:\n  exec: {}\n  exit: {}\n", Trigger::Sighup)?;
    agent.wait_for("exit probe up", Duration::from_secs(10), |m| {
        m.value("sonde_probe_up", &[("probe", "exit")]) == 1.0 && m.value(RELOADED, &[]) == 1.0
    })?;
    check("execs right after the reload", exec_count(&comm)(&agent.scrape()), 5.0)?;
    let now = kernel::sonde_programs_become(programs + 1);
    expect(now == programs + 1, format!("{now} sonde programs after adding exit, want {}", programs + 1))?;

    run_ok(&binary, 4)?;
    check("execs after the reload", agent.settle(9.0, exec_count(&comm)), 9.0)?;
    let exits = agent.settle(4.0, |m| m.value("sonde_exit_total", &[("comm", &comm), ("code", "0")]));
    check("exits after the reload", exits, 4.0)
}

/// A config that does not load is refused whole: by SIGHUP the agent
/// reports it and keeps running on the old one; by POST /-/reload it
/// answers 400 with where the error is; a good config then reloads.
fn bad_reload() -> Result<(), Failed> {
    let comm = workload::unique_comm("rb");
    let good = "probes:\n  exec: {}\n";
    let mut agent = Agent::start(good, &[]);
    let binary = NamedBinary::new(&comm);
    run_ok(&binary, 3)?;
    check("execs before", agent.settle(3.0, exec_count(&comm)), 3.0)?;
    let metrics = agent.scrape();
    check(RELOADED, metrics.value(RELOADED, &[]), 1.0)?;
    let succeeded_at = metrics.value(RELOADED_AT, &[]);

    // `nosuch` is at line 4 (after `listen`), column 3.
    agent.rewrite_config("probes:\n  exec: {}\n  nosuch: {}\n");
    agent.signal(libc::SIGHUP);
    agent.wait_for("the bad reload reported", Duration::from_secs(10), |m| m.get(RELOADED, &[]) == Some(0.0))?;
    expect(agent.exit_status().is_none(), "sonde exited on a bad reload")?;
    check("success timestamp after a failed reload", agent.scrape().value(RELOADED_AT, &[]), succeeded_at)?;
    run_ok(&binary, 2)?;
    check("execs after the failed reload", agent.settle(5.0, exec_count(&comm)), 5.0)?;

    let (status, body) = agent.post("/-/reload")?;
    let location = format!("{}:4:3", agent.config_path().display());
    expect(status == 400, format!("POST /-/reload of a bad config → {status}, want 400"))?;
    expect(body.contains(&location), format!("POST /-/reload body {body:?} lacks {location:?}"))?;
    check(RELOADED, agent.scrape().value(RELOADED, &[]), 0.0)?;

    reload_ok(&agent, good, Trigger::Post)?;
    let grown = agent.scrape().value(RELOADED_AT, &[]);
    expect(grown > succeeded_at, format!("success timestamp {grown}, was {succeeded_at}"))?;
    run_ok(&binary, 4)?;
    check("execs after the good reload", agent.settle(9.0, exec_count(&comm)), 9.0)
}

/// A probe left out of the reloaded config is detached and its series
/// leave /metrics; the probe kept counts on, exactly.
fn reload_removes_probe() -> Result<(), Failed> {
    let comm = workload::unique_comm("rr");
    let agent = Agent::start("probes:\n  exec: {}\n  exit: {}\n", &[]);
    let programs = kernel::sonde_programs();
    let binary = NamedBinary::new(&comm);
    let exits = |m: &Metrics| m.value("sonde_exit_total", &[("comm", &comm), ("code", "0")]);
    run_ok(&binary, 3)?;
    check("execs before", agent.settle(3.0, exec_count(&comm)), 3.0)?;
    check("exits before", agent.settle(3.0, exits), 3.0)?;

    reload_ok(&agent, "probes:\n  exit: {}\n", Trigger::Sighup)?;
    agent.wait_for("exec series gone", Duration::from_secs(5), |m| m.series("sonde_exec_total").is_empty())?;
    let now = kernel::sonde_programs_become(programs - 1);
    expect(now == programs - 1, format!("{now} sonde programs after removing exec, want {}", programs - 1))?;

    run_ok(&binary, 4)?;
    check("exits after", agent.settle(7.0, exits), 7.0)?;
    let left = agent.scrape().series("sonde_exec_total");
    expect(left.is_empty(), format!("sonde_exec_total after exec was removed: {left:?}"))
}

/// A probe whose settings changed is reloaded with them: with `labels: []`
/// its counter is one series without labels, counting from the reload.
fn reload_changes_labels() -> Result<(), Failed> {
    let comm = workload::unique_comm("rl");
    let agent = Agent::start(&format!("probes:\n  exec:\n    labels: [comm]\n    filter: {{comm: [{comm}]}}\n"), &[]);
    let binary = NamedBinary::new(&comm);
    run_ok(&binary, 3)?;
    check("execs by comm", agent.settle(3.0, exec_count(&comm)), 3.0)?;

    reload_ok(&agent, &format!("probes:\n  exec:\n    labels: []\n    filter: {{comm: [{comm}]}}\n"), Trigger::Sighup)?;
    agent.wait_for("the comm series gone", Duration::from_secs(5), |m| {
        m.series("sonde_exec_total").iter().all(|(labels, _)| labels.is_empty())
    })?;
    run_ok(&binary, 5)?;
    let total = |m: &Metrics| m.series("sonde_exec_total").iter().map(|(_, v)| v).sum::<f64>();
    check("execs after the reload", agent.settle(5.0, total), 5.0)?;
    let series = agent.scrape().series("sonde_exec_total");
    expect(
        series.len() == 1 && series[0].0.is_empty(),
        format!("sonde_exec_total should be one series without labels: {series:?}"),
    )
}

/// With every probe failing, the agent still serves its self-metrics and
/// health, and shuts down cleanly.
fn all_probes_failing() -> Result<(), Failed> {
    let before = kernel::baseline_programs();
    let agent = Agent::start("probes:\n  vfs_io: {}\n", &[]);
    let (status, body) = agent.get("/healthz")?;
    expect(status == 200, format!("GET /healthz → {status} {body}"))?;
    let up = agent.scrape().get("sonde_probe_up", &[("probe", "vfs_io"), ("hook", "none")]);
    expect(up == Some(0.0), format!("sonde_probe_up{{probe=vfs_io,hook=none}} = {up:?}, want 0"))?;
    let (status, _) = agent.terminate(Duration::from_secs(5));
    expect(status.code() == Some(0), format!("exit status {status}, want 0"))?;
    let after = kernel::sonde_programs_become(before);
    expect(after == before, format!("{after} sonde programs left, want {before}"))
}

/// A SIGTERM at any point of start-up or running, from the moment the
/// agent handles the signal at all (before that, nothing can), makes it
/// exit 0 with every program detached.
fn sigterm_at_any_moment() -> Result<(), Failed> {
    let before = kernel::baseline_programs();
    let mut failures = Vec::new();
    for delay_ms in [0, 1, 3, 10, 30, 100, 300] {
        let mut agent = Agent::spawn("probes:\n  exec: {}\n  exit: {}\n  file_open: {}\n  syscalls: {}\n", &[]);
        agent.wait_sigterm_handled(Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(delay_ms));
        let (status, _) = agent.terminate(Duration::from_secs(5));
        if status.code() != Some(0) {
            failures.push(format!("SIGTERM after {delay_ms} ms: exit status {status}"));
        }
        let after = kernel::sonde_programs_become(before);
        if after != before {
            failures.push(format!("SIGTERM after {delay_ms} ms: {after} sonde programs left, want {before}"));
        }
    }
    expect(failures.is_empty(), failures.join("\n"))
}

/// A process whose threads all call exit_group at once ends once, and is
/// counted once.
fn threads_exit_together() -> Result<(), Failed> {
    const RUNS: usize = 200;
    let comm = workload::unique_comm("te");
    let agent = Agent::start("probes:\n  exit: {}\n", &[]);
    let statuses = NamedBinary::new(&comm).run(RUNS, &["threads-exit", "16"]);
    expect(statuses.iter().all(|s| s.code() == Some(0)), format!("workload exit statuses: {statuses:?}"))?;
    let exits = agent.settle(RUNS as f64, |m| m.value("sonde_exit_total", &[("comm", &comm), ("code", "0")]));
    check("sonde_exit_total{code=0}", exits, RUNS as f64)
}

/// `cgroup` is the path, from the cgroup v2 root, of the cgroup the
/// process ran in.
fn cgroup_label() -> Result<(), Failed> {
    let mount = workload::cgroup2_mount().ok_or("no cgroup2 mount in /proc/self/mountinfo")?;
    let comm = workload::unique_comm("cg");
    let cgroup = Cgroup::create(&mount, &format!("sonde-test-{comm}"));
    let agent = Agent::start("probes:\n  exec:\n    labels: [comm, cgroup]\n", &[]);
    let statuses = cgroup.run(&NamedBinary::new(&comm), 6, &["exit", "0"]);
    expect(statuses.iter().all(|s| s.code() == Some(0)), format!("workload exit statuses: {statuses:?}"))?;
    let path = cgroup.path();
    let labels = [("comm", comm.as_str()), ("cgroup", path.as_str())];
    check(
        &format!("sonde_exec_total{{cgroup={path:?}}}"),
        agent.settle(6.0, |m| m.value("sonde_exec_total", &labels)),
        6.0,
    )?;
    let all = agent.scrape().series("sonde_exec_total");
    let of_comm: Vec<_> = all.iter().filter(|(l, _)| l.iter().any(|(k, v)| k == "comm" && *v == comm)).collect();
    expect(of_comm.len() == 1, format!("execs of {comm} in more than one series: {of_comm:?}"))
}

/// A cgroup made while the agent runs, which runs a few processes and is removed the moment they
/// are gone (a `docker run --rm` of a short script, a Job's pod): no walk of the cgroup2 tree can
/// see it any more by the time the agent reads the events, yet they carry its path, which the
/// agent learned when the kernel made the cgroup.
fn removed_cgroup_label() -> Result<(), Failed> {
    const RUNS: usize = 3;
    let mount = workload::cgroup2_mount().ok_or("no cgroup2 mount in /proc/self/mountinfo")?;
    let comm = workload::unique_comm("cr");
    let agent = Agent::start("probes:\n  exec:\n    labels: [comm, cgroup]\n", &[]);
    let binary = NamedBinary::new(&comm);
    let cgroup = Cgroup::create(&mount, &format!("sonde-test-{comm}"));
    let path = cgroup.path();
    let statuses = cgroup.run(&binary, RUNS, &["exit", "0"]);
    // Removed as soon as the kernel lets go of it.
    drop(cgroup);
    expect(statuses.iter().all(|s| s.code() == Some(0)), format!("workload exit statuses: {statuses:?}"))?;
    let labels = [("comm", comm.as_str()), ("cgroup", path.as_str())];
    let got = agent.settle(RUNS as f64, |m| m.value("sonde_exec_total", &labels));
    let all = agent.scrape().series("sonde_exec_total");
    let of_comm: Vec<_> = all.iter().filter(|(l, _)| l.iter().any(|(k, v)| k == "comm" && *v == comm)).collect();
    expect(got == RUNS as f64, format!("sonde_exec_total{{cgroup={path:?}}}: got {got}, want {RUNS}; {of_comm:?}"))
}
