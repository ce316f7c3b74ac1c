//! Config-defined probes: a hook point named in the config (a tracepoint,
//! or a kernel function's entry or return), the fields of its record (the
//! function's arguments) the probe reads, and what it does with each
//! (a label, the observed value, a filter). The generic BPF program is
//! parameterised from this at load; the layout of the record it writes is
//! decided here, once, for both sides.

use std::fmt::Debug;

/// Fields one config-defined probe reads: labels, value and filtered fields
/// together. Each costs a read per event and room in the record.
pub const MAX_FIELDS: usize = 4;
/// Bytes of a string field read and recorded, its NUL included.
pub const STRING_BYTES: usize = 64;
/// The longest string a filter compares: shorter than the read buffer by
/// one more byte than the NUL, so a longer kernel string can never match.
pub const MAX_FILTER_STRING_BYTES: usize = STRING_BYTES - 2;
/// Values one numeric field filter keeps.
pub const MAX_NUMBER_FILTER_VALUES: usize = 8;
/// Values one string field filter keeps.
pub const MAX_STRING_FILTER_VALUES: usize = 4;
/// Arguments a function probe reads: those passed in registers on every
/// architecture sonde runs on.
pub const MAX_ARGS: usize = 6;
/// Bytes of the common record header (`struct event_header`).
pub const HEADER_BYTES: u16 = 32;

/// How a field's bytes are read from the hook's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// An integer of `size` bytes (1, 2, 4 or 8).
    Number { signed: bool },
    /// `char name[N]` inside the record.
    InlineString,
    /// `__data_loc char[] name`: a 32-bit (length << 16 | offset) locator
    /// of bytes further on in the record.
    DataLocString,
    /// A pointer to a NUL-terminated string in the calling process's
    /// memory (system call arguments such as openat's `filename`).
    UserString,
    /// A pointer to a NUL-terminated string in kernel memory.
    KernelString,
    /// Any other pointer (a function's `struct file *`): a number to
    /// filter or label by, not an amount.
    Pointer,
}

impl FieldKind {
    pub fn is_string(self) -> bool {
        !matches!(self, FieldKind::Number { .. } | FieldKind::Pointer)
    }
}

/// One field of a hook's record, as the running kernel describes it. A
/// function's argument is a field whose `offset` is its index; its return
/// value (`ret`) has the index after the last argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C declaration's type, for messages (`const char *`).
    pub c_type: String,
    pub kind: FieldKind,
    pub offset: u16,
    pub size: u16,
}

/// Where config-defined probes learn the shape of a hook's record: the
/// running kernel's tracefs (`probes::custom`), or fixed text in tests.
pub trait HookSchemas: Send + Sync + Debug {
    /// The fields of tracepoint `group/name`, or why they cannot be had.
    fn tracepoint(&self, target: &str) -> Result<Vec<Field>, String>;
    /// Function `name`'s arguments and its return value, or why they
    /// cannot be had.
    fn function(&self, name: &str) -> Result<Prototype, String>;
}

/// A function's arguments as fields, in order (those after one that is
/// not read from a single register are left out), and its return value
/// (None: `void`) as field `ret` of index `arg_count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prototype {
    pub args: Vec<Field>,
    pub ret: Option<Field>,
    /// Every argument, read or not.
    pub arg_count: u16,
}

/// Where a config-defined probe hooks in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookPoint {
    /// `group/name`.
    Tracepoint(String),
    /// A kernel function's entry (`ret` false) or return; `arg_count`
    /// places the return value after the arguments.
    Function { name: String, ret: bool, arg_count: u16 },
}

/// What the probe does with a field; one field may serve several roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles {
    /// The label it is shown as, if it is one.
    pub label: Option<String>,
    pub value: bool,
    pub filter: Option<FieldFilter>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldFilter {
    /// Values as the field's bytes hold them (negative numbers in two's
    /// complement at the field's size).
    Numbers(Vec<u64>),
    Strings(Vec<String>),
}

/// A field the program reads, and where the record carries it (if it does:
/// a field only filtered on is not sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub field: Field,
    pub roles: Roles,
    /// Offset in the record, 0 when the record does not carry it.
    pub record_offset: u16,
}

impl Slot {
    pub fn recorded(&self) -> bool {
        self.record_offset != 0
    }
}

/// A config-defined probe on one hook point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomProbe {
    pub point: HookPoint,
    /// At most [`MAX_FIELDS`].
    pub slots: Vec<Slot>,
    /// Bytes of the record: the header, then the recorded fields.
    pub record_bytes: u16,
}

impl CustomProbe {
    /// Lays out the record: numbers first (8 bytes each, so they stay
    /// aligned), then strings ([`STRING_BYTES`] each).
    pub fn new(point: HookPoint, mut slots: Vec<Slot>) -> CustomProbe {
        let mut at = HEADER_BYTES;
        for string in [false, true] {
            for slot in slots.iter_mut().filter(|s| s.field.kind.is_string() == string) {
                let carried = slot.roles.label.is_some() || slot.roles.value;
                slot.record_offset = if carried { at } else { 0 };
                if carried {
                    at += if string { STRING_BYTES as u16 } else { 8 };
                }
            }
        }
        CustomProbe { point, slots, record_bytes: at }
    }

    /// The slot shown as label `label`.
    pub fn label_slot(&self, label: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.roles.label.as_deref() == Some(label))
    }

    pub fn value_slot(&self) -> Option<&Slot> {
        self.slots.iter().find(|s| s.roles.value)
    }

    /// Whether it reads a function's arguments (not only its return value).
    pub fn reads_args(&self) -> bool {
        match &self.point {
            HookPoint::Function { arg_count, .. } => self.slots.iter().any(|s| s.field.offset < *arg_count),
            HookPoint::Tracepoint(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, kind: FieldKind, roles: Roles) -> Slot {
        let field = Field { name: name.into(), c_type: String::new(), kind, offset: 8, size: 4 };
        Slot { field, roles, record_offset: 0 }
    }

    #[test]
    fn record_carries_only_labels_and_value_numbers_first() {
        let label = |l: &str| Roles { label: Some(l.into()), ..Roles::default() };
        let filter_only = Roles { filter: Some(FieldFilter::Numbers(vec![1])), ..Roles::default() };
        let probe = CustomProbe::new(
            HookPoint::Tracepoint("g/n".into()),
            vec![
                slot("path", FieldKind::UserString, label("path")),
                slot("flags", FieldKind::Number { signed: false }, filter_only),
                slot("sig", FieldKind::Number { signed: true }, label("sig")),
                slot("len", FieldKind::Number { signed: false }, Roles { value: true, ..Roles::default() }),
            ],
        );
        let offsets: Vec<u16> = probe.slots.iter().map(|s| s.record_offset).collect();
        assert_eq!(offsets, [48, 0, 32, 40]);
        assert_eq!(probe.record_bytes, 48 + STRING_BYTES as u16);
        assert_eq!(probe.label_slot("sig").map(|s| s.field.name.as_str()), Some("sig"));
        assert_eq!(probe.value_slot().map(|s| s.field.name.as_str()), Some("len"));
    }
}
