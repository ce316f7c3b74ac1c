//! The agent as a process: bad input, start-up, shutdown, drops, strict mode.

use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

use crate::agent::{sonde, Agent, ConfigFile};
use crate::kernel;
use crate::workload;

pub fn trials() -> Vec<Trial> {
    let mut trials = vec![
        Trial::test("bad_config_exits_2_with_its_location", bad_config),
        Trial::test("sigterm_detaches_everything_and_exits_0", sigterm_detaches),
        Trial::test("received_plus_lost_equals_produced", lost_accounting),
        Trial::test("http_serves_index_healthz_and_404", http_pages),
        Trial::test("bpf_stats_report_program_runs", bpf_stats),
        Trial::test("check_attach_reports_each_probe", check_attach),
    ];
    if !kernel::has_kprobes() {
        trials.push(Trial::test("strict_mode_fails_on_an_unattachable_probe", strict_mode));
    }
    trials
}

/// Ok when `cond` holds, else the failure `what`.
pub fn expect(cond: bool, what: impl Into<String>) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

fn bad_config() -> Result<(), Failed> {
    let before = kernel::baseline_programs();
    let cases = [
        ("listen: \"127.0.0.1:0\"\nprobes:\n  exec: {}\n  nosuch: {}\n".to_string(), "4:3", "unknown probe `nosuch`"),
        // hostile: nested 100,000 deep, which cost the parser 38 s of CPU;
        // refused at the level past the limit before the parser runs
        (format!("probes:\n  exec: {}\n", "[".repeat(100_000)), "2:39", "nested more than 32 deep"),
    ];
    for (yaml, at, message) in cases {
        let config = ConfigFile::new(&yaml);
        let path = config.path.display().to_string();
        for args in [vec!["run", "--config", path.as_str()], vec!["check", "--config", path.as_str()]] {
            let started = Instant::now();
            let out = sonde(&args);
            let took = started.elapsed();
            let stderr = String::from_utf8_lossy(&out.stderr);
            expect(out.status.code() == Some(2), format!("{args:?}: exit {:?}, want 2; stderr: {stderr}", out.status))?;
            let want = format!("{path}:{at}: ");
            expect(
                stderr.contains(&want) && stderr.contains(message),
                format!("{args:?}: stderr {stderr:?} lacks {want:?} and {message:?}"),
            )?;
            expect(took < Duration::from_secs(5), format!("{args:?}: took {took:?}"))?;
        }
    }
    expect(kernel::sonde_programs_become(before) == before, "a bad config must load nothing")
}

fn sigterm_detaches() -> Result<(), Failed> {
    let before = kernel::baseline_programs();
    let agent = Agent::start("probes:\n  exec: {}\n  exit: {}\n  file_open: {}\n  syscalls: {}\n", &[]);
    let loaded = kernel::sonde_programs();
    expect(loaded == before + 6, format!("{loaded} sonde programs loaded, want {}", before + 6))?;
    let (status, took) = agent.terminate(Duration::from_secs(2));
    expect(status.code() == Some(0), format!("exit status {status}, want 0"))?;
    expect(took < Duration::from_secs(2), format!("took {took:?}"))?;
    let after = kernel::sonde_programs_become(before);
    expect(after == before, format!("{after} sonde programs left after exit, want {before}"))
}

/// A tiny ring and a stopped reader: the kernel counts what did not fit,
/// and every produced event is either received or lost.
fn lost_accounting() -> Result<(), Failed> {
    const PRODUCED: usize = 20_000;
    let comm = workload::unique_comm("ls");
    let agent = Agent::start(
        &format!(
            "ring_buffer: {{size_bytes: 4096, wakeup_bytes: 0}}\nprobes:\n  file_open:\n    filter: {{comm: [{comm}]}}\n"
        ),
        &[],
    );
    agent.signal(libc::SIGSTOP);
    let missing = std::env::temp_dir().join(format!("sonde-missing-{comm}"));
    workload::on_named_thread(&comm, move || workload::open_missing(&missing, PRODUCED));
    agent.signal(libc::SIGCONT);
    let probe = [("probe", "file_open")];
    let total = agent.settle(PRODUCED as f64, |m| {
        m.value("sonde_events_received_total", &probe) + m.value("sonde_events_lost_total", &probe)
    });
    let metrics = agent.scrape();
    let (received, lost) =
        (metrics.value("sonde_events_received_total", &probe), metrics.value("sonde_events_lost_total", &probe));
    expect(total == PRODUCED as f64, format!("received {received} + lost {lost} = {total}, want {PRODUCED}"))?;
    expect(lost > 0.0, "a 4 KiB ring with a stopped reader must lose events")?;
    let counted = metrics.value("sonde_file_open_total", &[("comm", &comm), ("result", "ENOENT")]);
    expect(counted == received, format!("file_open_total {counted} != received {received}"))
}

fn http_pages() -> Result<(), Failed> {
    let agent = Agent::start("probes:\n  exec: {}\n", &[]);
    let (status, body) = agent.get("/")?;
    expect(status == 200 && body.contains("/metrics") && body.contains("/healthz"), format!("GET / → {status}"))?;
    let (status, body) = agent.get("/healthz")?;
    expect(status == 200 && body.trim() == "ok", format!("GET /healthz → {status} {body}"))?;
    let (status, _) = agent.get("/nope")?;
    expect(status == 404, format!("GET /nope → {status}"))?;
    let metrics = agent.scrape();
    expect(metrics.value("sonde_build_info", &[("version", env!("CARGO_PKG_VERSION"))]) == 1.0, "build_info")?;
    Ok(())
}

fn bpf_stats() -> Result<(), Failed> {
    let comm = workload::unique_comm("bs");
    let agent = Agent::start("probes:\n  exec: {}\n", &["--bpf-stats"]);
    workload::NamedBinary::new(&comm).run(5, &["exit", "0"]);
    agent.settle(5.0, |m| m.value("sonde_exec_total", &[("comm", &comm)]));
    let metrics = agent.scrape();
    let labels = [("probe", "exec"), ("program", "handle_exec")];
    let runs = metrics.value("sonde_bpf_prog_runs_total", &labels);
    // every exec on the machine runs the program, so at least ours did
    expect(runs >= 5.0, format!("sonde_bpf_prog_runs_total = {runs}, want >= 5"))?;
    let secs = metrics.value("sonde_bpf_prog_run_seconds_total", &labels);
    expect(secs > 0.0 && secs < 1.0, format!("sonde_bpf_prog_run_seconds_total = {secs}"))
}

fn check_attach() -> Result<(), Failed> {
    let before = kernel::baseline_programs();
    let config = ConfigFile::new("probes:\n  exec: {}\n  file_open: {}\n");
    let out = sonde(&["check", "--attach", "--config", &config.path.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    expect(out.status.success(), format!("check --attach failed: {stdout}"))?;
    expect(stdout.contains("exec") && stdout.contains("hook=tracepoint"), format!("stdout: {stdout}"))?;
    expect(kernel::sonde_programs_become(before) == before, "check --attach must detach everything")
}

fn strict_mode() -> Result<(), Failed> {
    let before = kernel::baseline_programs();
    let port = crate::agent::free_port();
    let config = ConfigFile::new(&format!("listen: \"127.0.0.1:{port}\"\nprobes:\n  exec: {{}}\n  vfs_io: {{}}\n"));
    // (the exporters' spellings of the log flags; stderr is a pipe here)
    let path = config.path.display().to_string();
    let out = sonde(&["run", "--strict", "--log.level", "debug", "--log.format", "text", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    expect(out.status.code() == Some(1), format!("exit {:?}, want 1", out.status))?;
    expect(stderr.contains("strict mode") && stderr.contains("vfs_io"), format!("stderr: {stderr}"))?;
    expect(stderr.contains("DEBUG"), format!("--log.level debug: no DEBUG line in {stderr}"))?;
    expect(!stderr.contains('\x1b'), format!("colour codes in logs to a pipe: {stderr:?}"))?;
    expect(kernel::sonde_programs_become(before) == before, "strict failure must detach everything")
}
