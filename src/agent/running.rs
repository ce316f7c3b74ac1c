//! The probes that run, and how a config becomes them: each is started
//! (loaded, attached, read, exported) or reported failed; a reload is
//! applied as a diff, so a probe whose settings did not change keeps its
//! programs, ring and counters.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libbpf_rs::Link;

use crate::config::RingSize;
use crate::enrich::cgroup_paths::{self, CgroupPaths, PathSink};
use crate::enrich::{CgroupEnricher, Enricher};
use crate::loader::{self, verifier_log, LoadContext, Loaded, ProbeFailure};
use crate::metrics::{Limits, Registry};
use crate::probes;
use crate::ring::{Reader, Source};
use crate::scrape::{KernelCounters, Scraper};
use crate::sink::{EnricherSource, KernelSink, ProbeSink};
use crate::spec::{Catalog, LabelSource, ProbeSettings};

/// The outcome of loading one configured probe.
pub enum Outcome {
    Attached(Box<Loaded>),
    Failed(ProbeFailure),
}

/// Loads and attaches one probe, logging why it failed if it did.
pub fn load_one(registry: &probes::Registry, settings: &ProbeSettings, ctx: &LoadContext) -> Outcome {
    let name = settings.name();
    let Some(runner) = registry.runner(&settings.spec) else {
        unreachable!("config validation only admits registered or config-defined probes")
    };
    match loader::load_probe(runner.load, settings, ctx) {
        Ok(loaded) => {
            for (kind, why) in loader::explain_attempts(&settings.spec, &loaded.skipped) {
                tracing::info!(probe = name, hook = kind.name(), reason = why, "hook skipped");
            }
            for absent in &loaded.absent {
                let (function, reason) = (&absent.function, &absent.reason);
                tracing::info!(probe = name, function, reason, "kernel function absent: its programs were not loaded");
            }
            tracing::info!(probe = name, hook = loaded.hook.name(), "probe attached");
            Outcome::Attached(Box::new(loaded))
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

/// Everything that decides how a probe runs: equal means a reload keeps it.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    settings: ProbeSettings,
    ring: RingSize,
    limits: Limits,
}

struct Probe {
    fingerprint: Fingerprint,
    /// None when it failed to start; dropping the links detaches it.
    links: Option<Vec<Link>>,
    programs: Vec<String>,
    /// Why it is not running, for strict mode and the log.
    failure: Option<String>,
}

pub struct Running {
    probes_registry: probes::Registry,
    registry: Arc<Registry>,
    scraper: Arc<Scraper>,
    reader: Option<Reader>,
    enrichers: Enrichers,
    /// The kernel's reports of cgroups made and removed, feeding the cgroup enricher: None until a
    /// probe first needs that enricher, Some(None) when they could not be had. Dropping the links
    /// detaches the programs.
    cgroup_paths: Option<Option<Vec<Link>>>,
    probes: BTreeMap<String, Probe>,
}

impl Running {
    pub fn new(
        probes_registry: probes::Registry,
        registry: Arc<Registry>,
        scraper: Arc<Scraper>,
        reader: Reader,
        cri_socket: Option<PathBuf>,
    ) -> Self {
        Running {
            probes_registry,
            registry,
            scraper,
            reader: Some(reader),
            enrichers: Enrichers { cri_socket, ..Enrichers::default() },
            cgroup_paths: None,
            probes: BTreeMap::new(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn catalog(&self) -> Catalog {
        self.probes_registry.catalog()
    }

    /// `name: why` for every probe that is not running.
    pub fn failed(&self) -> Vec<String> {
        self.probes.iter().filter_map(|(n, p)| p.failure.as_ref().map(|f| format!("  {n}: {f}"))).collect()
    }

    /// Starts one probe, or records why it could not start.
    pub fn start(&mut self, settings: ProbeSettings, ctx: &LoadContext, limits: Limits) {
        let name = settings.name().to_string();
        let fingerprint = Fingerprint { ring: ctx.ring_for(&settings), settings, limits };
        let registry = self.registry.clone();
        let agent = &registry.agent;
        let probe = match load_one(&self.probes_registry, &fingerprint.settings, ctx) {
            Outcome::Attached(loaded) => {
                let facts: Vec<_> = loaded.programs.iter().map(|p| (p.name.clone(), p.facts())).collect();
                match self.wire(&fingerprint.settings, *loaded, limits) {
                    Ok((links, programs, hook)) => {
                        agent.probe_up.with_label_values(&[&name, hook]).set(1);
                        agent.record_programs(&name, hook, &facts);
                        Probe { fingerprint, links: Some(links), programs, failure: None }
                    }
                    Err(why) => {
                        tracing::warn!(probe = name, reason = %why, "probe unavailable");
                        agent.probe_up.with_label_values(&[&name, "none"]).set(0);
                        agent.probe_errors.with_label_values(&[&name, "metrics"]).inc();
                        Probe { fingerprint, links: None, programs: Vec::new(), failure: Some(why) }
                    }
                }
            }
            Outcome::Failed(failure) => {
                agent.probe_up.with_label_values(&[&name, "none"]).set(0);
                for (_, err) in &failure.attempts {
                    agent.probe_errors.with_label_values(&[&name, err.stage()]).inc();
                }
                // Make the counters exist at zero so dashboards see the probe.
                agent.events_received.with_label_values(&[&name]);
                Probe { fingerprint, links: None, programs: Vec::new(), failure: Some(failure.to_string()) }
            }
        };
        self.probes.insert(name, probe);
    }

    /// Connects a loaded probe to the metrics, and to the ring reader or
    /// (for a probe that aggregates in the kernel) to scrapes.
    fn wire(
        &mut self,
        settings: &ProbeSettings,
        loaded: Loaded,
        limits: Limits,
    ) -> Result<(Vec<Link>, Vec<String>, &'static str), String> {
        let name = settings.name();
        let runner =
            self.probes_registry.runner(&settings.spec).ok_or_else(|| format!("probe `{name}` is not registered"))?;
        if settings.labels.iter().any(|l| settings.spec.label(l).is_some_and(|l| l.source == LabelSource::Cgroup)) {
            self.follow_cgroups();
        }
        let decoder = (runner.decoder)(settings);
        let metrics: Vec<String> = settings.spec.metrics.iter().map(|m| self.registry.full_name(&m.name)).collect();
        let registry = self.registry.clone();
        let aggregate = match loaded.aggregates {
            Some(map) => Some(
                KernelSink::new(settings, decoder, &registry, limits, &self.enrichers, map, loaded.direct)
                    .map_err(|e| format!("setting up its metrics failed: {e}"))?,
            ),
            None => {
                let (sink, _) = ProbeSink::new(settings, decoder, &registry, limits, &self.enrichers)
                    .map_err(|e| format!("setting up its metrics failed: {e}"))?;
                let agent = &registry.agent;
                let source = Source {
                    probe: name.to_string(),
                    ring: loaded.events,
                    sink: Box::new(sink),
                    received: agent.events_received.with_label_values(&[name]),
                    decode_errors: agent.decode_errors.with_label_values(&[name]),
                };
                let reader = self.reader.as_ref().ok_or("the ring reader has stopped")?;
                if let Err(err) = reader.add(source) {
                    registry.remove_probe(name);
                    return Err(err.to_string());
                }
                None
            }
        };
        let programs = loaded.programs.iter().map(|p| p.name.clone()).collect();
        self.scraper.add(name, KernelCounters { lost: loaded.lost, programs: loaded.programs, aggregate, metrics });
        Ok((loaded.links, programs, loaded.hook.name()))
    }

    /// The first time a probe needs the cgroup enricher: loads the program that reports cgroups made
    /// and removed, then creates the enricher (whose walk names what exists; what is made meanwhile
    /// waits in the ring), and has the ring reader feed it. Without the program the enricher names
    /// ids by walking only, which misses cgroups removed before a walk; that is logged once.
    fn follow_cgroups(&mut self) {
        if self.cgroup_paths.is_some() {
            return;
        }
        let followed = match cgroup_paths::load() {
            Ok(programs) => self.feed_enricher(programs),
            Err(err) => Err(err.to_string()),
        };
        self.cgroup_paths = Some(match followed {
            Ok(links) => Some(links),
            Err(why) => {
                tracing::warn!(
                    reason = %why,
                    "cgroups are named by walking the cgroup2 tree only: those removed before a walk \
                     (short-lived containers) get empty cgroup labels"
                );
                None
            }
        });
    }

    /// Has the ring reader hand the programs' records to the cgroup enricher, and scrapes count what
    /// their ring lost; returns the links that keep them attached.
    fn feed_enricher(&mut self, programs: CgroupPaths) -> Result<Vec<Link>, String> {
        let CgroupPaths { links, ring, lost, programs } = programs;
        let cgroups = self.enrichers.cgroup()?;
        let agent = &self.registry.agent;
        let source = Source {
            probe: cgroup_paths::NAME.to_string(),
            ring,
            sink: Box::new(PathSink::new(cgroups)),
            received: agent.events_received.with_label_values(&[cgroup_paths::NAME]),
            decode_errors: agent.decode_errors.with_label_values(&[cgroup_paths::NAME]),
        };
        self.reader.as_ref().ok_or("the ring reader has stopped")?.add(source).map_err(|e| e.to_string())?;
        self.scraper.add(cgroup_paths::NAME, KernelCounters { lost, programs, aggregate: None, metrics: Vec::new() });
        Ok(links)
    }

    /// Detaches a probe and removes its series and self-metrics.
    fn stop(&mut self, name: &str) {
        let Some(probe) = self.probes.remove(name) else { return };
        let running = probe.links.is_some();
        // Detach first, so nothing more arrives, then drain what is left.
        drop(probe.links);
        if running && !probe.fingerprint.settings.aggregate {
            if let Some(reader) = &self.reader {
                if let Err(err) = reader.remove(name) {
                    tracing::warn!(probe = name, error = %err, "removing the probe's ring failed");
                }
            }
        }
        if running {
            self.scraper.remove(name);
        }
        self.registry.remove_probe(name);
        let metrics: Vec<String> =
            probe.fingerprint.settings.spec.metrics.iter().map(|m| self.registry.full_name(&m.name)).collect();
        self.registry.agent.forget_probe(name, &probe.programs, &metrics);
    }

    /// The probes of `wanted` that `apply` would load: new ones and
    /// changed ones (failed ones too, unless `apply` is told not to retry
    /// them).
    pub fn to_load(&self, wanted: &[ProbeSettings], ctx: &LoadContext, limits: Limits) -> Vec<String> {
        wanted
            .iter()
            .filter(|settings| {
                let fingerprint = Fingerprint { settings: (*settings).clone(), ring: ctx.ring_for(settings), limits };
                self.probes.get(settings.name()).is_none_or(|p| p.fingerprint != fingerprint)
            })
            .map(|settings| settings.name().to_string())
            .collect()
    }

    /// Makes the running probes those of `wanted`: unchanged ones are kept
    /// as they are, changed ones restarted, removed ones stopped, new ones
    /// started, and failed ones tried again if `retry_failed`. Returns a
    /// summary.
    pub fn apply(&mut self, wanted: &[ProbeSettings], ctx: &LoadContext, limits: Limits, retry_failed: bool) -> String {
        let (mut kept, mut restarted, mut added, mut removed) = (0, 0, 0, 0);
        let gone: Vec<String> =
            self.probes.keys().filter(|n| !wanted.iter().any(|s| s.name() == n.as_str())).cloned().collect();
        for name in gone {
            tracing::info!(probe = name, "probe removed by reload");
            self.stop(&name);
            removed += 1;
        }
        for settings in wanted {
            let fingerprint = Fingerprint { settings: settings.clone(), ring: ctx.ring_for(settings), limits };
            match self.probes.get(settings.name()) {
                Some(p) if p.fingerprint == fingerprint && (p.failure.is_none() || !retry_failed) => {
                    kept += 1;
                    continue;
                }
                Some(_) => {
                    tracing::info!(probe = settings.name(), "probe changed or failed before: restarting it");
                    self.stop(settings.name());
                    restarted += 1;
                }
                None => added += 1,
            }
            self.start(settings.clone(), ctx, limits);
        }
        format!("{kept} probe(s) unchanged, {restarted} restarted, {added} added, {removed} removed")
    }

    /// Detaches everything and stops the reader.
    pub fn stop_all(&mut self) {
        for probe in self.probes.values_mut() {
            probe.links = None;
        }
        self.cgroup_paths = None;
        if let Some(reader) = self.reader.take() {
            reader.stop();
        }
    }
}

/// The enrichers probes ask for, created the first time one is needed.
#[derive(Default)]
struct Enrichers {
    cgroup: OnceLock<Result<Arc<CgroupEnricher>, String>>,
    containers: OnceLock<Result<Arc<dyn Enricher>, String>>,
    /// `cri_socket` from the config; None: detected.
    cri_socket: Option<PathBuf>,
}

impl Enrichers {
    fn cgroup(&self) -> Result<Arc<CgroupEnricher>, String> {
        self.cgroup.get_or_init(crate::enrich::cgroup_enricher).clone()
    }
}

impl EnricherSource for Enrichers {
    fn enricher_for(&self, label: &str) -> Result<(Arc<dyn Enricher>, usize), String> {
        let enricher: Arc<dyn Enricher> = if crate::enrich::container::LABELS.contains(&label) {
            let cgroups = self.cgroup()?;
            self.containers
                .get_or_init(|| crate::enrich::container_enricher(cgroups, self.cri_socket.as_deref()))
                .clone()?
        } else {
            self.cgroup()?
        };
        let index = enricher
            .labels()
            .iter()
            .position(|l| *l == label)
            .ok_or_else(|| format!("no enricher provides `{label}`"))?;
        Ok((enricher, index))
    }
}
