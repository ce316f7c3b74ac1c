# sonde's container image: a static sonde on an empty base.
#
#   docker build -t sonde:latest .        # or: podman build -t sonde:latest .
#
# Run it as docs/deployment.md says (privileged, the host's PID namespace,
# tracefs and the cgroup tree mounted): README.md, "Run in a container".
#
# The build fetches crates from crates.io. Behind a TLS-intercepting proxy,
# hand the proxy's CA bundle to the steps that fetch, without it entering any
# layer: `--secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt`
# (BuildKit and podman both take it). Without the secret the builder's own
# bundle is used.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# clang compiles the BPF programs (the same clang-19 scripts/setup-deps.sh
# installs, so the image carries the programs the tests proved); libbpf links
# libelf and zlib, whose static archives come with the -dev packages.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang-19 libelf-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# A static-pie binary (glibc's crt-static, libbpf/libelf/zlib linked in), so
# the image needs no C library: scripts/static-build-env.sh sets the build's
# environment, the same file CI sources for the binary it tests (and runs in
# this image's final stage).
COPY scripts/static-build-env.sh scripts/

# Dependencies first, in a layer of their own: it is rebuilt only when
# Cargo.toml or Cargo.lock change, not with every change to sonde's sources.
# The stubs stand in for the build script and the crate's own targets.
COPY Cargo.toml Cargo.lock ./
# Every target Cargo.toml declares needs a file, or cargo refuses the manifest.
RUN mkdir -p src benches tests/root tests/services \
 && echo 'fn main() {}' > build.rs \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs benches/encode.rs tests/root/main.rs tests/services/main.rs
RUN --mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt \
    . scripts/static-build-env.sh \
 && cargo build --release --locked

COPY build.rs ./
COPY build build
COPY vmlinux vmlinux
COPY src src
# COPY keeps the files' own times, which can be older than the stubs' build:
# touching the crate roots makes cargo rebuild sonde itself. --offline: every
# crate was fetched above.
RUN touch build.rs src/main.rs src/lib.rs \
 && . scripts/static-build-env.sh \
 && cargo build --release --locked --offline \
 && install -D -m 0755 "target/$CARGO_BUILD_TARGET/release/sonde" /out/usr/bin/sonde \
 && ! ldd /out/usr/bin/sonde 2>/dev/null | grep -q '=>'

# Nothing but the binary: no shell, no C library, no CA certificates (sonde
# makes no outbound connection). CI builds this stage alone around the binary
# it tested (tests/container/run.sh): keep `COPY --from=build /out/ /` its
# only copy.
FROM scratch
COPY --from=build /out/ /
LABEL org.opencontainers.image.title="sonde" \
      org.opencontainers.image.description="eBPF probes in the Linux kernel, exported as Prometheus metrics" \
      org.opencontainers.image.licenses="Apache-2.0"
# /metrics, /healthz and /-/reload.
EXPOSE 19477
ENTRYPOINT ["/usr/bin/sonde"]
