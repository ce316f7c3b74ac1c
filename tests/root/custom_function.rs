//! Config-defined probes on kernel functions: exact call counts and byte
//! sums of a named thread's reads through the generic fentry/fexit and
//! kprobe/kretprobe programs, and located errors for what the kernel's BTF
//! refuses. The counting tests need kprobes or fentry: where the kernel has
//! neither they are ignored with that reason (the VM suite runs them).

use libtest_mimic::{Completion, Failed, Trial};

use crate::agent::{sonde, Agent, ConfigFile};
use crate::kernel;
use crate::workload;

/// Reads of LEN bytes each: pread64 calls vfs_read once per call.
const READS: usize = 13;
const LEN: usize = 700;

pub fn trials() -> Vec<Trial> {
    let mut trials = vec![Trial::test("custom_function_errors_are_located", located_errors)];
    if !kernel::has_kprobes() {
        trials.push(Trial::test("custom_function_kprobe_programs_pass_the_verifier_without_kprobes", verified));
    }
    let best_hook = kernel::best_function_hook();
    let hooks = best_hook.is_some();
    // the name a best-hook trial expects where it runs at all (else ignored)
    let best = best_hook.unwrap_or("kprobe");
    let counting: [(&str, &str, Option<&str>, &str); 4] = [
        ("custom_kprobe_vfs_read_counts_calls_and_bytes_on_the_best_hook", "kprobe", None, best),
        ("custom_kprobe_vfs_read_counts_calls_and_bytes_on_kprobe", "kprobe", Some("kprobe"), "kprobe"),
        ("custom_kretprobe_vfs_read_counts_returns_and_bytes_on_the_best_hook", "kretprobe", None, best),
        ("custom_kretprobe_vfs_read_counts_returns_and_bytes_on_kretprobe", "kretprobe", Some("kretprobe"), "kprobe"),
    ];
    for (name, key, hook, used) in counting {
        let needs_kprobes = hook.is_some() || used == "kprobe";
        trials.push(Trial::ignorable_test(name, move || {
            if !hooks || (needs_kprobes && !kernel::has_kprobes()) {
                let why = "needs kprobes or fentry, which this kernel lacks (the VM suite runs it)";
                return Ok(Completion::ignored_with(why));
            }
            vfs_read_calls(key, hook, used).map(|()| Completion::Completed)
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

/// A uniquely named thread preads LEN bytes READS times: on `key:
/// vfs_read` with a comm filter, exactly READS events, labelled by the
/// `count` argument (at return: saved at entry, for a kretprobe), and a
/// value (`count` at entry, the return value at return) summing to
/// READS × LEN bytes, on hook `used` (`hook:` forced when given).
fn vfs_read_calls(key: &str, hook: Option<&str>, used: &str) -> Result<(), Failed> {
    let comm = workload::unique_comm("kfn");
    let value = if key == "kretprobe" { "ret" } else { "count" };
    let hook = hook.map(|h| format!("    hook: {h}\n")).unwrap_or_default();
    let yaml = format!(
        "probes:\n  reads:\n    {key}: vfs_read\n{hook}    value: {value}\n    unit: bytes\n    labels: [comm, count]\n    \
         filter: {{comm: [{comm}]}}\n"
    );
    let agent = Agent::start(&yaml, &[]);
    check(
        &format!("sonde_probe_up{{probe=reads,hook={used}}}"),
        agent.scrape().value("sonde_probe_up", &[("probe", "reads"), ("hook", used)]),
        1.0,
    )?;
    let file = ConfigFile::new(&"r".repeat(LEN));
    let path = file.path.clone();
    workload::on_named_thread(&comm, move || workload::pread_file(&path, LEN, READS));
    let len = LEN.to_string();
    let labels = [("comm", comm.as_str()), ("count", len.as_str())];
    let count = agent.settle(READS as f64, |m| m.value("sonde_reads_total", &labels));
    check("sonde_reads_total{comm,count}", count, READS as f64)?;
    let m = agent.scrape();
    check("sonde_reads_bytes_count{comm,count}", m.value("sonde_reads_bytes_count", &labels), READS as f64)?;
    check("sonde_reads_bytes_sum{comm,count}", m.value("sonde_reads_bytes_sum", &labels), (READS * LEN) as f64)?;
    let all: f64 = m.series("sonde_reads_total").iter().map(|(_, v)| v).sum();
    check("sonde_reads_total over all series", all, READS as f64)?;
    println!("SONDE_MATRIX probe=custom_{key} hook={used} result=ok");
    Ok(())
}

/// Without kprobes the kernel still loads (verifies) kprobe programs and
/// only attaching them fails: every generic kprobe program, with numbers,
/// strings, filters and a kretprobe's saved arguments, gets that far.
fn verified() -> Result<(), Failed> {
    let yaml = "probes:
  entry_numbers:
    kprobe: vfs_read
    hook: kprobe
    labels: [comm, count]
    value: count
    filter: {comm: [cat], fields: {pos: [0], count: [1, 2]}}
  return_and_saved_args:
    kretprobe: vfs_read
    hook: kretprobe
    labels: [count]
    value: ret
  entry_string:
    kprobe: do_sys_openat2
    hook: kprobe
    labels: [filename, dfd]
    filter: {fields: {filename: [/etc/passwd]}}
  return_string_filter:
    kretprobe: kern_path
    hook: kretprobe
    labels: [name, flags, ret]
    filter: {fields: {name: [/x, /y]}}
";
    let config = ConfigFile::new(yaml);
    let out = sonde(&["check", "--attach", "--config", &config.path.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (probe, program, function) in [
        ("entry_numbers", "custom_kprobe", "vfs_read"),
        ("return_and_saved_args", "custom_kretprobe_entry", "vfs_read"),
        ("entry_string", "custom_kprobe", "do_sys_openat2"),
        ("return_string_filter", "custom_kretprobe_entry", "kern_path"),
    ] {
        let want = format!("attaching {program} to kprobe {function} failed");
        let line = stdout.lines().find(|l| l.starts_with(probe)).unwrap_or_default();
        if !line.contains(&want) {
            return Err(format!("{probe}: want {want:?} (loaded, then no kprobes), got {line:?}").into());
        }
    }
    Ok(())
}

/// What the running kernel's BTF refuses is a config error at its node:
/// exit 2 from `check`, with FILE:LINE:COLUMN.
fn located_errors() -> Result<(), Failed> {
    let cases = [
        ("    kprobe: no_such_function_anywhere\n", "3:13", "unknown function `no_such_function_anywhere`"),
        (
            "    kprobe: vfs_read\n    value: no_such_arg\n",
            "4:12",
            "function `vfs_read` has no argument `no_such_arg`; its arguments: file, buf, count, pos",
        ),
        (
            "    kretprobe: vfs_read\n    value: file\n",
            "4:12",
            "argument `file` (struct file *) is a pointer, not a number",
        ),
    ];
    for (body, at, message) in cases {
        let config = ConfigFile::new(&format!("probes:\n  mine:\n{body}"));
        let path = config.path.display().to_string();
        let out = sonde(&["check", "--config", path.as_str()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("{path}:{at}: ");
        if out.status.code() != Some(2) || !stderr.contains(&want) || !stderr.contains(message) {
            return Err(format!("exit {:?}, stderr {stderr:?}; want 2, {want:?}, {message:?}", out.status).into());
        }
    }
    Ok(())
}
