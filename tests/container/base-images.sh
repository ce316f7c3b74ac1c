#!/usr/bin/env bash
# Makes, without any container registry, the base images the top-level
# Dockerfile names, in root's podman storage:
#   debian:bookworm-slim     debootstrap (minbase) of the host's Debian mirror,
#                            imported with `podman import`
#   rust:<V>-bookworm        from it: the Rust toolchain <V> (the Dockerfile's
#                            RUST_VERSION) copied from the host's rustup, laid
#                            out as the official image (/usr/local/rustup,
#                            /usr/local/cargo), with gcc, make and git
# Each is tagged under localhost/ and docker.io/library/ so that `FROM rust:…`
# resolves with --pull=never. Images that exist are kept (FORCE=1 remakes).
#
#   tests/container/base-images.sh [debian] [rust]   # needs root, podman, debootstrap
#
# With no argument both are made; `debian` alone is what the workload
# containers need when the sonde image is built around a prebuilt binary.
#
# Env: SONDE_CT_WORK (scratch directory), MIRROR (Debian mirror; default: the
# host's), FORCE=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
SONDE_CT_WORK=${SONDE_CT_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/sonde-container}
FORCE=${FORCE:-0}
# shellcheck source=tests/container/podman-env.sh
source tests/container/podman-env.sh
[[ -n ${CONTAINERS_CONF:-} ]] || podman_env

log() { printf 'base-images: %s\n' "$*" >&2; }
has_image() { [[ $FORCE != 1 ]] && podman image exists "$1"; }

# The first Debian archive the host's apt sources name (deb822 or one-line).
host_mirror() {
    cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
        sed -nE 's;^(URIs:[[:space:]]*|deb[[:space:]]+)(https?://[^[:space:]]+/debian)/?([[:space:]].*)?$;\2;p' |
        head -n 1 || true
}

debian_image() {
    local img=docker.io/library/debian:bookworm-slim rootfs=$SONDE_CT_WORK/rootfs mirror
    if has_image "$img"; then log "$img exists"; return; fi
    mirror=${MIRROR:-$(host_mirror)}
    [[ -n $mirror ]] || { log "no Debian mirror in the apt sources: set MIRROR"; return 1; }
    log "debootstrap --variant=minbase bookworm from $mirror"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$SONDE_CT_WORK/debootstrap.log" 2>&1 ||
        { tail -n 20 "$SONDE_CT_WORK/debootstrap.log" >&2; return 1; }
    # What the official slim image leaves out, and the host's leftovers.
    rm -rf "$rootfs"/usr/share/{doc,man,info,locale}/* "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/* \
        "$rootfs"/tmp/* "$rootfs"/etc/hostname "$rootfs"/etc/resolv.conf
    : > "$rootfs/etc/machine-id"
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" \
        > "$rootfs/etc/apt/sources.list"
    tar --numeric-owner -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$img" >/dev/null
    podman tag "$img" localhost/debian:bookworm-slim
    rm -rf "$rootfs"
}

# The Dockerfile's `ARG RUST_VERSION=X.Y`.
dockerfile_rust_version() {
    sed -n 's/^ARG RUST_VERSION=\([0-9.]*\)$/\1/p' "$REPO/Dockerfile" | head -n 1
}

# The rustup toolchain directory for version $1 (X.Y or X.Y.Z), installed
# with rustup when the host has none.
host_toolchain() {
    local want=$1 rustup_home=${RUSTUP_HOME:-$HOME/.rustup} dir version
    for dir in "$rustup_home"/toolchains/*; do
        [[ -x $dir/bin/rustc ]] || continue
        version=$("$dir/bin/rustc" --version | awk '{print $2}')
        if [[ $version == "$want" || $version == "$want".* ]]; then readlink -f "$dir"; return; fi
    done
    log "installing Rust $want with rustup"
    rustup toolchain install "$want" --profile minimal >&2
    host_toolchain_installed "$want" "$rustup_home"
}

host_toolchain_installed() {
    local dir
    for dir in "$2"/toolchains/"$1"*; do [[ -x $dir/bin/rustc ]] && { readlink -f "$dir"; return; }; done
    log "rustup installed no toolchain $1"; return 1
}

rust_image() {
    local minor toolchain version triple ctx
    minor=$(dockerfile_rust_version)
    [[ -n $minor ]] || { log "no ARG RUST_VERSION=X.Y in the Dockerfile"; return 1; }
    local img=docker.io/library/rust:$minor-bookworm
    if has_image "$img"; then log "$img exists"; return; fi
    toolchain=$(host_toolchain "$minor")
    version=$("$toolchain/bin/rustc" --version | awk '{print $2}')
    triple=$("$toolchain/bin/rustc" -vV | sed -n 's/^host: //p')
    ctx=$SONDE_CT_WORK/rust-context
    rm -rf "$ctx"; mkdir -p "$ctx/rustup/toolchains" "$ctx/cargo/bin"
    # Hard links: no copy on disk, and nothing below edits a linked file.
    cp -al "$toolchain" "$ctx/rustup/toolchains/$version-$triple"
    rm -rf "$ctx/rustup/toolchains/$version-$triple/share/doc"
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$version-$triple" \
        > "$ctx/rustup/settings.toml"
    cp "$(command -v rustup)" "$ctx/cargo/bin/rustup"
    for tool in cargo rustc rustdoc; do ln -s rustup "$ctx/cargo/bin/$tool"; done
    cat > "$ctx/Containerfile" <<CONTAINERFILE
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \\
 && apt-get install -y --no-install-recommends ca-certificates curl git gcc libc6-dev make file xz-utils netbase \\
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$version
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
RUN cargo --version && rustc --version
CONTAINERFILE
    log "podman build $img (Rust $version from $toolchain)"
    podman build --pull=never --network host -t "$img" -f "$ctx/Containerfile" "$ctx" \
        > "$SONDE_CT_WORK/rust-image.log" 2>&1 || { tail -n 30 "$SONDE_CT_WORK/rust-image.log" >&2; return 1; }
    podman tag "$img" "localhost/rust:$minor-bookworm" "docker.io/library/rust:$version-bookworm"
    rm -rf "$ctx"
}

[[ $# -gt 0 ]] || set -- debian rust
for image in "$@"; do
    case "$image" in
        debian) debian_image ;;
        rust) debian_image && rust_image ;;
        *) log "unknown base image '$image' (debian or rust)"; exit 2 ;;
    esac
done
