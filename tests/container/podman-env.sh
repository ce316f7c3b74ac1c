# Sourced by the container harness: podman settings for this kind of CI
# machine, in a containers.conf of the harness's own (never the system's).
#
# - runc, not crun: crun refuses cgroup v1/v2 hybrid hosts ("cgroups in
#   hybrid mode not supported").
# - default ulimits within the host's hard limits: podman's root defaults
#   (nofile 1048576, nproc 4194304) are above them, and on a host whose
#   capability bounding set lacks CAP_SYS_RESOURCE nothing may raise a hard
#   limit, so the runtime's setrlimit fails. podman caps its own NPROC at
#   32768.
#
# - storage of the harness's own under SONDE_CT_WORK (images, containers):
#   the system's podman store is never touched, and what the harness keeps
#   between runs (the locally made base image) is a cache in one place.
#
# Needs: SONDE_CT_WORK (a directory of the harness's own).

podman_env() {
    local nofile nproc
    nofile=$(ulimit -Hn); [[ $nofile == unlimited ]] && nofile=1048576
    nproc=$(ulimit -Hu)
    if [[ $nproc == unlimited ]] || (( nproc > 32768 )); then nproc=32768; fi
    mkdir -p "$SONDE_CT_WORK"
    cat > "$SONDE_CT_WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
CONF
    cat > "$SONDE_CT_WORK/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$SONDE_CT_WORK/storage"
runroot = "/run/sonde-ct-podman"
CONF
    export CONTAINERS_CONF="$SONDE_CT_WORK/containers.conf"
    export CONTAINERS_STORAGE_CONF="$SONDE_CT_WORK/storage.conf"
}
