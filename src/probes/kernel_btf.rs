//! The running kernel's own type information (BTF), for what a probe
//! decides by name: which of the names a function or tracepoint has had
//! across kernel versions this kernel uses, and what an enum's values are
//! called here. Read from `/sys/kernel/btf/vmlinux` each time it is asked
//! for (a spec is built once, a decoder once per load), never cached: the
//! libbpf handle is not shareable between threads.

use libbpf_rs::btf::types::{Enum, FuncProto};
use libbpf_rs::btf::{Btf, BtfKind, BtfType};

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
        let mut ty = self.btf.as_ref()?.type_by_name::<BtfType<'_>>(name)?;
        while ty.kind() != BtfKind::FuncProto {
            match ty.kind() {
                BtfKind::Func | BtfKind::Typedef | BtfKind::Ptr => ty = ty.next_type()?,
                _ => return None,
            }
        }
        FuncProto::try_from(ty).ok().map(|proto| proto.len())
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
    }
}
