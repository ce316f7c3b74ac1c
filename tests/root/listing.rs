//! `sonde probes` against the running kernel: the hook each probe would
//! use, why the others were skipped, the verifier's and the JIT's facts,
//! and nothing but the listing on the terminal; and the same facts as
//! self-metrics of a running agent.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};

use crate::agent::{sonde, Agent, ConfigFile};
use crate::kernel;
use crate::lifecycle::expect;

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("probes_lists_each_hook_in_use_and_why_others_were_skipped", probes_text),
        Trial::test("probes_json_says_the_same_as_the_text", probes_json),
        Trial::test("metrics_export_each_programs_hook_and_verifier_facts", program_metrics),
        Trial::test("probes_with_a_config_lists_its_config_defined_probes", config_defined),
        Trial::test("every_hook_of_every_probe_loads_with_comm_and_pid_filters", filtered_hooks_load),
    ]
}

/// The hook each built-in probe should use on this kernel; None: unsupported.
fn expected_hooks() -> Vec<(&'static str, Option<&'static str>)> {
    let best_function_hook = kernel::best_function_hook();
    vec![
        ("block_io", Some("tp_btf")),
        ("cfs_throttle", best_function_hook),
        ("exec", Some("tracepoint")),
        ("exit", Some("tracepoint")),
        ("file_open", best_function_hook.or(Some("tracepoint"))),
        ("fs_latency", best_function_hook),
        ("oom", Some("tp_btf")),
        ("page_cache", best_function_hook.or(Some("tracepoint"))),
        ("page_faults", best_function_hook.or(cfg!(target_arch = "x86_64").then_some("tracepoint"))),
        ("process", Some("tp_btf")),
        ("runqueue", Some("tp_btf")),
        ("signals", Some("tracepoint")),
        ("skb_drop", Some("tp_btf")),
        ("softirq", Some("tp_btf")),
        ("syscalls", Some("tp_btf")),
        ("tcp", Some("tracepoint")),
        ("vfs_io", best_function_hook),
    ]
}

/// Whether the kernel reports `verified_insns` (Linux 5.16 and later).
fn reports_verified_insns() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (5, 16)
}

/// Lines of `probe`'s block in the text listing.
fn block<'a>(stdout: &'a str, probe: &str) -> Vec<&'a str> {
    let header = format!("{probe}: ");
    stdout.lines().skip_while(|l| !l.starts_with(&header)).skip(1).take_while(|l| l.starts_with(' ')).collect()
}

const LINE_KINDS: &[&str] = &[
    "  hook     ",
    "           cost: ",
    "  metric   ",
    "  labels   ",
    "  kernel   ",
    "  skipped  ",
    "  program  ",
    "  absent   ",
];

fn probes_text() -> Result<(), Failed> {
    let out = sonde(&["probes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    expect(out.status.success(), format!("sonde probes failed: {stderr}"))?;
    expect(stderr.is_empty(), format!("sonde probes wrote to stderr without --verbose: {stderr}"))?;
    for line in stdout.lines() {
        let listing_line = line.is_empty()
            || line.starts_with("JIT: ")
            || line.split_once(": ").is_some_and(|(name, _)| name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            || LINE_KINDS.iter().any(|kind| line.starts_with(kind));
        expect(listing_line, format!("not a listing line: {line:?} in\n{stdout}"))?;
    }
    for (probe, hook) in expected_hooks() {
        let lines = block(&stdout, probe);
        let kernel: Vec<&&str> = lines.iter().filter(|l| l.starts_with("  kernel   ")).collect();
        let want = match hook {
            Some(hook) => format!("  kernel   supported, via {hook}"),
            None => "  kernel   unsupported: no hook loads and attaches here".to_string(),
        };
        expect(kernel.len() == 1 && *kernel[0] == want, format!("{probe}: want {want:?}, got {lines:#?}"))?;
        let programs: Vec<&&str> = lines.iter().filter(|l| l.starts_with("  program  ")).collect();
        expect(hook.is_none() == programs.is_empty(), format!("{probe}: programs {programs:#?}"))?;
        for program in programs {
            check_program_line(probe, program)?;
        }
    }
    let vfs_io = block(&stdout, "vfs_io");
    if expected_hooks().iter().any(|(probe, hook)| *probe == "vfs_io" && hook.is_none()) {
        // this kernel has neither kprobes nor fentry: each says why
        let skipped: Vec<&&str> = vfs_io.iter().filter(|l| l.starts_with("  skipped  ")).collect();
        expect(skipped.len() == 2, format!("vfs_io: {vfs_io:#?}"))?;
        expect(skipped[0].starts_with("  skipped  fentry: "), format!("vfs_io: {vfs_io:#?}"))?;
        expect(skipped[1].starts_with("  skipped  kprobe: no kprobe PMU"), format!("vfs_io: {vfs_io:#?}"))?;
    }
    let file_open = block(&stdout, "file_open");
    let skipped = file_open.iter().filter(|l| l.starts_with("  skipped  ")).count();
    // every hook but the one in use is accounted for: three hooks in all
    expect(skipped == 2, format!("file_open: {file_open:#?}"))
}

/// `  program  NAME: N instructions verified, X bytes translated, J bytes JITed`
fn check_program_line(probe: &str, line: &str) -> Result<(), Failed> {
    let facts = line.split_once(": ").map(|(_, f)| f).unwrap_or_default();
    let first_number = |s: &str| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok());
    let parts: Vec<&str> = facts.split(", ").collect();
    expect(parts.len() == 3, format!("{probe}: {line:?}"))?;
    if reports_verified_insns() {
        let verified = first_number(parts[0]).filter(|_| parts[0].ends_with(" instructions verified"));
        expect(verified.is_some_and(|n| n > 0), format!("{probe}: verified count in {line:?}"))?;
    } else {
        expect(parts[0].contains("n/a"), format!("{probe}: {line:?}"))?;
    }
    let translated = first_number(parts[1]).filter(|_| parts[1].ends_with(" bytes translated"));
    expect(translated.is_some_and(|n| n > 0), format!("{probe}: translated size in {line:?}"))?;
    let jited = parts[2] == "not JITed" || first_number(parts[2]).is_some_and(|n| n > 0);
    expect(jited, format!("{probe}: JITed size in {line:?}"))
}

fn probes_json() -> Result<(), Failed> {
    let out = sonde(&["probes", "--output", "json"]);
    expect(out.status.success(), format!("sonde probes -o json: {}", String::from_utf8_lossy(&out.stderr)))?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))?;
    let probes = json["probes"].as_array().ok_or("no probes array")?;
    for (probe, hook) in expected_hooks() {
        let entry = probes.iter().find(|p| p["name"] == probe).ok_or(format!("{probe} missing"))?;
        let want_status = if hook.is_some() { "supported" } else { "unsupported" };
        expect(entry["status"] == want_status, format!("{probe}: {entry}"))?;
        expect(entry["hook"].as_str() == hook, format!("{probe}: {entry}"))?;
        for program in entry["programs"].as_array().ok_or("no programs array")? {
            let facts = &program["facts"];
            expect(facts["xlated_bytes"].as_u64().is_some_and(|n| n > 0), format!("{probe}: {program}"))?;
            if reports_verified_insns() {
                expect(facts["verified_insns"].as_u64().is_some_and(|n| n > 0), format!("{probe}: {program}"))?;
            }
        }
        for skipped in entry["hooks"].as_array().ok_or("no hooks array")?.iter().filter(|h| h["status"] == "failed") {
            expect(skipped["reason"].as_str().is_some_and(|r| !r.is_empty()), format!("{probe}: {skipped}"))?;
        }
    }
    Ok(())
}

fn program_metrics() -> Result<(), Failed> {
    let agent = Agent::start("probes:\n  exec: {}\n  syscalls: {}\n", &[]);
    let metrics = agent.scrape();
    for (probe, hook, program) in [("exec", "tracepoint", "handle_exec"), ("syscalls", "tp_btf", "handle_sys_exit")] {
        let up = metrics.value("sonde_probe_up", &[("probe", probe), ("hook", hook)]);
        expect(up == 1.0, format!("sonde_probe_up{{{probe},{hook}}} = {up}"))?;
        let of_program = [("probe", probe), ("program", program)];
        let jited_bytes = metrics.get("sonde_probe_jited_bytes", &of_program).ok_or(format!("{program}: no jited"))?;
        let jited = if jited_bytes > 0.0 { "true" } else { "false" };
        let info = [("probe", probe), ("program", program), ("hook", hook), ("jited", jited)];
        expect(metrics.get("sonde_probe_program_info", &info) == Some(1.0), format!("program_info {info:?}"))?;
        let xlated = metrics.value("sonde_probe_xlated_bytes", &of_program);
        expect(xlated > 0.0, format!("sonde_probe_xlated_bytes{of_program:?} = {xlated}"))?;
        let verified = metrics.get("sonde_probe_verified_instructions", &of_program);
        if reports_verified_insns() {
            expect(verified.is_some_and(|n| n > 0.0), format!("verified instructions {of_program:?}: {verified:?}"))?;
        } else {
            expect(verified.is_none(), format!("verified instructions before 5.16: {verified:?}"))?;
        }
    }
    // a probe removed by reload takes its program series with it
    agent.rewrite_config("probes:\n  exec: {}\n");
    agent.signal(libc::SIGHUP);
    agent.wait_for("syscalls' program series gone", Duration::from_secs(10), |m| {
        m.series("sonde_probe_program_info").iter().all(|(labels, _)| !labels.iter().any(|(_, v)| v == "syscalls"))
            && m.get("sonde_probe_xlated_bytes", &[("probe", "syscalls"), ("program", "handle_sys_exit")]).is_none()
    })?;
    Ok(())
}

/// `sonde probes --config FILE` lists the probes the file defines after the
/// built-in ones, each tried on this kernel as configured: a tracepoint
/// probe attaches everywhere; a function probe where fentry or kprobes do,
/// and otherwise says why not for each hook. A bad config fails before any
/// trial load, with its location.
fn config_defined() -> Result<(), Failed> {
    let config = ConfigFile::new(
        "probes:\n  exec: {}\n  signals_by_number:\n    tracepoint: signal/signal_generate\n    labels: [sig]\n  \
         read_sizes:\n    kprobe: vfs_read\n    value: count\n    unit: bytes\n",
    );
    let path = config.path.display().to_string();
    let out = sonde(&["probes", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    expect(out.status.success(), format!("sonde probes --config: {}", String::from_utf8_lossy(&out.stderr)))?;
    for (probe, _) in expected_hooks() {
        expect(!block(&stdout, probe).is_empty(), format!("built-in {probe} missing from\n{stdout}"))?;
    }
    let signals = block(&stdout, "signals_by_number");
    expect(signals.contains(&"  kernel   supported, via tracepoint"), format!("signals_by_number: {signals:#?}"))?;
    expect(signals.contains(&"  metric   sonde_signals_by_number_total (counter)"), format!("{signals:#?}"))?;
    expect(signals.iter().any(|l| l.starts_with("  program  custom_tracepoint: ")), format!("{signals:#?}"))?;
    let reads = block(&stdout, "read_sizes");
    match kernel::best_function_hook() {
        Some(hook) => {
            let want = format!("  kernel   supported, via {hook}");
            expect(reads.iter().any(|l| *l == want), format!("read_sizes: want {want:?} in {reads:#?}"))?;
        }
        None => {
            let skipped = reads.iter().filter(|l| l.starts_with("  skipped  ")).count();
            expect(
                reads.contains(&"  kernel   unsupported: no hook loads and attaches here") && skipped == 2,
                format!("read_sizes: {reads:#?}"),
            )?;
        }
    }
    expect(reads.iter().any(|l| l.starts_with("  metric   sonde_read_sizes_bytes ")), format!("{reads:#?}"))?;

    let out = sonde(&["probes", "--config", &path, "--output", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))?;
    let probes = json["probes"].as_array().ok_or("no probes array")?;
    let origin = |name: &str| probes.iter().find(|p| p["name"] == name).map(|p| p["origin"].clone());
    expect(origin("exec") == Some("built_in".into()), format!("exec: {:?}", origin("exec")))?;
    expect(origin("signals_by_number") == Some("config".into()), format!("{:?}", origin("signals_by_number")))?;
    expect(origin("read_sizes") == Some("config".into()), format!("{:?}", origin("read_sizes")))?;

    config.write("probes:\n  read_sizes:\n    kprobe: vfs_read\n    value: no_such_argument\n");
    let out = sonde(&["probes", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    expect(out.status.code() == Some(2), format!("bad config: exit {:?}, {stderr}", out.status.code()))?;
    expect(out.stdout.is_empty(), format!("bad config still listed: {}", String::from_utf8_lossy(&out.stdout)))?;
    expect(stderr.contains(&format!("{path}:4:")), format!("bad config error not located: {stderr}"))
}

/// Filters change the programs the verifier sees (`.rodata` constants
/// decide which branches are live): every hook of every probe, forced, must
/// load with a comm filter and with a pid filter. A hook this kernel lacks
/// may fail to attach (no kprobes, no fentry, an x86-only tracepoint on
/// arm64), never to load because the verifier refused a program.
fn filtered_hooks_load() -> Result<(), Failed> {
    let out = sonde(&["probes", "--output", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))?;
    let mut failures = Vec::new();
    for probe in json["probes"].as_array().ok_or("no probes array")? {
        let name = probe["name"].as_str().ok_or("probe without a name")?;
        let hooks: Vec<&str> =
            probe["hooks"].as_array().ok_or("no hooks")?.iter().filter_map(|h| h["kind"].as_str()).collect();
        // a probe with one hook kind takes no `hook:` setting
        let forced: Vec<Option<&str>> =
            if hooks.len() > 1 { hooks.iter().copied().map(Some).collect() } else { vec![None] };
        for hook in forced {
            for filter in ["{comm: [sonde-nobody, sonde-none]}", "{pid: 1}"] {
                let hook_line = hook.map(|h| format!("    hook: {h}\n")).unwrap_or_default();
                let config = ConfigFile::new(&format!("probes:\n  {name}:\n{hook_line}    filter: {filter}\n"));
                let out = sonde(&["check", "--attach", "--config", &config.path.display().to_string()]);
                let stdout = String::from_utf8_lossy(&out.stdout);
                if out.status.success() {
                    continue;
                }
                // "attaching ... failed": it loaded, and this kernel lacks the
                // hook point (no kprobe PMU; an x86-only tracepoint on arm64)
                let environment = stdout.contains(": attaching ")
                    || (!kernel::expects_fentry()
                        && stdout.contains("fentry: loading failed: Operation not permitted"));
                let refused = stdout.contains("-EACCES") || stdout.contains("Permission denied (os error 13)");
                if refused || !environment {
                    failures.push(format!("{name} hook={hook:?} filter={filter}: {}", stdout.trim()));
                }
            }
        }
    }
    expect(failures.is_empty(), failures.join("\n"))
}
