//! Config-defined probes on kernel functions: the programs of
//! `src/bpf/custom_function.bpf.c` and the function's prototype, from the
//! kernel's BTF, as the fields those programs read.

use super::super::kernel_btf::{self, ValueKind};
use crate::spec::custom::{Field, FieldKind, Prototype};
use crate::spec::HookPoint;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/custom_function.skel.rs"));
}
use skel::CustomFunctionSkelBuilder;

/// The generic programs' names, as their specs' hooks name them.
pub const FENTRY_PROGRAM: &str = "custom_fentry";
pub const FEXIT_PROGRAM: &str = "custom_fexit";
pub const KPROBE_PROGRAM: &str = "custom_kprobe";
/// Saves the arguments a kretprobe reads, at the function's entry.
pub const KRETPROBE_ENTRY_PROGRAM: &str = "custom_kretprobe_entry";
pub const KRETPROBE_PROGRAM: &str = "custom_kretprobe";

crate::loader::skeleton_loader!(CustomFunctionSkelBuilder, |rodata, settings| {
    let custom = super::custom_of(settings)?;
    super::set_rodata_fields!(rodata, custom);
    if let HookPoint::Function { arg_count, .. } = custom.point {
        rodata.ret_index = u32::from(arg_count);
    }
    rodata.saves_args = custom.reads_args();
});

/// The macro's `load`, for the runner's.
pub(super) fn load_program(
    settings: &crate::spec::ProbeSettings,
    hook: &crate::spec::HookSpec,
    ctx: &crate::loader::LoadContext,
) -> Result<crate::loader::Loaded, crate::loader::LoadError> {
    load(settings, hook, ctx)
}

/// The arguments a probe can read, as fields: integers (enums and bools
/// too), strings (`char *`) and other pointers. The rest (a struct passed
/// by value, a float) is not in a single general register, which also
/// leaves the registers of the arguments after it unknown: those are not
/// offered.
pub fn fields(prototype: kernel_btf::Prototype) -> Prototype {
    let arg_count = u16::try_from(prototype.params.len()).unwrap_or(u16::MAX);
    let args = prototype
        .params
        .into_iter()
        .enumerate()
        .map_while(|(index, param)| field(param, u16::try_from(index).unwrap_or(u16::MAX)))
        .collect();
    let ret = prototype.ret.and_then(|ret| field(ret, arg_count));
    Prototype { args, ret, arg_count }
}

fn field(value: kernel_btf::Value, index: u16) -> Option<Field> {
    let (kind, size) = match value.kind {
        ValueKind::Integer { size, signed } => (FieldKind::Number { signed }, size),
        ValueKind::Pointer { chars: true, user: true } => (FieldKind::UserString, 8),
        ValueKind::Pointer { chars: true, user: false } => (FieldKind::KernelString, 8),
        ValueKind::Pointer { chars: false, .. } => (FieldKind::Pointer, 8),
        ValueKind::Other => return None,
    };
    Some(Field { name: value.name, c_type: value.c_type, kind, offset: index, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(name: &str, kind: ValueKind) -> kernel_btf::Value {
        kernel_btf::Value { name: name.into(), c_type: String::new(), kind }
    }

    #[test]
    fn arguments_become_indexed_fields_up_to_one_not_in_a_register() {
        let prototype = kernel_btf::Prototype {
            params: vec![
                value("file", ValueKind::Pointer { chars: false, user: false }),
                value("buf", ValueKind::Pointer { chars: true, user: true }),
                value("whole", ValueKind::Other),
                value("count", ValueKind::Integer { size: 8, signed: false }),
            ],
            ret: Some(value("ret", ValueKind::Integer { size: 4, signed: true })),
        };
        let fields = fields(prototype);
        let args: Vec<(&str, FieldKind, u16)> =
            fields.args.iter().map(|f| (f.name.as_str(), f.kind, f.offset)).collect();
        assert_eq!(args, [("file", FieldKind::Pointer, 0), ("buf", FieldKind::UserString, 1)]);
        assert_eq!(fields.arg_count, 4);
        let ret = fields.ret.expect("ret");
        assert_eq!((ret.kind, ret.offset, ret.size), (FieldKind::Number { signed: true }, 4, 4));
    }
}
