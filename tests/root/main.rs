//! Root integration tests: the real `sonde` binary against the running
//! kernel. Each test starts the agent on its own config and a free port,
//! runs a known workload under a unique process name, scrapes `/metrics`
//! over HTTP and asserts exact counts.
//!
//! The binary doubles as its own workload: run as `<copy> --workload ...`
//! it performs one known action (see `workload.rs`), so exec/exit tests
//! need nothing from the system under test.
//!
//! Needs root (CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN). Without it every test
//! is reported ignored with that reason; CI runs as root. Hooks that the
//! kernel lacks (kprobes, fentry) get a test that asserts they are reported
//! unsupported instead.

mod agent;
mod catalog;
mod custom;
mod custom_function;
mod foundation;
mod fs_latency;
mod http;
mod kernel;
mod lifecycle;
mod listing;
mod memnet;
mod pki;
mod privileges;
mod probes;
mod sched;
mod storage;
mod tcp;
mod web;
mod workload;

use libtest_mimic::{Arguments, Trial};

fn main() {
    if let Some(code) = workload::dispatch() {
        std::process::exit(code);
    }
    let mut args = Arguments::from_args();
    // Tests share the kernel: the program count and comm filters assume one
    // agent at a time.
    args.test_threads = Some(1);
    let root = kernel::is_root();
    let mut trials = Vec::new();
    trials.extend(probes::trials());
    trials.extend(catalog::trials());
    trials.extend(custom::trials());
    trials.extend(custom_function::trials());
    trials.extend(tcp::trials());
    trials.extend(fs_latency::trials());
    trials.extend(storage::trials());
    trials.extend(memnet::trials());
    trials.extend(sched::trials());
    trials.extend(lifecycle::trials());
    trials.extend(listing::trials());
    trials.extend(foundation::trials());
    trials.extend(http::trials());
    trials.extend(web::trials());
    trials.extend(privileges::trials());
    let trials = trials.into_iter().map(|t| if root { t } else { t.with_ignored_flag(true) }).collect::<Vec<Trial>>();
    if !root {
        eprintln!(
            "root tests: not running as root; every test is ignored (run as root: they need CAP_BPF/CAP_PERFMON)"
        );
    }
    libtest_mimic::run(&args, trials).exit();
}
