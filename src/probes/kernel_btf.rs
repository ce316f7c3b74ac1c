//! The running kernel's own type information (BTF), for what a probe
//! decides by name: which of the names a function or tracepoint has had
//! across kernel versions this kernel uses, and what an enum's values are
//! called here. Read from `/sys/kernel/btf/vmlinux` each time it is asked
//! for (a spec is built once, a decoder once per load), never cached: the
//! libbpf handle is not shareable between threads.

use libbpf_rs::btf::types::{Enum, Enum64, FuncProto, Int, IntEncoding};
use libbpf_rs::btf::{Btf, BtfKind, BtfType, HasSize};

/// What a function's parameter or return value is, as far as a probe
/// reading it from a register cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// An integer, enum or bool of `size` bytes.
    Integer { size: u16, signed: bool },
    /// A pointer; `chars`: to `char` (a string); `user`: tagged `__user`
    /// (kernels whose BTF carries type tags).
    Pointer { chars: bool, user: bool },
    /// Anything else (a struct passed by value, a float): not read.
    Other,
}

/// A named parameter, or the return value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub name: String,
    /// As C spells it, for messages (`struct file *`).
    pub c_type: String,
    pub kind: ValueKind,
}

/// A kernel function's parameters in order, and its return value (None:
/// `void`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prototype {
    pub params: Vec<Value>,
    pub ret: Option<Value>,
}

/// The kernel's BTF, or nothing when it cannot be read: then every name
/// counts as missing and names are not known.
pub struct KernelBtf {
    btf: Option<Btf<'static>>,
}

impl KernelBtf {
    pub fn load() -> KernelBtf {
        match Btf::from_vmlinux() {
            Ok(btf) => KernelBtf { btf: Some(btf) },
            Err(err) => {
                tracing::debug!(error = %err, "the kernel's BTF cannot be read");
                KernelBtf { btf: None }
            }
        }
    }

    /// Whether the kernel has a type, function or typedef of this name
    /// (a tracepoint `tp` shows as typedef `btf_trace_<tp>`).
    pub fn has(&self, name: &str) -> bool {
        self.btf.as_ref().is_some_and(|btf| btf.type_by_name::<BtfType<'_>>(name).is_some())
    }

    /// The first of `names` (newest first) this kernel has; the newest when
    /// it has none, so that the hook fails and says which name it missed.
    pub fn first_present<'a>(&self, names: &[&'a str]) -> &'a str {
        names.iter().copied().find(|name| self.has(name)).or_else(|| names.first().copied()).unwrap_or_default()
    }

    /// How many parameters function `name`, or the function pointer a
    /// typedef `name` stands for, takes here; None when the kernel has no
    /// such function or typedef. A tracepoint's arguments are those of
    /// typedef `btf_trace_<tp>` after its first (the context).
    pub fn param_count(&self, name: &str) -> Option<usize> {
        func_proto(self.btf.as_ref()?.type_by_name::<BtfType<'_>>(name)?).map(|proto| proto.len())
    }

    /// Function `name`'s prototype here; None when the kernel has no such
    /// function.
    pub fn prototype(&self, name: &str) -> Option<Prototype> {
        let func = self.btf.as_ref()?.type_by_name::<BtfType<'_>>(name)?;
        // a function, not a typedef of a function pointer
        if func.kind() != BtfKind::Func {
            return None;
        }
        let proto = func_proto(func)?;
        let btf = self.btf.as_ref()?;
        let params = proto
            .iter()
            .enumerate()
            .map(|(i, param)| {
                let name = param.name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| format!("arg{i}"));
                let ty = btf.type_by_id::<BtfType<'_>>(param.ty);
                value(name, ty)
            })
            .collect();
        let ret = proto.next_type().filter(|t| t.kind() != BtfKind::Void).map(|t| value("ret".into(), Some(t)));
        Some(Prototype { params, ret })
    }

    /// The (value, name) pairs of enum `name`, None when the kernel has no
    /// such enum.
    pub fn enum_values(&self, name: &str) -> Option<Vec<(i64, String)>> {
        let btf = self.btf.as_ref()?;
        let values = btf.type_by_name::<Enum<'_>>(name)?;
        Some(
            values
                .iter()
                .filter_map(|member| Some((member.value, member.name?.to_string_lossy().into_owned())))
                .collect(),
        )
    }
}

/// The prototype a function, a typedef or a pointer leads to.
fn func_proto(mut ty: BtfType<'_>) -> Option<FuncProto<'_>> {
    while ty.kind() != BtfKind::FuncProto {
        match ty.kind() {
            BtfKind::Func | BtfKind::Typedef | BtfKind::Ptr => ty = ty.next_type()?,
            _ => return None,
        }
    }
    FuncProto::try_from(ty).ok()
}

fn value(name: String, ty: Option<BtfType<'_>>) -> Value {
    match ty {
        Some(ty) => Value { name, c_type: c_type(ty), kind: kind(ty) },
        None => Value { name, c_type: "?".into(), kind: ValueKind::Other },
    }
}

fn kind(ty: BtfType<'_>) -> ValueKind {
    let ty = ty.skip_mods_and_typedefs();
    let size = |bytes: usize| u16::try_from(bytes).unwrap_or(0);
    match ty.kind() {
        BtfKind::Int => match Int::try_from(ty) {
            Ok(int) if matches!(int.bits, 8 | 16 | 32 | 64) => ValueKind::Integer {
                size: u16::from(int.bits / 8),
                signed: matches!(int.encoding, IntEncoding::Signed),
            },
            _ => ValueKind::Other,
        },
        BtfKind::Enum => Enum::try_from(ty)
            .map(|e| ValueKind::Integer { size: size(e.size()), signed: e.is_signed() })
            .unwrap_or(ValueKind::Other),
        BtfKind::Enum64 => Enum64::try_from(ty)
            .map(|e| ValueKind::Integer { size: size(e.size()), signed: e.is_signed() })
            .unwrap_or(ValueKind::Other),
        BtfKind::Ptr => {
            // `char __user *` is ptr → type_tag("user") → char
            let mut pointee = ty.next_type();
            let mut user = false;
            while let Some(t) = pointee.filter(|t| t.is_mod() || t.kind() == BtfKind::Typedef) {
                user |= t.kind() == BtfKind::TypeTag && t.name().is_some_and(|n| n == "user");
                pointee = t.next_type();
            }
            let chars = pointee.is_some_and(|t| t.kind() == BtfKind::Int && t.name().is_some_and(|n| n == "char"));
            ValueKind::Pointer { chars, user }
        }
        _ => ValueKind::Other,
    }
}

/// The type as C spells it: typedef names kept, qualifiers shown.
fn c_type(ty: BtfType<'_>) -> String {
    let named = |prefix: &str| format!("{prefix}{}", ty.name().map(|n| n.to_string_lossy()).unwrap_or_default());
    let next = || ty.next_type().map(c_type).unwrap_or_else(|| "void".into());
    match ty.kind() {
        BtfKind::Void => "void".into(),
        BtfKind::Ptr => format!("{} *", next()),
        BtfKind::Const => format!("const {}", next()),
        BtfKind::Volatile => format!("volatile {}", next()),
        BtfKind::TypeTag => format!("{} __{}", next(), named("")),
        BtfKind::Struct => named("struct "),
        BtfKind::Union => named("union "),
        BtfKind::Enum | BtfKind::Enum64 => named("enum "),
        BtfKind::FuncProto => "function".into(),
        _ => named(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_btf_knows_no_names_and_picks_the_newest() {
        let none = KernelBtf { btf: None };
        assert!(!none.has("task_struct"));
        assert_eq!(none.first_present(&["folio_mark_accessed", "mark_page_accessed"]), "folio_mark_accessed");
        assert_eq!(none.enum_values("skb_drop_reason"), None);
        assert_eq!(none.param_count("vfs_read"), None);
        assert_eq!(none.prototype("vfs_read"), None);
    }

    /// On a kernel with BTF (every kernel sonde supports), types and enums
    /// are found by name.
    #[test]
    fn finds_the_running_kernels_types() {
        let kernel = KernelBtf::load();
        if kernel.btf.is_none() {
            assert!(!std::path::Path::new("/sys/kernel/btf/vmlinux").exists(), "BTF exists but was not read");
            return;
        }
        assert!(kernel.has("task_struct"));
        assert!(!kernel.has("no_such_type_in_any_kernel"));
        assert_eq!(kernel.first_present(&["no_such_type_in_any_kernel", "task_struct"]), "task_struct");
        let states = kernel.enum_values("pid_type").expect("enum pid_type");
        assert!(states.iter().any(|(value, name)| *value == 0 && name == "PIDTYPE_PID"), "{states:?}");
        // vfs_read(file, buf, count, pos) on every supported kernel; a
        // tracepoint's typedef counts its context first.
        assert_eq!(kernel.param_count("vfs_read"), Some(4));
        assert_eq!(kernel.param_count("btf_trace_sched_process_exec"), Some(4));
        assert_eq!(kernel.param_count("task_struct"), None);
        assert_eq!(kernel.param_count("no_such_function_in_any_kernel"), None);
        let read = kernel.prototype("vfs_read").expect("vfs_read");
        let names: Vec<&str> = read.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["file", "buf", "count", "pos"]);
        assert_eq!(read.params[0].kind, ValueKind::Pointer { chars: false, user: false });
        assert_eq!(read.params[0].c_type, "struct file *");
        assert!(matches!(read.params[1].kind, ValueKind::Pointer { chars: true, .. }), "{:?}", read.params[1]);
        assert_eq!(
            (read.params[2].c_type.as_str(), read.params[2].kind),
            ("size_t", ValueKind::Integer { size: 8, signed: false })
        );
        assert_eq!(read.ret.map(|r| r.kind), Some(ValueKind::Integer { size: 8, signed: true }));
        assert_eq!(kernel.prototype("task_struct"), None);
        assert_eq!(kernel.prototype("no_such_function_in_any_kernel"), None);
    }
}
