//! The agent's lifecycle: prepare the system, start every configured probe
//! (a failing probe is reported and the others go on), serve metrics, apply
//! reloads as a diff, and detach everything on SIGTERM/SIGINT.

mod running;
pub mod signals;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use tokio::sync::watch;

use crate::capabilities::{self, CapSet};
use crate::config::{Config, ConfigError};
use crate::loader::{verifier_log, LoadContext};
use crate::metrics::Registry;
use crate::probes;
use crate::ring::Reader;
use crate::scrape::{Endpoints, Scraper};
use crate::{bpf_stats, http, system};

use running::Running;
pub use running::{load_one, Outcome};

/// What the lifecycle loop is asked to do, by signals and by HTTP.
pub enum Control {
    Terminate(&'static str),
    /// Re-read the config file; the HTTP endpoint waits for the answer.
    Reload {
        reply: Option<mpsc::Sender<Result<String, String>>>,
    },
}

/// Where the config came from, and what the command line overrides.
pub struct Origin {
    /// None: the embedded default, which a reload cannot re-read.
    pub path: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub strict: bool,
    pub bpf_stats: bool,
    pub drop_capabilities: bool,
}

impl Origin {
    /// The config with the command line's overrides applied.
    pub fn apply(&self, mut config: Config) -> Config {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        config.strict |= self.strict;
        config.bpf_stats |= self.bpf_stats;
        config.drop_capabilities |= self.drop_capabilities;
        config
    }
}

/// `sonde run`, serving `site`.
pub fn run(config: Config, origin: Origin, site: http::Site) -> Result<()> {
    let started = Instant::now();
    let config = origin.apply(config);
    system::tune_allocator();
    system::prepare()?;
    verifier_log::install();
    let registry = Arc::new(Registry::new(&config.metric_prefix, &config.const_labels).context("setting up metrics")?);

    let (control_tx, control) = mpsc::channel();
    signals::forward(control_tx.clone()).context("starting the signal thread")?;
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
    let scraper = Arc::new(Scraper::new(registry.clone(), stats_guard.is_some() || bpf_stats::sysctl_enabled()));
    let endpoints = Arc::new(Endpoints { scraper: scraper.clone(), control: Mutex::new(control_tx) });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let server = runtime.spawn(http::serve(listener, endpoints, http::Limits::default(), Arc::new(site), shutdown_rx));

    let reader = Reader::start(Duration::from_millis(config.ring_buffer.poll_interval_ms.into()))?;
    registry.agent.reload_success_time.set(unix_now());
    let mut agent = Agent {
        running: Running::new(
            probes::Registry::builtin(),
            registry,
            scraper.clone(),
            reader,
            config.cri_socket.clone(),
        ),
        config,
        origin,
        capabilities_dropped: false,
    };
    let mut outcome = agent.start(&control, started);
    if let Ok(None) = outcome {
        outcome = agent.drop_capabilities().map(|()| None);
    }
    if let Ok(Some(_)) | Err(_) = outcome {
        // Terminated while starting, strict mode failed, or capabilities
        // could not be dropped: fall through to the shutdown below.
    } else {
        // Ready only once capabilities are dropped, so that /healthz
        // answering 200 means the agent runs as configured.
        scraper.set_ready();
        let signal = agent.serve(&control);
        tracing::info!(signal, "shutting down");
    }
    agent.running.stop_all();
    drop(stats_guard);
    let _ = shutdown_tx.send(true);
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_millis(500), server).await;
    });
    runtime.shutdown_timeout(Duration::from_millis(200));
    tracing::info!("all probes detached");
    outcome.map(|_| ())
}

struct Agent {
    running: Running,
    config: Config,
    origin: Origin,
    /// Set once `drop_capabilities` has dropped them: nothing can be
    /// loaded any more.
    capabilities_dropped: bool,
}

impl Agent {
    /// Starts every configured probe. Ok(Some(signal)) when a termination
    /// request came in meanwhile.
    fn start(&mut self, control: &mpsc::Receiver<Control>, started: Instant) -> Result<Option<&'static str>> {
        let ctx = LoadContext::new(self.config.ring_buffer.clone(), self.config.series_limit);
        for settings in self.config.probes.clone() {
            if let Some(signal) = terminate_requested(control) {
                tracing::info!(signal, "terminating while probes were starting");
                return Ok(Some(signal));
            }
            self.running.start(settings, &ctx, limits(&self.config));
        }
        let failed = self.running.failed();
        if self.config.strict && !failed.is_empty() {
            bail!("strict mode: {} probe(s) failed:\n{}", failed.len(), failed.join("\n"));
        }
        tracing::info!(
            attached = self.config.probes.len() - failed.len(),
            failed = failed.len(),
            startup_ms = started.elapsed().as_millis() as u64,
            "ready"
        );
        Ok(None)
    }

    /// With `drop_capabilities`, drops every capability of every thread
    /// now that the probes are attached: what runs from here on reads maps
    /// and rings through descriptors already open, which takes none.
    fn drop_capabilities(&mut self) -> Result<()> {
        if !self.config.drop_capabilities {
            return Ok(());
        }
        let dropped = capabilities::drop_all().context("dropping capabilities (drop_capabilities: true)")?;
        self.capabilities_dropped = true;
        if dropped.kept == CapSet(0) {
            tracing::info!(threads = dropped.threads, "dropped every capability; a reload can no longer load probes");
        } else {
            tracing::warn!(
                kept = %dropped.kept.describe(),
                threads = dropped.threads,
                "dropped every other capability: this kernel refuses bpf() on open maps to a process without \
                 CAP_BPF (before 5.19, with kernel.unprivileged_bpf_disabled set), and scrapes read the probes' \
                 maps; a reload can no longer load probes"
            );
        }
        if !dropped.bounding_emptied {
            tracing::info!("the capability bounding set is left as it was: emptying it takes CAP_SETPCAP");
        }
        Ok(())
    }

    /// Serves until asked to terminate; returns the signal's name.
    fn serve(&mut self, control: &mpsc::Receiver<Control>) -> &'static str {
        loop {
            match control.recv() {
                Ok(Control::Terminate(signal)) => return signal,
                Ok(Control::Reload { reply }) => {
                    let result = self.reload();
                    match &result {
                        Ok(summary) => tracing::info!("{summary}"),
                        Err(message) => tracing::error!("reload failed: {message}"),
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Err(_) => return "control channel closed",
            }
        }
    }

    /// Re-reads the config file and applies the difference: unchanged
    /// probes keep their programs, rings and series.
    fn reload(&mut self) -> Result<String, String> {
        let agent = &self.running.registry().agent;
        let Some(path) = self.origin.path.clone() else {
            agent.reload_successful.set(0);
            return Err("no config file to reload: sonde runs on its embedded default config".into());
        };
        let config = match Config::load(&path, &self.running.catalog()) {
            Ok(config) => self.origin.apply(config),
            Err(err) => {
                agent.reload_successful.set(0);
                return Err(err.to_string());
            }
        };
        for (key, old, new) in restart_only(&self.config, &config) {
            tracing::warn!(key, old, new, "this setting takes effect at restart; the running value is kept");
        }
        let ctx = LoadContext::new(config.ring_buffer.clone(), config.series_limit);
        if self.capabilities_dropped {
            let to_load = self.running.to_load(&config.probes, &ctx, limits(&config));
            if !to_load.is_empty() {
                agent.reload_successful.set(0);
                return Err(format!(
                    "this reload would load probe(s) {}, which takes CAP_BPF and CAP_PERFMON, but capabilities \
                     were dropped once the probes were attached (drop_capabilities); nothing was changed: \
                     restart sonde to apply this config",
                    to_load.join(", ")
                ));
            }
        }
        let retry_failed = !self.capabilities_dropped;
        let summary = self.running.apply(&config.probes, &ctx, limits(&config), retry_failed);
        let failed = self.running.failed();
        let agent = &self.running.registry().agent;
        self.config = Config { listen: self.config.listen, ..config };
        if self.config.strict && !failed.is_empty() {
            agent.reload_successful.set(0);
            return Err(format!("strict mode: {} probe(s) failed:\n{}", failed.len(), failed.join("\n")));
        }
        agent.reload_successful.set(1);
        agent.reload_success_time.set(unix_now());
        Ok(format!("config reloaded from {}: {summary}", path.display()))
    }
}

/// Settings a reload cannot change: (key, running value, new value).
fn restart_only(old: &Config, new: &Config) -> Vec<(&'static str, String, String)> {
    let mut changed = Vec::new();
    let mut check = |key: &'static str, a: String, b: String| {
        if a != b {
            changed.push((key, a, b));
        }
    };
    check("listen", old.listen.to_string(), new.listen.to_string());
    check("metric_prefix", old.metric_prefix.clone(), new.metric_prefix.clone());
    check("const_labels", format!("{:?}", old.const_labels), format!("{:?}", new.const_labels));
    check("bpf_stats", old.bpf_stats.to_string(), new.bpf_stats.to_string());
    check("cri_socket", format!("{:?}", old.cri_socket), format!("{:?}", new.cri_socket));
    check("drop_capabilities", old.drop_capabilities.to_string(), new.drop_capabilities.to_string());
    check(
        "ring_buffer.poll_interval_ms",
        old.ring_buffer.poll_interval_ms.to_string(),
        new.ring_buffer.poll_interval_ms.to_string(),
    );
    changed
}

fn terminate_requested(control: &mpsc::Receiver<Control>) -> Option<&'static str> {
    loop {
        match control.try_recv() {
            Ok(Control::Terminate(signal)) => return Some(signal),
            // A reload asked for before the agent is up re-reads nothing new.
            Ok(Control::Reload { reply: Some(reply) }) => {
                let _ = reply.send(Err("the agent is still starting; try again".into()));
            }
            Ok(Control::Reload { reply: None }) => {}
            Err(_) => return None,
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Pending connections the kernel queues for accept: std's 128 overflows
/// under a burst of connects (say, many scrapers at once, or a flood the
/// connection cap is there to absorb), and each overflow costs a client a
/// SYN retry of a second or more.
const LISTEN_BACKLOG: u32 = 1024;

fn bind(runtime: &tokio::runtime::Runtime, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let _guard = runtime.enter();
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .context("creating the listening socket")?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| format!("listening on {addr}"))?;
    let listener = socket.listen(LISTEN_BACKLOG).with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, "serving /metrics");
    Ok(listener)
}

/// `sonde check --attach`: load and attach every probe, report, detach.
/// Returns whether all of them attached.
pub fn check_attach(config: &Config) -> Result<bool> {
    system::prepare()?;
    verifier_log::install();
    let ctx = LoadContext::new(config.ring_buffer.clone(), config.series_limit);
    let registry = probes::Registry::builtin();
    let mut ok = true;
    for settings in &config.probes {
        let name = settings.name();
        match load_one(&registry, settings, &ctx) {
            Outcome::Attached(loaded) => println!("{name:<10} ok        hook={}", loaded.hook.name()),
            Outcome::Failed(failure) => {
                ok = false;
                println!("{name:<10} FAILED    {failure}");
            }
        }
    }
    Ok(ok)
}

/// Reads a config file the way `run` does, for the CLI.
pub fn load_config(path: Option<&PathBuf>) -> Result<Config, ConfigError> {
    let catalog = probes::Registry::builtin().catalog();
    match path {
        Some(path) => Config::load(path, &catalog),
        None => Config::embedded_default(&catalog),
    }
}

fn limits(config: &Config) -> crate::metrics::Limits {
    crate::metrics::Limits { series: config.series_limit, ttl: config.series_ttl }
}
