#!/bin/bash
# fetch-kernels.sh DEST_DIR [NAME...]
# fetch-kernels.sh --list          (prints the known NAMEs)
# fetch-kernels.sh --arch NAME      (prints NAME's Debian architecture)
# fetch-kernels.sh --sysroot DEST_DIR ARCH
#                                   (unpacks ARCH's static build libraries,
#                                   prints the sysroot's path)
#
# Downloads Debian's kprobe-capable cloud kernels for the VM test suite,
# without installing anything: `apt-get download` + `dpkg -x`. The system's
# apt sources are never modified and nothing goes to /boot.
#
#   NAME         suite               package
#   debian-5.10  bullseye            linux-image-cloud-amd64 (5.10.x)
#   debian-6.1   bookworm            linux-image-cloud-amd64 (6.1.x)
#   debian-6.12  bookworm-backports  linux-image-cloud-amd64 (6.12.x)
#   debian-7.x   sid                 linux-image-cloud-amd64 (7.x, moves with sid)
#   debian-arm64-6.1  bookworm       linux-image-cloud-arm64 (6.1.x)
#
# A NAME with `-arm64-` is an arm64 kernel (booted by qemu-system-aarch64); it
# is always resolved through a private arm64 apt configuration, and its
# directory also gets the guest's static arm64 busybox (busybox-static).
#
# With no NAME, all of them are fetched. Result, per kernel:
#   DEST_DIR/<name>/vmlinuz   the bzImage
#   DEST_DIR/<name>/config    the kernel's .config
#   DEST_DIR/<name>/release   the `uname -r` string, e.g. 6.1.0-56-cloud-amd64
#   DEST_DIR/<name>/package   the versioned package, e.g. linux-image-6.1.0-56-cloud-amd64
#   DEST_DIR/<name>/version   the Debian package version, e.g. 6.1.192-2
#   DEST_DIR/<name>/arch      the Debian architecture, e.g. amd64
#   DEST_DIR/<name>/busybox   (foreign architectures only) static busybox
#   DEST_DIR/<name>/modules/  (arm64 only) the virtio console's modules, in
#                             load order (NN-<name>.ko): qemu's arm64 `virt`
#                             machine has one UART, so run-in-vm.sh puts the
#                             command's output on a virtio console (hvc0)
#
# --sysroot: `apt-get download` + `dpkg -x` of bookworm's SYSROOT_PACKAGES for
# ARCH (the static libelf and zlib archives and their headers, for a static
# cross build of sonde) into DEST_DIR/.sysroot/ARCH; nothing is installed.
#
# debian-6.1 is resolved with the system's apt when this machine is bookworm
# (its lists are current: `apt-get update`); otherwise, or if that fails, and
# always for the other suites, a PRIVATE apt configuration under
# DEST_DIR/.apt/<name> is used (own sources.list, Dir::State, Dir::Cache) that
# points at the Debian mirror named in /etc/apt/sources.list(.d) (override with
# env MIRROR=http://...). The meta package is resolved to the versioned
# linux-image-* package. PRIVATE_APT=1 uses the private configuration for
# every kernel (then debian-6.1 is bookworm's point-release kernel, without
# bookworm-security updates).
#
# Idempotent: a kernel whose vmlinuz/config/release are present is not
# downloaded again (set REFRESH=1 to re-resolve and fetch a newer upload).
# Every config is checked for CONFIG_KPROBES=y, CONFIG_DEBUG_INFO_BTF=y and
# CONFIG_BPF_EVENTS=y; the script fails if one is missing.
#
# Needs: apt, dpkg, debian-archive-keyring. Must run as root only for the
# system-apt path's partial-download directory; the private path works as any
# user that can write DEST_DIR.
set -euo pipefail

log() { printf 'fetch-kernels: %s\n' "$*" >&2; }
die() { printf 'fetch-kernels: ERROR: %s\n' "$*" >&2; exit 1; }

ALL_NAMES="debian-5.10 debian-6.1 debian-6.12 debian-7.x debian-arm64-6.1"
if [ "${1:-}" = --list ]; then echo "$ALL_NAMES"; exit 0; fi
# The Debian architecture of a kernel name: arm64 names carry it.
arch_of() { case "$1" in *-arm64-*) echo arm64 ;; *) echo amd64 ;; esac; }
if [ "${1:-}" = --arch ] && [ $# = 2 ]; then arch_of "$2"; exit 0; fi
SYSROOT_ARCH=""
if [ "${1:-}" = --sysroot ]; then
    [ $# = 3 ] || { echo "usage: $0 --sysroot DEST_DIR ARCH" >&2; exit 2; }
    SYSROOT_ARCH=$3
    set -- "$2"
fi
if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
mkdir -p "$1"
DEST=$(cd "$1" && pwd)
shift
if [ $# -gt 0 ]; then NAMES="$*"; else NAMES=$ALL_NAMES; fi

REQUIRED_CONFIG="CONFIG_KPROBES CONFIG_DEBUG_INFO_BTF CONFIG_BPF_EVENTS"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# Per-name spec: suite and meta package.
spec() {
    case "$1" in
        debian-5.10) echo "bullseye linux-image-cloud-amd64" ;;
        debian-6.1) echo "bookworm linux-image-cloud-amd64" ;;
        debian-6.12) echo "bookworm-backports linux-image-cloud-amd64" ;;
        debian-7.x) echo "sid linux-image-cloud-amd64" ;;
        debian-arm64-6.1) echo "bookworm linux-image-cloud-arm64" ;;
        *) die "unknown kernel name '$1' (known: $ALL_NAMES)" ;;
    esac
}

# The Debian mirror the system uses: the first URI that serves a plain
# bookworm (or whatever the system's codename is) suite, from one-line
# .list files or deb822 .sources files.
find_mirror() {
    local f uri codename
    codename=${SYSTEM_CODENAME:-bookworm}
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(sed -E 's/#.*//; s/\[[^]]*\]//g' "$f" |
            awk -v c="$codename" '$1 == "deb" && ($3 == c || $3 == "bookworm") { print $2; exit }')
        if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(sed -E 's/#.*//' "$f" | awk -v c="$codename" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = uris = suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    split($i, kv, ":[ \t]*")
                    key = tolower(kv[1]); val = substr($i, length(kv[1]) + 2)
                    sub(/^[ \t]+/, "", val)
                    if (key == "types") types = val
                    else if (key == "uris") uris = val
                    else if (key == "suites") suites = val
                    else if (key == "enabled") enabled = tolower(val)
                }
                if (enabled == "no" || (" " types " ") !~ / deb /) next
                n = split(suites, s, /[ \t]+/)
                for (j = 1; j <= n; j++)
                    if (s[j] == c || s[j] == "bookworm") { split(uris, u, /[ \t]+/); print u[1]; exit }
            }')
        if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
    done
}

# Private apt configuration for one suite: echoes nothing, fills APT_OPTS.
APT_OPTS=()
private_apt() { # DIR SUITE [ARCH]
    local dir=$1 suite=$2 signed=""
    mkdir -p "$dir/sources.list.d" "$dir/preferences.d" "$dir/state/lists/partial" \
        "$dir/cache/archives/partial"
    : > "$dir/state/status"
    local arch=${3:-amd64}
    [ -f "$KEYRING" ] && signed="[signed-by=$KEYRING] "
    printf 'deb %s%s %s main\n' "$signed" "$MIRROR" "$suite" > "$dir/sources.list"
    APT_OPTS=(
        -o "Dir::Etc::SourceList=$dir/sources.list"
        -o "Dir::Etc::SourceParts=$dir/sources.list.d"
        -o "Dir::Etc::Preferences=$dir/preferences"
        -o "Dir::Etc::PreferencesParts=$dir/preferences.d"
        -o "Dir::State=$dir/state"
        -o "Dir::State::status=$dir/state/status"
        -o "Dir::Cache=$dir/cache"
        -o "APT::Sandbox::User=root"
        -o "Acquire::Languages=none"
        -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
        -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
        -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
        -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
        -o "APT::Architecture=$arch"
        -o "APT::Architectures=$arch"
    )
}

# Resolve META to the versioned linux-image package with the current APT_OPTS.
resolve() { # META
    apt-cache "${APT_OPTS[@]}" depends "$1" 2>/dev/null |
        sed -n -E 's/^ *\|?Depends: (linux-image-[^ ]*).*$/\1/p' | head -1
}

# The packages that carry PKG's files when PKG is only a shell around them:
# from 7.x on, linux-image-<release> depends on linux-binary-<release> (the
# kernel image) and linux-base-<release> (its config).
parts() { # PKG
    apt-cache "${APT_OPTS[@]}" depends "$1" 2>/dev/null |
        sed -n -E 's/^ *\|?Depends: (linux-(binary|base)-[^ ]*).*$/\1/p' | sort -u
}

# Download PKG into DIR with the current APT_OPTS; prints the .deb path.
download() { # PKG DIR
    local pkg=$1 dir=$2 deb
    mkdir -p "$dir"
    ( cd "$dir" && apt-get "${APT_OPTS[@]}" -q download "$pkg" 2>&1 |
        grep -v -e '^W: Download is performed unsandboxed' >&2 ) || true
    # shellcheck disable=SC2012  # names are ours: linux-image-*_*.deb
    deb=$(ls -t "$dir/${pkg}"_*.deb 2>/dev/null | head -1)
    [ -n "$deb" ] || return 1
    echo "$deb"
}

check_config() { # NAME CONFIG
    local name=$1 config=$2 opt bad=""
    for opt in $REQUIRED_CONFIG; do
        grep -q "^$opt=y\$" "$config" || bad="$bad $opt"
    done
    if [ -n "$bad" ]; then
        die "$name: kernel config $config lacks:$bad (needs =y for the BPF tests)"
    fi
    log "$name: config ok: $(for opt in $REQUIRED_CONFIG CONFIG_KPROBE_EVENTS CONFIG_FPROBE CONFIG_UPROBE_EVENTS; do
        grep -E "^(# )?${opt}[= ]" "$config" | tr '\n' ' '; done)"
}

SYSTEM_CODENAME=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null | tr -d '"' || true)
MIRROR=${MIRROR:-$(find_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

HOST_ARCH=$(dpkg --print-architecture)

# The unpacked files of bookworm's PACKAGES for ARCH in DEST/.sysroot/ARCH
# (a private apt configuration, as for the kernels); prints the path.
fetch_sysroot() { # ARCH PACKAGES...
    local arch=$1 root=$DEST/.sysroot/$1 deb pkg
    shift
    if [ -z "${REFRESH:-}" ] && [ -f "$root/.complete" ]; then echo "$root"; return; fi
    private_apt "$DEST/.apt/bookworm-$arch" bookworm "$arch"
    log "sysroot $arch: private apt: $MIRROR bookworm main"
    apt-get "${APT_OPTS[@]}" -q update >&2 || die "sysroot $arch: apt-get update of $MIRROR bookworm failed"
    rm -rf "$root.new"
    mkdir -p "$root.new"
    for pkg in "$@"; do
        deb=$(download "$pkg" "$DEST/.debs/$arch") || die "sysroot $arch: apt-get download $pkg failed"
        dpkg -x "$deb" "$root.new"
        printf '%s %s\n' "$pkg" "$(dpkg-deb -f "$deb" Version)" >> "$root.new/.complete"
        [ -n "${KEEP_DEBS:-}" ] || rm -f "$deb"
    done
    rm -rf "$root"
    mv "$root.new" "$root"
    log "sysroot $arch: ready: $root ($(tr '\n' ' ' < "$root/.complete"))"
    echo "$root"
}

# The guest userland of a foreign-architecture kernel: its static busybox.
fetch_busybox() { # ARCH OUT_DIR (APT_OPTS set up for ARCH)
    local deb x
    deb=$(download busybox-static "$DEST/.debs/$1") || die "apt-get download busybox-static ($1) failed"
    x=$(mktemp -d "$DEST/.x.XXXXXX")
    dpkg -x "$deb" "$x"
    [ -f "$x/bin/busybox" ] || die "$deb has no bin/busybox"
    mv "$x/bin/busybox" "$2/busybox"
    rm -rf "$x"
    [ -n "${KEEP_DEBS:-}" ] || rm -f "$deb"
}

# virtio-mmio transport and console, built as modules in Debian's arm64 cloud
# kernel; copied in the order insmod needs them.
ARM64_CONSOLE_MODULES="drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko
    drivers/virtio/virtio_mmio.ko drivers/char/virtio_console.ko"
copy_console_modules() { # MODULES_DIR OUT_DIR
    local m n=0
    mkdir -p "$2"
    for m in $ARM64_CONSOLE_MODULES; do
        [ -f "$1/kernel/$m" ] || die "kernel package lacks $m (needed for the guest's output console)"
        n=$((n + 1))
        cp "$1/kernel/$m" "$2/$n-${m##*/}"
    done
}

if [ -n "$SYSROOT_ARCH" ]; then
    # libelf and zlib, as libbpf-sys's `static` feature links them.
    # shellcheck disable=SC2086
    fetch_sysroot "$SYSROOT_ARCH" ${SYSROOT_PACKAGES:-libelf-dev zlib1g-dev}
    exit 0
fi

for name in $NAMES; do spec "$name" >/dev/null; done

# Several kernels: each is fetched by its own run of this script, so that one
# that cannot be had (suite gone from the mirror, package renamed) does not
# keep the others from being fetched. Its error is left in DEST/<name>.error
# for the suite's report; the exit code says that some kernel failed.
if [ "$(wc -w <<<"$NAMES")" -gt 1 ]; then
    failed=""
    for name in $NAMES; do
        rm -f "$DEST/$name.error"
        if ! "$0" "$DEST" "$name" 2>&1 | tee "$DEST/$name.log" >&2; then   # (pipefail)
            failed="$failed $name"
            sed -n 's/^fetch-kernels: ERROR: //p' "$DEST/$name.log" | tail -1 > "$DEST/$name.error"
            [ -s "$DEST/$name.error" ] || echo "$name: fetch-kernels.sh failed" > "$DEST/$name.error"
        fi
        rm -f "$DEST/$name.log"
    done
    [ -z "$failed" ] || die "could not fetch:$failed"
    exit 0
fi

for name in $NAMES; do
    read -r suite meta <<<"$(spec "$name")"
    arch=$(arch_of "$name")
    out=$DEST/$name
    if [ -z "${REFRESH:-}" ] && [ -s "$out/vmlinuz" ] && [ -s "$out/config" ] && [ -s "$out/release" ] &&
        { [ "$arch" = "$HOST_ARCH" ] || [ -s "$out/busybox" ]; } &&
        { [ "$arch" != arm64 ] || [ -d "$out/modules" ]; }; then
        log "$name: present ($(cat "$out/release")), skipping download"
        check_config "$name" "$out/config"
        echo "$arch" > "$out/arch"
        continue
    fi
    debdir=$DEST/.debs/$arch
    mkdir -p "$debdir"
    start=$(date +%s.%N)
    pkg="" deb=""

    # 1. bookworm itself: the system's apt, if this machine is bookworm.
    if [ "$suite" = "$SYSTEM_CODENAME" ] && [ "$arch" = "$HOST_ARCH" ] && [ -z "${PRIVATE_APT:-}" ]; then
        APT_OPTS=()
        pkg=$(resolve "$meta")
        if [ -n "$pkg" ]; then
            log "$name: $meta -> $pkg (system apt)"
            deb=$(download "$pkg" "$debdir") || { log "$name: system apt download failed, trying a private apt config"; deb=""; }
        else
            log "$name: system apt cannot resolve $meta, trying a private apt config"
        fi
    fi

    # 2. private apt configuration with just this suite of the mirror.
    if [ -z "$deb" ]; then
        private_apt "$DEST/.apt/$name" "$suite" "$arch"
        log "$name: private apt: $MIRROR $suite main $arch (state in $DEST/.apt/$name)"
        apt-get "${APT_OPTS[@]}" -q update >&2 ||
            die "$name: apt-get update of $MIRROR $suite failed"
        pkg=$(resolve "$meta")
        [ -n "$pkg" ] || die "$name: cannot resolve $meta in $MIRROR $suite"
        log "$name: $meta -> $pkg"
        deb=$(download "$pkg" "$debdir") || die "$name: apt-get download $pkg failed"
    fi
    debs=("$deb")
    for part in $(parts "$pkg"); do
        log "$name: $pkg's files are in $part"
        debs+=("$(download "$part" "$debdir")") || die "$name: apt-get download $part failed"
    done
    dl_secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    log "$name: downloaded $(cd "$debdir" && du -cm "${debs[@]##*/}" | tail -1 | cut -f1) MB in ${dl_secs}s: ${debs[*]##*/}"

    # 3. unpack just the kernel and its config.
    x=$(mktemp -d "$DEST/.x.XXXXXX")
    for d in "${debs[@]}"; do dpkg -x "$d" "$x"; done
    # boot/{vmlinuz,config}-<release> up to 6.x; usr/lib/modules/<release>/
    # {vmlinuz,config} from 7.x on
    vmlinuz=$(find "$x/boot" "$x/usr/lib/modules" -maxdepth 2 \( -path "$x/boot/vmlinuz-*" -o \
        -path "$x/usr/lib/modules/*/vmlinuz" \) 2>/dev/null | head -1 || true)
    case "$vmlinuz" in
        */boot/vmlinuz-*) release=${vmlinuz##*/vmlinuz-}; config=$x/boot/config-$release ;;
        */vmlinuz) release=$(basename "$(dirname "$vmlinuz")"); config=$(dirname "$vmlinuz")/config ;;
        *) release="" config="" ;;
    esac
    if [ -z "$vmlinuz" ] || [ ! -f "$config" ]; then
        rm -rf "$x"
        die "$name: ${debs[*]##*/} have no boot/{vmlinuz,config}-* or usr/lib/modules/*/{vmlinuz,config}"
    fi
    check_config "$name" "$config"
    rm -rf "$out.new"
    mkdir -p "$out.new"
    mv "$vmlinuz" "$out.new/vmlinuz"
    mv "$config" "$out.new/config"
    echo "$release" > "$out.new/release"
    echo "$pkg" > "$out.new/package"
    dpkg-deb -f "$deb" Version > "$out.new/version"
    echo "$arch" > "$out.new/arch"
    [ "$arch" != arm64 ] || copy_console_modules "$x/lib/modules/$release" "$out.new/modules"
    # (APT_OPTS is the private foreign-architecture configuration here)
    [ "$arch" = "$HOST_ARCH" ] || fetch_busybox "$arch" "$out.new"
    rm -rf "$x" "$out"
    mv "$out.new" "$out"
    [ -n "${KEEP_DEBS:-}" ] || rm -f "${debs[@]}"
    # (a NAME ending in .x, like debian-7.x, follows its suite's major version)
    series=${name##*-}
    series=${series%.x}
    case "$release" in
        "$series".*) ;;
        *) log "WARNING: $name: release $release is not a $series.x kernel (the suite moved on?)" ;;
    esac
    log "$name: ready: $out (release $release, version $(cat "$out/version"))"
done
