// Shared by build.rs and the cross-architecture compile test: how sonde
// finds clang and which flags its BPF programs are compiled with.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `$CLANG` if set, else `clang` on PATH, else the newest `clang-NN` on PATH.
pub fn find_clang() -> Result<PathBuf, String> {
    if let Some(clang) = env::var_os("CLANG") {
        return Ok(PathBuf::from(clang));
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    if let Some(found) = dirs.iter().map(|d| d.join("clang")).find(|p| runs(p)) {
        return Ok(found);
    }
    let mut versioned: Vec<(u32, PathBuf)> = Vec::new();
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let version = name.to_str().and_then(|n| n.strip_prefix("clang-")).and_then(|v| v.parse::<u32>().ok());
            if let Some(version) = version {
                if runs(&entry.path()) {
                    versioned.push((version, entry.path()));
                }
            }
        }
    }
    versioned.sort();
    versioned.pop().map(|(_, path)| path).ok_or_else(|| {
        "no clang found to compile the BPF programs: set $CLANG, or install one \
         (Debian/Ubuntu: `apt-get install clang-19`, or `apt-get install clang`)"
            .to_string()
    })
}

fn runs(path: &Path) -> bool {
    path.is_file() && Command::new(path).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// (directory under `vmlinux/`, `__TARGET_ARCH_` value) for a Rust target arch.
pub fn arch_dirs(rust_arch: &str) -> Option<(&'static str, &'static str)> {
    match rust_arch {
        "x86_64" => Some(("x86_64", "x86")),
        "aarch64" => Some(("aarch64", "arm64")),
        _ => None,
    }
}

/// Flags for every BPF program: CO-RE against the vendored header, and no
/// warning left unfixed.
pub fn bpf_flags(manifest_dir: &Path, rust_arch: &str) -> Result<Vec<OsString>, String> {
    let (dir, define) = arch_dirs(rust_arch)
        .ok_or_else(|| format!("no vmlinux.h for target architecture `{rust_arch}` (have: x86_64, aarch64)"))?;
    let mut flags: Vec<OsString> = vec!["-I".into(), manifest_dir.join("vmlinux").join(dir).into()];
    flags.extend(["-I".into(), manifest_dir.join("src/bpf").into()]);
    flags.extend(
        [
            format!("-D__TARGET_ARCH_{define}"),
            "-Wall".into(),
            "-Wextra".into(),
            "-Wno-unused-parameter".into(),
            "-Werror".into(),
        ]
        .map(OsString::from),
    );
    Ok(flags)
}
