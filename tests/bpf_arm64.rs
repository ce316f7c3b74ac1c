//! Every BPF program also compiles for arm64, against the vendored arm64
//! header, with the flags the build uses, so an aarch64 build cannot rot
//! unseen on x86_64 machines. The object is then opened by libbpf, which
//! parses its BTF and CO-RE relocations.

#[path = "../build/clang.rs"]
mod clang;

use std::path::Path;
use std::process::Command;

use libbpf_rs::libbpf_sys;

#[test]
fn every_bpf_program_compiles_for_arm64() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("sonde-arm64-{}", std::process::id()));
    let headers = work.join("include");
    std::fs::create_dir_all(headers.join("bpf")).expect("temp dir");
    for (name, contents) in libbpf_sys::API_HEADERS.iter() {
        std::fs::write(headers.join("bpf").join(name), contents).expect("write libbpf header");
    }
    let clang = clang::find_clang().expect("clang");
    let flags = clang::bpf_flags(manifest, "aarch64").expect("arm64 flags");

    let mut compiled = Vec::new();
    for entry in std::fs::read_dir(manifest.join("src/bpf")).expect("src/bpf") {
        let source = entry.expect("dir entry").path();
        let Some(probe) = source.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".bpf.c")) else {
            continue;
        };
        let object = work.join(format!("{probe}.arm64.bpf.o"));
        let out = Command::new(&clang)
            .args(&flags)
            .arg("-I")
            .arg(&headers)
            .args(["-g", "-O2", "-target", "bpf", "-fno-stack-protector", "-c"])
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .output()
            .expect("run clang");
        assert!(out.status.success(), "{probe} does not compile for arm64:\n{}", String::from_utf8_lossy(&out.stderr));
        let opened = libbpf_rs::ObjectBuilder::default().open_file(&object);
        assert!(opened.is_ok(), "libbpf cannot open the arm64 object for {probe}: {:?}", opened.err());
        compiled.push(probe.to_string());
    }
    let _ = std::fs::remove_dir_all(&work);
    // The loop compiles whatever src/bpf holds; this only guards against it
    // finding nothing (a wrong path), without a count to keep in step with
    // every probe added.
    for expected in ["exec", "exit", "types", "cgroup_paths"] {
        assert!(compiled.iter().any(|p| p == expected), "{expected}.bpf.c was not compiled; compiled: {compiled:?}");
    }
}
