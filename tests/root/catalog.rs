//! Exact-delta tests for the catalogue probes: signals, process, oom.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use libtest_mimic::{Failed, Trial};

use crate::agent::Agent;
use crate::workload::{self, Cgroup, NamedBinary};

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("signals_count_usr1_by_sender_and_target", signals_usr1),
        Trial::test("process_counts_forks_by_parent_and_lifetimes", process_forks),
        Trial::test("oom_counts_one_kill_in_a_tiny_memory_cgroup", oom_kill),
    ]
}

fn matrix(probe: &str, hook: &str) {
    println!("SONDE_MATRIX probe={probe} hook={hook} result=ok");
}

fn check(what: &str, got: f64, want: f64) -> Result<(), Failed> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want {want}").into())
    }
}

/// `kill -USR1` from a named thread to a named child that catches it, N
/// times: exactly N, by signal, sender and target.
fn signals_usr1() -> Result<(), Failed> {
    const N: usize = 13;
    let target = workload::unique_comm("sgt");
    let sender = workload::unique_comm("sgs");
    let agent = Agent::start("probes:\n  signals:\n    labels: [sig, comm, target_comm, result]\n", &[]);
    let binary = NamedBinary::new(&target);
    let mut child =
        binary.command(&["catch-usr1"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn");
    let mut ready = String::new();
    let mut acks = BufReader::new(child.stdout.take().expect("stdout"));
    acks.read_line(&mut ready).expect("read ready");
    assert_eq!(ready.trim(), "ready");
    let pid = child.id() as i32;
    workload::on_named_thread(&sender, move || {
        for _ in 0..N {
            // SAFETY: signals our own child, which catches SIGUSR1.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
            // one at a time: the child's acknowledgement says this one was
            // delivered, so the next is not merged into it while pending
            let mut ack = [0u8; 1];
            acks.read_exact(&mut ack).expect("signal acknowledged");
        }
    });
    drop(child.stdin.take());
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    let labels = [("sig", "SIGUSR1"), ("comm", sender.as_str()), ("target_comm", target.as_str())];
    let delivered = [labels[0], labels[1], labels[2], ("result", "delivered")];
    let got = agent.settle(N as f64, |m| {
        m.series("sonde_signals_generated_total")
            .iter()
            .filter(|(l, _)| labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
            .map(|(_, v)| v)
            .sum()
    });
    check("sonde_signals_generated_total{sig=SIGUSR1} over results", got, N as f64)?;
    check(
        "sonde_signals_generated_total{result=delivered}",
        agent.scrape().value("sonde_signals_generated_total", &delivered),
        N as f64,
    )?;
    matrix("signals", "tracepoint");
    Ok(())
}

/// A named process forks N children: N forks by its name, and N + 1
/// lifetimes (the children carry its name, and so does it).
fn process_forks() -> Result<(), Failed> {
    const N: usize = 21;
    let comm = workload::unique_comm("pf");
    let agent = Agent::start("probes:\n  process: {}\n", &[]);
    let binary = NamedBinary::new(&comm);
    let n = N.to_string();
    assert_eq!(binary.run(1, &["fork", &n])[0].code(), Some(0));
    let forks = agent.settle(N as f64, |m| m.value("sonde_process_forks_total", &[("comm", &comm)]));
    check("sonde_process_forks_total", forks, N as f64)?;
    let lifetimes =
        agent.settle(N as f64 + 1.0, |m| m.value("sonde_process_lifetime_seconds_count", &[("comm", &comm)]));
    check("sonde_process_lifetime_seconds_count", lifetimes, N as f64 + 1.0)?;
    matrix("process", "tp_btf");
    Ok(())
}

/// A memory cgroup with a 32 MiB limit, on cgroup v1's memory controller
/// where it is mounted (hybrid hosts), else on cgroup v2.
struct MemoryCgroup {
    cgroup: Cgroup,
    /// Whether the victim's cgroup v2 path is this cgroup's (v2 only).
    unified: bool,
}

const LIMIT: &str = "33554432";

impl MemoryCgroup {
    fn create(name: &str) -> Result<MemoryCgroup, Failed> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        if v1.join("memory.limit_in_bytes").exists() {
            let cgroup = Cgroup::create(v1, name);
            write(&cgroup.dir.join("memory.limit_in_bytes"), LIMIT)?;
            write_if_present(&cgroup.dir.join("memory.memsw.limit_in_bytes"), LIMIT)?;
            return Ok(MemoryCgroup { cgroup, unified: false });
        }
        let mount = workload::cgroup2_mount().ok_or("no memory cgroup: neither v1's memory nor cgroup2 mounted")?;
        let controllers = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(format!("cgroup2 at {} has no memory controller: {controllers:?}", mount.display()).into());
        }
        write(&mount.join("cgroup.subtree_control"), "+memory")?;
        let cgroup = Cgroup::create(&mount, name);
        write(&cgroup.dir.join("memory.max"), LIMIT)?;
        write_if_present(&cgroup.dir.join("memory.swap.max"), "0")?;
        Ok(MemoryCgroup { cgroup, unified: true })
    }
}

fn write(path: &PathBuf, value: &str) -> Result<(), Failed> {
    std::fs::write(path, value).map_err(|e| format!("write {value} to {}: {e}", path.display()).into())
}

fn write_if_present(path: &PathBuf, value: &str) -> Result<(), Failed> {
    if path.exists() {
        write(path, value)
    } else {
        Ok(())
    }
}

/// A named process allocating past its cgroup's limit: killed by SIGKILL,
/// and exactly one OOM kill counted under its name (and, on cgroup v2, its
/// cgroup).
fn oom_kill() -> Result<(), Failed> {
    let comm = workload::unique_comm("oom");
    let memory = MemoryCgroup::create(&format!("sonde-test-{comm}"))?;
    let labels = if memory.unified { "[comm, cgroup]" } else { "[comm]" };
    let agent = Agent::start(&format!("probes:\n  oom:\n    labels: {labels}\n"), &[]);
    let binary = NamedBinary::new(&comm);
    let status = memory.cgroup.run(&binary, 1, &["allocate"])[0];
    if status.signal() != Some(libc::SIGKILL) {
        return Err(format!("the allocating workload ended with {status}, not SIGKILL").into());
    }
    let path = memory.cgroup.path();
    let mut want = vec![("comm", comm.as_str())];
    if memory.unified {
        want.push(("cgroup", path.as_str()));
    }
    let kills = agent.settle(1.0, |m| m.value("sonde_oom_kills_total", &want));
    check("sonde_oom_kills_total", kills, 1.0)?;
    matrix("oom", "tp_btf");
    Ok(())
}
