#!/usr/bin/env bash
# Checks deploy/ (Kubernetes manifests, alert rules, Grafana dashboard): installs
# the tools the checks need, then runs tests/deploy/check.py, whose last line is
# `N passed, M failed[, K skipped]`.
#
#   tests/deploy/run.sh                          # as CI runs it
#   SONDE_BIN=target/debug/sonde tests/deploy/run.sh   # also `sonde check` the ConfigMap's config
#
# Tools:
# - kubernetes-validate (PyPI), for the python3 on PATH; it brings PyYAML and
#   jsonschema, which check.py uses too.
# - promtool, from Debian's prometheus package. When no promtool is on PATH,
#   the package is downloaded with apt and only unpacked into a cache
#   directory, not installed: installing it would also start a Prometheus
#   server on hosts whose init system allows it.
# - kubectl or kustomize, if present, to compare check.py's rendering of the
#   overlays with kustomize's; without either that check is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! python3 -c 'import kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
    echo "installing kubernetes-validate (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi

if [[ -z "${PROMTOOL:-}" ]] && ! command -v promtool >/dev/null; then
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/sonde-deploy-checks"
    PROMTOOL="$cache/root/usr/bin/promtool"
    if [[ ! -x "$PROMTOOL" ]]; then
        echo "fetching promtool from Debian's prometheus package into $cache"
        mkdir -p "$cache/download"
        # apt-get download needs package lists; refresh them only if the
        # first attempt finds none.
        if ! (cd "$cache/download" && apt-get download -qq prometheus 2>/dev/null); then
            apt-get update -qq
            (cd "$cache/download" && apt-get download -qq prometheus)
        fi
        dpkg-deb -x "$(ls "$cache"/download/prometheus_*.deb | head -n 1)" "$cache/root"
    fi
    export PROMTOOL
fi

exec python3 tests/deploy/check.py
