#!/bin/bash
# bpf-inputs.sh [--files | --check MARKDOWN]
#
# The inputs that decide what the kernel sees of sonde, and one hash of them.
# A full kernel matrix (run-suite.sh --full) records this hash in
# docs/kernels.md; CI recomputes it and fails when the record is not of the
# current inputs, so a change to BPF code cannot land without a full matrix
# run of that code, while a change elsewhere does not pay for five VMs.
#
# The inputs (paths relative to the repository):
#   src/bpf/                the BPF programs and their headers
#   vmlinux/                the kernel types they are compiled against
#   build.rs, build/        how clang compiles them (flags, target, skeletons)
#   src/loader/             open, size, load and attach every program
#   src/probes/             each probe's hooks, the read-only data and map
#                           sizes it sets before load, config-defined programs
#   src/spec/               hooks and their fallbacks, settings that reach
#                           .rodata (filters, aggregation, limits)
#   src/sink.rs             the in-kernel tables' overflow keys, filled before
#                           the first event, and their deletion at expiry
#   src/enrich/cgroup_paths.rs  the cgroup-naming program's loader
#   src/system.rs           tracefs mounting and locked memory before a load
#   Cargo.lock's libbpf-rs and libbpf-sys entries: the libbpf that relocates,
#                           loads and attaches (nothing else of the lock file)
# Nothing else: the agent's scrape, HTTP, config parsing and the tests are
# proven on every CI run on the oldest and newest kernels and the host.
#
#   --files            list the files hashed, one per line
#   --check MARKDOWN   exit 1, saying why, unless MARKDOWN records this hash
#                      on a line `BPF inputs: sha256 <hash>`
#   (no argument)      print the hash
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"

DIRS=(src/bpf vmlinux build src/loader src/probes src/spec)
FILES=(build.rs src/sink.rs src/enrich/cgroup_paths.rs src/system.rs)

files() {
    {
        find "${DIRS[@]}" -type f
        printf '%s\n' "${FILES[@]}"
    } | LC_ALL=C sort -u
}

# The [[package]] blocks of libbpf-rs and libbpf-sys (name, version, source,
# checksum, dependencies): the libbpf whose loader the kernel meets.
libbpf_lock() {
    awk '/^\[\[package\]\]/ { if (keep) printf "%s", block; block = ""; keep = 0 }
         { block = block $0 "\n" }
         /^name = "libbpf-(rs|sys)"$/ { keep = 1 }
         END { if (keep) printf "%s", block }' Cargo.lock
}

hash() {
    local f
    {
        while IFS= read -r f; do
            [ -f "$f" ] || { echo "bpf-inputs: missing input $f" >&2; exit 2; }
            printf '%s %s\n' "$(sha256sum < "$f" | cut -d' ' -f1)" "$f"
        done < <(files)
        printf '%s Cargo.lock:libbpf\n' "$(libbpf_lock | sha256sum | cut -d' ' -f1)"
    } | sha256sum | cut -d' ' -f1
}

case "${1:-}" in
    --files) files; echo "Cargo.lock (libbpf-rs and libbpf-sys entries)" ;;
    --check)
        [ $# -eq 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
        now=$(hash)
        recorded=$(sed -n -E 's/.*BPF inputs: sha256 `?([0-9a-f]{64})`?.*/\1/p' "$2" | head -1)
        if [ "$recorded" = "$now" ]; then
            echo "bpf-inputs: $2 records a full kernel matrix of the current BPF inputs (sha256 $now)"
            exit 0
        fi
        {
            echo "bpf-inputs: ERROR: $2 is not a full kernel matrix of the current BPF inputs."
            echo "  recorded: ${recorded:-(none)}"
            echo "  current:  $now"
            echo "  The BPF programs, vmlinux headers or the Rust code that sizes, fills and attaches"
            echo "  them changed (tests/vm/bpf-inputs.sh --files lists what is hashed). Run the full"
            echo "  matrix on this code and commit what it writes:"
            echo "      tests/vm/run-suite.sh --full"
        } >&2
        exit 1
        ;;
    "") hash ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
