//! Compiles every `src/bpf/<probe>.bpf.c` with clang against the vendored
//! `vmlinux/<arch>/vmlinux.h` and generates one libbpf-rs skeleton per probe
//! into `OUT_DIR` (`<probe>.skel.rs`).

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use libbpf_cargo::SkeletonBuilder;

const BPF_DIR: &str = "src/bpf";

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let (vmlinux_arch, target_arch_define) = match arch.as_str() {
        "x86_64" => ("x86_64", "x86"),
        "aarch64" => ("aarch64", "arm64"),
        other => bail!("sonde has no vmlinux.h for target architecture `{other}` (have: x86_64, aarch64)"),
    };
    let vmlinux_dir = manifest_dir.join("vmlinux").join(vmlinux_arch);
    let bpf_dir = manifest_dir.join(BPF_DIR);
    let clang = find_clang()?;

    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed={}", vmlinux_dir.join("vmlinux.h").display());
    println!("cargo:rerun-if-changed={}", bpf_dir.display());

    let mut sources = Vec::new();
    for entry in std::fs::read_dir(&bpf_dir).with_context(|| format!("reading {}", bpf_dir.display()))? {
        let path = entry?.path();
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_name().and_then(OsStr::to_str).unwrap_or_default();
        if let Some(probe) = name.strip_suffix(".bpf.c") {
            sources.push((probe.to_string(), path.clone()));
        }
    }
    sources.sort();
    if sources.is_empty() {
        bail!("no *.bpf.c files in {}", bpf_dir.display());
    }

    for (probe, source) in &sources {
        let skel = out_dir.join(format!("{probe}.skel.rs"));
        SkeletonBuilder::new()
            .source(source)
            .obj(out_dir.join(format!("{probe}.bpf.o")))
            .clang(&clang)
            .clang_args([
                OsStr::new("-I"),
                vmlinux_dir.as_os_str(),
                OsStr::new("-I"),
                bpf_dir.as_os_str(),
                OsStr::new(&format!("-D__TARGET_ARCH_{target_arch_define}")),
                OsStr::new("-Wall"),
                OsStr::new("-Wextra"),
                OsStr::new("-Wno-unused-parameter"),
                OsStr::new("-Werror"),
            ])
            .build_and_generate(&skel)
            .with_context(|| format!("building BPF probe `{probe}` from {}", source.display()))?;
    }
    Ok(())
}

/// `$CLANG` if set, else `clang` on PATH, else the newest `clang-NN` on PATH.
fn find_clang() -> Result<PathBuf> {
    if let Some(clang) = env::var_os("CLANG") {
        return Ok(PathBuf::from(clang));
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    if let Some(found) = dirs.iter().map(|d| d.join("clang")).find(|p| is_executable(p)) {
        return Ok(found);
    }
    let mut versioned: Vec<(u32, PathBuf)> = Vec::new();
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let version = name.to_str().and_then(|n| n.strip_prefix("clang-")).and_then(|v| v.parse::<u32>().ok());
            if let Some(version) = version {
                if is_executable(&entry.path()) {
                    versioned.push((version, entry.path()));
                }
            }
        }
    }
    versioned.sort();
    match versioned.pop() {
        Some((_, path)) => Ok(path),
        None => bail!(
            "no clang found to compile the BPF programs: set $CLANG, or install one \
             (Debian/Ubuntu: `apt-get install clang-19` or `apt-get install clang`)"
        ),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    Command::new(path).arg("--version").output().is_ok()
        && path.metadata().map(|m| m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}
