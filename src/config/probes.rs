//! The `probes:` mapping: probe names, their labels, filters and options,
//! checked against the probe registry while the YAML is being read.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::custom::{check_name, CustomSettings, Defined, HOOK_KEYS};
use super::scalar::{int_in, quoted, scalar, OneOf, Scalar};
use crate::spec::{Buckets, Catalog, Filter, HookChoice, HookKind, ProbeSettings, ProbeSpec};

/// Longest comm the kernel stores, without its NUL.
const COMM_MAX: usize = 15;
/// Comm filters the BPF side has room for (`MAX_COMM_FILTERS` in common.h).
pub const MAX_COMM_FILTERS: usize = 8;
/// The most bucket bounds a histogram probe takes: every bound is one more
/// series per label set, and one more step for each observation.
pub const MAX_BUCKET_BOUNDS: usize = 64;

pub fn deserialize<'de, D: Deserializer<'de>>(
    d: D,
    catalog: &Catalog,
    defined: &Defined,
) -> Result<Vec<ProbeSettings>, D::Error> {
    // `any`, not `map`: given `map`, serde_yaml reports `probes: ~` as a type
    // error instead of calling visit_unit.
    d.deserialize_any(ProbesVisitor { catalog, defined })
}

/// An agent without probes would serve nothing but its own metrics; that is
/// a mistake in the config, not a way to run.
fn no_probes(catalog: &Catalog) -> String {
    format!("no probes configured; enable at least one of: {}", catalog.names().join(", "))
}

struct ProbesVisitor<'c> {
    catalog: &'c Catalog,
    defined: &'c Defined,
}

impl<'de> Visitor<'de> for ProbesVisitor<'_> {
    type Value = Vec<ProbeSettings>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping from probe name to its settings")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(E::custom(no_probes(self.catalog)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<ProbeSettings> = Vec::new();
        let (catalog, defined) = (self.catalog, self.defined);
        while let Some(probe) = map.next_key_seed(ProbeName { seen: &out, catalog, defined })? {
            let config = match probe {
                Probe::Builtin(spec) => map.next_value_seed(Settings { spec })?,
                Probe::Defined(name) => map.next_value_seed(CustomSettings { name, catalog, defined })?,
            };
            out.push(config);
        }
        if out.is_empty() {
            return Err(de::Error::custom(no_probes(self.catalog)));
        }
        Ok(out)
    }
}

/// A probe name: known to the catalog, or defined in the config (with a
/// hook key), and not configured twice.
struct ProbeName<'a> {
    seen: &'a [ProbeSettings],
    catalog: &'a Catalog,
    defined: &'a Defined,
}

enum Probe {
    Builtin(Arc<ProbeSpec>),
    Defined(String),
}

impl<'de> DeserializeSeed<'de> for ProbeName<'_> {
    type Value = Probe;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        scalar(d, "a probe name", |v| {
            let Scalar::Str(name) = v else {
                return Err(format!("expected a probe name, found {v}"));
            };
            if self.seen.iter().any(|c| c.name() == name) {
                return Err(format!("probe `{name}` is configured twice"));
            }
            if let Some(spec) = self.catalog.find(name) {
                return Ok(Probe::Builtin(spec.clone()));
            }
            if self.defined.defines(name) {
                check_name(name)?;
                return Ok(Probe::Defined(name.to_string()));
            }
            Err(format!(
                "unknown probe {}; known probes: {} (a probe of another name is defined by one of: {})",
                quoted(name),
                self.catalog.names().join(", "),
                HOOK_KEYS.join(", ")
            ))
        })
    }
}

struct Settings {
    spec: Arc<ProbeSpec>,
}

impl<'de> DeserializeSeed<'de> for Settings {
    type Value = ProbeSettings;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ProbeSettings, D::Error> {
        // `any`, so that `exec: ~` means defaults as `exec:` does (see above).
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Settings {
    type Value = ProbeSettings;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "settings for probe `{}` (a mapping, or empty)", self.spec.name)
    }

    fn visit_unit<E: de::Error>(self) -> Result<ProbeSettings, E> {
        Ok(ProbeSettings::defaults(self.spec))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ProbeSettings, A::Error> {
        let mut config = ProbeSettings::defaults(self.spec.clone());
        let spec = &*self.spec;
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key_seed(SettingKey { spec, seen: &seen })? {
            seen.insert(key);
            match key {
                "labels" => config.labels = map.next_value_seed(Labels { spec })?,
                "filter" => config.filter = map.next_value_seed(FilterSeed)?,
                "buckets" => config.buckets = map.next_value_seed(BucketsSeed)?,
                "hook" => config.hook = map.next_value_seed(Hook { spec })?,
                "aggregate" => config.aggregate = map.next_value()?,
                _ => unreachable!("SettingKey only yields keys listed in settings_keys"),
            }
        }
        Ok(config)
    }
}

/// The keys a probe's settings accept: every probe takes labels and filter;
/// histogram probes take buckets; probes with alternative hooks take hook;
/// probes that can aggregate in the kernel take aggregate.
fn settings_keys(spec: &ProbeSpec) -> Vec<&'static str> {
    let mut keys = vec!["labels", "filter"];
    if spec.has_histogram() {
        keys.push("buckets");
    }
    if spec.hooks.len() > 1 {
        keys.push("hook");
    }
    if spec.kernel_aggregation {
        keys.push("aggregate");
    }
    keys
}

struct SettingKey<'a> {
    spec: &'a ProbeSpec,
    seen: &'a BTreeSet<&'static str>,
}

impl<'de> DeserializeSeed<'de> for SettingKey<'_> {
    type Value = &'static str;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        let keys = settings_keys(self.spec);
        scalar(d, "a setting name", |v| {
            let Scalar::Str(name) = v else {
                return Err(format!("expected a setting name, found {v}"));
            };
            let key = keys.iter().copied().find(|k| *k == name).ok_or_else(|| {
                let name = quoted(name);
                format!("unknown setting {name} for probe `{}`; expected one of: {}", self.spec.name, keys.join(", "))
            })?;
            if self.seen.contains(key) {
                return Err(format!("duplicate setting `{key}`"));
            }
            Ok(key)
        })
    }
}

struct Labels<'a> {
    spec: &'a ProbeSpec,
}

impl<'de> DeserializeSeed<'de> for Labels<'_> {
    type Value = Vec<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Labels<'_> {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of labels from: {}", self.spec.label_names().join(", "))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut labels: Vec<String> = Vec::new();
        while let Some(label) = seq.next_element_seed(LabelName { spec: self.spec, seen: &labels })? {
            labels.push(label);
        }
        Ok(labels)
    }
}

struct LabelName<'a> {
    spec: &'a ProbeSpec,
    seen: &'a [String],
}

impl<'de> DeserializeSeed<'de> for LabelName<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        scalar(d, "a label name", |v| {
            let Scalar::Str(name) = v else {
                return Err(format!("expected a label name, found {v}"));
            };
            if self.spec.label(name).is_none() {
                return Err(format!(
                    "probe `{}` has no label {}; it can carry: {}",
                    self.spec.name,
                    quoted(name),
                    self.spec.label_names().join(", ")
                ));
            }
            if self.seen.iter().any(|l| l == name) {
                return Err(format!("label `{name}` is listed twice"));
            }
            Ok(name.to_string())
        })
    }
}

struct FilterSeed;

impl<'de> DeserializeSeed<'de> for FilterSeed {
    type Value = Filter;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Filter, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FilterSeed {
    type Value = Filter;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a filter mapping with `comm` and/or `pid`")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Filter, E> {
        Ok(Filter::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Filter, A::Error> {
        const KEYS: &[&str] = &["comm", "pid"];
        let mut filter = Filter::default();
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key_seed(OneOf { keys: KEYS, what: "filter", seen: &seen })? {
            seen.insert(key);
            match key {
                "comm" => filter.comm = map.next_value_seed(CommList)?,
                "pid" => filter.pid = map.next_value_seed(Pid)?,
                _ => unreachable!("OneOf only yields KEYS"),
            }
        }
        Ok(filter)
    }
}

pub(super) struct Pid;

impl<'de> DeserializeSeed<'de> for Pid {
    type Value = Option<u32>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<u32>, D::Error> {
        // pid 0 is the idle task: never a useful filter, so it is refused.
        int_in(d, 1, u64::from(u32::MAX)).map(|pid| Some(pid as u32))
    }
}

pub(super) struct CommList;

impl<'de> DeserializeSeed<'de> for CommList {
    type Value = Vec<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CommList {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of at most {MAX_COMM_FILTERS} process names (comm)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut comms: Vec<String> = Vec::new();
        while let Some(comm) = seq.next_element_seed(Comm { count: comms.len() })? {
            if comms.contains(&comm) {
                return Err(de::Error::custom(format!("comm `{comm}` is listed twice")));
            }
            comms.push(comm);
        }
        Ok(comms)
    }
}

struct Comm {
    count: usize,
}

impl<'de> DeserializeSeed<'de> for Comm {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        scalar(d, "a process name", |v| {
            let Scalar::Str(comm) = v else {
                return Err(format!("expected a process name, found {v}"));
            };
            if self.count >= MAX_COMM_FILTERS {
                return Err(format!("at most {MAX_COMM_FILTERS} comm filters are supported"));
            }
            if comm.is_empty() || comm.len() > COMM_MAX || comm.contains('\0') {
                return Err(format!(
                    "comm {} must be 1 to {COMM_MAX} bytes: the kernel truncates process names to {COMM_MAX}",
                    quoted(comm)
                ));
            }
            Ok(comm.to_string())
        })
    }
}

struct Hook<'a> {
    spec: &'a ProbeSpec,
}

impl<'de> DeserializeSeed<'de> for Hook<'_> {
    type Value = HookChoice;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<HookChoice, D::Error> {
        let spec = self.spec;
        scalar(d, "a hook kind", |v| {
            let choices: Vec<&str> = std::iter::once("auto").chain(spec.hooks.iter().map(|h| h.kind.name())).collect();
            let bad = || format!("unknown hook {v} for probe `{}`; expected one of: {}", spec.name, choices.join(", "));
            let Scalar::Str(name) = v else { return Err(bad()) };
            if name == "auto" {
                return Ok(HookChoice::Auto);
            }
            spec.hooks
                .iter()
                .map(|h| h.kind)
                .find(|k: &HookKind| k.name() == name)
                .map(HookChoice::Only)
                .ok_or_else(bad)
        })
    }
}

pub(super) struct BucketsSeed;

impl<'de> DeserializeSeed<'de> for BucketsSeed {
    type Value = Buckets;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Buckets, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BucketsSeed {
    type Value = Buckets;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`exp2`, `{linear: {start, width, count}}` or a list of increasing upper bounds")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Buckets, E> {
        match v {
            "exp2" => Ok(Buckets::Exp2),
            other => Err(E::custom(format!(
                "unknown bucket layout {}: expected `exp2`, `{{linear: {{start, width, count}}}}` or a list of \
                 upper bounds in seconds (bytes for size histograms)",
                quoted(other)
            ))),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Buckets, A::Error> {
        // one key, `linear`: OneOf refuses any other and a repeat
        let mut seen = BTreeSet::new();
        let mut buckets = None;
        while let Some(key) = map.next_key_seed(OneOf { keys: &["linear"], what: "buckets", seen: &seen })? {
            seen.insert(key);
            buckets = Some(map.next_value_seed(LinearSeed)?);
        }
        buckets.ok_or_else(|| de::Error::custom("expected `linear: {start, width, count}`"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Buckets, A::Error> {
        let mut bounds: Vec<f64> = Vec::new();
        while let Some(bound) =
            seq.next_element_seed(Bound { previous: bounds.last().copied(), count: bounds.len() })?
        {
            bounds.push(bound);
        }
        if bounds.is_empty() {
            return Err(de::Error::custom("a bucket list needs at least one upper bound"));
        }
        Ok(Buckets::Explicit(bounds))
    }
}

/// `linear: {start, width, count}`: `count` upper bounds from `start` on,
/// `width` apart, in the histogram's base unit.
struct LinearSeed;

impl<'de> DeserializeSeed<'de> for LinearSeed {
    type Value = Buckets;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Buckets, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LinearSeed {
    type Value = Buckets;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping with `start`, `width` and `count`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Buckets, A::Error> {
        const KEYS: &[&str] = &["start", "width", "count"];
        let (mut start, mut width, mut count) = (None, None, None);
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key_seed(OneOf { keys: KEYS, what: "linear buckets", seen: &seen })? {
            seen.insert(key);
            match key {
                "start" => start = Some(map.next_value_seed(Number { what: "start", zero_ok: true })?),
                "width" => width = Some(map.next_value_seed(Number { what: "width", zero_ok: false })?),
                "count" => count = Some(map.next_value_seed(IntIn { min: 1, max: MAX_BUCKET_BOUNDS as u64 })? as usize),
                _ => unreachable!("OneOf only yields KEYS"),
            }
        }
        match (start, width, count) {
            (Some(start), Some(width), Some(count)) => Ok(Buckets::Linear { start, width, count }),
            _ => Err(de::Error::custom("linear buckets need `start`, `width` and `count`")),
        }
    }
}

/// A finite number, positive (or zero when `zero_ok`).
struct Number {
    what: &'static str,
    zero_ok: bool,
}

impl<'de> DeserializeSeed<'de> for Number {
    type Value = f64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
        scalar(d, "a number", |v| {
            let x = match v {
                Scalar::Int(i) => i as f64,
                Scalar::Float(x) => x,
                other => return Err(format!("{}: expected a number, found {other}", self.what)),
            };
            if x.is_finite() && (x > 0.0 || (self.zero_ok && x == 0.0)) {
                Ok(x)
            } else {
                let least = if self.zero_ok { "zero or more" } else { "positive" };
                Err(format!("{} {x} must be {least}", self.what))
            }
        })
    }
}

struct IntIn {
    min: u64,
    max: u64,
}

impl<'de> DeserializeSeed<'de> for IntIn {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        int_in(d, self.min, self.max)
    }
}

struct Bound {
    previous: Option<f64>,
    /// Bounds before this one.
    count: usize,
}

impl<'de> DeserializeSeed<'de> for Bound {
    type Value = f64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
        scalar(d, "a number of seconds", |v| {
            let x = match v {
                Scalar::Int(i) => i as f64,
                Scalar::Float(x) => x,
                other => {
                    return Err(format!("expected a number of seconds (bytes for size histograms), found {other}"))
                }
            };
            if self.count >= MAX_BUCKET_BOUNDS {
                return Err(format!("at most {MAX_BUCKET_BOUNDS} bucket bounds are supported"));
            }
            if !(x.is_finite() && x > 0.0) {
                return Err(format!("bucket bound {x} must be a positive number of seconds"));
            }
            match self.previous {
                Some(p) if x <= p => Err(format!("bucket bounds must increase: {x} follows {p}")),
                _ => Ok(x),
            }
        })
    }
}
