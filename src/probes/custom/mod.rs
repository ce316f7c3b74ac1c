//! Probes defined in the config: one generic program per hook kind
//! (`src/bpf/custom_tracepoint.bpf.c`, `src/bpf/custom_function.bpf.c`),
//! told at load which fields of the hook's record (or which arguments of
//! the function) to read, filter on and carry, and a decoder that turns the
//! carried fields into labels and the observed value. The spec comes from
//! the config (`spec::custom`); loading, the ring, series, limits, reload
//! and self-metrics are the built-in probes'.

pub mod format;
mod function;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use crate::decode::{DecodeError, Decoded, Decoder, MAX_METRICS, NOT_OBSERVED};
use crate::labels::{render_bytes, OVERFLOW};
use crate::loader::{LoadContext, LoadError, Loaded};
use crate::spec::custom::{
    CustomProbe, Field, FieldFilter, FieldKind, Prototype, Slot, MAX_FIELDS, MAX_NUMBER_FILTER_VALUES,
    MAX_STRING_FILTER_VALUES, STRING_BYTES,
};
use crate::spec::{HookPoint, HookSchemas, HookSpec, ProbeSettings};

pub use function::{FENTRY_PROGRAM, FEXIT_PROGRAM, KPROBE_PROGRAM, KRETPROBE_ENTRY_PROGRAM, KRETPROBE_PROGRAM};

/// The generic tracepoint program's name, as its spec's hook names it.
pub const TRACEPOINT_PROGRAM: &str = "custom_tracepoint";

/// Field kinds as the programs number them (`enum field_kind` in custom.h).
fn kind_code(kind: FieldKind) -> u16 {
    match kind {
        FieldKind::Number { .. } | FieldKind::Pointer => 1,
        FieldKind::InlineString => 2,
        FieldKind::DataLocString => 3,
        FieldKind::UserString => 4,
        FieldKind::KernelString => 5,
    }
}

/// The `.rodata` description of one field (`struct field` in custom.h), as
/// plain values; each program's skeleton has its own type of it, filled by
/// `set_rodata_fields!`.
struct FieldRodata {
    kind: u16,
    offset: u16,
    size: u16,
    record_offset: u16,
    filter_count: u32,
    numbers: [u64; MAX_NUMBER_FILTER_VALUES],
    strings: [[u64; STRING_BYTES / 8]; MAX_STRING_FILTER_VALUES],
}

impl FieldRodata {
    fn of(slot: &Slot) -> FieldRodata {
        let mut field = FieldRodata {
            kind: kind_code(slot.field.kind),
            offset: slot.field.offset,
            size: slot.field.size,
            record_offset: slot.record_offset,
            filter_count: 0,
            numbers: [0; MAX_NUMBER_FILTER_VALUES],
            strings: [[0; STRING_BYTES / 8]; MAX_STRING_FILTER_VALUES],
        };
        match &slot.roles.filter {
            Some(FieldFilter::Numbers(values)) => {
                field.filter_count = values.len() as u32;
                for (dst, src) in field.numbers.iter_mut().zip(values) {
                    *dst = *src;
                }
            }
            Some(FieldFilter::Strings(values)) => {
                field.filter_count = values.len() as u32;
                // config validation keeps each shorter than the slot: NUL stays
                for (dst, src) in field.strings.iter_mut().zip(values) {
                    let mut bytes = [0u8; STRING_BYTES];
                    for (d, s) in bytes.iter_mut().zip(src.bytes()) {
                        *d = s;
                    }
                    for (word, chunk) in dst.iter_mut().zip(bytes.chunks_exact(8)) {
                        *word = chunk.try_into().map(u64::from_ne_bytes).unwrap_or(0);
                    }
                }
            }
            None => {}
        }
        field
    }
}

/// Sets a generic program's `fields` and `record_bytes` in `.rodata` from
/// the probe's slots.
macro_rules! set_rodata_fields {
    ($rodata:ident, $custom:ident) => {
        for (dst, slot) in $rodata.fields.iter_mut().zip(&$custom.slots) {
            let field = $crate::probes::custom::FieldRodata::of(slot);
            dst.kind = field.kind;
            dst.offset = field.offset;
            dst.size = field.size;
            dst.record_offset = field.record_offset;
            dst.filter_count = field.filter_count;
            dst.numbers = field.numbers;
            dst.strings = field.strings;
        }
        $rodata.record_bytes = u32::from($custom.record_bytes);
    };
}
use set_rodata_fields;

/// The probe's custom part, which every config-defined probe's spec has.
fn custom_of(settings: &ProbeSettings) -> Result<&CustomProbe, LoadError> {
    settings
        .spec
        .custom
        .as_ref()
        .ok_or_else(|| LoadError::Missing(format!("a config-defined probe's fields for `{}`", settings.name())))
}

mod tracepoint {
    mod skel {
        include!(concat!(env!("OUT_DIR"), "/custom_tracepoint.skel.rs"));
    }
    use skel::CustomTracepointSkelBuilder;

    crate::loader::skeleton_loader!(CustomTracepointSkelBuilder, |rodata, settings| {
        let custom = super::custom_of(settings)?;
        super::set_rodata_fields!(rodata, custom);
    });

    /// The macro's `load`, for the runner's.
    pub(super) fn load_program(
        settings: &crate::spec::ProbeSettings,
        hook: &crate::spec::HookSpec,
        ctx: &crate::loader::LoadContext,
    ) -> Result<crate::loader::Loaded, crate::loader::LoadError> {
        load(settings, hook, ctx)
    }
}

/// How every config-defined probe is loaded and decoded.
pub const RUNNER: super::Runner = super::Runner { load, decoder };

/// Loads the generic program of the probe's hook point.
fn load(settings: &ProbeSettings, hook: &HookSpec, ctx: &LoadContext) -> Result<Loaded, LoadError> {
    match custom_of(settings)?.point {
        HookPoint::Tracepoint(_) => tracepoint::load_program(settings, hook, ctx),
        HookPoint::Function { .. } => function::load_program(settings, hook, ctx),
    }
}

/// The running kernel's tracepoint formats, from tracefs, and its
/// functions' prototypes, from its BTF.
#[derive(Debug, Default)]
pub struct KernelSchemas;

impl HookSchemas for KernelSchemas {
    fn tracepoint(&self, target: &str) -> Result<Vec<Field>, String> {
        let (group, name) = split_tracepoint(target)?;
        let events = crate::system::tracefs_events().map_err(|e| e.to_string())?;
        tracepoint_fields(&events, group, name)
    }

    fn function(&self, name: &str) -> Result<Prototype, String> {
        let prototype = super::kernel_btf::KernelBtf::load()
            .prototype(name)
            .ok_or_else(|| format!("unknown function `{name}`: not in this kernel's BTF (/sys/kernel/btf/vmlinux)"))?;
        Ok(function::fields(prototype))
    }
}

/// `group/name`, each part of the characters tracepoint names use (so a
/// name cannot lead the lookup out of tracefs).
fn split_tracepoint(target: &str) -> Result<(&str, &str), String> {
    let valid = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    match target.split_once('/') {
        Some((group, name)) if valid(group) && valid(name) => Ok((group, name)),
        _ => Err(format!("tracepoint `{target}` is not of the form group/name (letters, digits and `_`)")),
    }
}

fn tracepoint_fields(events: &Path, group: &str, name: &str) -> Result<Vec<Field>, String> {
    let path = events.join(group).join(name).join("format");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(format::parse(&text, group == "syscalls")),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("unknown tracepoint `{group}/{name}`: this kernel has no {}", path.display()))
        }
        Err(err) => Err(format!("reading {} failed: {err}", path.display())),
    }
}

/// The decoder of every config-defined probe.
fn decoder(settings: &ProbeSettings) -> Arc<dyn Decoder> {
    let Some(custom) = settings.spec.custom.as_ref() else {
        unreachable!("only config-defined probes get this decoder")
    };
    Arc::new(Custom::new(custom))
}

/// Distinct label tuples one probe run keeps apart when they do not fit
/// the 64-bit key; later ones share the `overflow` value, so that a stream
/// of random strings cannot grow the table without bound.
const MAX_TUPLES: usize = 65_536;
const OVERFLOW_KEY: u64 = u64::MAX;

#[derive(Debug, Clone)]
struct LabelField {
    name: String,
    kind: FieldKind,
    size: u16,
    at: usize,
}

impl LabelField {
    fn number(&self, record: &[u8]) -> u64 {
        read_u64(record, self.at)
    }

    /// The string's bytes up to its NUL.
    fn string<'r>(&self, record: &'r [u8]) -> &'r [u8] {
        let bytes = record.get(self.at..self.at + STRING_BYTES).unwrap_or_default();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        &bytes[..end]
    }

    fn render_number(&self, raw: u64) -> String {
        match self.kind {
            FieldKind::Number { signed: true } => sign_extend(raw, self.size).to_string(),
            _ => raw.to_string(),
        }
    }

    fn bits(&self) -> u32 {
        u32::from(self.size.min(8)) * 8
    }
}

fn read_u64(record: &[u8], at: usize) -> u64 {
    record.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes).unwrap_or(0)
}

/// A number read as `size` bytes, as the signed integer it is.
fn sign_extend(raw: u64, size: u16) -> i64 {
    let shift = 64 - u32::from(size.clamp(1, 8)) * 8;
    ((raw << shift) as i64) >> shift
}

/// How label values become the decoder's 64-bit key part.
enum Keying {
    /// Numbers whose sizes add up to 64 bits or less, side by side.
    Packed,
    /// Anything else: the tuple's bytes, numbered in order of first sight.
    Interned(Mutex<Tuples>),
}

#[derive(Default)]
struct Tuples {
    ids: HashMap<Box<[u8]>, u64>,
    tuples: Vec<Box<[u8]>>,
    /// The tuple being looked up, reused so that a known tuple costs no
    /// allocation.
    scratch: Vec<u8>,
}

impl Tuples {
    fn id(&mut self, labels: &[LabelField], record: &[u8]) -> u64 {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        for label in labels {
            if label.kind.is_string() {
                let s = label.string(record);
                scratch.push(s.len() as u8);
                scratch.extend_from_slice(s);
            } else {
                scratch.extend_from_slice(&label.number(record).to_ne_bytes());
            }
        }
        let id = match self.ids.get(scratch.as_slice()) {
            Some(&id) => id,
            None if self.tuples.len() >= MAX_TUPLES => OVERFLOW_KEY,
            None => {
                let tuple: Box<[u8]> = scratch.as_slice().into();
                self.tuples.push(tuple.clone());
                let id = self.tuples.len() as u64;
                self.ids.insert(tuple, id);
                id
            }
        };
        self.scratch = scratch;
        id
    }

    /// Label `index`'s value in tuple `id`.
    fn render(&self, labels: &[LabelField], id: u64, index: usize) -> String {
        if id == OVERFLOW_KEY {
            return OVERFLOW.to_string();
        }
        let Some(tuple) = id.checked_sub(1).and_then(|i| self.tuples.get(i as usize)) else {
            return String::new();
        };
        let mut at = 0;
        for (i, label) in labels.iter().enumerate() {
            let (value, next) = if label.kind.is_string() {
                let len = usize::from(tuple.get(at).copied().unwrap_or(0));
                let bytes = tuple.get(at + 1..at + 1 + len).unwrap_or_default();
                (render_bytes(bytes), at + 1 + len)
            } else {
                (label.render_number(read_u64(tuple, at)), at + 8)
            };
            if i == index {
                return value;
            }
            at = next;
        }
        String::new()
    }
}

struct Custom {
    labels: Vec<LabelField>,
    /// Where the record carries the observed value, and its field's size
    /// and sign.
    value: Option<LabelField>,
    record_bytes: usize,
    keying: Keying,
}

impl Custom {
    fn new(custom: &CustomProbe) -> Custom {
        let field = |slot: &Slot, name: &str| LabelField {
            name: name.to_string(),
            kind: slot.field.kind,
            size: slot.field.size,
            at: usize::from(slot.record_offset),
        };
        let labels: Vec<LabelField> = custom
            .slots
            .iter()
            .filter_map(|s| s.roles.label.as_deref().map(|name| field(s, name)))
            .take(MAX_FIELDS)
            .collect();
        let packable =
            labels.iter().all(|l| !l.kind.is_string()) && labels.iter().map(LabelField::bits).sum::<u32>() <= 64;
        Custom {
            value: custom.value_slot().map(|s| field(s, &s.field.name)),
            record_bytes: usize::from(custom.record_bytes),
            keying: if packable { Keying::Packed } else { Keying::Interned(Mutex::default()) },
            labels,
        }
    }

    fn packed_key(&self, record: &[u8]) -> u64 {
        let mut key = 0u64;
        let mut shift = 0;
        for label in &self.labels {
            let bits = label.bits();
            let value = label.number(record) & mask(bits);
            key |= value.checked_shl(shift).unwrap_or(0);
            shift += bits;
        }
        key
    }

    fn packed_value(&self, key: u64, index: usize) -> u64 {
        let shift: u32 = self.labels[..index].iter().map(LabelField::bits).sum();
        key.checked_shr(shift).unwrap_or(0) & mask(self.labels[index].bits())
    }
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

impl Decoder for Custom {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        if record.len() < self.record_bytes {
            return Err(DecodeError { got: record.len(), want: self.record_bytes });
        }
        let key = match &self.keying {
            Keying::Packed => self.packed_key(record),
            Keying::Interned(tuples) => tuples.lock().unwrap_or_else(PoisonError::into_inner).id(&self.labels, record),
        };
        let mut values = [0u64; MAX_METRICS];
        values[0] = 1;
        if let Some(value) = &self.value {
            let raw = value.number(record);
            values[1] = match value.kind {
                // a negative amount (an error return) observes nothing
                FieldKind::Number { signed: true } if sign_extend(raw, value.size) < 0 => NOT_OBSERVED,
                _ => raw,
            };
        }
        Ok(Decoded { key, values })
    }

    fn label(&self, label: &str, key: u64) -> String {
        let Some(index) = self.labels.iter().position(|l| l.name == label) else {
            return format!("unknown label {label}");
        };
        match &self.keying {
            Keying::Packed => self.labels[index].render_number(self.packed_value(key, index)),
            Keying::Interned(tuples) => {
                tuples.lock().unwrap_or_else(PoisonError::into_inner).render(&self.labels, key, index)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::custom::{Roles, HEADER_BYTES};

    fn slot(name: &str, kind: FieldKind, size: u16, roles: Roles) -> Slot {
        Slot {
            field: Field { name: name.into(), c_type: String::new(), kind, offset: 8, size },
            roles,
            record_offset: 0,
        }
    }

    fn label(name: &str) -> Roles {
        Roles { label: Some(name.into()), ..Roles::default() }
    }

    fn record(probe: &CustomProbe, fill: &[(&str, &[u8])]) -> Vec<u8> {
        let mut r = vec![0u8; usize::from(probe.record_bytes)];
        for (name, bytes) in fill {
            let slot = probe.slots.iter().find(|s| s.field.name == *name).expect("slot");
            let at = usize::from(slot.record_offset);
            r[at..at + bytes.len()].copy_from_slice(bytes);
        }
        r
    }

    #[test]
    fn numbers_pack_into_the_key_and_render_signed() {
        let probe = CustomProbe::new(
            HookPoint::Tracepoint("g/n".into()),
            vec![
                slot("sig", FieldKind::Number { signed: true }, 4, label("sig")),
                slot("code", FieldKind::Number { signed: true }, 4, label("code")),
                slot("len", FieldKind::Number { signed: false }, 8, Roles { value: true, ..Roles::default() }),
            ],
        );
        let decoder = Custom::new(&probe);
        assert!(matches!(decoder.keying, Keying::Packed));
        let minus_six = (-6i32 as u32 as u64).to_ne_bytes();
        let r = record(&probe, &[("sig", &12u64.to_ne_bytes()), ("code", &minus_six), ("len", &4096u64.to_ne_bytes())]);
        let d = decoder.decode(&r).expect("decodes");
        assert_eq!(d.values[..2], [1, 4096]);
        assert_eq!(decoder.label("sig", d.key), "12");
        assert_eq!(decoder.label("code", d.key), "-6");
        let short = decoder.decode(&r[..usize::from(HEADER_BYTES)]).unwrap_err();
        assert_eq!(short.want, usize::from(probe.record_bytes));
    }

    #[test]
    fn strings_are_interned_and_fold_into_overflow_past_the_cap() {
        let probe = CustomProbe::new(
            HookPoint::Tracepoint("g/n".into()),
            vec![
                slot("path", FieldKind::UserString, 8, label("path")),
                slot("flags", FieldKind::Number { signed: false }, 8, label("flags")),
            ],
        );
        let decoder = Custom::new(&probe);
        let a = record(&probe, &[("path", b"/tmp/a\0"), ("flags", &2u64.to_ne_bytes())]);
        let b = record(&probe, &[("path", b"/tmp/b\0"), ("flags", &2u64.to_ne_bytes())]);
        let (ka, kb) = (decoder.decode(&a).expect("a").key, decoder.decode(&b).expect("b").key);
        assert_ne!(ka, kb);
        assert_eq!(decoder.decode(&a).expect("again").key, ka);
        assert_eq!((decoder.label("path", ka).as_str(), decoder.label("flags", ka).as_str()), ("/tmp/a", "2"));
        let Keying::Interned(tuples) = &decoder.keying else { panic!("strings are interned") };
        let mut tuples = tuples.lock().expect("lock");
        for n in 0..MAX_TUPLES as u64 {
            let r = record(&probe, &[("path", b"x\0"), ("flags", &n.to_ne_bytes())]);
            tuples.id(&decoder.labels, &r);
        }
        let late = record(&probe, &[("path", b"late\0")]);
        assert_eq!(tuples.id(&decoder.labels, &late), OVERFLOW_KEY);
        assert_eq!(tuples.render(&decoder.labels, OVERFLOW_KEY, 0), "overflow");
    }

    #[test]
    fn negative_values_observe_nothing() {
        let probe = CustomProbe::new(
            HookPoint::Tracepoint("g/n".into()),
            vec![slot("ret", FieldKind::Number { signed: true }, 8, Roles { value: true, ..Roles::default() })],
        );
        let decoder = Custom::new(&probe);
        let r = record(&probe, &[("ret", &(-14i64).to_ne_bytes())]);
        assert_eq!(decoder.decode(&r).expect("decodes").values[1], NOT_OBSERVED);
    }

    #[test]
    fn tracepoint_names_stay_inside_tracefs() {
        assert_eq!(split_tracepoint("signal/signal_generate"), Ok(("signal", "signal_generate")));
        for bad in ["signal", "../x/y", "a/b/c", "a/", "/b", "a/.."] {
            assert!(split_tracepoint(bad).is_err(), "{bad}");
        }
    }
}
