//! Opening, loading and attaching one probe's BPF programs: the steps every
//! probe shares, generic over its generated skeleton. The skeleton lives
//! only for the duration of a load; what outlives it (links, map and
//! program handles) owns its own file descriptors.

pub mod verifier_log;
pub mod why_skipped;

use why_skipped::AbsentFunction;

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapHandle, OpenObject};

use crate::bpf_stats::{self, ProgramFacts};
use crate::config::{RingBufferConfig, RingSize, MAX_COMM_FILTERS};
use crate::metrics::Layout;
use crate::spec::{Filter, HookChoice, HookKind, HookSpec, LabelSource, ProbeSettings, ProbeSpec, ProgramSpec};

/// What every load needs besides the probe's own config.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadContext {
    pub ring: RingBufferConfig,
    /// Possible CPUs, which automatic ring sizes scale with.
    pub cpus: usize,
    /// The agent's own process, whose events are never produced.
    pub self_tgid: u32,
    /// Keys an in-kernel aggregation table holds (the series limit).
    pub aggregate_keys: u32,
}

/// Keys an aggregation table holds at most, whatever the series limit:
/// its memory is keys × CPUs × cells, allocated as keys appear.
pub const MAX_AGGREGATE_KEYS: u32 = 65_536;

/// The ring of a probe that aggregates in the kernel: unused, so the least
/// the kernel accepts.
const IDLE_RING: RingSize = RingSize { size_bytes: 4096, wakeup_bytes: 0 };

impl LoadContext {
    pub fn new(ring: RingBufferConfig, series_limit: usize) -> Self {
        LoadContext {
            ring,
            cpus: libbpf_rs::num_possible_cpus().unwrap_or(1),
            self_tgid: std::process::id(),
            aggregate_keys: u32::try_from(series_limit).unwrap_or(u32::MAX).min(MAX_AGGREGATE_KEYS),
        }
    }

    /// The ring a probe gets on this machine.
    pub fn ring_for(&self, settings: &ProbeSettings) -> RingSize {
        if settings.aggregate {
            return IDLE_RING;
        }
        self.ring.for_probe(settings.spec.ring_bytes_per_cpu, self.cpus)
    }
}

/// A probe whose programs are loaded and attached.
pub struct Loaded {
    pub hook: HookKind,
    /// Dropping these detaches the programs.
    pub links: Vec<Link>,
    pub events: MapHandle,
    pub lost: MapHandle,
    /// The in-kernel aggregation table, when the probe aggregates.
    pub aggregates: Option<MapHandle>,
    /// The directly indexed cells, when the probe aggregates by a small
    /// event number only.
    pub direct: Option<MapHandle>,
    pub programs: Vec<LoadedProgram>,
    /// The hooks tried before this one, each with its error.
    pub skipped: Vec<(HookKind, LoadError)>,
    /// Kernel functions of optional programs that this kernel lacks: those
    /// programs were left out and the rest attached.
    pub absent: Vec<AbsentFunction>,
}

pub struct LoadedProgram {
    pub name: String,
    pub fd: OwnedFd,
}

impl LoadedProgram {
    /// What the verifier and the JIT made of it.
    pub fn facts(&self) -> std::io::Result<ProgramFacts> {
        bpf_stats::program_facts(self.fd.as_fd())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("opening the BPF object failed: {0}")]
    Open(#[source] libbpf_rs::Error),
    #[error("the BPF object has no `{0}`")]
    Missing(String),
    #[error("loading failed: {source}{}", detail_suffix(.detail))]
    Load {
        #[source]
        source: libbpf_rs::Error,
        detail: String,
        verifier_log: String,
    },
    #[error("none of its kernel functions exists here ({0})")]
    NoFunction(String),
    #[error("attaching {program} to {kind} {target} failed: {source}{}", detail_suffix(.detail))]
    Attach {
        program: String,
        kind: &'static str,
        target: String,
        #[source]
        source: libbpf_rs::Error,
        detail: String,
    },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

/// `detail`, and after it what `restriction` knows of why the kernel
/// refused, when it refused (EPERM or EACCES) for a reason other than a
/// missing capability, which sonde checks before loading.
fn with_hint(detail: String, source: &libbpf_rs::Error, restriction: fn() -> Option<String>) -> String {
    if source.kind() != libbpf_rs::ErrorKind::PermissionDenied {
        return detail;
    }
    match restriction() {
        Some(hint) if detail.is_empty() => hint,
        Some(hint) => format!("{detail}; {hint}"),
        None => detail,
    }
}

/// libbpf's own words for a failure, if it said any.
fn detail(log: &str) -> String {
    verifier_log::reason(log).unwrap_or_default().to_string()
}

impl LoadError {
    /// The lifecycle stage that failed, as reported in metrics.
    pub fn stage(&self) -> &'static str {
        match self {
            LoadError::Open(_) | LoadError::Missing(_) => "open",
            LoadError::Load { .. } => "load",
            LoadError::Attach { .. } | LoadError::NoFunction(_) => "attach",
        }
    }

    pub fn verifier_log(&self) -> Option<&str> {
        match self {
            LoadError::Load { verifier_log, .. } if !verifier_log.is_empty() => Some(verifier_log),
            _ => None,
        }
    }
}

/// Every hook tried for a probe, and why each failed.
#[derive(Debug)]
pub struct ProbeFailure {
    pub attempts: Vec<(HookKind, LoadError)>,
}

impl ProbeFailure {
    /// Each hook tried, in order, with why it could not be used.
    pub fn reasons(&self, spec: &ProbeSpec) -> Vec<(HookKind, String)> {
        explain_attempts(spec, &self.attempts)
    }
}

/// Why each of `attempts` (hooks of `spec` that failed) could not be used.
pub fn explain_attempts(spec: &ProbeSpec, attempts: &[(HookKind, LoadError)]) -> Vec<(HookKind, String)> {
    attempts
        .iter()
        .map(|(kind, err)| match spec.hook_of(*kind) {
            Some(hook) => (*kind, why_skipped::explain(hook, err)),
            None => (*kind, err.to_string()),
        })
        .collect()
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (kind, err)) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {err}", kind.name())?;
        }
        Ok(())
    }
}

/// Opens, loads and attaches a probe's programs for one hook.
pub type LoadFn = fn(&ProbeSettings, &HookSpec, &LoadContext) -> Result<Loaded, LoadError>;

/// Loads a probe with the configured hook, or with the first of its hooks
/// that works when the choice is `auto`.
pub fn load_probe(load: LoadFn, settings: &ProbeSettings, ctx: &LoadContext) -> Result<Loaded, ProbeFailure> {
    let spec = &settings.spec;
    let candidates: Vec<&HookSpec> = match settings.hook {
        HookChoice::Auto => spec.hooks.iter().collect(),
        HookChoice::Only(kind) => spec.hook_of(kind).into_iter().collect(),
    };
    let mut attempts = Vec::new();
    for hook in candidates {
        match load(settings, hook, ctx) {
            Ok(mut loaded) => {
                loaded.skipped = attempts;
                return Ok(loaded);
            }
            Err(err) => {
                tracing::debug!(probe = spec.name, hook = hook.kind.name(), error = %err, "hook failed");
                attempts.push((hook.kind, err));
            }
        }
    }
    Err(ProbeFailure { attempts })
}

/// The `.rodata` values common to every probe (see `common.h`).
pub struct CommonRodata {
    pub filter_tgid: u32,
    pub ignore_tgid: u32,
    pub filter_comm_count: u32,
    pub filter_comms: [[i8; 16]; MAX_COMM_FILTERS],
    pub wakeup_bytes: u64,
    pub want_comm: bool,
    pub want_pid: bool,
    pub want_cgroup: bool,
    pub want_event: bool,
    pub aggregate: bool,
    /// Events below this are counted in the direct array (0: none are).
    pub agg_direct_keys: u32,
    /// Cells per aggregation key.
    pub agg_cells: u32,
    pub hist_bound_count: u32,
    pub hist_bounds: [u64; AGG_MAX_BOUNDS],
}

/// Histogram bounds an aggregating program has room for (`AGG_MAX_BOUNDS`
/// in common.h).
pub const AGG_MAX_BOUNDS: usize = 64;

impl CommonRodata {
    pub fn new(settings: &ProbeSettings, ctx: &LoadContext, ring: RingSize) -> Self {
        let filter: &Filter = &settings.filter;
        let mut filter_comms = [[0i8; 16]; MAX_COMM_FILTERS];
        for (slot, comm) in filter_comms.iter_mut().zip(&filter.comm) {
            // config validation keeps comms at 15 bytes or fewer: NUL stays
            for (dst, src) in slot.iter_mut().zip(comm.bytes()) {
                *dst = src as i8;
            }
        }
        let layout = Layout::new(&settings.spec.metrics, &settings.buckets);
        let raw_bounds = layout.histogram_bounds().unwrap_or(&[]);
        let mut hist_bounds = [0u64; AGG_MAX_BOUNDS];
        for (dst, src) in hist_bounds.iter_mut().zip(raw_bounds) {
            *dst = *src;
        }
        let source_on = |source: LabelSource| {
            settings.labels.iter().any(|l| settings.spec.label(l).is_some_and(|l| l.source == source))
        };
        let cgroup = source_on(LabelSource::Cgroup);
        let task_labels = cgroup || source_on(LabelSource::Header);
        Self {
            filter_tgid: filter.pid.unwrap_or(0),
            ignore_tgid: ctx.self_tgid,
            filter_comm_count: filter.comm.len() as u32,
            filter_comms,
            wakeup_bytes: u64::from(ring.wakeup_bytes),
            want_comm: settings.has_label("comm"),
            want_pid: settings.has_label("pid"),
            want_cgroup: cgroup,
            want_event: source_on(LabelSource::Event),
            aggregate: settings.aggregate,
            agg_direct_keys: if settings.aggregate && !task_labels { settings.spec.direct_event_keys } else { 0 },
            agg_cells: layout.width() as u32,
            hist_bound_count: raw_bounds.len().min(AGG_MAX_BOUNDS) as u32,
            hist_bounds,
        }
    }
}

/// Defines a probe's `load` function (a `LoadFn`): open its skeleton, copy
/// `CommonRodata` into the generated `rodata` type (whose fields of the same
/// names come from `common.h`), let `$extra` set the probe's own `.rodata`
/// from its settings, and go on with `load_skeleton`.
macro_rules! skeleton_loader {
    ($builder:ty) => {
        $crate::loader::skeleton_loader!($builder, |_rodata, _settings| {});
    };
    ($builder:ty, |$rodata:ident, $settings:ident| $extra:block) => {
        fn load(
            settings: &$crate::spec::ProbeSettings,
            hook: &$crate::spec::HookSpec,
            ctx: &$crate::loader::LoadContext,
        ) -> Result<$crate::loader::Loaded, $crate::loader::LoadError> {
            let mut storage = std::mem::MaybeUninit::uninit();
            let ring = ctx.ring_for(settings);
            let common = $crate::loader::CommonRodata::new(settings, ctx, ring);
            let table = common.aggregate.then_some($crate::loader::AggregateTable {
                keys: ctx.aggregate_keys,
                cells: common.agg_cells,
                cpus: ctx.cpus,
                direct_keys: common.agg_direct_keys,
            });
            $crate::loader::load_skeleton(<$builder>::default(), &mut storage, hook, ring, table, |skel| {
                let $rodata = skel
                    .maps
                    .rodata_data
                    .as_deref_mut()
                    .ok_or_else(|| $crate::loader::LoadError::Missing(".rodata".into()))?;
                $rodata.filter_tgid = common.filter_tgid;
                $rodata.ignore_tgid = common.ignore_tgid;
                $rodata.filter_comm_count = common.filter_comm_count;
                $rodata.filter_comms = common.filter_comms;
                $rodata.wakeup_bytes = common.wakeup_bytes;
                $rodata.want_comm = common.want_comm;
                $rodata.want_pid = common.want_pid;
                $rodata.want_cgroup = common.want_cgroup;
                $rodata.want_event = common.want_event;
                $rodata.agg_direct_keys = common.agg_direct_keys;
                $rodata.aggregate = common.aggregate;
                $rodata.agg_cells = common.agg_cells;
                $rodata.hist_bound_count = common.hist_bound_count;
                $rodata.hist_bounds = common.hist_bounds;
                let $settings = settings;
                $extra
                Ok(())
            })
        }
    };
}
pub(crate) use skeleton_loader;

/// The size of a probe's in-kernel aggregation table.
#[derive(Debug, Clone, Copy)]
pub struct AggregateTable {
    /// Keys, not counting the overflow key.
    pub keys: u32,
    /// Cells (u64) per key.
    pub cells: u32,
    /// Possible CPUs: a per-CPU table holds one value per CPU.
    pub cpus: usize,
    /// Entries of the direct array (0: not used).
    pub direct_keys: u32,
}

/// Opens the skeleton, lets the probe set its `.rodata`, sizes the ring
/// and the aggregation table, keeps only `hook`'s programs (less the
/// optional ones whose kernel function is absent), loads, and attaches
/// each program.
pub fn load_skeleton<'obj, B, F>(
    builder: B,
    storage: &'obj mut MaybeUninit<OpenObject>,
    hook: &HookSpec,
    ring: RingSize,
    table: Option<AggregateTable>,
    set_rodata: F,
) -> Result<Loaded, LoadError>
where
    B: SkelBuilder<'obj>,
    F: FnOnce(&mut B::Output) -> Result<(), LoadError>,
{
    let mut open = builder.open(storage).map_err(LoadError::Open)?;
    set_rodata(&mut open)?;

    let object = open.open_object_mut();
    let mut sized = false;
    for mut map in object.maps_mut() {
        if map.name() == "events" {
            map.set_max_entries(ring.size_bytes).map_err(LoadError::Open)?;
            sized = true;
        }
        if let (Some(table), "aggregates") = (table, map.name().to_str().unwrap_or_default()) {
            map.set_value_size(table.cells * 8).map_err(LoadError::Open)?;
            // one more for the overflow key
            map.set_max_entries(table.keys + 1).map_err(LoadError::Open)?;
        }
        if let (Some(table), "agg_direct") = (table, map.name().to_str().unwrap_or_default()) {
            // Sized to the cells even when unused (one entry): a verifier
            // that does not prune the unused branch still checks its
            // accesses against this value size (seen on 6.1).
            map.set_value_size(table.cells * 8).map_err(LoadError::Open)?;
            map.set_max_entries(table.direct_keys.max(1)).map_err(LoadError::Open)?;
        }
    }
    if !sized {
        return Err(LoadError::Missing("events ring buffer".into()));
    }
    let absent = why_skipped::absent_functions(hook);
    let attaching: Vec<&ProgramSpec> = hook.programs.iter().filter(|p| !absent.iter().any(|a| a.covers(p))).collect();
    if attaching.is_empty() {
        let names: Vec<&str> = absent.iter().map(|a| a.function.as_str()).collect();
        return Err(LoadError::NoFunction(names.join(", ")));
    }
    for mut prog in object.progs_mut() {
        let wanted = attaching.iter().find(|p| prog.name() == p.program.as_str());
        prog.set_autoload(wanted.is_some());
        // a generic fentry/fexit program learns its function here: the
        // kernel checks the program against its prototype at load
        if let Some(spec) = wanted.filter(|_| matches!(prog.section().to_str(), Some("fentry" | "fexit"))) {
            let function = why_skipped::hook_point(&spec.target).to_string();
            prog.set_attach_target(0, Some(function)).map_err(LoadError::Open)?;
        }
    }

    let loaded = verifier_log::capture(|| open.load());
    let skel = loaded.map_err(|(source, log)| {
        let detail = with_hint(detail(&log), &source, crate::system::seccomp_restriction);
        LoadError::Load { source, detail, verifier_log: verifier_log::verifier_section(&log).unwrap_or_default() }
    })?;
    let object = skel.object();

    let mut links = Vec::new();
    let mut programs = Vec::new();
    for spec in attaching {
        let name = spec.program.as_str();
        let prog = object.progs_mut().find(|p| p.name() == name).ok_or_else(|| LoadError::Missing(name.to_string()))?;
        let link = verifier_log::capture(|| attach(&prog, &spec.target)).map_err(|(source, log)| {
            let detail = with_hint(detail(&log), &source, crate::system::perf_event_restriction);
            LoadError::Attach {
                program: name.to_string(),
                kind: hook.kind.name(),
                target: spec.target.clone(),
                source,
                detail,
            }
        })?;
        links.push(link);
        let fd = prog.as_fd().try_clone_to_owned().map_err(|e| LoadError::Open(e.into()))?;
        programs.push(LoadedProgram { name: name.to_string(), fd });
    }

    let handle = |wanted: &str| -> Result<MapHandle, LoadError> {
        let map = object.maps().find(|m| m.name() == wanted).ok_or_else(|| LoadError::Missing(wanted.into()))?;
        MapHandle::try_from(&map).map_err(LoadError::Open)
    };
    let events = handle("events")?;
    let lost = handle("lost")?;
    let aggregates = match table {
        Some(table) => {
            let map = handle("aggregates")?;
            insert_overflow_key(&map, table).map_err(LoadError::Open)?;
            Some(map)
        }
        None => None,
    };
    let direct = match table {
        Some(table) if table.direct_keys > 0 => Some(handle("agg_direct")?),
        _ => None,
    };
    Ok(Loaded { hook: hook.kind, links, events, lost, aggregates, direct, programs, skipped: Vec::new(), absent })
}

/// Attaches a program where its section says, or, for a generic program
/// whose section names no hook point (config-defined probes), to `target`:
/// a tracepoint `group/name`, or a kernel function (its first word).
fn attach(prog: &libbpf_rs::ProgramMut<'_>, target: &str) -> Result<Link, libbpf_rs::Error> {
    let function = why_skipped::hook_point(target);
    match prog.section().to_str() {
        Some("tracepoint") => {
            let (group, name) = target.split_once('/').ok_or_else(|| {
                let why = format!("tracepoint `{target}` is not of the form group/name");
                libbpf_rs::Error::from(std::io::Error::new(std::io::ErrorKind::InvalidInput, why))
            })?;
            prog.attach_tracepoint(libbpf_rs::TracepointCategory::Custom(group.to_string()), name)
        }
        Some("kprobe") => prog.attach_kprobe(false, function),
        Some("kretprobe") => prog.attach_kprobe(true, function),
        _ => prog.attach(),
    }
}

/// The key a full aggregation table counts into: created here, before any
/// event, so that it always exists and totals stay exact.
fn insert_overflow_key(map: &MapHandle, table: AggregateTable) -> Result<(), libbpf_rs::Error> {
    let key = crate::decode::AggKey { overflow: 1, ..Default::default() };
    // SAFETY: a plain C struct whose padding is spelled out as fields.
    let key = unsafe { plain::as_bytes(&key) };
    let zeros = vec![vec![0u8; table.cells as usize * 8]; table.cpus];
    map.update_percpu(key, &zeros, libbpf_rs::MapFlags::ANY)
}

/// Slots of the `lost` map (see common.h).
pub const LOST_RING: u32 = 0;
pub const LOST_FOLDED: u32 = 1;

/// Sum over CPUs of a per-CPU `u64` counter map's slot.
pub fn read_percpu_counter(map: &MapHandle, slot: u32) -> Result<u64, libbpf_rs::Error> {
    let values = map.lookup_percpu(&slot.to_ne_bytes(), libbpf_rs::MapFlags::ANY)?;
    Ok(values
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes))
        .sum())
}
