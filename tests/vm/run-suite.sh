#!/bin/bash
# run-suite.sh --full
# run-suite.sh [--kernels "debian-5.10 debian-7.x"] [--no-host] [--no-build]
#              [--docs] [--out DIR] [--kernels-dir DIR] [-- TEST_ARGS...]
#
# Runs sonde's root test suite (`cargo test --test root`) on Debian's
# kprobe-capable kernels under qemu (TCG) and on this machine's own kernel,
# and prints a test x kernel table.
#
#   --full            the record: every kernel (debian-5.10, -6.1, -6.12,
#                     -7.x, -arm64-6.1) and the host, written to
#                     docs/kernels.md with the hash of the BPF inputs it ran
#                     (tests/vm/bpf-inputs.sh), which CI checks. Run it after
#                     every change to those inputs, and commit the result.
#   --kernels LIST    kernels to boot (default "debian-5.10 debian-7.x", the
#                     oldest and newest, as CI boots on every run; names as
#                     in fetch-kernels.sh; "" for none). An arm64 kernel runs
#                     aarch64 builds of both binaries under qemu-system-aarch64.
#   --no-host         do not run the suite natively on the host kernel
#   --no-build        do not build; use SONDE_VM_BIN/SONDE_VM_TESTBIN or the
#                     binaries recorded by the last build (target/vm/vm-binaries)
#   --rerender        run nothing: parse the results in OUT again and print
#                     (and with --docs or a --full record, write) the tables
#   --docs            write the markdown matrix (--full does; a partial
#                     matrix carries no BPF-inputs hash)
#   --out DIR         per-kernel results (default target/vm/results)
#   --kernels-dir DIR downloaded kernels (default ~/.cache/sonde-vm/kernels:
#                     a cache, only an optimisation)
#   -- TEST_ARGS      extra arguments for the test binary (e.g. a name filter),
#                     after --test-threads=1
#
# In the VMs the test binary runs with SONDE_ROOT_TESTS=kernel: the tests
# that do not depend on the kernel (HTTP, web config, config errors; listed
# in tests/root/main.rs) run on the host only.
#
# Environment:
#   SONDE_VM_BIN, SONDE_VM_TESTBIN  use these static binaries, skip the build
#   SONDE_VM_BIN_AARCH64, SONDE_VM_TESTBIN_AARCH64  the same for arm64 kernels
#   SONDE_KERNELS_MD   markdown output (default docs/kernels.md)
#   SONDE_VM_ENV       extra host variable names passed into the guests
#                      (RUST_BACKTRACE and RUST_LOG always are)
#   SONDE_VM_NO_INSTALL=1  never apt-get install; fail if a package is missing
#   SONDE_VM_RETRIES=2 times a VM run that ended in an infrastructure failure
#                      (crash, hang: no exit marker) is booted again; the new
#                      boot resumes with the tests that had not finished, and
#                      the retry is reported in the table and the markdown
#   MEM=1024 SMP=2 TIMEOUT=600 APPEND= CPU=  passed to run-in-vm.sh; TIMEOUT
#                      also bounds the host run
#   TIMEOUT_AARCH64=2400  TIMEOUT for arm64 kernels (TCG emulates a foreign
#                      instruction set: several times slower)
#
# Exit code: 0 all ran and passed; 1 a test failed (on any kernel); 125 no test
# failed but an infrastructure failure happened (a VM did not boot or finish,
# a kernel could not be fetched, no libtest result line); 2 usage; 3 build.
set -euo pipefail

# Packages this script needs on a fresh Debian 12 machine (installed below if
# missing): the VM tools, and the build dependencies of a static sonde.
VM_PACKAGES="qemu-system-x86 busybox-static cpio file jq"
BUILD_PACKAGES="clang-19 libelf-dev zlib1g-dev pkg-config bpftool"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TARGET=x86_64-unknown-linux-gnu

log() { printf 'run-suite: %s\n' "$*" >&2; }
die() { printf 'run-suite: ERROR: %s\n' "$*" >&2; exit "${2:-2}"; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

ALL_KERNELS="debian-5.10 debian-6.1 debian-6.12 debian-7.x debian-arm64-6.1"
KERNELS="debian-5.10 debian-7.x"
HOST=1 BUILD=1 DOCS=0 FULL=0 RERENDER=0
OUT=$REPO/target/vm/results
KDIR=${XDG_CACHE_HOME:-$HOME/.cache}/sonde-vm/kernels
TEST_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --full) FULL=1; shift ;;
        --rerender) RERENDER=1; shift ;;
        --kernels) [ $# -ge 2 ] || usage; KERNELS=$2; shift 2 ;;
        --kernels=*) KERNELS=${1#*=}; shift ;;
        --no-host) HOST=0; shift ;;
        --no-build) BUILD=0; shift ;;
        --docs) DOCS=1; shift ;;
        --no-docs) DOCS=0; shift ;;
        --out) [ $# -ge 2 ] || usage; OUT=$2; shift 2 ;;
        --kernels-dir) [ $# -ge 2 ] || usage; KDIR=$2; shift 2 ;;
        --) shift; TEST_ARGS=("$@"); break ;;
        -h|--help) usage ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
if [ "$FULL" = 1 ]; then
    [ ${#TEST_ARGS[@]} -eq 0 ] || die "--full runs every test: no TEST_ARGS"
    [ "$HOST" = 1 ] || die "--full runs the host too: no --no-host"
    KERNELS=$ALL_KERNELS DOCS=1
    # The inputs the record is of, taken before the build.
    BPF_INPUTS=$("$HERE/bpf-inputs.sh")
fi
KNOWN=" $("$HERE/fetch-kernels.sh" --list) "
for k in $KERNELS; do
    case "$KNOWN" in *" $k "*) ;; *) die "unknown kernel '$k' (known: $("$HERE/fetch-kernels.sh" --list))" ;; esac
done
kernel_arch() { "$HERE/fetch-kernels.sh" --arch "$1"; }
# The host's binaries serve the host run and the amd64 kernels; arm64
# kernels get their own build (section "arm64" below).
ARM64_KERNELS="" NEED_HOST_BINARIES=$HOST
for k in $KERNELS; do
    if [ "$(kernel_arch "$k")" = arm64 ]; then ARM64_KERNELS="$ARM64_KERNELS $k"; else NEED_HOST_BINARIES=1; fi
done
MD=${SONDE_KERNELS_MD:-$REPO/docs/kernels.md}
export MEM=${MEM:-1024} SMP=${SMP:-2} TIMEOUT=${TIMEOUT:-600}
# an ext4 disk for fs_latency's tests (run-in-vm.sh)
export VM_EXT4_MB=${VM_EXT4_MB:-64}
RETRIES=${SONDE_VM_RETRIES:-2}
SUITE_START=$(date +%s)
# The commit the suite runs (the markdown names it), taken at its start.
RUN_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || true)
if [ -n "$RUN_COMMIT" ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    RUN_COMMIT="$RUN_COMMIT\` with uncommitted changes\`"
fi

# ---------------------------------------------------------------- parse
# results.tsv: label, test, result (ok|FAILED|ignored|INCOMPLETE), reason
# matrix.tsv:  label, probe, hook, result          (SONDE_MATRIX lines)
# kernels.tsv: label, release, version, how, state (ok|FAILED|INFRA), summary, wall
# parse_output LABEL DIR RESULTS MATRIX: appends DIR/output.txt's results
# and SONDE_MATRIX lines; writes the libtest result line to DIR/result-line.
parse_output() {
    awk -v label="$1" -v results="$3" -v matrix="$4" -v resfile="$2/result-line" '
    function rec(name, res,   reason) {
        reason = ""
        # libtest: "ignored, <reason>"; libtest-mimic: "ignored (<reason>)"
        if (res ~ /^ignored, /) { reason = substr(res, 10); res = "ignored" }
        else if (res ~ /^ignored \(.*\)$/) { reason = substr(res, 10, length(res) - 10); res = "ignored" }
        # a reason that goes on over more lines (output of a command): its first line
        else if (res ~ /^ignored \(/) { reason = substr(res, 10) " ..."; res = "ignored" }
        if (!(name in result)) order[++n] = name
        result[name] = res; why[name] = reason
    }
    function is_result(s) { return s ~ /^(ok|FAILED|ignored|ignored, .*|ignored \(.*)$/ }
    {
        line = $0
        gsub(/\033\[[0-9;]*[A-Za-z]/, "", line)   # colour codes, if any
        s = line
        while (match(s, /SONDE_MATRIX probe=[^ \t]+ hook=[^ \t]+ result=[^ \t]+/)) {
            split(substr(s, RSTART, RLENGTH), f, " ")
            printf "%s\t%s\t%s\t%s\n", label, substr(f[2], 7), substr(f[3], 6), substr(f[4], 8) >> matrix
            s = substr(s, RSTART + RLENGTH)
        }
        if (line ~ /^test result: /) { resultline = line; pending = ""; next }
        if (line ~ /^failures:$/) { infail = 1; delete failed_list; next }
        if (infail && line ~ /^    [^ ]/) { t = substr(line, 5); sub(/[ \t]+$/, "", t); failed_list[t] = 1; next }
        if (infail && line !~ /^$/ && line !~ /^----/) infail = 0
        if (substr(line, 1, 5) == "test " && (i = index(line, " ... ")) > 0) {
            if (pending != "") rec(pending, "UNPARSED")
            # (libtest-mimic pads names to align the "...")
            name = substr(line, 6, i - 6); sub(/[ \t]+$/, "", name); rest = substr(line, i + 5)
            pending = ""
            sub(/[ \t]+$/, "", rest)
            if (is_result(rest)) rec(name, rest)
            else if (rest !~ /^bench:/) pending = name
            next
        }
        sub(/[ \t]+$/, "", line)
        if (pending != "" && is_result(line)) { rec(pending, line); pending = "" }
    }
    END {
        if (pending != "") rec(pending, "UNPARSED")
        for (k = 1; k <= n; k++) {
            t = order[k]; r = result[t]
            # A result hidden by interleaved output: the final failures list
            # and the result line tell (ignored tests never interleave).
            if (r == "UNPARSED") r = (t in failed_list) ? "FAILED" : (resultline != "" ? "ok" : "INCOMPLETE")
            printf "%s\t%s\t%s\t%s\n", label, t, r, why[t] >> results
        }
        print resultline > resfile
    }' "$2/output.txt"
}

if [ "$RERENDER" = 1 ]; then
    # What the run left: its labels in table order, and whether it was a
    # full run (and of which BPF inputs).
    [ -s "$OUT/labels" ] || die "--rerender: no $OUT/labels (the results of a run of this script)"
    mapfile -t LABELS < "$OUT/labels"
    FULL=$(sed -n 's/^full=//p' "$OUT/record" 2>/dev/null)
    BPF_INPUTS=$(sed -n 's/^bpf_inputs=//p' "$OUT/record" 2>/dev/null)
    RUN_COMMIT=$(sed -n 's/^commit=//p' "$OUT/record" 2>/dev/null)
    [ "${FULL:-0}" = 0 ] || DOCS=1
else
# ---------------------------------------------------------------- packages
# Installs the missing ones; if that is not possible, prints why and fails.
install_packages() {
    local p missing=()
    for p in "$@"; do
        dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    if [ -n "${SONDE_VM_NO_INSTALL:-}" ]; then
        echo "missing packages: ${missing[*]} (SONDE_VM_NO_INSTALL is set)"; return 1
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "missing packages: ${missing[*]}; run as root or apt-get install them"; return 1
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
            { echo "apt-get install ${missing[*]} failed"; return 1; }
    fi
}
ensure_packages() { local why; why=$(install_packages "$@") || die "$why"; }
# shellcheck disable=SC2086  # word lists
ensure_packages $VM_PACKAGES
if [ "$BUILD" = 1 ] && { [ -z "${SONDE_VM_BIN:-}" ] || [ -z "${SONDE_VM_TESTBIN:-}" ]; }; then
    # shellcheck disable=SC2086
    ensure_packages $BUILD_PACKAGES
fi

# ---------------------------------------------------------------- binaries
VMTARGET=$REPO/target/vm
RECORD=$VMTARGET/vm-binaries
# KEY=path lines in RECORD, one per binary, for --no-build.
record() { # KEY PATH
    mkdir -p "$VMTARGET"
    { grep -v "^$1=" "$RECORD" 2>/dev/null || true; printf '%s=%s\n' "$1" "$2"; } > "$RECORD.new"
    mv "$RECORD.new" "$RECORD"
}
recorded() { sed -n "s/^$1=//p" "$RECORD" 2>/dev/null | tail -1; }
SONDE=${SONDE_VM_BIN:-}
TESTBIN=${SONDE_VM_TESTBIN:-}

# cargo in the static build's environment (scripts/static-build-env.sh, as
# CI and the image build): target/<triple>/, shared with CI's build; JSON
# artifacts on stdout.
static_cargo() {
    (cd "$REPO" && . scripts/static-build-env.sh && cargo "$@" --message-format=json-render-diagnostics)
}
artifact() { # JSON_FILE TARGET_NAME KIND
    jq -r --arg n "$2" --arg k "$3" 'select(.reason == "compiler-artifact"
        and .target.name == $n and (.target.kind | index($k)) and .executable != null)
        | .executable' "$1" | tail -1
}

if [ "$NEED_HOST_BINARIES" = 1 ] && { [ -z "$SONDE" ] || [ -z "$TESTBIN" ]; }; then
    if [ "$BUILD" = 1 ]; then
        mkdir -p "$VMTARGET"
        t0=$(date +%s)
        if [ -z "$SONDE" ]; then
            log "building static sonde (. scripts/static-build-env.sh && cargo build --release --bin sonde)"
            static_cargo build --release --bin sonde \
                > "$VMTARGET/build-sonde.json" || die "cargo build of sonde failed" 3
            SONDE=$(artifact "$VMTARGET/build-sonde.json" sonde bin)
            [ -n "$SONDE" ] || die "no sonde executable in cargo's JSON output" 3
        fi
        if [ -z "$TESTBIN" ]; then
            # (the dev profile, as CI's: the test binary only drives the
            # release sonde, and a release build of it costs minutes more)
            log "building static test binary (. scripts/static-build-env.sh && cargo test --test root --no-run)"
            static_cargo test --test root --no-run \
                > "$VMTARGET/build-test.json" || die "cargo test --no-run of the root test failed" 3
            TESTBIN=$(artifact "$VMTARGET/build-test.json" root test)
            [ -n "$TESTBIN" ] || die "no 'root' test executable in cargo's JSON output" 3
        fi
        record SONDE "$SONDE"
        record TESTBIN "$TESTBIN"
        log "built in $(( $(date +%s) - t0 ))s: $SONDE, $TESTBIN"
    else
        [ -f "$RECORD" ] || die "--no-build: set SONDE_VM_BIN and SONDE_VM_TESTBIN, or build once ($RECORD missing)"
        [ -n "$SONDE" ] || SONDE=$(recorded SONDE)
        [ -n "$TESTBIN" ] || TESTBIN=$(recorded TESTBIN)
    fi
fi
check_binaries() { # PATH...
    local b
    for b in "$@"; do
        [ -x "$b" ] || die "not an executable: $b" 3
        file -L "$b" | grep -q -E 'statically linked|static-pie linked' ||
            log "WARNING: $b is not static; run-in-vm.sh will copy its shared libraries"
    done
}
if [ "$NEED_HOST_BINARIES" = 1 ]; then
    check_binaries "$SONDE" "$TESTBIN"
    SONDE=$(readlink -f "$SONDE")
    TESTBIN=$(readlink -f "$TESTBIN")
fi

# ---------------------------------------------------------------- arm64
# arm64 kernels run aarch64 builds of both binaries under qemu-system-aarch64:
# cross-compiled with gcc-aarch64-linux-gnu against bookworm's arm64 libelf
# and zlib, unpacked by fetch-kernels.sh --sysroot (nothing arm64 is
# installed). What cannot be had (a package, the Rust target, the arm64
# libraries) makes the arm64 kernels' results INFRA with the reason; a
# compile error is a build failure like any other.
ARM64_TARGET=aarch64-unknown-linux-gnu
ARM64_VM_PACKAGES="qemu-system-arm"
ARM64_BUILD_PACKAGES="gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
export TIMEOUT_AARCH64=${TIMEOUT_AARCH64:-2400}
ARM64_SONDE=${SONDE_VM_BIN_AARCH64:-}
ARM64_TESTBIN=${SONDE_VM_TESTBIN_AARCH64:-}
ARM64_INFRA=""    # why arm64 kernels cannot run, if they cannot
ARM64_SYSROOT=""

# Sets ARM64_INFRA and fails if a prerequisite of the aarch64 build is missing.
arm64_build_prerequisites() {
    # shellcheck disable=SC2086  # word list
    ARM64_INFRA=$(install_packages $ARM64_BUILD_PACKAGES) || return 1
    if ! rustup target list --installed 2>/dev/null | grep -qx "$ARM64_TARGET"; then
        log "adding the Rust target $ARM64_TARGET"
        rustup target add "$ARM64_TARGET" >&2 || { ARM64_INFRA="rustup target add $ARM64_TARGET failed"; return 1; }
    fi
    mkdir -p "$KDIR"
    ARM64_SYSROOT=$("$HERE/fetch-kernels.sh" --sysroot "$KDIR" arm64) ||
        { ARM64_INFRA="the arm64 libelf/zlib archives could not be fetched (fetch-kernels.sh --sysroot)"; return 1; }
}
# cargo for aarch64: static, cross linker and C compiler, arm64 headers and
# archives for libbpf-sys (its own libbpf is compiled for the target). The
# build script's libbpf-sys is built for the host with the same `static`
# features, so it gets the host's archives (the x86 build's directory).
arm64_cargo() {
    (cd "$REPO" && env -u LIBBPF_SYS_LIBRARY_PATH RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=target/vm \
        "LIBBPF_SYS_LIBRARY_PATH_${TARGET//-/_}=/usr/lib/x86_64-linux-gnu" \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
        CFLAGS_aarch64_unknown_linux_gnu="-I$ARM64_SYSROOT/usr/include" \
        LIBBPF_SYS_LIBRARY_PATH_aarch64_unknown_linux_gnu="$ARM64_SYSROOT/usr/lib/aarch64-linux-gnu" \
        cargo "$@" --target "$ARM64_TARGET" --message-format=json-render-diagnostics)
}
arm64_binaries() {
    if [ -n "$ARM64_SONDE" ] && [ -n "$ARM64_TESTBIN" ]; then return 0; fi
    if [ "$BUILD" = 0 ]; then
        [ -n "$ARM64_SONDE" ] || ARM64_SONDE=$(recorded SONDE_AARCH64)
        [ -n "$ARM64_TESTBIN" ] || ARM64_TESTBIN=$(recorded TESTBIN_AARCH64)
        [ -n "$ARM64_SONDE" ] && [ -n "$ARM64_TESTBIN" ] ||
            die "--no-build: set SONDE_VM_BIN_AARCH64 and SONDE_VM_TESTBIN_AARCH64, or build once"
        return 0
    fi
    arm64_build_prerequisites || return 1
    local t0
    t0=$(date +%s)
    if [ -z "$ARM64_SONDE" ]; then
        log "building static aarch64 sonde (cargo build --release --features static --target $ARM64_TARGET --bin sonde)"
        arm64_cargo build --release --features static --bin sonde > "$VMTARGET/build-sonde-aarch64.json" ||
            die "cargo build of sonde for $ARM64_TARGET failed" 3
        ARM64_SONDE=$(artifact "$VMTARGET/build-sonde-aarch64.json" sonde bin)
        [ -n "$ARM64_SONDE" ] || die "no aarch64 sonde executable in cargo's JSON output" 3
    fi
    if [ -z "$ARM64_TESTBIN" ]; then
        log "building static aarch64 test binary (cargo test --features static --target $ARM64_TARGET --test root --no-run)"
        arm64_cargo test --features static --test root --no-run > "$VMTARGET/build-test-aarch64.json" ||
            die "cargo test --no-run of the root test for $ARM64_TARGET failed" 3
        ARM64_TESTBIN=$(artifact "$VMTARGET/build-test-aarch64.json" root test)
        [ -n "$ARM64_TESTBIN" ] || die "no aarch64 'root' test executable in cargo's JSON output" 3
    fi
    record SONDE_AARCH64 "$ARM64_SONDE"
    record TESTBIN_AARCH64 "$ARM64_TESTBIN"
    log "built for aarch64 in $(( $(date +%s) - t0 ))s: $ARM64_SONDE, $ARM64_TESTBIN"
}
if [ -n "$ARM64_KERNELS" ]; then
    # shellcheck disable=SC2086  # word list
    if ARM64_INFRA=$(install_packages $ARM64_VM_PACKAGES) && arm64_binaries; then
        check_binaries "$ARM64_SONDE" "$ARM64_TESTBIN"
        ARM64_SONDE=$(readlink -f "$ARM64_SONDE")
        ARM64_TESTBIN=$(readlink -f "$ARM64_TESTBIN")
    else
        log "arm64 kernels ($ARM64_KERNELS ) cannot run: $ARM64_INFRA"
    fi
fi

# What run_vm needs per kernel architecture: VM_SONDE, VM_TESTBIN, the
# run-in-vm.sh settings VM_ARCH_ENV and VM_HOW; fails with VM_INFRA set when
# the architecture's prerequisites are missing.
vm_arch_setup() { # NAME
    VM_INFRA=""
    if [ "$(kernel_arch "$1")" = arm64 ]; then
        VM_HOW="qemu-system-aarch64 TCG (virt, cpu ${CPU:-max,pauth-impdef=on})"
        [ -z "$ARM64_INFRA" ] || { VM_INFRA=$ARM64_INFRA; return 1; }
        VM_SONDE=$ARM64_SONDE VM_TESTBIN=$ARM64_TESTBIN
        VM_ARCH_ENV=(ARCH=aarch64 "BUSYBOX=$KDIR/$1/busybox" "VM_MODULES=$KDIR/$1/modules" "TIMEOUT=$TIMEOUT_AARCH64")
    else
        VM_SONDE=$SONDE VM_TESTBIN=$TESTBIN VM_ARCH_ENV=() VM_HOW="qemu TCG"
    fi
}

# ---------------------------------------------------------------- kernels
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
FETCH_FAILED=""
if [ -n "$KERNELS" ]; then
    mkdir -p "$KDIR"
    t0=$(date +%s)
    # shellcheck disable=SC2086
    if ! "$HERE/fetch-kernels.sh" "$KDIR" $KERNELS; then
        FETCH_FAILED=1
        log "fetch-kernels.sh failed; kernels without an image count as infrastructure failures"
    fi
    log "kernels ready in $(( $(date +%s) - t0 ))s"
fi

# ---------------------------------------------------------------- run
# Per label, OUT/<label>/ gets output.txt, status (key=value) and for VMs the
# console.log and qemu.log of run-in-vm.sh.
LABELS=()
run_vm() { # NAME
    local name=$1 dir=$OUT/$1 rc=0
    LABELS+=("$name")
    rm -rf "$dir" "$dir".infra-*
    mkdir -p "$dir"
    if [ ! -s "$KDIR/$name/vmlinuz" ]; then
        local why="${FETCH_FAILED:+ (fetch-kernels.sh failed)}"
        [ ! -s "$KDIR/$name.error" ] || why=" ($(head -1 "$KDIR/$name.error"))"
        printf 'result=infra\nexit=125\nreason=kernel image %s not available%s\n' "$KDIR/$name/vmlinuz" "$why" > "$dir/status"
        : > "$dir/output.txt"
        return
    fi
    if ! vm_arch_setup "$name"; then
        printf 'result=infra\nexit=125\nreason=%s\nrelease=%s\nversion=%s\nhow=%s\n' "$VM_INFRA" \
            "$(cat "$KDIR/$name/release")" "$(cat "$KDIR/$name/version")" "$VM_HOW" > "$dir/status"
        : > "$dir/output.txt"
        return
    fi
    local attempt=0 retried="" skip=() acc=$OUT/$name.attempts
    rm -rf "$acc"
    mkdir -p "$acc"
    while :; do
        rc=0
        log "== $name ($(cat "$KDIR/$name/release")): booting under $VM_HOW, MEM=$MEM SMP=$SMP ${VM_ARCH_ENV[*]}${skip[*]:+ (resuming: $(( ${#skip[@]} / 2 )) tests already finished)}"
        env "${VM_ARCH_ENV[@]}" VM_FILES="$VM_SONDE:/sonde $VM_TESTBIN:/testbin" VM_ENV="RUST_BACKTRACE RUST_LOG ${SONDE_VM_ENV:-}" \
            VM_QUIET=1 "$HERE/run-in-vm.sh" "$KDIR/$name/vmlinuz" "$dir" -- \
            env SONDE_BIN=/sonde "SONDE_KERNEL_LABEL=$name" SONDE_ROOT_TESTS=kernel \
            /testbin --test-threads=1 "${TEST_ARGS[@]}" "${skip[@]}" || rc=$?
        if [ ! -f "$dir/status" ]; then   # run-in-vm.sh refused to start
            printf 'result=infra\nexit=125\nreason=run-in-vm.sh failed before booting (exit %s)\n' "$rc" > "$dir/status"
            touch "$dir/output.txt"
            break
        fi
        # A VM that crashed or hung (not a test result) is booted again, up
        # to RETRIES times: qemu's TCG rarely breaks a guest (see README).
        # The new boot resumes: the tests that finished are skipped, and the
        # one that was running when the guest broke runs again. Reported,
        # never hidden.
        grep -q '^result=infra$' "$dir/status" || break
        [ "$attempt" -lt "$RETRIES" ] || break
        attempt=$((attempt + 1))
        retried="$retried${retried:+; }$(sed -n 's/^reason=//p' "$dir/status")"
        rm -rf "$dir.infra-$attempt"
        cp -a "$dir" "$dir.infra-$attempt"
        cat "$dir/output.txt" >> "$acc/output.txt"
        printf '\n' >> "$acc/output.txt"
        : > "$acc/results.tsv"
        parse_output "$name" "$acc" "$acc/results.tsv" /dev/null
        # (the test binary's own arguments: a name filter then matches
        # exactly, so resuming is only done for whole runs)
        if [ ${#TEST_ARGS[@]} -eq 0 ]; then
            skip=(--exact)
            while IFS=$'\t' read -r _ t r _; do
                case "$r" in ok|FAILED|ignored) skip+=(--skip "$t") ;; esac
            done < "$acc/results.tsv"
            [ ${#skip[@]} -gt 1 ] || skip=()
        fi
        log "$name: INFRASTRUCTURE FAILURE, booting again ($attempt/$RETRIES) to run what had not finished; this attempt kept in $dir.infra-$attempt"
    done
    # A resumed run's output: every attempt's, in order (a test re-run
    # after a broken boot takes its result from the later attempt).
    if [ -s "$acc/output.txt" ]; then
        cat "$dir/output.txt" >> "$acc/output.txt"
        mv "$acc/output.txt" "$dir/output.txt"
    fi
    rm -rf "$acc"
    if [ -n "$retried" ]; then printf 'retried=%s\nretry_reasons=%s\n' "$attempt" "$retried" >> "$dir/status"; fi
    # the guest reports its uname -r; if it never got that far, the fetched one
    local release=""
    grep -q '^release=.' "$dir/status" || release=$(cat "$KDIR/$name/release")
    {
        echo "version=$(cat "$KDIR/$name/version" 2>/dev/null || true)"
        echo "how=$VM_HOW, ${SMP} vCPU, ${MEM} MiB"
        [ -z "$release" ] || echo "release=$release"
    } >> "$dir/status"
}
run_host() {
    local release name dir rc=0 t0 work
    release=$(uname -r)
    name=host-$release
    dir=$OUT/$name
    LABELS+=("$name")
    rm -rf "$dir"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] || log "WARNING: not root; the host run's root tests will fail or skip"
    log "== $name: running natively"
    work=$(mktemp -d "${TMPDIR:-/tmp}/sonde-host-run.XXXXXX")
    t0=$(date +%s.%N)
    # (bash -c: a test binary killed by a signal is reported in output.txt,
    # not as a job message here)
    SONDE_BIN=$SONDE SONDE_KERNEL_LABEL=$name SONDE_ROOT_TESTS=all bash -c 'cd "$1" && shift && "$@"; rc=$?; echo; exit "$rc"' \
        sonde-host-run "$work" timeout -k 10 "$TIMEOUT" "$TESTBIN" --test-threads=1 "${TEST_ARGS[@]}" \
        < /dev/null > "$dir/output.txt" 2>&1 || rc=$?
    rm -rf "$work"
    local wall
    wall=$(awk -v s="$t0" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    {
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
            printf 'result=infra\nexit=125\nreason=timeout: host run did not finish within TIMEOUT=%ss\n' "$TIMEOUT"
        else
            printf 'result=exit\nexit=%s\nreason=\n' "$rc"
        fi
        echo "release=$release"
        echo "version=$(uname -v)"
        echo "wall_s=$wall"
        echo "how=host, natively"
    } > "$dir/status"
    log "$name: exit=$rc wall=${wall}s"
}

# The host first: minutes, against the VMs' half hour, and what fails there
# fails before the VMs are paid for. The table keeps the host last.
[ "$HOST" = 0 ] || run_host
for k in $KERNELS; do run_vm "$k"; done
[ "$HOST" = 0 ] || LABELS=("${LABELS[@]:1}" "${LABELS[0]}")
[ ${#LABELS[@]} -gt 0 ] || die "nothing to run (--kernels \"\" and --no-host)"
printf '%s\n' "${LABELS[@]}" > "$OUT/labels"
printf 'full=%s\nbpf_inputs=%s\ncommit=%s\n' "$FULL" "${BPF_INPUTS:-}" "$RUN_COMMIT" > "$OUT/record"
fi

: > "$OUT/results.tsv"
: > "$OUT/matrix.tsv"
: > "$OUT/kernels.tsv"
ANY_FAILED=0 ANY_INFRA=0
st() { local v; v=$(sed -n "s/^$1=//p" "$dir/status" | tail -1); echo "${v:--}"; }
for label in "${LABELS[@]}"; do
    dir=$OUT/$label
    parse_output "$label" "$dir" "$OUT/results.tsv" "$OUT/matrix.tsv"
    resline=$(cat "$dir/result-line")
    exit_code=$(st exit)
    nfail=$(awk -F'\t' -v l="$label" '$1 == l && $3 == "FAILED"' "$OUT/results.tsv" | wc -l)
    if [ "$(st result)" = infra ]; then
        state=INFRA summary=$(st reason)
    elif [ -z "$resline" ]; then
        state=INFRA summary="no libtest result line (test binary exit code $exit_code)"
    elif [ "$nfail" -gt 0 ] || [ "$exit_code" != 0 ] || [[ "$resline" != "test result: ok."* ]]; then
        state=FAILED summary="${resline#test result: }"
        [ "$exit_code" = 0 ] || summary="$summary (exit code $exit_code)"
    else
        state=ok summary="${resline#test result: }"
    fi
    # "ok. 7 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s"
    summary=$(printf '%s' "$summary" | sed -E 's/^(ok|FAILED)\. //; s/; finished in.*//; s/; 0 measured//; s/; 0 filtered out//')
    retried=$(st retried)
    if [ "$retried" != - ]; then
        # A resumed run's libtest line counts its last boot only: count
        # every boot's results instead.
        if [ "$state" != INFRA ]; then
            summary=$(awk -F'\t' -v l="$label" '$1 == l { n[$3]++ }
                END { printf "%d passed; %d failed; %d ignored", n["ok"], n["FAILED"], n["ignored"] }' "$OUT/results.tsv")
        fi
        summary="$summary [boots: $((retried + 1)), resumed after: infrastructure failure: $(st retry_reasons)]"
    fi
    [ "$state" != FAILED ] || ANY_FAILED=1
    [ "$state" != INFRA ] || ANY_INFRA=1
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$(st release)" "$(st version)" "$(st how)" \
        "$state" "$summary" "$(st wall_s)" >> "$OUT/kernels.tsv"
done

# ---------------------------------------------------------------- report
# render text|md  -> the test x kernel table (and probe x kernel if any)
render() {
    awk -F'\t' -v mode="$1" -v kfile="$OUT/kernels.tsv" -v mfile="$OUT/matrix.tsv" -v rfile="$OUT/results.tsv" '
    function md(s) { gsub(/\|/, "\\|", s); return s }
    function row(cells, nc,   i, s) {
        if (mode == "md") { s = "|"; for (i = 0; i < nc; i++) s = s " " md(cells[i]) " |"; print s; return }
        s = ""; for (i = 0; i < nc; i++) s = s sprintf("%-" w[i] "s  ", cells[i]); sub(/ +$/, "", s); print s
    }
    function sep(nc,   i, s, d) {
        if (mode == "md") { s = "|"; for (i = 0; i < nc; i++) s = s "---|"; print s; return }
        s = ""; for (i = 0; i < nc; i++) { d = sprintf("%" w[i] "s", ""); gsub(/ /, "-", d); s = s d "  " }
        sub(/ +$/, "", s); print s
    }
    function table(title, rows, nr, rowname, cellof,   i, j, c, nc) {
        nc = nk + 1
        c[0] = title; for (j = 1; j <= nk; j++) c[j] = lab[j]
        for (j = 0; j < nc; j++) w[j] = length(c[j])
        for (i = 1; i <= nr; i++) {
            if (length(rows[i]) > w[0]) w[0] = length(rows[i])
            for (j = 1; j <= nk; j++) if (length(cellof[rows[i], lab[j]]) > w[j]) w[j] = length(cellof[rows[i], lab[j]])
        }
        row(c, nc); sep(nc)
        for (i = 1; i <= nr; i++) {
            c[0] = (mode == "md") ? "`" rows[i] "`" : rows[i]
            for (j = 1; j <= nk; j++) c[j] = cellof[rows[i], lab[j]]
            row(c, nc)
        }
    }
    FILENAME == kfile { nk++; lab[nk] = $1; state[$1] = $5; next }
    FILENAME == rfile {
        if (!(($2) in seen)) { seen[$2] = 1; tests[++nt] = $2 }
        cell[$2, $1] = ($3 == "ignored" && $4 != "" && mode == "md") ? "ignored: " $4 : $3
        next
    }
    FILENAME == mfile {
        if (!(($2) in pseen)) { pseen[$2] = 1; probes[++np] = $2 }
        v = ($4 == "ok") ? $3 : $3 " (" $4 ")"
        if (index(", " pcell[$2, $1] ", ", ", " v ", ") == 0) pcell[$2, $1] = (pcell[$2, $1] == "" ? v : pcell[$2, $1] ", " v)
        next
    }
    END {
        for (i = 1; i <= nt; i++) for (j = 1; j <= nk; j++)
            if (!((tests[i], lab[j]) in cell)) cell[tests[i], lab[j]] = (state[lab[j]] == "INFRA") ? "INFRA" : "-"
        table("test", tests, nt, "", cell)
        if (np > 0) {
            for (i = 1; i <= np; i++) for (j = 1; j <= nk; j++)
                if (!((probes[i], lab[j]) in pcell)) pcell[probes[i], lab[j]] = (state[lab[j]] == "INFRA") ? "INFRA" : "-"
            print ""
            if (mode == "md") print "## Probes: hook used per kernel\n\nFrom the `SONDE_MATRIX probe=... hook=... result=...` lines the tests print; a hook whose result is not `ok` shows the result in parentheses.\n"
            table("probe", probes, np, "", pcell)
        }
    }' "$OUT/kernels.tsv" "$OUT/results.tsv" "$OUT/matrix.tsv"
}

echo
echo "==================== sonde root tests: test x kernel ===================="
render text
echo
echo "kernel results:"
while IFS=$'\t' read -r label release version how state summary wall; do
    printf '  %-28s %-7s %s\n' "$label" "$state" "$summary"
    printf '  %-28s         release %s, %s, wall %ss\n' "" "${release:-?}" "$how" "${wall:-?}"
done < "$OUT/kernels.tsv"

# Details of failures, for the CI log.
while IFS=$'\t' read -r label _ _ _ state summary _; do
    case "$state" in
        FAILED)
            echo
            echo "---- $label: failed tests (from $OUT/$label/output.txt) ----"
            awk '/^failures:$/ { p = 1 } p && !/^test result:/' "$OUT/$label/output.txt" | head -200
            awk -F'\t' -v l="$label" '$1 == l && $3 == "FAILED" { print "FAILED: " $2 }' "$OUT/results.tsv"
            ;;
        INFRA)
            echo
            echo "---- $label: INFRASTRUCTURE FAILURE (not a test failure); last output lines ----"
            echo "reason: $summary"
            tail -20 "$OUT/$label/output.txt"
            echo
            if [ -f "$OUT/$label/console.log" ]; then
                echo "---- $label: kernel console (tail of $OUT/$label/console.log) ----"
                tail -15 "$OUT/$label/console.log"
                echo
            fi
            ;;
    esac
done < "$OUT/kernels.tsv"

# ---------------------------------------------------------------- markdown
if [ "$DOCS" = 1 ]; then
    [ "$FULL" = 1 ] || BPF_INPUTS="(none: not a full run)"
    mkdir -p "$(dirname "$MD")"
    {
        echo "# Kernel test matrix"
        echo
        echo "<!-- Generated by tests/vm/run-suite.sh; do not edit by hand, re-run the suite. -->"
        echo
        commit=$RUN_COMMIT
        echo "Generated $(date -u '+%Y-%m-%d %H:%M UTC') by \`tests/vm/run-suite.sh --full\`${commit:+ at commit \`$commit\`}."
        echo
        echo "BPF inputs: sha256 \`$BPF_INPUTS\`"
        echo
        echo "That is the hash of the files that decide what the kernels see (\`tests/vm/bpf-inputs.sh --files\`"
        echo "lists them: the BPF programs, \`vmlinux/\`, the build script, the Rust code that sizes, fills and"
        echo "attaches programs and maps, and the libbpf in Cargo.lock). CI recomputes it on every run and fails"
        echo "when it differs from the one above: a change to those files lands only with a full run of them."
        echo "CI itself boots the oldest and newest x86 kernels (5.10 and 7.x) on every run."
        echo
        echo "Each kernel ran the root test suite (\`cargo test --test root\`, static build) as root,"
        echo "with \`--test-threads=1\`: the Debian kernels in qemu (TCG) from an initramfs, the host natively."
        echo "The tests that do not depend on the kernel (HTTP, web config, config errors) ran on the host only"
        echo "(\`-\` in the VMs' columns)."
        echo
        echo "## Kernels"
        echo
        echo "| kernel | release (\`uname -r\`) | version | how | result |"
        echo "|---|---|---|---|---|"
        while IFS=$'\t' read -r label release version how state summary _; do
            # shellcheck disable=SC2016  # literal backticks
            printf '| %s | `%s` | %s | %s | %s: %s |\n' "$label" "${release:-?}" "${version//|/\\|}" "$how" \
                "$state" "${summary//|/\\|}"
        done < "$OUT/kernels.tsv"
        echo
        echo "## Tests"
        echo
        echo "\`ok\`, \`FAILED\`, \`ignored\` (with the test's reason), \`-\` not run on that kernel,"
        echo "\`INFRA\` the kernel's run failed for infrastructure reasons."
        echo
        render md
    } > "$MD.tmp"
    mv "$MD.tmp" "$MD"
    log "wrote $MD"
fi

if [ "$FULL" = 1 ] && [ "$("$HERE/bpf-inputs.sh")" != "$BPF_INPUTS" ]; then
    log "WARNING: the BPF inputs changed while the suite ran: the record is of the inputs at its start"
fi
log "results in $OUT; total $(( $(date +%s) - SUITE_START ))s"
if [ "$ANY_FAILED" = 1 ]; then
    log "RESULT: TEST FAILURES (see the table above)"
    [ "$ANY_INFRA" = 0 ] || log "also: INFRASTRUCTURE FAILURES on some kernel"
    exit 1
fi
if [ "$ANY_INFRA" = 1 ]; then
    log "RESULT: INFRASTRUCTURE FAILURE (no test failed where tests ran)"
    exit 125
fi
log "RESULT: all tests passed on: ${LABELS[*]}"
