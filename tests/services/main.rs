//! Tests against real services on this host: sonde scraped by Debian's
//! Prometheus. The services are fetched as Debian packages and unpacked
//! into a cache directory, never installed; when they cannot be had, the
//! test fails saying INFRA and why.
//!
//! Needs root (sonde loads its probes); without it every test is reported
//! ignored with that reason. Run on the host only, not in the VMs.

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

mod prometheus;

use libtest_mimic::{Arguments, Trial};

fn main() {
    if let Some(code) = workload::dispatch() {
        std::process::exit(code);
    }
    let mut args = Arguments::from_args();
    // One agent at a time: the services and the kernel are shared.
    args.test_threads = Some(1);
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let trials: Vec<Trial> =
        prometheus::trials().into_iter().map(|t| if root { t } else { t.with_ignored_flag(true) }).collect();
    if !root {
        eprintln!("services tests: not running as root; every test is ignored (sonde needs CAP_BPF/CAP_PERFMON)");
    }
    libtest_mimic::run(&args, trials).exit();
}
