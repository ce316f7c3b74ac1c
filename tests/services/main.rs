//! Tests against real services on this host: a container runtime started for the test, with the
//! real `sonde` binary watching it. Packages a test needs are fetched from Debian with
//! `apt-get download` and unpacked into a cache directory, never installed; when one cannot be had,
//! the test fails and says INFRA.
//!
//! Needs root (the runtime creates cgroups and namespaces, sonde loads BPF programs). Without it
//! every test is reported ignored with that reason.

#[allow(dead_code)] // shared with the root tests; this target uses part of it
#[path = "../root/agent.rs"]
mod agent;
mod cri;
mod packages;

use libtest_mimic::{Arguments, Trial};

fn main() {
    let mut args = Arguments::from_args();
    // Each test runs its own services and agent; one at a time keeps their exec counts apart.
    args.test_threads = Some(1);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut trials = Vec::new();
    trials.extend(cri::trials());
    let trials: Vec<Trial> = trials.into_iter().map(|t| if root { t } else { t.with_ignored_flag(true) }).collect();
    if !root {
        eprintln!("service tests: not running as root; every test is ignored (they start a container runtime)");
    }
    libtest_mimic::run(&args, trials).exit();
}
