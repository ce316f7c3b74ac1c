//! Why a hook could not be used on this kernel, in the terms a user can act
//! on. libbpf's error says what failed (an ENOENT opening a file, an EPERM
//! from bpf()); the kernel's own files say why: the kprobe PMU, the kernel's
//! BTF, the symbol table and tracefs's list of tracepoints.

use std::path::Path;

use super::LoadError;
use crate::spec::{HookKind, HookSpec, ProgramSpec};

const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
const KALLSYMS: &str = "/proc/kallsyms";
const TRACEFS_EVENTS: [&str; 2] = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"];

/// Whether a kernel function exists under its own name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Symbol {
    Present,
    /// Only a compiler-made variant exists (`name.isra.0`, `name.constprop.0`):
    /// the function was specialised and its plain name is gone.
    Renamed(String),
    Missing,
}

/// Looks `name` up in the text of /proc/kallsyms (`address type name
/// [module]` per line).
pub fn symbol_in(kallsyms: &str, name: &str) -> Symbol {
    symbols_in(kallsyms, &[name]).remove(0)
}

/// Looks each of `names` up in one pass over the text of /proc/kallsyms.
pub fn symbols_in(kallsyms: &str, names: &[&str]) -> Vec<Symbol> {
    let mut found: Vec<Option<Symbol>> = vec![None; names.len()];
    for symbol in kallsyms.lines().filter_map(|line| line.split_whitespace().nth(2)) {
        for (name, found) in names.iter().zip(found.iter_mut()) {
            if symbol == *name {
                *found = Some(Symbol::Present);
                continue;
            }
            let specialised = symbol.strip_prefix(name).and_then(|rest| rest.strip_prefix('.'));
            // `.cold` is a split-off slow path, not the function's entry.
            if found.is_none() && specialised.is_some_and(|suffix| !suffix.starts_with("cold")) {
                *found = Some(Symbol::Renamed(symbol.to_string()));
            }
        }
    }
    found.into_iter().map(|f| f.unwrap_or(Symbol::Missing)).collect()
}

/// A kernel function that optional programs of a hook attach to, and that
/// this kernel lacks: those programs are not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsentFunction {
    pub function: String,
    pub reason: String,
}

impl AbsentFunction {
    /// Whether `program` is one of the optional programs left out for it.
    pub fn covers(&self, program: &ProgramSpec) -> bool {
        program.optional && hook_point(&program.target) == self.function
    }
}

/// The kernel functions of `hook`'s optional programs that this kernel
/// lacks. None when /proc/kallsyms cannot be read: rather than guess, every
/// program is loaded, and a missing function fails the hook with its own
/// error.
pub fn absent_functions(hook: &HookSpec) -> Vec<AbsentFunction> {
    if !hook.programs.iter().any(|p| p.optional) {
        return Vec::new();
    }
    match std::fs::read_to_string(KALLSYMS) {
        Ok(kallsyms) => absent_in(&kallsyms, hook),
        Err(_) => Vec::new(),
    }
}

fn absent_in(kallsyms: &str, hook: &HookSpec) -> Vec<AbsentFunction> {
    let mut functions: Vec<&str> = Vec::new();
    for function in hook.programs.iter().filter(|p| p.optional).map(|p| hook_point(&p.target)) {
        if !functions.contains(&function) {
            functions.push(function);
        }
    }
    functions
        .iter()
        .zip(symbols_in(kallsyms, &functions))
        .filter_map(|(function, symbol)| {
            let reason = match symbol {
                Symbol::Present => return None,
                Symbol::Renamed(variant) => {
                    format!("renamed here ({variant} in {KALLSYMS}): the compiler specialised it")
                }
                Symbol::Missing => {
                    format!("not in {KALLSYMS}: not built into this kernel, or its module is not loaded")
                }
            };
            Some(AbsentFunction { function: function.to_string(), reason })
        })
        .collect()
}

/// The kernel function or tracepoint a program's target names: its first
/// word (`vfs_read (fexit)` → `vfs_read`).
pub fn hook_point(target: &str) -> &str {
    target.split_whitespace().next().unwrap_or(target)
}

/// Why `hook` was skipped, given the error its load or attach ended with.
pub fn explain(hook: &HookSpec, error: &LoadError) -> String {
    let missing = match hook.kind {
        HookKind::Kprobe => kprobe_missing(hook),
        HookKind::Fentry => fentry_missing(hook),
        HookKind::Tracepoint | HookKind::BtfTracepoint => tracepoint_missing(hook),
    };
    missing.unwrap_or_else(|| refused(hook.kind, error))
}

fn kprobe_missing(hook: &HookSpec) -> Option<String> {
    if !Path::new(KPROBE_PMU).exists() {
        return Some(format!("no kprobe PMU ({KPROBE_PMU} is missing: the kernel is built without kprobes)"));
    }
    functions_missing(hook)
}

fn fentry_missing(hook: &HookSpec) -> Option<String> {
    if !Path::new(KERNEL_BTF).exists() {
        return Some(format!("no kernel BTF ({KERNEL_BTF} is missing), which fentry needs"));
    }
    functions_missing(hook)
}

/// The first of the hook's required functions that the symbol table lacks
/// (optional ones are left out where missing, not a reason to skip it).
fn functions_missing(hook: &HookSpec) -> Option<String> {
    // Unreadable: say nothing rather than guess.
    let kallsyms = std::fs::read_to_string(KALLSYMS).ok()?;
    // a hook set may carry tracepoints (`category/name`) beside functions;
    // optional programs may be absent without the hook being skipped
    let mut functions = hook
        .programs
        .iter()
        .filter(|p| !p.optional)
        .map(|p| hook_point(&p.target))
        .filter(|point| !point.contains('/'));
    functions.find_map(|function| match symbol_in(&kallsyms, function) {
        Symbol::Present => None,
        Symbol::Renamed(variant) => Some(format!(
            "kernel function {function} is renamed here ({variant} in {KALLSYMS}): the compiler specialised it"
        )),
        Symbol::Missing => Some(format!("kernel function {function} is missing from {KALLSYMS} (inlined or removed)")),
    })
}

fn tracepoint_missing(hook: &HookSpec) -> Option<String> {
    let events = TRACEFS_EVENTS.iter().map(Path::new).find(|dir| dir.is_dir())?;
    hook.programs
        .iter()
        .map(|p| hook_point(&p.target))
        .find(|tracepoint| !events.join(tracepoint).is_dir())
        .map(|tracepoint| format!("tracepoint {tracepoint} is absent from this kernel"))
}

/// Everything the hook needs is there, yet the kernel refused it.
fn refused(kind: HookKind, error: &LoadError) -> String {
    let denied = match error {
        LoadError::Load { source, .. } | LoadError::Attach { source, .. } => {
            source.kind() == libbpf_rs::ErrorKind::PermissionDenied
        }
        LoadError::Open(_) | LoadError::Missing(_) | LoadError::NoFunction(_) => false,
    };
    match (kind, error) {
        (HookKind::Fentry, LoadError::Load { verifier_log, .. }) if denied && verifier_log.is_empty() => {
            "the kernel refused to load it (EPERM) before the verifier ran: fentry needs BPF trampolines, which this \
             kernel or a security policy withholds"
                .to_string()
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS_TEXT: &str = "\
ffffffff816d5b70 T vfs_read
ffffffff81000000 t do_thing.isra.0
ffffffff81000010 t slow_path.cold
ffffffff81000020 t ext4_file_read_iter\t[ext4]
";

    #[test]
    fn symbols_are_found_by_exact_name() {
        assert_eq!(symbol_in(KALLSYMS_TEXT, "vfs_read"), Symbol::Present);
        assert_eq!(symbol_in(KALLSYMS_TEXT, "ext4_file_read_iter"), Symbol::Present);
        assert_eq!(symbol_in(KALLSYMS_TEXT, "vfs_rea"), Symbol::Missing);
    }

    #[test]
    fn specialised_variants_count_as_renamed_but_cold_parts_do_not() {
        assert_eq!(symbol_in(KALLSYMS_TEXT, "do_thing"), Symbol::Renamed("do_thing.isra.0".into()));
        assert_eq!(symbol_in(KALLSYMS_TEXT, "slow_path"), Symbol::Missing);
    }

    #[test]
    fn symbols_are_looked_up_together_in_one_pass() {
        let found = symbols_in(KALLSYMS_TEXT, &["vfs_read", "do_thing", "slow_path"]);
        assert_eq!(found, [Symbol::Present, Symbol::Renamed("do_thing.isra.0".into()), Symbol::Missing]);
    }

    #[test]
    fn absent_optional_functions_are_named_once_and_required_ones_never() {
        let hook = HookSpec::new(HookKind::Fentry, &[("a", "vfs_read (fentry)"), ("b", "gone_required (fexit)")])
            .optional(&[
                ("c", "ext4_file_read_iter (fentry)"),
                ("d", "xfs_file_read_iter (fentry)"),
                ("e", "xfs_file_read_iter (fexit)"),
                ("f", "do_thing (fexit)"),
            ]);
        let absent = absent_in(KALLSYMS_TEXT, &hook);
        let functions: Vec<&str> = absent.iter().map(|a| a.function.as_str()).collect();
        assert_eq!(functions, ["xfs_file_read_iter", "do_thing"]);
        assert!(absent[0].reason.contains("module is not loaded"), "{}", absent[0].reason);
        assert!(absent[1].reason.contains("do_thing.isra.0"), "{}", absent[1].reason);
        let left_out: Vec<&str> =
            hook.programs.iter().filter(|p| absent.iter().any(|a| a.covers(p))).map(|p| p.program.as_str()).collect();
        assert_eq!(left_out, ["d", "e", "f"]);
    }

    #[test]
    fn hook_point_is_the_first_word_of_the_target() {
        assert_eq!(hook_point("vfs_read (fexit)"), "vfs_read");
        assert_eq!(hook_point("sched/sched_process_exec"), "sched/sched_process_exec");
    }

    #[test]
    fn absent_tracepoints_are_named() {
        let hook = HookSpec::new(HookKind::Tracepoint, &[("p", "nosuch_category/nosuch_event")]);
        let err = LoadError::Missing("x".into());
        if TRACEFS_EVENTS.iter().any(|d| Path::new(d).is_dir()) {
            assert_eq!(explain(&hook, &err), "tracepoint nosuch_category/nosuch_event is absent from this kernel");
        } else {
            // without tracefs nothing can be said beyond the error itself
            assert_eq!(explain(&hook, &err), err.to_string());
        }
    }
}
