//! Tests against real services on this host: a container runtime started for the test and Debian's
//! Prometheus scraping sonde, with the real `sonde` binary. Packages a test needs are fetched from
//! Debian with `apt-get download` and unpacked into a cache directory, never installed; when one
//! cannot be had, the test fails and says INFRA.
//!
//! Needs root (the runtime creates cgroups and namespaces, sonde loads BPF programs). Without it
//! every test is reported ignored with that reason. Run on the host only, not in the VMs.

// The root suite's harness, shared: each binary uses only part of it.
#[allow(dead_code)]
#[path = "../root/agent.rs"]
mod agent;
#[allow(dead_code)]
#[path = "../root/pki.rs"]
mod pki;
#[allow(dead_code)]
#[path = "../root/workload.rs"]
mod workload;

mod cri;
mod packages;
mod prometheus;

use libtest_mimic::{Arguments, Trial};

fn main() {
    if let Some(code) = workload::dispatch() {
        std::process::exit(code);
    }
    let mut args = Arguments::from_args();
    // Each test runs its own services and agent; one at a time keeps their exec counts apart.
    args.test_threads = Some(1);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut trials = Vec::new();
    trials.extend(cri::trials());
    trials.extend(prometheus::trials());
    let trials: Vec<Trial> = trials.into_iter().map(|t| if root { t } else { t.with_ignored_flag(true) }).collect();
    if !root {
        eprintln!("service tests: not running as root; every test is ignored (they start a container runtime and load BPF programs)");
    }
    libtest_mimic::run(&args, trials).exit();
}
