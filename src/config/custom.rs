//! Probes defined in the config: a name that is no built-in probe's, with
//! `tracepoint: group/name`, `kprobe: function` or `kretprobe: function`.
//! The tracepoint's fields and the function's arguments come from the
//! running kernel (`spec::HookSchemas`), so a label, value or filter naming
//! a field it lacks is refused at its own line and column, like any config
//! error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::probes::{BucketsSeed, CommList, Pid};
use super::scalar::{quoted, scalar, OneOf, Scalar};
use crate::probes::custom as programs;
use crate::spec::custom::{
    CustomProbe, Field, FieldFilter, FieldKind, HookPoint, Roles, Slot, MAX_ARGS, MAX_FIELDS, MAX_FILTER_STRING_BYTES,
    MAX_NUMBER_FILTER_VALUES, MAX_STRING_FILTER_VALUES,
};
use crate::spec::{
    Buckets, Catalog, Filter, HookChoice, HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec, Unit, COMMON_LABELS,
};

/// The keys that make a probe config-defined.
pub const HOOK_KEYS: &[&str] = &["tracepoint", "kprobe", "kretprobe"];
const KEYS: &[&str] = &["tracepoint", "kprobe", "kretprobe", "hook", "labels", "filter", "value", "unit", "buckets"];

/// The probes a config defines and their hook points, from a first look at
/// the YAML: it tells a config-defined probe from a misspelt built-in at
/// the probe's name, and gives the hook's fields to settings that come
/// before the hook key.
#[derive(Debug, Default)]
pub struct Defined {
    /// By probe name: its first hook key and that key's target.
    targets: BTreeMap<String, (&'static str, Option<String>)>,
}

impl Defined {
    /// Config text that does not parse defines nothing here: the real pass
    /// reports why, located.
    pub fn scan(text: &str) -> Defined {
        let mut targets = BTreeMap::new();
        let value: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or_default();
        if let Some(probes) = value.get("probes").and_then(|p| p.as_mapping()) {
            for (name, settings) in probes {
                let (Some(name), Some(settings)) = (name.as_str(), settings.as_mapping()) else { continue };
                let first_hook = settings.iter().find_map(|(key, target)| {
                    let key = HOOK_KEYS.iter().find(|k| key.as_str() == Some(**k))?;
                    Some((*key, target.as_str().map(str::to_string)))
                });
                if let Some(hook) = first_hook {
                    targets.insert(name.to_string(), hook);
                }
            }
        }
        Defined { targets }
    }

    pub fn defines(&self, name: &str) -> bool {
        self.targets.contains_key(name)
    }

    /// The probe's hook key and target ("" when the target is no string).
    fn target(&self, name: &str) -> (&'static str, &str) {
        match self.targets.get(name) {
            Some((key, target)) => (key, target.as_deref().unwrap_or_default()),
            None => (HOOK_KEYS[0], ""),
        }
    }
}

/// A config-defined probe's name: it names its metrics, so it must be one.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 64;
    if valid {
        Ok(())
    } else {
        Err(format!(
            "config-defined probe name {} must be 1 to 64 letters, digits and `_`, not starting with a digit: it \
             names the probe's metrics",
            quoted(name)
        ))
    }
}

/// The label a field is shown as: its name without leading underscores
/// (Prometheus reserves `__`), or `field_<name>` where that is a built-in
/// label's name (`signal_generate`'s `comm` and `pid` are the target's).
fn label_of(field: &Field) -> String {
    let bare = field.name.trim_start_matches('_');
    if bare.is_empty() || COMMON_LABELS.iter().any(|(l, _)| *l == bare) {
        format!("field_{bare}")
    } else {
        bare.to_string()
    }
}

pub struct CustomSettings<'a> {
    pub name: String,
    pub catalog: &'a Catalog,
    pub defined: &'a Defined,
}

impl<'de> DeserializeSeed<'de> for CustomSettings<'_> {
    type Value = ProbeSettings;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ProbeSettings, D::Error> {
        d.deserialize_map(self)
    }
}

/// What the settings say so far.
struct Draft {
    /// The hook key the probe is defined by, and its target, as scanned.
    hook_key: &'static str,
    scanned_target: String,
    /// The tracepoint's fields or the function's arguments (and `ret` for
    /// a kretprobe), or why there are none.
    schema: Result<Vec<Field>, String>,
    /// The function's arguments, read or not (0 for a tracepoint).
    arg_count: u16,
    target: Option<String>,
    hook: HookChoice,
    /// Label names in config order, each with its field if it shows one.
    labels: Vec<(String, Option<String>)>,
    value: Option<String>,
    /// None: the value's C type decides (see `default_unit`).
    unit: Option<Unit>,
    filter: Filter,
    field_filters: Vec<(String, FieldFilter)>,
    buckets: Buckets,
}

impl Draft {
    fn new(hook_key: &'static str, scanned_target: &str, catalog: &Catalog) -> Draft {
        let (schema, arg_count) = match catalog.schemas() {
            None => (Err("config-defined probes need the running kernel's formats and BTF".to_string()), 0),
            Some(schemas) if hook_key == "tracepoint" => (schemas.tracepoint(scanned_target), 0),
            Some(schemas) => match schemas.function(scanned_target) {
                Ok(prototype) => {
                    let mut fields = prototype.args;
                    if hook_key == "kretprobe" {
                        // `ret` names the return value, not an argument of that name
                        fields.retain(|f| f.name != "ret");
                        fields.extend(prototype.ret);
                    }
                    (Ok(fields), prototype.arg_count)
                }
                Err(err) => (Err(err), 0),
            },
        };
        Draft {
            hook_key,
            scanned_target: scanned_target.to_string(),
            schema,
            arg_count,
            target: None,
            hook: HookChoice::Auto,
            labels: Vec::new(),
            value: None,
            unit: None,
            filter: Filter::default(),
            field_filters: Vec::new(),
            buckets: Buckets::Exp2,
        }
    }

    fn fields(&self) -> Result<&[Field], String> {
        self.schema.as_deref().map_err(Clone::clone)
    }

    fn is_function(&self) -> bool {
        self.hook_key != "tracepoint"
    }

    /// The hook point and what its fields are called, for messages.
    fn what(&self) -> (String, &'static str) {
        if self.is_function() {
            (format!("function `{}`", self.scanned_target), "argument")
        } else {
            (format!("tracepoint `{}`", self.scanned_target), "field")
        }
    }

    /// Field `name`, if the probe can read it.
    fn field(&self, name: &str) -> Result<&Field, String> {
        let fields = self.fields()?;
        let Some(field) = fields.iter().find(|f| f.name == name) else {
            let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
            let (what, noun) = self.what();
            return Err(format!("{what} has no {noun} {}; its {noun}s: {}", quoted(name), names.join(", ")));
        };
        self.readable(field)?;
        Ok(field)
    }

    /// Fails for an argument past the ones a probe reads.
    fn readable(&self, field: &Field) -> Result<(), String> {
        if !self.is_function() || field.offset >= self.arg_count || usize::from(field.offset) < MAX_ARGS {
            return Ok(());
        }
        Err(format!(
            "argument `{}` is argument {} of function `{}`: function probes read the first {MAX_ARGS} arguments",
            field.name,
            field.offset + 1,
            self.scanned_target
        ))
    }

    /// The fields read so far, by name.
    fn used(&self) -> BTreeSet<&str> {
        let labels = self.labels.iter().filter_map(|(_, f)| f.as_deref());
        let filters = self.field_filters.iter().map(|(f, _)| f.as_str());
        labels.chain(self.value.as_deref()).chain(filters).collect()
    }

    /// Fails unless one more field `name` keeps the probe within
    /// [`MAX_FIELDS`].
    fn room_for(&self, name: &str) -> Result<(), String> {
        let used = self.used();
        if used.contains(name) || used.len() < MAX_FIELDS {
            return Ok(());
        }
        Err(format!(
            "a config-defined probe reads at most {MAX_FIELDS} fields (labels, value and filters together); \
             it already reads {}",
            used.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
}

impl<'de> Visitor<'de> for CustomSettings<'_> {
    type Value = ProbeSettings;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "settings for config-defined probe `{}`", self.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ProbeSettings, A::Error> {
        let (hook_key, target) = self.defined.target(&self.name);
        let mut draft = Draft::new(hook_key, target, self.catalog);
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key_seed(OneOf { keys: KEYS, what: "config-defined probe", seen: &seen })? {
            let other_hook = HOOK_KEYS.iter().copied().find(|k| seen.contains(k));
            seen.insert(key);
            match key {
                "tracepoint" | "kprobe" | "kretprobe" => {
                    draft.target = Some(map.next_value_seed(Target { draft: &draft, key, other_hook })?)
                }
                "hook" => draft.hook = map.next_value_seed(HookSeed { hook_key })?,
                "labels" => draft.labels = map.next_value_seed(Labels { draft: &draft })?,
                "value" => draft.value = Some(map.next_value_seed(Value { draft: &draft })?),
                "unit" => draft.unit = Some(map.next_value_seed(UnitSeed)?),
                "buckets" => draft.buckets = map.next_value_seed(BucketsSeed)?,
                "filter" => {
                    let (filter, fields) = map.next_value_seed(FilterSeed { draft: &draft })?;
                    draft.filter = filter;
                    draft.field_filters = fields;
                }
                _ => unreachable!("OneOf only yields KEYS"),
            }
        }
        if seen.contains("unit") && draft.value.is_none() {
            return Err(de::Error::custom("`unit` says what `value` measures: set `value` too"));
        }
        build(self.name, draft).map_err(de::Error::custom)
    }
}

/// What a value measures when the config does not say: the kernel's own
/// type for a byte count (`size_t count`, `ssize_t` returned by a read)
/// says bytes; anything else is a plain number.
fn default_unit(field: &Field) -> Unit {
    let c_type = field.c_type.trim_start_matches("const ").trim();
    if matches!(c_type, "size_t" | "ssize_t") {
        Unit::Bytes
    } else {
        Unit::None
    }
}

fn build(name: String, draft: Draft) -> Result<ProbeSettings, String> {
    let target = draft.target.clone().ok_or(
        "a config-defined probe needs one of `tracepoint: group/name`, `kprobe: function`, `kretprobe: function`",
    )?;
    let mut slots: Vec<Slot> = Vec::new();
    for field_name in draft.used() {
        let field = draft.field(field_name)?.clone();
        let roles = Roles {
            label: draft.labels.iter().find(|(_, f)| f.as_deref() == Some(field_name)).map(|(l, _)| l.clone()),
            value: draft.value.as_deref() == Some(field_name),
            filter: draft.field_filters.iter().find(|(f, _)| f == field_name).map(|(_, v)| v.clone()),
        };
        slots.push(Slot { field, roles, record_offset: 0 });
    }
    let event_labels: Vec<&str> = draft.labels.iter().filter(|(_, f)| f.is_some()).map(|(l, _)| l.as_str()).collect();
    let labels: Vec<&str> = draft.labels.iter().map(|(l, _)| l.as_str()).collect();
    let point = match draft.hook_key {
        "tracepoint" => HookPoint::Tracepoint(target),
        key => HookPoint::Function { name: target, ret: key == "kretprobe", arg_count: draft.arg_count },
    };
    let custom = CustomProbe::new(point, slots);
    let (events, noun) = match &custom.point {
        HookPoint::Tracepoint(target) => (format!("events of tracepoint {target}"), "Field"),
        HookPoint::Function { name, ret: false, .. } => (format!("calls of kernel function {name}"), "Argument"),
        HookPoint::Function { name, ret: true, .. } => (format!("returns from kernel function {name}"), "Argument"),
    };
    let mut spec = ProbeSpec::new(&name, &format!("Config-defined: {events}."), &event_labels, &labels)
        .metric(MetricSpec::counter(&format!("{name}_total"), &format!("Config-defined: {events}.")));
    for hook in hooks(&custom) {
        spec = spec.hook(hook);
    }
    if let Some(value) = &draft.value {
        let unit = match draft.unit {
            Some(unit) => unit,
            None => default_unit(draft.field(value)?),
        };
        let (suffix, unit_help) = match unit {
            Unit::Seconds => ("seconds", " (it counts nanoseconds)"),
            Unit::Bytes => ("bytes", ""),
            Unit::None => ("value", ""),
        };
        let noun = if value == "ret" && draft.hook_key == "kretprobe" { "Return value" } else { noun };
        let help = format!("{noun} `{value}` of the {events}{unit_help}.");
        spec = spec.metric(MetricSpec::histogram(&format!("{name}_{suffix}"), unit, &help));
    }
    spec.custom = Some(custom);
    let mut settings = ProbeSettings::defaults(Arc::new(spec));
    settings.filter = draft.filter;
    settings.buckets = draft.buckets;
    settings.hook = draft.hook;
    Ok(settings)
}

/// The hooks of a probe, in order of preference: a function's entry by
/// fentry, else a kprobe; its return by fexit, else a kretprobe (with a
/// kprobe at entry that saves the arguments it reads).
fn hooks(custom: &CustomProbe) -> Vec<HookSpec> {
    match &custom.point {
        HookPoint::Tracepoint(target) => {
            vec![HookSpec::new(HookKind::Tracepoint, &[(programs::TRACEPOINT_PROGRAM, target)])]
        }
        HookPoint::Function { name, ret: false, .. } => vec![
            HookSpec::new(HookKind::Fentry, &[(programs::FENTRY_PROGRAM, name)]),
            HookSpec::new(HookKind::Kprobe, &[(programs::KPROBE_PROGRAM, name)]),
        ],
        HookPoint::Function { name, ret: true, .. } => {
            let fexit = format!("{name} (fexit)");
            let kretprobe = format!("{name} (return)");
            let mut programs = vec![(programs::KRETPROBE_PROGRAM, kretprobe.as_str())];
            if custom.reads_args() {
                programs.insert(0, (programs::KRETPROBE_ENTRY_PROGRAM, name.as_str()));
            }
            vec![
                HookSpec::new(HookKind::Fentry, &[(programs::FEXIT_PROGRAM, &fexit)]),
                HookSpec::new(HookKind::Kprobe, &programs),
            ]
        }
    }
}

/// The target of hook key `key`: a tracepoint or a function the running
/// kernel has.
struct Target<'a> {
    draft: &'a Draft,
    key: &'static str,
    /// A hook key given before this one.
    other_hook: Option<&'static str>,
}

impl<'de> DeserializeSeed<'de> for Target<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        scalar(d, "a hook point", |v| {
            if let Some(other) = self.other_hook {
                return Err(format!(
                    "`{other}:` and `{}:` are both given: a config-defined probe hooks one point",
                    self.key
                ));
            }
            let Scalar::Str(target) = v else {
                return Err(if self.key == "tracepoint" {
                    format!("expected a tracepoint as group/name, found {v}")
                } else {
                    format!("expected a kernel function's name, found {v}")
                });
            };
            self.draft.fields()?;
            Ok(target.to_string())
        })
    }
}

/// `hook:` of a config-defined probe: which of its hooks to use.
struct HookSeed {
    hook_key: &'static str,
}

impl<'de> DeserializeSeed<'de> for HookSeed {
    type Value = HookChoice;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<HookChoice, D::Error> {
        let choices: &[(&str, HookChoice)] = match self.hook_key {
            "kprobe" => &[
                ("auto", HookChoice::Auto),
                ("fentry", HookChoice::Only(HookKind::Fentry)),
                ("kprobe", HookChoice::Only(HookKind::Kprobe)),
            ],
            "kretprobe" => &[
                ("auto", HookChoice::Auto),
                ("fexit", HookChoice::Only(HookKind::Fentry)),
                ("kretprobe", HookChoice::Only(HookKind::Kprobe)),
            ],
            _ => &[("auto", HookChoice::Auto), ("tracepoint", HookChoice::Only(HookKind::Tracepoint))],
        };
        scalar(d, "a hook kind", |v| {
            choices.iter().find(|(name, _)| matches!(v, Scalar::Str(s) if s == *name)).map(|(_, c)| *c).ok_or_else(
                || {
                    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                    format!("hook {v} does not fit a `{}:` probe; expected one of: {}", self.hook_key, names.join(", "))
                },
            )
        })
    }
}

struct Labels<'a> {
    draft: &'a Draft,
}

impl<'de> DeserializeSeed<'de> for Labels<'_> {
    type Value = Vec<(String, Option<String>)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Labels<'_> {
    type Value = Vec<(String, Option<String>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of labels: built-in ones (comm, pid, cgroup…) or the tracepoint's fields")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut labels: Vec<(String, Option<String>)> = Vec::new();
        while let Some(label) = seq.next_element_seed(LabelName { draft: self.draft, seen: &labels })? {
            labels.push(label);
        }
        Ok(labels)
    }
}

struct LabelName<'a> {
    draft: &'a Draft,
    seen: &'a [(String, Option<String>)],
}

impl<'de> DeserializeSeed<'de> for LabelName<'_> {
    type Value = (String, Option<String>);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        scalar(d, "a label name", |v| {
            let Scalar::Str(name) = v else {
                return Err(format!("expected a label name, found {v}"));
            };
            if self.seen.iter().any(|(l, _)| l == name) {
                return Err(format!("label `{name}` is listed twice"));
            }
            if COMMON_LABELS.iter().any(|(l, _)| *l == name) {
                return Ok((name.to_string(), None));
            }
            let fields = self.draft.fields()?;
            let Some(field) = fields.iter().find(|f| label_of(f) == name) else {
                let mut known: Vec<String> = COMMON_LABELS.iter().map(|(l, _)| l.to_string()).collect();
                known.extend(fields.iter().map(label_of));
                let (what, noun) = self.draft.what();
                return Err(format!(
                    "{what} has no {noun} {} to label by; labels it can carry: {}",
                    quoted(name),
                    known.join(", ")
                ));
            };
            self.draft.readable(field)?;
            self.draft.room_for(&field.name)?;
            Ok((name.to_string(), Some(field.name.clone())))
        })
    }
}

struct Value<'a> {
    draft: &'a Draft,
}

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        scalar(d, "a numeric field", |v| {
            let Scalar::Str(name) = v else {
                return Err(format!("expected a field name, found {v}"));
            };
            let field = self.draft.field(name)?;
            let (_, noun) = self.draft.what();
            let not_a_number = match field.kind {
                FieldKind::Number { .. } => None,
                FieldKind::Pointer => Some("a pointer"),
                _ => Some("a string"),
            };
            if let Some(what) = not_a_number {
                return Err(format!(
                    "{noun} `{name}` ({}) is {what}, not a number: `value` takes a numeric {noun}",
                    field.c_type
                ));
            }
            self.draft.room_for(name)?;
            Ok(name.to_string())
        })
    }
}

struct UnitSeed;

impl<'de> DeserializeSeed<'de> for UnitSeed {
    type Value = Unit;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Unit, D::Error> {
        scalar(d, "a unit", |v| match v {
            Scalar::Str("bytes") => Ok(Unit::Bytes),
            Scalar::Str("seconds") => Ok(Unit::Seconds),
            Scalar::Str("none") => Ok(Unit::None),
            other => Err(format!(
                "unknown unit {other}: expected `bytes`, `seconds` (the field counts nanoseconds) or `none`"
            )),
        })
    }
}

struct FilterSeed<'a> {
    draft: &'a Draft,
}

type FieldFilters = Vec<(String, FieldFilter)>;

impl<'de> DeserializeSeed<'de> for FilterSeed<'_> {
    type Value = (Filter, FieldFilters);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FilterSeed<'_> {
    type Value = (Filter, FieldFilters);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a filter mapping with `comm`, `pid` and/or `fields`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const FILTER_KEYS: &[&str] = &["comm", "pid", "fields"];
        let mut filter = Filter::default();
        let mut fields = Vec::new();
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key_seed(OneOf { keys: FILTER_KEYS, what: "filter", seen: &seen })? {
            seen.insert(key);
            match key {
                "comm" => filter.comm = map.next_value_seed(CommList)?,
                "pid" => filter.pid = map.next_value_seed(Pid)?,
                "fields" => fields = map.next_value_seed(FieldFiltersSeed { draft: self.draft })?,
                _ => unreachable!("OneOf only yields FILTER_KEYS"),
            }
        }
        Ok((filter, fields))
    }
}

struct FieldFiltersSeed<'a> {
    draft: &'a Draft,
}

impl<'de> DeserializeSeed<'de> for FieldFiltersSeed<'_> {
    type Value = FieldFilters;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldFiltersSeed<'_> {
    type Value = FieldFilters;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping from field name to the values to keep")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: FieldFilters = Vec::new();
        while let Some(field) = map.next_key_seed(FilterField { draft: self.draft, seen: &out })? {
            let values = map.next_value_seed(FilterValues { field: &field })?;
            out.push((field.name, values));
        }
        Ok(out)
    }
}

struct FilterField<'a> {
    draft: &'a Draft,
    seen: &'a [(String, FieldFilter)],
}

impl<'de> DeserializeSeed<'de> for FilterField<'_> {
    type Value = Field;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        scalar(d, "a field name", |v| {
            let Scalar::Str(name) = v else {
                return Err(format!("expected a field name, found {v}"));
            };
            let field = self.draft.field(name)?;
            if self.seen.iter().any(|(f, _)| f == name) {
                return Err(format!("field `{name}` is filtered twice"));
            }
            // the fields filtered before this one count too
            let used = self.draft.used();
            let earlier = self.seen.iter().filter(|(f, _)| !used.contains(f.as_str())).count();
            if !used.contains(name) && used.len() + earlier >= MAX_FIELDS {
                return Err(format!(
                    "a config-defined probe reads at most {MAX_FIELDS} fields (labels, value and filters together)"
                ));
            }
            Ok(field.clone())
        })
    }
}

struct FilterValues<'a> {
    field: &'a Field,
}

impl<'de> DeserializeSeed<'de> for FilterValues<'_> {
    type Value = FieldFilter;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<FieldFilter, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for FilterValues<'_> {
    type Value = FieldFilter;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of values of field `{}`", self.field.name)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FieldFilter, A::Error> {
        let field = self.field;
        let mut numbers: Vec<u64> = Vec::new();
        let mut strings: Vec<String> = Vec::new();
        loop {
            let count = numbers.len() + strings.len();
            let Some(value) = seq.next_element_seed(FilterValue { field, count })? else { break };
            match value {
                FilterValueOf::Number(n) if !numbers.contains(&n) => numbers.push(n),
                FilterValueOf::String(s) if !strings.contains(&s) => strings.push(s),
                _ => {}
            }
        }
        if numbers.is_empty() && strings.is_empty() {
            return Err(de::Error::custom(format!("the filter on field `{}` keeps no value", field.name)));
        }
        Ok(if field.kind.is_string() { FieldFilter::Strings(strings) } else { FieldFilter::Numbers(numbers) })
    }
}

enum FilterValueOf {
    Number(u64),
    String(String),
}

struct FilterValue<'a> {
    field: &'a Field,
    /// Values before this one.
    count: usize,
}

impl<'de> DeserializeSeed<'de> for FilterValue<'_> {
    type Value = FilterValueOf;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<FilterValueOf, D::Error> {
        let field = self.field;
        let number = match field.kind {
            FieldKind::Number { signed } => Some(signed),
            FieldKind::Pointer => Some(false),
            _ => None,
        };
        scalar(d, "a field value", |v| match number {
            Some(signed) => {
                if self.count >= MAX_NUMBER_FILTER_VALUES {
                    return Err(format!("a field filter keeps at most {MAX_NUMBER_FILTER_VALUES} numbers"));
                }
                let Scalar::Int(n) = v else {
                    return Err(format!("field `{}` ({}) is a number; found {v}", field.name, field.c_type));
                };
                number_in_field(n, field.size, signed).map(FilterValueOf::Number).ok_or_else(|| {
                    format!("{n} does not fit field `{}` ({}, {} bytes)", field.name, field.c_type, field.size)
                })
            }
            None => {
                if self.count >= MAX_STRING_FILTER_VALUES {
                    return Err(format!("a field filter keeps at most {MAX_STRING_FILTER_VALUES} strings"));
                }
                let Scalar::Str(s) = v else {
                    return Err(format!("field `{}` ({}) is a string; found {v}", field.name, field.c_type));
                };
                if s.len() > MAX_FILTER_STRING_BYTES || s.contains('\0') {
                    return Err(format!(
                        "string {} is too long: filters compare strings of at most {MAX_FILTER_STRING_BYTES} bytes",
                        quoted(s)
                    ));
                }
                Ok(FilterValueOf::String(s.to_string()))
            }
        })
    }
}

/// `n` as a field of `size` bytes holds it (negative numbers in two's
/// complement), or None if it does not fit.
fn number_in_field(n: i128, size: u16, signed: bool) -> Option<u64> {
    let bits = u32::from(size.clamp(1, 8)) * 8;
    let (min, max) =
        if signed { (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1) } else { (0, (1i128 << bits) - 1) };
    // a signed field also takes the unsigned spelling of its bits
    let max = max.max(if signed { (1i128 << bits) - 1 } else { max });
    if n < min || n > max {
        return None;
    }
    let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
    Some((n as i64 as u64) & mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The kernel's formats, as fixed text.
    #[derive(Debug)]
    struct Formats;

    impl crate::spec::HookSchemas for Formats {
        fn tracepoint(&self, target: &str) -> Result<Vec<Field>, String> {
            let text = match target {
                "signal/signal_generate" => {
                    "\tfield:int sig;\toffset:8;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:36;\tsize:4;\tsigned:1;
\tfield:int result;\toffset:44;\tsize:4;\tsigned:1;
\tfield:int code;\toffset:16;\tsize:4;\tsigned:1;"
                }
                "syscalls/sys_enter_openat" => {
                    "\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;"
                }
                _ => return Err(format!("unknown tracepoint `{target}`")),
            };
            Ok(crate::probes::custom::format::parse(text, target.starts_with("syscalls/")))
        }

        /// Functions are the running kernel's: every kernel sonde runs on
        /// has BTF, and vfs_read(file, buf, count, pos) in it.
        fn function(&self, name: &str) -> Result<crate::spec::custom::Prototype, String> {
            crate::probes::custom::KernelSchemas.function(name)
        }
    }

    fn parse(text: &str) -> Result<Config, String> {
        let catalog = crate::probes::Registry::builtin().catalog().with_schemas(std::sync::Arc::new(Formats));
        Config::parse(text, "t.yaml", &catalog).map_err(|e| e.to_string())
    }

    #[test]
    fn a_config_defined_probe_becomes_a_spec_with_its_fields() {
        let config = parse(
            "probes:\n  sigs:\n    labels: [comm, sig, field_comm]\n    tracepoint: signal/signal_generate\n    \
             filter: {comm: [kill], fields: {result: [0, 2]}}\n    value: code\n    unit: bytes\n",
        )
        .expect("parses");
        let settings = &config.probes[0];
        assert_eq!(settings.labels, ["comm", "sig", "field_comm"]);
        assert_eq!(settings.filter.comm, ["kill"]);
        let spec = &settings.spec;
        let names: Vec<&str> = spec.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["sigs_total", "sigs_bytes"]);
        assert_eq!(spec.hooks[0].programs[0].target, "signal/signal_generate");
        let custom = spec.custom.as_ref().expect("custom");
        let read: Vec<&str> = custom.slots.iter().map(|s| s.field.name.as_str()).collect();
        assert_eq!(read, ["code", "comm", "result", "sig"]);
        assert_eq!(custom.label_slot("field_comm").map(|s| s.field.kind), Some(FieldKind::InlineString));
        let result = custom.slots.iter().find(|s| s.field.name == "result").expect("result");
        assert_eq!((result.roles.filter.clone(), result.recorded()), (Some(FieldFilter::Numbers(vec![0, 2])), false));
    }

    #[test]
    fn errors_are_located_at_the_node_at_fault() {
        let cases: &[(&str, &str)] = &[
            ("probes:\n  x:\n    tracepoint: signal/nope\n", "t.yaml:3:17: probes.x.tracepoint: unknown tracepoint"),
            ("probes:\n  x:\n    tracepoint: signal/signal_generate\n    labels: [sig, nope]\n", "t.yaml:4:19"),
            ("probes:\n  x:\n    tracepoint: signal/signal_generate\n    value: comm\n", "t.yaml:4:12"),
            ("probes:\n  x:\n    tracepoint: signal/signal_generate\n    value: nope\n", "has no field `nope`"),
            (
                "probes:\n  x:\n    tracepoint: syscalls/sys_enter_openat\n    filter: {fields: {filename: [aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]}}\n",
                "t.yaml:4:34",
            ),
            ("probes:\n  x:\n    tracepoint: signal/signal_generate\n    filter: {fields: {sig: [x]}}\n", "is a number"),
            ("probes:\n  x:\n    tracepoint: signal/signal_generate\n    unit: bytes\n", "set `value` too"),
            ("probes:\n  9x:\n    tracepoint: signal/signal_generate\n", "t.yaml:2:3"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
        let err = parse("probes:\n  x:\n    tracepoint: signal/signal_generate\n    value: comm\n").unwrap_err();
        assert!(err.contains("is a string, not a number"), "{err}");
    }

    #[test]
    fn at_most_four_fields_are_read() {
        let text = "probes:\n  x:\n    tracepoint: signal/signal_generate\n    labels: [sig, field_comm, field_pid, result]\n    value: code\n";
        let err = parse(text).expect_err("five fields");
        assert!(err.contains("t.yaml:5:12") && err.contains("at most 4 fields"), "{err}");
    }

    #[test]
    fn filter_numbers_are_the_fields_bytes() {
        assert_eq!(number_in_field(-100, 8, true), Some((-100i64) as u64));
        assert_eq!(number_in_field(-1, 4, true), Some(0xffff_ffff));
        assert_eq!(number_in_field(12, 4, true), Some(12));
        assert_eq!(number_in_field(-1, 4, false), None);
        assert_eq!(number_in_field(256, 1, false), None);
        assert_eq!(number_in_field(u64::MAX as i128, 8, false), Some(u64::MAX));
    }

    fn hook_programs(settings: &ProbeSettings) -> Vec<(HookKind, Vec<(String, String)>)> {
        let programs = |h: &HookSpec| h.programs.iter().map(|p| (p.program.clone(), p.target.clone())).collect();
        settings.spec.hooks.iter().map(|h| (h.kind, programs(h))).collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn a_kprobe_reads_the_functions_arguments_from_its_btf() {
        let config = parse(
            "probes:\n  reads:\n    kprobe: vfs_read\n    labels: [comm, count]\n    value: count\n    unit: bytes\n    \
             filter: {comm: [cat], fields: {pos: [0]}}\n",
        )
        .expect("parses");
        let settings = &config.probes[0];
        assert_eq!(settings.hook, HookChoice::Auto);
        assert_eq!(
            hook_programs(settings),
            [
                (HookKind::Fentry, pairs(&[("custom_fentry", "vfs_read")])),
                (HookKind::Kprobe, pairs(&[("custom_kprobe", "vfs_read")])),
            ]
        );
        let names: Vec<&str> = settings.spec.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["reads_total", "reads_bytes"]);
        let custom = settings.spec.custom.as_ref().expect("custom");
        assert_eq!(custom.point, HookPoint::Function { name: "vfs_read".into(), ret: false, arg_count: 4 });
        let read: Vec<(&str, u16, bool)> =
            custom.slots.iter().map(|s| (s.field.name.as_str(), s.field.offset, s.recorded())).collect();
        assert_eq!(read, [("count", 2, true), ("pos", 3, false)]);
        assert!(custom.reads_args());
    }

    #[test]
    fn a_value_of_a_byte_count_type_is_in_bytes_unless_the_config_says_otherwise() {
        let metrics = |yaml: &str| -> Vec<String> {
            let config = parse(yaml).expect("parses");
            config.probes[0].spec.metrics.iter().map(|m| m.name.clone()).collect()
        };
        // size_t count
        assert_eq!(metrics("probes:\n  r:\n    kprobe: vfs_read\n    value: count\n"), ["r_total", "r_bytes"]);
        assert_eq!(
            metrics("probes:\n  r:\n    kprobe: vfs_read\n    value: count\n    unit: none\n"),
            ["r_total", "r_value"]
        );
        // loff_t *pos is a pointer, refused as a value; an int is a plain number
        assert_eq!(metrics("probes:\n  s:\n    kprobe: do_send_sig_info\n    value: sig\n"), ["s_total", "s_value"]);
    }

    #[test]
    fn a_kretprobe_reads_ret_and_saves_arguments_only_when_it_reads_them() {
        let config =
            parse("probes:\n  got:\n    kretprobe: vfs_read\n    value: ret\n    hook: kretprobe\n").expect("parses");
        let settings = &config.probes[0];
        assert_eq!(settings.hook, HookChoice::Only(HookKind::Kprobe));
        assert_eq!(
            hook_programs(settings),
            [
                (HookKind::Fentry, pairs(&[("custom_fexit", "vfs_read (fexit)")])),
                (HookKind::Kprobe, pairs(&[("custom_kretprobe", "vfs_read (return)")])),
            ]
        );
        // vfs_read returns ssize_t: bytes, without `unit:`
        let names: Vec<&str> = settings.spec.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["got_total", "got_bytes"]);
        let custom = settings.spec.custom.as_ref().expect("custom");
        let ret = custom.value_slot().expect("ret");
        assert_eq!((ret.field.offset, ret.field.kind), (4, FieldKind::Number { signed: true }));
        assert!(!custom.reads_args());

        let config =
            parse("probes:\n  got:\n    kretprobe: vfs_read\n    labels: [count]\n    hook: fexit\n").expect("parses");
        let settings = &config.probes[0];
        assert_eq!(settings.hook, HookChoice::Only(HookKind::Fentry));
        let kprobe = &hook_programs(settings)[1].1;
        assert_eq!(
            *kprobe,
            pairs(&[("custom_kretprobe_entry", "vfs_read"), ("custom_kretprobe", "vfs_read (return)")])
        );
    }

    #[test]
    fn function_probe_errors_are_located() {
        let cases: &[(&str, &str)] = &[
            ("    kprobe: no_such_function_here\n", "t.yaml:3:13: probes.x.kprobe: unknown function `no_such_function_here`"),
            (
                "    kprobe: vfs_read\n    value: nope\n",
                "t.yaml:4:12: probes.x.value: function `vfs_read` has no argument `nope`; its arguments: file, buf, count, pos",
            ),
            ("    kprobe: vfs_read\n    value: ret\n", "has no argument `ret`"),
            ("    kprobe: vfs_read\n    value: file\n", "t.yaml:4:12: probes.x.value: argument `file` (struct file *) is a pointer"),
            ("    kretprobe: vfs_read\n    value: buf\n", "is a string, not a number"),
            ("    kprobe: vfs_read\n    labels: [nope]\n", "t.yaml:4:14: probes.x.labels[0]: function `vfs_read` has no argument `nope`"),
            ("    kprobe: vfs_read\n    filter: {fields: {count: [x]}}\n", "t.yaml:4:31"),
            ("    kprobe: do_mmap\n    labels: [uf]\n", "function probes read the first 6 arguments"),
            ("    kprobe: vfs_read\n    tracepoint: signal/signal_generate\n", "t.yaml:4:17: probes.x.tracepoint: `kprobe:` and `tracepoint:` are both given"),
            ("    kprobe: vfs_read\n    hook: fexit\n", "t.yaml:4:11: probes.x.hook: hook `fexit` does not fit a `kprobe:` probe; expected one of: auto, fentry, kprobe"),
            ("    kretprobe: vfs_read\n    hook: kprobe\n", "expected one of: auto, fexit, kretprobe"),
            ("    tracepoint: signal/signal_generate\n    hook: fentry\n", "does not fit a `tracepoint:` probe"),
        ];
        for (body, want) in cases {
            let text = format!("probes:\n  x:\n{body}");
            let err = parse(&text).expect_err(&text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn shadowed_and_reserved_field_names_get_labels_of_their_own() {
        let field = |name: &str| Field {
            name: name.into(),
            c_type: "int".into(),
            kind: FieldKind::Number { signed: true },
            offset: 8,
            size: 4,
        };
        assert_eq!(label_of(&field("sig")), "sig");
        assert_eq!(label_of(&field("pid")), "field_pid");
        assert_eq!(label_of(&field("__syscall_nr")), "syscall_nr");
    }
}
