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

/// Tests whose outcome does not depend on the kernel: the HTTP server, the
/// web config (TLS, authentication) and config errors found before anything
/// loads. The VM suite runs the binary with `SONDE_ROOT_TESTS=kernel`, which
/// leaves these out: they run once, on the host.
const KERNEL_INDEPENDENT: &[&str] = &[
    "bad_config_exits_2_with_its_location",
    "bad_reload_keeps_running_and_reports_the_location",
    "http_serves_index_healthz_and_404",
    "scrape_parser_unescapes_and_refuses_duplicate_series",
    "http_idle_connections_leave_metrics_answering",
    "http_out_of_descriptors_closes_idle_connections",
    "http_gzip_scrape_and_405_with_allow",
    "web_tls_scrape_and_basic_auth",
    "web_client_certificate_required_and_verified",
    "web_config_change_takes_effect_without_restart",
    "web_bad_config_at_start_exits_2_before_loading_probes",
];

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
    if let Some(stale) = KERNEL_INDEPENDENT.iter().find(|n| !trials.iter().any(|t| t.name() == **n)) {
        panic!("KERNEL_INDEPENDENT names {stale}, which is not a test");
    }
    match std::env::var("SONDE_ROOT_TESTS").as_deref() {
        Ok("kernel") => trials.retain(|t| !KERNEL_INDEPENDENT.contains(&t.name())),
        Ok("all") | Err(_) => {}
        Ok(other) => panic!("SONDE_ROOT_TESTS={other}: want `kernel` or `all`"),
    }
    let trials = trials.into_iter().map(|t| if root { t } else { t.with_ignored_flag(true) }).collect::<Vec<Trial>>();
    if !root {
        eprintln!(
            "root tests: not running as root; every test is ignored (run as root: they need CAP_BPF/CAP_PERFMON)"
        );
    }
    libtest_mimic::run(&args, trials).exit();
}
