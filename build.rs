//! Compiles every `src/bpf/<probe>.bpf.c` with clang against the vendored
//! `vmlinux/<arch>/vmlinux.h` and generates one libbpf-rs skeleton per probe
//! into `OUT_DIR` (`<probe>.skel.rs`).

#[path = "build/clang.rs"]
mod clang;

use std::env;
use std::ffi::OsStr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_cargo::SkeletonBuilder;

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let flags = clang::bpf_flags(&manifest_dir, &arch).map_err(|e| anyhow!(e))?;
    let clang = clang::find_clang().map_err(|e| anyhow!(e))?;
    let bpf_dir = manifest_dir.join("src/bpf");

    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed=build/clang.rs");
    println!("cargo:rerun-if-changed=vmlinux");
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
        SkeletonBuilder::new()
            .source(source)
            .obj(out_dir.join(format!("{probe}.bpf.o")))
            .clang(&clang)
            .clang_args(&flags)
            .build_and_generate(out_dir.join(format!("{probe}.skel.rs")))
            .with_context(|| format!("building BPF probe `{probe}` from {}", source.display()))?;
    }
    Ok(())
}
