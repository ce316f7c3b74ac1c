//! The agent's lifecycle: prepare the system, load and attach every
//! configured probe (a failing probe is reported and the others go on),
//! read events, serve metrics, and detach everything on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libbpf_rs::Link;
use tokio::sync::watch;

use crate::config::{Config, ProbeConfig};
use crate::events::{Consumer, Source};
use crate::loader::{self, verifier_log, LoadContext, Loaded, ProbeFailure};
use crate::metrics::Metrics;
use crate::probes;
use crate::scrape::{KernelCounters, Scraper};
use crate::{bpf_stats, http, system};

/// A probe that is attached: dropping it detaches its programs.
struct Attached {
    _links: Vec<Link>,
}

/// The outcome of loading one configured probe.
pub enum Outcome {
    Attached(Loaded),
    Failed(ProbeFailure),
}

pub fn load_context(config: &Config) -> LoadContext {
    LoadContext {
        ring: config.ring_buffer.clone(),
        cpus: libbpf_rs::num_possible_cpus().unwrap_or(1),
        self_tgid: std::process::id(),
    }
}

/// Loads and attaches one probe, logging why it failed if it did.
pub fn load_one(probe_config: &ProbeConfig, ctx: &LoadContext) -> Outcome {
    let name = probe_config.spec.name;
    let Some(probe) = probes::probe(name) else { unreachable!("config validation only admits registered probes") };
    match loader::load_probe(probe, probe_config, ctx) {
        Ok(loaded) => {
            tracing::info!(probe = name, hook = loaded.hook.name(), "probe attached");
            Outcome::Attached(loaded)
        }
        Err(failure) => {
            tracing::warn!(probe = name, reason = %failure, "probe unavailable");
            for (kind, err) in &failure.attempts {
                if let Some(log) = err.verifier_log() {
                    tracing::warn!(
                        probe = name,
                        hook = kind.name(),
                        "verifier log (head and tail):\n{}",
                        verifier_log::head_and_tail(log, 10, 20)
                    );
                    tracing::debug!(probe = name, hook = kind.name(), "full verifier log:\n{log}");
                }
            }
            Outcome::Failed(failure)
        }
    }
}

/// `sonde run`.
pub fn run(config: Config) -> Result<()> {
    let started = Instant::now();
    system::tune_allocator();
    system::prepare()?;
    verifier_log::install();
    let metrics = Arc::new(Metrics::new(&config).context("setting up metrics")?);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sonde-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listener = bind(&runtime, config.listen)?;
    let stats_guard = if config.bpf_stats {
        Some(bpf_stats::enable().context("turning on BPF run-time statistics (bpf_stats: true)")?)
    } else {
        None
    };
    let scraper = Arc::new(Scraper::new(metrics.clone(), stats_guard.is_some() || bpf_stats::sysctl_enabled()));
    // Installed before anything is loaded, so that a SIGTERM at any point
    // (even the moment /healthz turns ready) detaches cleanly.
    let signals = runtime.block_on(async { Signals::install() })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let server = runtime.spawn(http::serve(listener, scraper.clone(), http::Limits::default(), shutdown_rx));
    tracing::info!(listen = %config.listen, "serving /metrics");

    let ctx = load_context(&config);
    let mut attached = Vec::new();
    let mut sources = Vec::new();
    let mut failures = Vec::new();
    for probe_config in &config.probes {
        let name = probe_config.spec.name;
        match load_one(probe_config, &ctx) {
            Outcome::Attached(loaded) => {
                let Some(probe) = probes::probe(name) else { continue };
                let sink = (probe.sink)(probe_config, &metrics)
                    .with_context(|| format!("registering the metrics of probe `{name}`"))?;
                metrics.agent.probe_up.with_label_values(&[name, loaded.hook.name()]).set(1);
                sources.push(Source {
                    probe: name,
                    ring: loaded.events,
                    sink,
                    received: metrics.agent.events_received.child(&[name.to_string()]),
                    decode_errors: metrics.agent.decode_errors.with_label_values(&[name]),
                });
                scraper.add(KernelCounters { probe: name, lost: loaded.lost, programs: loaded.programs });
                attached.push(Attached { _links: loaded.links });
            }
            Outcome::Failed(failure) => {
                metrics.agent.probe_up.with_label_values(&[name, "none"]).set(0);
                for (_, err) in &failure.attempts {
                    metrics.agent.probe_errors.with_label_values(&[name, err.stage()]).inc();
                }
                // Make the counters exist at zero so dashboards see the probe.
                metrics.agent.events_received.child(&[name.to_string()]);
                failures.push((name, failure));
            }
        }
    }
    if config.strict && !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|(n, f)| format!("  {n}: {f}")).collect();
        bail!("strict mode: {} probe(s) failed:\n{}", failures.len(), list.join("\n"));
    }

    let consumer = Consumer::start(sources, Duration::from_millis(config.ring_buffer.poll_interval_ms.into()))?;
    scraper.set_ready();
    tracing::info!(
        attached = attached.len(),
        failed = failures.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "ready"
    );

    let signal = runtime.block_on(signals.wait());
    tracing::info!(signal, "shutting down");
    consumer.stop();
    drop(attached);
    drop(stats_guard);
    let _ = shutdown_tx.send(true);
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_millis(500), server).await;
    });
    runtime.shutdown_timeout(Duration::from_millis(200));
    tracing::info!("all probes detached");
    Ok(())
}

impl http::Endpoints for Scraper {
    fn metrics(&self) -> Result<String, String> {
        self.render().map_err(|err| err.to_string())
    }

    fn ready(&self) -> bool {
        self.is_ready()
    }

    fn reload(&self) -> Result<String, String> {
        Err("reload is not supported yet".into())
    }
}

fn bind(runtime: &tokio::runtime::Runtime, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let _guard = runtime.enter();
    let std_listener = std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    std_listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(std_listener)?)
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must run inside the runtime.
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// `sonde check --attach`: load and attach every probe, report, detach.
/// Returns whether all of them attached.
pub fn check_attach(config: &Config) -> Result<bool> {
    system::prepare()?;
    verifier_log::install();
    let ctx = load_context(config);
    let mut ok = true;
    for probe_config in &config.probes {
        let name = probe_config.spec.name;
        match load_one(probe_config, &ctx) {
            Outcome::Attached(loaded) => println!("{name:<10} ok        hook={}", loaded.hook.name()),
            Outcome::Failed(failure) => {
                ok = false;
                println!("{name:<10} FAILED    {failure}");
            }
        }
    }
    Ok(ok)
}
