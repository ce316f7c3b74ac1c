#!/usr/bin/env bash
# sonde's container image, for real: builds the top-level Dockerfile and runs
# the image exactly as README.md's "Run in a container" says, first under
# podman, then under Debian's docker.io engine, then runs the Kubernetes
# DaemonSet's pod template with `podman kube play`.
#
#   tests/container/run.sh            # as root; .ci/run runs it
#
# The image: by default (as CI runs it) the Dockerfile's final stage around a
# sonde that was already built and tested: SONDE_IMAGE_BIN, or the static
# build CI makes (target/<arch>-unknown-linux-gnu/release/sonde, from
# scripts/static-build-env.sh, which the Dockerfile's build stage sources
# too). podman builds that image once and docker loads it from podman
# (`podman save | docker load`): one image, two engines. The from-source
# build the README shows (`<engine> build .`, the Rust builder stage) runs
# with SONDE_CT_FROM_SOURCE=1, as before, under both engines; by default
# only its agreement with CI's build is checked (same environment script,
# same cargo command, same clang).
#
# For each engine:
#   - the README's `<engine> run` line, extracted and run as written, starts
#     sonde; /healthz must answer 200;
#   - a uniquely named program is exec'd N times on the host and N times in
#     another container: sonde_exec_total{comm=...} must be exactly N each;
#   - `<engine> stop` (SIGTERM) must end sonde with exit code 0, and none of
#     the BPF programs it held may stay loaded;
#   - the same run line with a config labelling exec by container_id: the
#     other container's execs carry its full id, the host's an empty one.
# Base images are made locally (tests/container/base-images.sh): no registry.
#
# This machine's quirks are handled here, never in the README's lines: podman
# gets a containers.conf of its own (runc; ulimits within the hard limits),
# and dockerd, started here with its own data root and socket, gets a runc
# wrapper that strips CAP_SYS_RESOURCE (absent from this host's capability
# bounding set, so granting it fails).
#
# Prints PASS/FAIL lines, SKIP lines with the reason for what the machine
# cannot run (dockerd not starting: INFRA), and a summary; exits 1 on any FAIL.
#
# Env: SONDE_CT_WORK (kept between runs: containers.conf, docker's data root;
# default ~/.cache/sonde-container), SONDE_CT_EXECS (N, default 7),
# SONDE_IMAGE_BIN (the static sonde the image carries), SONDE_CT_FROM_SOURCE=1
# (build the image from source with the README's build lines instead).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
export SONDE_CT_WORK=${SONDE_CT_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/sonde-container}
EXECS=${SONDE_CT_EXECS:-7}
FROM_SOURCE=${SONDE_CT_FROM_SOURCE:-0}
IMAGE_BIN=${SONDE_IMAGE_BIN:-$REPO/target/$(uname -m)-unknown-linux-gnu/release/sonde}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
RUN_DIR=$(mktemp -d /tmp/sonde-container.XXXXXX)
DOCKER_SOCK=/run/sonde-ct-docker.sock
DOCKER_EXEC_ROOT=/run/sonde-ct-docker
T_START=$(date +%s)

passed=0 failed=0 skipped=0
pass() { printf 'PASS  %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL  %s\n' "$*"; failed=$((failed + 1)); }
skip() { printf 'SKIP  %s\n' "$*"; skipped=$((skipped + 1)); }
note() { printf '      %s\n' "$*"; }
since() { echo "$(($(date +%s) - $1))s"; }

# ---------------------------------------------------------------- cleanup
# Containers run outside this script's process tree and cgroup: everything
# started is recorded and removed here, whatever happens.
podman_containers=() podman_pods=() docker_containers=() dockerd_pid="" podman_image=""
cleanup() {
    local c
    for c in "${podman_containers[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1; done
    for c in "${podman_pods[@]}"; do podman pod rm -f -t 0 "$c" >/dev/null 2>&1; done
    if [[ -n $dockerd_pid ]]; then
        for c in "${docker_containers[@]}"; do DOCKER_HOST=unix://$DOCKER_SOCK docker rm -f "$c" >/dev/null 2>&1; done
        kill "$dockerd_pid" 2>/dev/null
        wait "$dockerd_pid" 2>/dev/null
    fi
    rm -rf "$RUN_DIR"
}
summary() {
    cleanup
    echo "container: $passed passed, $failed failed, $skipped skipped ($(since "$T_START"))"
    # An EXIT trap's own status is not the script's: exit with it.
    if [[ -n ${interrupted:-} ]]; then exit 130; elif [[ $failed -eq 0 ]]; then exit 0; else exit 1; fi
}
trap summary EXIT
trap 'interrupted=1; exit 130' INT TERM

# ---------------------------------------------------------------- setup
install_packages() {
    local missing=() p
    # (catatonit: the pause process of `podman kube play`'s pods, only a
    # recommendation of podman's package; containernetworking-plugins and
    # iptables: the pod's bridge network, named rather than left to apt's
    # choice for podman's virtual network stack)
    for p in podman runc catatonit containernetworking-plugins iptables debootstrap docker.io curl bpftool \
        python3-yaml python3-jsonschema; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The lines of README.md that start with "$1" (e.g. `docker run`), each
# with its backslash continuations joined.
readme_line() {
    python3 - "$REPO/README.md" "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read().replace("\\\n", " ")
section = text.split("## Run in a container", 1)[1].split("\n## ", 1)[0]
for line in section.splitlines():
    if line.startswith(sys.argv[2] + " "):
        print(re.sub(r"\s+", " ", line).strip())
        break
PY
}

# The README line for `$1 $2`, or a FAIL saying it is missing.
readme_command() {
    local line
    line=$(readme_line "$1 $2")
    [[ -n $line ]] || { fail "README.md \"Run in a container\" has no \`$1 $2\` line"; return 1; }
    printf '%s\n' "$line"
}

# ---------------------------------------------------------------- checks shared by the engines
# The container's name and the address sonde serves on, from the run line.
run_line_name() { sed -nE 's/.*--name[ =]([^ ]+).*/\1/p' <<<"$1"; }
run_line_port() { sed -nE 's/.*--listen[ =][^ ]*:([0-9]+).*/\1/p' <<<"$1"; }

port_in_use() { ss -Hltn "sport = :$1" | grep -q .; }

# Waits for GET $1 to answer 200 while container $3 of engine $2 runs.
wait_for_200() {
    local url=$1 engine=$2 name=$3 deadline=$(($(date +%s) + 60))
    while (($(date +%s) < deadline)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$url") == 200 ]] && return 0
        [[ $($engine inspect -f '{{.State.Running}}' "$name" 2>/dev/null) == true ]] || return 1
        sleep 0.2
    done
    return 1
}

# Sum of sonde_exec_total over the series with comm="$2" (and, if given,
# the label pair $3, e.g. container_id="...") at URL $1.
exec_count() {
    curl -fsS "$1" | awk -v want="comm=\"$2\"" -v also="${3:-}" '
        /^sonde_exec_total\{/ && index($0, want) && index($0, also) { sum += $NF }
        END { print sum + 0 }'
}

# Polls until the count for $2 reaches $3 (events pass through a ring buffer
# and are read asynchronously), then reads it again a moment later: it must
# be exactly $3, not more.
settled_exec_count() {
    local url=$1 comm=$2 want=$3 also=${4:-} deadline=$(($(date +%s) + 10)) got
    while got=$(exec_count "$url" "$comm" "$also") && ((got < want)) && (($(date +%s) < deadline)); do sleep 0.2; done
    sleep 1
    exec_count "$url" "$comm" "$also"
}

# Runs a program named $1 N times on the host.
host_workload() {
    mkdir -p "$RUN_DIR/bin" && cp /bin/true "$RUN_DIR/bin/$1"
    for ((i = 0; i < EXECS; i++)); do "$RUN_DIR/bin/$1"; done
}

# Runs, in a container $3 of engine $1 from image $2, a program named $4 N
# times (recorded for the cleanup).
container_workload() {
    started "$1" "$3"
    "$1" run --name "$3" --network none "$2" sh -c \
        "cp /bin/true /tmp/$4 && i=0 && while [ \$i -lt $EXECS ]; do /tmp/$4; i=\$((i+1)); done" >/dev/null
}

# The ids of the BPF programs that process $1 holds (from its fds' fdinfo):
# exactly sonde's, whatever else the machine loads meanwhile.
held_prog_ids() {
    grep -h '^prog_id:' /proc/"$1"/fdinfo/* 2>/dev/null | awk '{print $2}' | sort -un
}

# After sonde stopped: none of the programs it held may still be loaded. The
# kernel frees a program once its last reference goes, not synchronously
# with the exit: allow 2 s.
check_programs_gone() {
    local what=$1; shift
    local ids=("$@") left deadline=$(($(date +%s) + 2)) id
    if [[ ${#ids[@]} -eq 0 ]]; then fail "$what: sonde held no BPF program while running"; return; fi
    while :; do
        left=()
        for id in "${ids[@]}"; do bpftool prog show id "$id" >/dev/null 2>&1 && left+=("$id"); done
        [[ ${#left[@]} -eq 0 || $(date +%s) -ge $deadline ]] && break
        sleep 0.1
    done
    if [[ ${#left[@]} -eq 0 ]]; then
        pass "$what: all ${#ids[@]} BPF programs sonde held are unloaded (bpftool)"
    else
        fail "$what: BPF programs still loaded after stop: ids ${left[*]}"
    fi
}

# Records container $2 of engine $1 for the cleanup.
started() {
    if [[ $1 == podman ]]; then podman_containers+=("$2"); else docker_containers+=("$2"); fi
}

# The whole scenario for engine $1 (podman or docker), image already built.
# $2: the image the workload container runs (a Debian image in that engine).
run_scenario() {
    local engine=$1 workload_image=$2 line name port metrics pid ids suffix host_comm ct_comm got code wid
    line=$(readme_command "$engine" run) || return
    name=$(run_line_name "$line") port=$(run_line_port "$line")
    if [[ -z $name || -z $port ]]; then
        fail "$engine: the README's run line names no --name or no --listen port: $line"
        return
    fi
    if $engine container inspect "$name" >/dev/null 2>&1; then
        fail "$engine: INFRA: a container named $name already exists; not touching it"
        return
    fi
    if port_in_use "$port"; then
        fail "$engine: INFRA: port $port is already in use on this host: $(ss -Hltnp "sport = :$port")"
        return
    fi
    metrics="http://127.0.0.1:$port/metrics"

    note "$engine: $line"
    started "$engine" "$name"
    if ! eval "$line" >/dev/null; then fail "$engine: the README's run line failed"; return; fi
    if wait_for_200 "http://127.0.0.1:$port/healthz" "$engine" "$name"; then
        pass "$engine: README run line: /healthz answers 200 on port $port"
    else
        fail "$engine: README run line: /healthz never answered 200"
        $engine logs "$name" 2>&1 | tail -n 20 | sed 's/^/      /'
        return
    fi
    pid=$($engine inspect -f '{{.State.Pid}}' "$name")
    mapfile -t ids < <(held_prog_ids "$pid")

    suffix=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
    host_comm="ct-host-$suffix" ct_comm="ct-ctr-$suffix"
    host_workload "$host_comm"
    got=$(settled_exec_count "$metrics" "$host_comm" "$EXECS")
    if [[ $got == "$EXECS" ]]; then
        pass "$engine: host workload: sonde_exec_total{comm=\"$host_comm\"} = $EXECS"
    else
        fail "$engine: host workload: sonde_exec_total{comm=\"$host_comm\"} = $got, want $EXECS"
    fi

    wid="sonde-ct-workload-$suffix"
    if ! container_workload "$engine" "$workload_image" "$wid" "$ct_comm"; then
        fail "$engine: the workload container failed to run"
    else
        got=$(settled_exec_count "$metrics" "$ct_comm" "$EXECS")
        if [[ $got == "$EXECS" ]]; then
            pass "$engine: workload in container $($engine inspect -f '{{.Id}}' "$wid" | cut -c1-12): sonde_exec_total{comm=\"$ct_comm\"} = $EXECS"
        else
            fail "$engine: workload in another container: sonde_exec_total{comm=\"$ct_comm\"} = $got, want $EXECS"
        fi
    fi

    if $engine stop -t 10 "$name" >/dev/null; then
        code=$($engine inspect -f '{{.State.ExitCode}}' "$name")
        if [[ $code == 0 ]]; then pass "$engine stop (SIGTERM): sonde exited 0"
        else fail "$engine stop (SIGTERM): sonde exited $code"; $engine logs "$name" 2>&1 | tail -n 10 | sed 's/^/      /'; fi
    else
        fail "$engine stop failed"
    fi
    check_programs_gone "$engine" "${ids[@]}"
}

# Container identity: the README's run line with a config of its own mounted
# (exec labelled by comm and container_id), on a port and name of its own.
# The execs of another container must carry that container's full id, a host
# program's an empty one.
identity_scenario() {
    local engine=$1 workload_image=$2 line name port metrics suffix host_comm ct_comm wid id got cfg
    line=$(readme_command "$engine" run) || return
    suffix=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
    name="sonde-ct-ids-$suffix"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cfg=$RUN_DIR/identity.yaml
    printf 'probes:\n  exec:\n    labels: [comm, container_id]\n' > "$cfg"
    line=$(sed -E "s/--name[ =][^ ]+/--name $name/; s/--listen[ =][^ ]+/--listen 127.0.0.1:$port/; \
        s# sonde:latest# -v $cfg:/etc/sonde/config.yaml:ro sonde:latest --config /etc/sonde/config.yaml#" <<<"$line")
    note "$engine: $line"
    started "$engine" "$name"
    if ! eval "$line" >/dev/null || ! wait_for_200 "http://127.0.0.1:$port/healthz" "$engine" "$name"; then
        fail "$engine: sonde with container_id labels did not come up"
        $engine logs "$name" 2>&1 | tail -n 20 | sed 's/^/      /'
        return
    fi
    metrics="http://127.0.0.1:$port/metrics"
    host_comm="id-host-$suffix" ct_comm="id-ctr-$suffix" wid="sonde-ct-idload-$suffix"
    host_workload "$host_comm"
    got=$(settled_exec_count "$metrics" "$host_comm" "$EXECS" 'container_id=""')
    if [[ $got == "$EXECS" ]]; then pass "$engine: host execs carry container_id=\"\" ($got)"
    else fail "$engine: host execs with container_id=\"\": $got, want $EXECS"; fi
    if ! container_workload "$engine" "$workload_image" "$wid" "$ct_comm"; then
        fail "$engine: the workload container failed to run"
    else
        id=$($engine inspect -f '{{.Id}}' "$wid")
        got=$(settled_exec_count "$metrics" "$ct_comm" "$EXECS" "container_id=\"$id\"")
        if [[ $got == "$EXECS" ]]; then pass "$engine: the other container's execs carry its container_id ${id:0:12}… ($got)"
        else
            fail "$engine: execs with container_id=\"$id\": $got, want $EXECS"
            curl -fsS "$metrics" | grep "$ct_comm" | sed 's/^/      /'
        fi
    fi
    $engine stop -t 10 "$name" >/dev/null
}

# ---------------------------------------------------------------- podman
podman_section() {
    local line t0 log=$RUN_DIR/podman-build.log bases=debian
    # shellcheck source=tests/container/podman-env.sh
    source tests/container/podman-env.sh
    podman_env
    t0=$(date +%s)
    [[ $FROM_SOURCE != 1 ]] || bases="debian rust"
    # shellcheck disable=SC2086  # word list
    if tests/container/base-images.sh $bases > "$RUN_DIR/base-images.log" 2>&1; then
        pass "base images made locally, no registry ($(since "$t0"))"
    else
        fail "base images"; tail -n 20 "$RUN_DIR/base-images.log" | sed 's/^/      /'; return
    fi

    t0=$(date +%s)
    if [[ $FROM_SOURCE == 1 ]]; then
        line=$(readme_command podman build) || return
        # The README's line as written, with this machine's flags after `build`.
        if eval "podman build --pull=never --network host --secret id=ca-certificates,src=$CA_BUNDLE ${line#podman build}" \
            > "$log" 2>&1; then
            podman_image=built
            pass "podman: README build line: image built ($(since "$t0")), $(podman image inspect -f '{{.Size}}' sonde:latest) bytes"
        else
            fail "podman: README build line failed"; tail -n 30 "$log" | sed 's/^/      /'; return
        fi
    else
        dockerfile_builds_like_ci
        if build_from_binary > "$log" 2>&1; then
            podman_image=built
            pass "podman: the Dockerfile's final stage around $IMAGE_BIN: image built ($(since "$t0")), $(podman image inspect -f '{{.Size}}' sonde:latest) bytes"
        else
            fail "podman: building the image around $IMAGE_BIN"; tail -n 30 "$log" | sed 's/^/      /'; return
        fi
    fi
    run_scenario podman docker.io/library/debian:bookworm-slim
    identity_scenario podman docker.io/library/debian:bookworm-slim
}

# The Dockerfile's final stage (from its last `FROM scratch` on), built with
# podman around IMAGE_BIN in place of the build stage's /out/usr/bin/sonde:
# the same labels, entrypoint and layout as the image the README builds.
build_from_binary() {
    local ctx=$RUN_DIR/image-context
    [[ -x $IMAGE_BIN ]] || { echo "no sonde at $IMAGE_BIN (build it: . scripts/static-build-env.sh && cargo build --release)"; return 1; }
    if ldd "$IMAGE_BIN" 2>/dev/null | grep -q '=>'; then
        echo "$IMAGE_BIN is not static: build it with scripts/static-build-env.sh"; return 1
    fi
    rm -rf "$ctx"; mkdir -p "$ctx/out/usr/bin"
    install -m 0755 "$IMAGE_BIN" "$ctx/out/usr/bin/sonde"
    awk '/^FROM scratch/ { final = NR } { line[NR] = $0 } END { for (i = final; i <= NR; i++) print line[i] }' \
        Dockerfile > "$ctx/Containerfile"
    grep -q '^COPY --from=build /out/ /$' "$ctx/Containerfile" ||
        { echo "the Dockerfile's final stage lacks \`COPY --from=build /out/ /\`"; return 1; }
    sed -i 's#^COPY --from=build /out/ /$#COPY out/ /#' "$ctx/Containerfile"
    podman build --pull=never -t sonde:latest -f "$ctx/Containerfile" "$ctx"
}

# What the README's from-source build runs is what CI ran: the Dockerfile's
# build stage sources scripts/static-build-env.sh and runs `cargo build
# --release --locked` with the clang that scripts/setup-deps.sh installs.
dockerfile_builds_like_ci() {
    local clang
    clang=$(grep -o 'clang-[0-9]*' scripts/setup-deps.sh | head -n 1)
    if grep -q '^ *&& *\. scripts/static-build-env.sh' Dockerfile &&
        grep -q 'cargo build --release --locked --offline' Dockerfile &&
        grep -q "apt-get install .*$clang" Dockerfile; then
        pass "Dockerfile: its build stage sources scripts/static-build-env.sh and builds with $clang, as CI's build did"
    else
        fail "Dockerfile: its build stage no longer builds as CI does (scripts/static-build-env.sh, cargo build --release --locked, $clang)"
    fi
}

# ---------------------------------------------------------------- docker
# Starts Debian's dockerd on a socket, data root and exec root of its own,
# touching neither the host's network (no bridge, no iptables) nor any other
# docker. Returns 1, with the reason on stdout, when it does not start.
start_dockerd() {
    local wrapper=$SONDE_CT_WORK/runc-nocapres deadline
    # Docker grants CAP_SYS_RESOURCE to privileged containers; this host's
    # bounding set lacks it, and runc then fails ("unable to apply caps").
    cat > "$wrapper" <<'SH'
#!/bin/sh
# runc, minus CAP_SYS_RESOURCE in the bundle (absent from this host's bounding set).
prev=""
for a in "$@"; do
    if [ "$prev" = "--bundle" ] || [ "$prev" = "-b" ]; then
        sed -i 's/"CAP_SYS_RESOURCE",//g; s/,"CAP_SYS_RESOURCE"//g; s/"CAP_SYS_RESOURCE"//g' "$a/config.json"
    fi
    prev="$a"
done
exec runc "$@"
SH
    chmod 0755 "$wrapper"
    mkdir -p "$SONDE_CT_WORK/docker-data" "$DOCKER_EXEC_ROOT"
    dockerd --data-root "$SONDE_CT_WORK/docker-data" --exec-root "$DOCKER_EXEC_ROOT" \
        --pidfile "$DOCKER_EXEC_ROOT/dockerd.pid" -H "unix://$DOCKER_SOCK" \
        --iptables=false --ip6tables=false --bridge=none \
        --add-runtime "nocapres=$wrapper" --default-runtime nocapres \
        > "$RUN_DIR/dockerd.log" 2>&1 &
    dockerd_pid=$!
    deadline=$(($(date +%s) + 60))
    while (($(date +%s) < deadline)); do
        docker version >/dev/null 2>&1 && return 0
        if ! kill -0 "$dockerd_pid" 2>/dev/null; then
            wait "$dockerd_pid" 2>/dev/null; dockerd_pid=""
            break
        fi
        sleep 0.5
    done
    local why
    why=$(grep -iE 'level=(fatal|error)|failed' "$RUN_DIR/dockerd.log" | tail -n 3)
    [[ -n $why ]] || why=$(tail -n 3 "$RUN_DIR/dockerd.log")
    echo "dockerd did not answer on $DOCKER_SOCK: $(tr -s "\n" " " <<<"${why:-no output}")"
    return 1
}

# Copies image $1 from podman's storage into docker's when docker lacks it.
to_docker() {
    docker image inspect "$1" >/dev/null 2>&1 && return 0
    podman save --format docker-archive "$1" | docker load >/dev/null
}

docker_section() {
    local line t0 log=$RUN_DIR/docker-build.log img
    # Debian's CLI, talking to the dockerd started here.
    export PATH=/usr/bin:$PATH DOCKER_HOST=unix://$DOCKER_SOCK
    # Not in $(...): dockerd_pid must be set in this shell for the cleanup.
    if ! start_dockerd > "$RUN_DIR/dockerd.reason"; then
        skip "docker: INFRA: $(cat "$RUN_DIR/dockerd.reason")"
        return
    fi
    pass "docker: Debian's dockerd $(docker version -f '{{.Server.Version}}') started on $DOCKER_SOCK"
    t0=$(date +%s)
    local images=(docker.io/library/debian:bookworm-slim)
    [[ $FROM_SOURCE != 1 ]] || images+=("docker.io/library/rust:$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)-bookworm")
    for img in "${images[@]}"; do
        to_docker "$img" || { fail "docker: loading $img from podman's storage"; return; }
    done
    note "docker: base images loaded from podman's storage ($(since "$t0"))"

    t0=$(date +%s)
    if [[ $FROM_SOURCE == 1 ]]; then
        line=$(readme_command docker build) || return
        # BuildKit: the Dockerfile mounts the CA bundle as a build secret.
        if eval "DOCKER_BUILDKIT=1 docker build --network host --secret id=ca-certificates,src=$CA_BUNDLE ${line#docker build}" \
            > "$log" 2>&1; then
            pass "docker: README build line: image built ($(since "$t0")), $(docker image inspect -f '{{.Size}}' sonde:latest) bytes"
        else
            fail "docker: README build line failed"; tail -n 30 "$log" | sed 's/^/      /'; return
        fi
    else
        # The image podman built, not a second build.
        if podman save --format docker-archive localhost/sonde:latest | docker load > "$log" 2>&1 &&
            docker tag localhost/sonde:latest sonde:latest >> "$log" 2>&1; then
            pass "docker: the image podman built, loaded (podman save | docker load, $(since "$t0")), $(docker image inspect -f '{{.Size}}' sonde:latest) bytes"
        else
            fail "docker: loading podman's sonde:latest"; tail -n 30 "$log" | sed 's/^/      /'; return
        fi
    fi
    run_scenario docker docker.io/library/debian:bookworm-slim
    identity_scenario docker docker.io/library/debian:bookworm-slim
}

# ---------------------------------------------------------------- podman kube play
# The DaemonSet's pod template (privileged overlay), as a Pod, with the image
# just built and the ConfigMap the DaemonSet mounts.
render_pod() {
    python3 - "$REPO" "$RUN_DIR" <<'PY'
import sys
from pathlib import Path
import yaml
repo, out = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(repo / "tests" / "deploy"))
import check  # the kustomize renderer the manifest checks use
resources = check.build(repo / "deploy" / "kubernetes" / "overlays" / "privileged")
daemonset = check.one(resources, "DaemonSet")
template = daemonset["spec"]["template"]
spec = template["spec"]
container = next(c for c in spec["containers"] if c["name"] == "sonde")
container["image"] = "localhost/sonde:latest"
container["imagePullPolicy"] = "Never"
port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
pod = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "sonde-kube-test", **{k: v for k, v in template["metadata"].items() if k != "name"}},
       "spec": spec}
# A node of a cluster has its container runtime's CRI socket, which the pod
# mounts with type Socket; this host may have none. Then the volume points at
# a stand-in socket nothing answers on (sonde logs that the runtime does not
# answer and leaves the pod labels empty): the pod template itself is unchanged.
import os, socket
for volume in spec.get("volumes", []):
    host_path = volume.get("hostPath")
    if host_path and host_path.get("type") == "Socket" and not os.path.exists(host_path["path"]):
        stand_in = out / (volume["name"] + ".sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(stand_in))
        listener.close()
        print(f"no {host_path['path']} on this host: volume {volume['name']} uses the stand-in socket {stand_in}", file=sys.stderr)
        host_path["path"] = str(stand_in)
configmaps = [r for r in resources if r["kind"] == "ConfigMap"]
(out / "pod.yaml").write_text(yaml.safe_dump(pod))
(out / "configmap.yaml").write_text(yaml.safe_dump_all(configmaps))
print(port)
PY
}

kube_section() {
    local port ip infra deadline code comm got path
    if ! port=$(render_pod 2> "$RUN_DIR/render.err"); then
        fail "kube play: rendering the DaemonSet's pod template"; sed 's/^/      /' "$RUN_DIR/render.err"; return
    fi
    [[ -s $RUN_DIR/render.err ]] && sed 's/^/      /' "$RUN_DIR/render.err"
    podman_pods+=(sonde-kube-test)
    if ! podman kube play --configmap "$RUN_DIR/configmap.yaml" "$RUN_DIR/pod.yaml" > "$RUN_DIR/kube.log" 2>&1; then
        fail "podman kube play of the DaemonSet's pod template"; tail -n 20 "$RUN_DIR/kube.log" | sed 's/^/      /'; return
    fi
    pass "podman kube play: the DaemonSet's pod template (privileged overlay) started"
    infra=$(podman pod inspect -f '{{.InfraContainerID}}' sonde-kube-test)
    ip=$(podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$infra")
    for path in healthz metrics; do
        deadline=$(($(date +%s) + 60))
        while code=$(curl -s -o "$RUN_DIR/kube-$path" -w '%{http_code}' "http://$ip:$port/$path"); do
            [[ $code == 200 || $(date +%s) -ge $deadline ]] && break
            sleep 0.2
        done
        if [[ $code == 200 ]]; then pass "kube play: GET http://$ip:$port/$path answers 200"
        else fail "kube play: GET /$path on the pod's $ip:$port: $code"
             podman pod logs sonde-kube-test 2>&1 | tail -n 10 | sed 's/^/      /'; fi
    done
    if grep -q '^sonde_probe_up{.*probe="exec".*} 1$' "$RUN_DIR/kube-metrics"; then
        pass "kube play: the ConfigMap's exec probe is up (sonde_probe_up)"
    else
        fail "kube play: no sonde_probe_up{probe=\"exec\"} 1 in /metrics"
    fi
    comm="ct-pod-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
    host_workload "$comm"
    got=$(settled_exec_count "http://$ip:$port/metrics" "$comm" "$EXECS")
    if [[ $got == "$EXECS" ]]; then pass "kube play: host workload: sonde_exec_total{comm=\"$comm\"} = $EXECS"
    else fail "kube play: host workload: sonde_exec_total{comm=\"$comm\"} = $got, want $EXECS"; fi
    # podman runs liveness and readiness probes as healthchecks through
    # systemd timers; without systemd they do not run, hence the GETs above.
    if podman kube down "$RUN_DIR/pod.yaml" >/dev/null 2>&1 && ! podman pod exists sonde-kube-test; then
        pass "podman kube down: the pod is gone"
    else
        fail "podman kube down left the pod"
    fi
}

# ---------------------------------------------------------------- main
[[ $(id -u) == 0 ]] || { fail "needs root"; exit 1; }
install_packages || { fail "INFRA: installing packages with apt failed"; exit 1; }
podman_section
if [[ -n $podman_image ]]; then kube_section; else fail "kube play: not run, no image was built"; fi
docker_section
