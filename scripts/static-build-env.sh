# shellcheck shell=sh
# The environment of sonde's static build, sourced by the container image's
# build stage (Dockerfile) and by CI (.ci/run), so that both build the same
# binary the same way:
#
#   . scripts/static-build-env.sh && cargo build --release --locked
#
# - CARGO_BUILD_TARGET names the target explicitly, which keeps RUSTFLAGS off
#   the build scripts and proc macros (they run on the builder, dynamically).
# - crt-static makes a static-pie: glibc linked in, no loader, no libc needed
#   at run time (the image has nothing but sonde). Cargo.toml turns on
#   libbpf-rs's `static` feature for such a target: libelf and zlib are
#   linked from their archives (the -dev packages ship them).
# - LIBBPF_SYS_LIBRARY_PATH is where those archives are.
# Artefacts: target/<arch>-unknown-linux-gnu/release/.
sonde_arch=$(uname -m)
export CARGO_BUILD_TARGET="$sonde_arch-unknown-linux-gnu"
export RUSTFLAGS="-C target-feature=+crt-static"
export LIBBPF_SYS_LIBRARY_PATH="/usr/lib/$sonde_arch-linux-gnu"
unset sonde_arch
