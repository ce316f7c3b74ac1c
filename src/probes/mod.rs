//! The built-in probes. Each is one `src/bpf/<probe>.bpf.c` and one module
//! here that describes it as data (`ProbeSpec`), loads its skeleton and
//! decodes its records; the shared machinery (loader, ring reader, sink,
//! series) does the rest. The module is the only code that knows its
//! skeleton.

mod block_io;
mod cfs_throttle;
pub mod custom;
mod disk_names;
mod exec;
mod exit;
mod file_open;
mod fs_latency;
mod kernel_btf;
mod oom;
mod page_cache;
mod page_faults;
mod process;
mod runqueue;
mod signals;
mod skb_drop;
mod softirq;
pub mod syscalls;
mod tcp;
mod vfs_io;

use std::sync::Arc;

use crate::decode::Decoder;
use crate::loader::LoadFn;
use crate::spec::{Catalog, ProbeSettings, ProbeSpec};

/// How a probe is brought to life: its spec, how to load it, and its
/// decoder for a given configuration.
pub struct Builtin {
    pub spec: fn() -> ProbeSpec,
    pub load: LoadFn,
    pub decoder: fn(&ProbeSettings) -> Arc<dyn Decoder>,
}

const BUILTINS: &[Builtin] = &[
    block_io::PROBE,
    cfs_throttle::PROBE,
    exec::PROBE,
    exit::PROBE,
    file_open::PROBE,
    fs_latency::PROBE,
    oom::PROBE,
    page_cache::PROBE,
    page_faults::PROBE,
    process::PROBE,
    runqueue::PROBE,
    signals::PROBE,
    skb_drop::PROBE,
    softirq::PROBE,
    syscalls::PROBE,
    tcp::PROBE,
    vfs_io::PROBE,
];

/// How a configured probe is loaded and decoded: a built-in's own
/// functions, or the generic ones of config-defined probes.
#[derive(Clone, Copy)]
pub struct Runner {
    pub load: LoadFn,
    pub decoder: fn(&ProbeSettings) -> Arc<dyn Decoder>,
}

/// Every probe the agent can run, with its spec built once.
pub struct Registry {
    probes: Vec<(Arc<ProbeSpec>, &'static Builtin)>,
}

impl Registry {
    pub fn builtin() -> Registry {
        Registry { probes: BUILTINS.iter().map(|b| (Arc::new((b.spec)()), b)).collect() }
    }

    /// The specs, for config validation, and the running kernel's hook
    /// formats, for config-defined probes.
    pub fn catalog(&self) -> Catalog {
        Catalog::new(self.probes.iter().map(|(spec, _)| spec.clone()).collect())
            .with_schemas(Arc::new(custom::KernelSchemas))
    }

    /// How to load and decode a configured probe, built-in or defined in
    /// the config.
    pub fn runner(&self, spec: &ProbeSpec) -> Option<Runner> {
        if spec.custom.is_some() {
            return Some(custom::RUNNER);
        }
        self.get(&spec.name).map(|b| Runner { load: b.load, decoder: b.decoder })
    }

    pub fn get(&self, name: &str) -> Option<&'static Builtin> {
        self.probes.iter().find(|(spec, _)| spec.name == name).map(|(_, b)| *b)
    }

    pub fn specs(&self) -> impl Iterator<Item = &Arc<ProbeSpec>> {
        self.probes.iter().map(|(spec, _)| spec)
    }
}

/// Masks `value` to zero when a label that shows it is off, so that labels
/// that are off never split series.
#[inline]
pub(crate) fn keep(on: bool, value: u64) -> u64 {
    if on {
        value
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::LabelSource;

    #[test]
    fn registry_names_are_unique_and_labels_sane() {
        let registry = Registry::builtin();
        let mut names: Vec<&str> = registry.specs().map(|s| s.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), BUILTINS.len());
        for spec in registry.specs() {
            assert!(!spec.hooks.is_empty(), "{} has no hook", spec.name);
            // a probe with more metrics than a record has values splits
            // them among its event kinds (`Decoder::metrics`; see tcp's tests)
            assert!(!spec.metrics.is_empty(), "{}", spec.name);
            for l in &spec.default_labels {
                assert!(spec.label(l).is_some(), "{}: default label {l} not in labels", spec.name);
            }
        }
    }

    /// Every event label of every probe renders through its decoder (a
    /// label the decoder does not know would render as nothing useful).
    #[test]
    fn decoders_render_every_event_label() {
        let registry = Registry::builtin();
        for spec in registry.specs() {
            let settings = ProbeSettings::defaults(spec.clone());
            let decoder = (registry.get(&spec.name).expect("registered").decoder)(&settings);
            for label in spec.labels.iter().filter(|l| l.source == LabelSource::Event) {
                let value = decoder.label(&label.name, 0);
                assert!(!value.starts_with("unknown label"), "{}: {}", spec.name, label.name);
            }
        }
    }
}
