#!/usr/bin/env bash
# Installs what building and testing sonde needs on Debian/Ubuntu: clang for
# the BPF programs, libelf/zlib/pkg-config for libbpf, bpftool, and iptables
# (a root test drops packets with a netfilter rule in a network namespace of
# its own). Idempotent: packages already present are not reinstalled. Run as
# root.
set -euo pipefail

packages=(clang-19 libelf-dev zlib1g-dev pkg-config bpftool make iptables)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup-deps: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Ubuntu and older Debian call the versioned clang differently: fall
    # back to the distribution's default clang.
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get install -y -qq --no-install-recommends "${missing[@]/clang-19/clang}" >/dev/null
    fi
fi
if ! command -v cargo >/dev/null; then
    echo "setup-deps: cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi
