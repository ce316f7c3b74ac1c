#!/bin/bash
# run-in-vm.sh KERNEL_IMAGE OUTDIR -- CMD [ARG...]
#
# Boots KERNEL_IMAGE (a bzImage or an arm64 Image, e.g. fetch-kernels.sh's
# DEST/<name>/vmlinuz) in qemu (TCG) with a throw-away initramfs: a static
# busybox, an /init and the
# files named in VM_FILES. /init mounts proc, sysfs, devtmpfs, tmpfs (/tmp,
# /run, /dev/shm), tracefs, debugfs, bpffs and cgroup2, then runs CMD as root
# (pid != 1, cwd /tmp, stdin /dev/null, PATH=/bin:/sbin:/usr/bin:/usr/sbin)
# and powers off. Kernel command line: console=ttyS0 (aarch64: ttyAMA0) rdinit=/init panic=-1
# softlockup_panic=1 quiet loglevel=5 mitigations=off $APPEND (a panic or a
# soft lockup ends the VM at once: an infrastructure failure, not a timeout).
#
# Environment:
#   VM_FILES="HOST:GUEST ..."  files to put into the guest, space-separated;
#                      GUEST is an absolute path (parents are created), e.g.
#                      VM_FILES="target/sonde:/sonde /tmp/t:/testbin".
#                      Executables should be static; for dynamically linked
#                      ELF files the shared libraries (ldd) are copied too.
#                      Paths must not contain spaces or ':'.
#   VM_ENV="NAME ..."  host environment variables passed to CMD (values
#                      without newlines). Or use `-- env A=1 B=2 CMD...`.
#   MEM=1024           guest RAM, MiB
#   SMP=2              vCPUs (multi-threaded TCG: one host thread per vCPU)
#   TIMEOUT=600        seconds before qemu is killed (= infrastructure failure)
#   APPEND=""          extra kernel command line
#   ARCH=x86_64        the kernel's architecture: x86_64 or aarch64. It
#                      picks the defaults of QEMU, CPU, the machine and the
#                      consoles. aarch64: `-M virt`, kernel console ttyAMA0
#                      (the machine's only UART), CMD's output on a virtio
#                      console (hvc0), whose modules VM_MODULES must name.
#   SCRATCH_MB=64      an empty sparse disk of this size, attached as an NVMe
#                      drive with serial sonde-scratch (the storage tests write it
#                      raw: the guest has no other block device); 0 for none
#   CPU=max,cx16=off   qemu -cpu model. cx16 is off because qemu 7.2 TCG
#   (x86_64)           corrupts guest state on `cmpxchg16b %gs:` (used by
#                      6.12's SLUB fast path; 6.1 does not use it): the 6.12
#                      guest double-faults or hangs in ~1 of 3 boots with cx16.
#   CPU=max,pauth-impdef=on  (aarch64) qemu's cheap pointer-authentication
#                      algorithm instead of the architected one: boots in
#                      half the time under TCG, same CPU features.
#   TCG_THREAD=multi   qemu -accel tcg,thread=multi|single
#   QEMU=qemu-system-x86_64 (aarch64: qemu-system-aarch64)
#   BUSYBOX=/bin/busybox  must be static and of ARCH (for aarch64, e.g.
#                      fetch-kernels.sh's DEST/<name>/busybox)
#   VM_MODULES=DIR     kernel modules (*.ko) loaded by /init, in name order,
#                      before anything else (fetch-kernels.sh's
#                      DEST/<name>/modules for arm64)
#   VM_EXT4_MB=N       attach an empty ext4 filesystem of N MiB (made with
#                      the host's mkfs.ext4, as an NVMe disk: the cloud
#                      kernels build NVMe and ext4 in) mounted at /mnt/ext4;
#                      unset: no disk
#   KEEP=1             keep the initramfs work dir (path printed)
#   VM_QUIET=1         do not copy CMD's output to stdout
#
# Results in OUTDIR (created):
#   output.txt   CMD's stdout+stderr (from the guest's second serial port)
#   console.log  the guest kernel console (first serial port)
#   qemu.log     qemu's own messages
#   status       key=value lines: result=exit|infra, exit=, reason=,
#                release= (guest uname -r), wall_s=, init_s= (guest uptime
#                when /init started), cmd_s= (CMD run time in the guest)
# CMD's output is also copied to stdout after the run (unless VM_QUIET=1);
# one summary line goes to stderr.
#
# Exit code: CMD's exit code, or 125 for an INFRASTRUCTURE failure: no exit
# marker came back from the guest (kernel panic, qemu error, timeout, init
# failure). `status` tells a CMD that itself exits 125 apart (result=exit).
#
# Needs (apt): qemu-system-x86 (aarch64: qemu-system-arm) busybox-static cpio file.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { printf 'run-in-vm: %s\n' "$*" >&2; exit 2; }

if [ $# -lt 4 ] || [ "$3" != -- ]; then usage; fi
KERNEL=$(readlink -f "$1")
mkdir -p "$2"
OUTDIR=$(cd "$2" && pwd)
shift 3

MEM=${MEM:-1024}
SMP=${SMP:-2}
TIMEOUT=${TIMEOUT:-600}
APPEND=${APPEND:-}
ARCH=${ARCH:-x86_64}
# Per architecture: qemu, its package, CPU, machine options, the kernel
# console, and CMD's output channel (a guest tty and qemu's options for it).
case "$ARCH" in
    x86_64)
        QEMU=${QEMU:-qemu-system-x86_64} QEMU_PKG=qemu-system-x86
        CPU=${CPU:-max,cx16=off}
        MACHINE=() CONSOLE_TTY=ttyS0 OUTPUT_TTY=ttyS1
        output_device() { OUTPUT_OPTS=(-serial "file:$1"); }
        ;;
    aarch64)
        QEMU=${QEMU:-qemu-system-aarch64} QEMU_PKG=qemu-system-arm
        CPU=${CPU:-max,pauth-impdef=on}
        MACHINE=(-M virt) CONSOLE_TTY=ttyAMA0 OUTPUT_TTY=hvc0
        [ -n "${VM_MODULES:-}" ] || die "ARCH=aarch64 needs VM_MODULES (virtio console modules)"
        output_device() {
            OUTPUT_OPTS=(-chardev "file,id=vmout,path=$1" -device virtio-serial-device
                -device virtconsole,chardev=vmout)
        }
        ;;
    *) die "unknown ARCH '$ARCH' (x86_64 or aarch64)" ;;
esac
BUSYBOX=${BUSYBOX:-/bin/busybox}

[ -f "$KERNEL" ] || die "no kernel image $KERNEL"
[ -f "$BUSYBOX" ] || die "no busybox at $BUSYBOX (apt-get install busybox-static)"
command -v "$QEMU" >/dev/null || die "no $QEMU (apt-get install $QEMU_PKG)"
file -L "$BUSYBOX" | grep -q 'statically linked' ||
    die "$BUSYBOX is not static (apt-get install busybox-static)"
for a in "$@"; do
    case "$a" in *$'\n'*) die "CMD arguments must not contain newlines" ;; esac
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/run-in-vm.XXXXXX")
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$WORK"' EXIT; fi
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,lib,lib64,usr/lib}
cp "$BUSYBOX" "$ROOT/bin/busybox"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$ROOT/etc/passwd"
printf 'root:x:0:\n' > "$ROOT/etc/group"

# Copy one host file to a guest path; for a dynamically linked ELF executable
# also its shared libraries and ELF interpreter.
add_file() { # HOST GUEST
    local host=$1 guest=$2 lib
    [ -e "$host" ] || die "VM_FILES: no such file: $host"
    case "$guest" in /*) ;; *) die "VM_FILES: guest path must be absolute: $guest" ;; esac
    mkdir -p "$ROOT$(dirname "$guest")"
    cp -rL "$host" "$ROOT$guest"
    if [ -f "$host" ] && file -L "$host" | grep -q 'ELF.*dynamically linked'; then
        echo "run-in-vm: note: $host is dynamically linked; copying its shared libraries" >&2
        for lib in $(ldd "$host" | grep -o '/[^ ]*' | sort -u); do
            mkdir -p "$ROOT$(dirname "$lib")"
            cp -L "$lib" "$ROOT$lib"
        done
    fi
}
if [ -n "${VM_MODULES:-}" ]; then
    mkdir -p "$ROOT/lib/vm-modules"
    cp "$VM_MODULES"/*.ko "$ROOT/lib/vm-modules/" || die "VM_MODULES: no *.ko in $VM_MODULES"
fi
printf 'OUTPUT_TTY=/dev/%s\n' "$OUTPUT_TTY" > "$ROOT/etc/vm-arch"
for spec in ${VM_FILES:-}; do
    case "$spec" in *:*) ;; *) die "VM_FILES entry '$spec' is not HOST:GUEST" ;; esac
    add_file "${spec%%:*}" "${spec#*:}"
done

# An ext4 disk for tests of filesystem probes; /init mounts it when the
# marker file is there.
DISK_ARGS=()
if [ -n "${VM_EXT4_MB:-}" ]; then
    command -v mkfs.ext4 >/dev/null || die "VM_EXT4_MB: no mkfs.ext4 (apt-get install e2fsprogs)"
    truncate -s "${VM_EXT4_MB}M" "$WORK/ext4.img"
    mkfs.ext4 -q -F "$WORK/ext4.img" || die "VM_EXT4_MB: mkfs.ext4 failed"
    DISK_ARGS=(-drive "file=$WORK/ext4.img,if=none,id=ext4,format=raw" -device "nvme,drive=ext4,serial=sonde-ext4")
    touch "$ROOT/etc/vm-ext4"
fi

# CMD for busybox env, one word per line: NAME=VALUE lines, then CMD and args.
: > "$ROOT/etc/vm-cmd"
for n in ${VM_ENV:-}; do
    if [ -n "${!n+x}" ]; then
        case "${!n}" in *$'\n'*) die "VM_ENV: value of $n contains a newline" ;; esac
        printf '%s=%s\n' "$n" "${!n}" >> "$ROOT/etc/vm-cmd"
    fi
done
printf '%s\n' "$@" >> "$ROOT/etc/vm-cmd"

cat > "$ROOT/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root USER=root LOGNAME=root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ulimit -l unlimited
hostname vmtest
ip link set lo up 2>/dev/null
. /etc/vm-arch
for m in /lib/vm-modules/*.ko; do
    [ -f "$m" ] || continue
    insmod "$m" || echo "vm-init: insmod $m failed" > /dev/console
done
# A virtio console's port appears once the host has announced it.
n=0
while [ ! -c "$OUTPUT_TTY" ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
# OUTPUT_TTY carries CMD's output and our markers only; the kernel console is
# elsewhere (ttyS1 and ttyS0 on x86_64, hvc0 and ttyAMA0 on aarch64).
exec 3>"$OUTPUT_TTY"
if [ -e /etc/vm-ext4 ]; then
    mkdir -p /mnt/ext4
    # NVMe namespaces appear asynchronously after boot, and with the scratch
    # disk beside it the order of their names is not fixed: find it by serial
    ext4_dev=""
    for _ in $(seq 100); do
        for b in /sys/block/nvme*; do
            [ "$(cat "$b/device/serial" 2>/dev/null | tr -d ' ')" = sonde-ext4 ] && ext4_dev=/dev/${b##*/}
        done
        [ -n "$ext4_dev" ] && [ -b "$ext4_dev" ] && break
        sleep 0.1
    done
    mount -t ext4 "$ext4_dev" /mnt/ext4 || echo "run-in-vm: the ext4 disk did not mount" >&3
fi
echo "@@VM_INIT uptime=$(cut -d' ' -f1 /proc/uptime) release=$(uname -r)" >&3
set --
while IFS= read -r a; do set -- "$@" "$a"; done < /etc/vm-cmd
cd /tmp
env "$@" </dev/null >&3 2>&3
rc=$?
echo "@@VM_EXIT rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)" >&3
sync
reboot -f
EOF
chmod 755 "$ROOT/init"

(cd "$ROOT" && find . | cpio -o -H newc --quiet) > "$WORK/initrd.cpio"

rm -f "$OUTDIR/output.txt" "$OUTDIR/console.log" "$OUTDIR/qemu.log" "$OUTDIR/status"
: > "$WORK/console.raw"
: > "$WORK/output.raw"
SCRATCH=()
if [ "${SCRATCH_MB:-64}" != 0 ]; then
    truncate -s "${SCRATCH_MB:-64}M" "$WORK/scratch.img"
    SCRATCH=(-drive "file=$WORK/scratch.img,if=none,id=scratch,format=raw"
        -device "nvme,drive=scratch,serial=sonde-scratch")
fi
START=$(date +%s.%N)
QRC=0
output_device "$WORK/output.raw"
timeout --foreground -k 10 "$TIMEOUT" "$QEMU" \
    "${MACHINE[@]}" -accel "tcg,thread=${TCG_THREAD:-multi},tb-size=256" -cpu "$CPU" -m "$MEM" -smp "$SMP" \
    -nographic -nodefaults -no-reboot -no-user-config \
    -kernel "$KERNEL" -initrd "$WORK/initrd.cpio" "${DISK_ARGS[@]}" "${SCRATCH[@]}" \
    -serial "file:$WORK/console.raw" "${OUTPUT_OPTS[@]}" \
    -append "console=$CONSOLE_TTY rdinit=/init panic=-1 softlockup_panic=1 quiet loglevel=5 mitigations=off $APPEND" \
    > "$OUTDIR/qemu.log" 2>&1 || QRC=$?
WALL=$(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')

# (without the firmware's terminal escape sequences)
tr -d '\r' < "$WORK/console.raw" |
    sed -E 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' > "$OUTDIR/console.log" || true
tr -d '\r' < "$WORK/output.raw" > "$WORK/output.all"
# Strip the markers (the exit marker may follow output without a final newline).
sed -E '/^@@VM_INIT uptime=/d; /^@@VM_EXIT rc=[0-9]+ uptime=[0-9.]+$/d; s/@@VM_EXIT rc=[0-9]+ uptime=[0-9.]+$//' \
    "$WORK/output.all" > "$OUTDIR/output.txt"
EXIT=$(sed -n -E 's/.*@@VM_EXIT rc=([0-9]+) uptime=[0-9.]+$/\1/p' "$WORK/output.all" | tail -1)
END_UP=$(sed -n -E 's/.*@@VM_EXIT rc=[0-9]+ uptime=([0-9.]+)$/\1/p' "$WORK/output.all" | tail -1)
INIT_UP=$(sed -n -E 's/^@@VM_INIT uptime=([0-9.]+) .*/\1/p' "$WORK/output.all" | head -1)
RELEASE=$(sed -n -E 's/^@@VM_INIT uptime=[0-9.]+ release=(.*)$/\1/p' "$WORK/output.all" | head -1)
CMD_S=""
if [ -n "$INIT_UP" ] && [ -n "$END_UP" ]; then
    CMD_S=$(awk -v s="$INIT_UP" -v e="$END_UP" 'BEGIN { printf "%.1f", e - s }')
fi

[ -n "${VM_QUIET:-}" ] || cat "$OUTDIR/output.txt"
[ -z "${KEEP:-}" ] || echo "run-in-vm: work dir kept: $WORK" >&2

REASON=""
if [ -z "$EXIT" ]; then
    if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
        REASON="timeout: guest did not finish within TIMEOUT=${TIMEOUT}s"
    elif grep -q 'Kernel panic' "$OUTDIR/console.log"; then
        REASON="kernel panic: $(grep -m1 'Kernel panic' "$OUTDIR/console.log")"
    elif [ "$QRC" != 0 ] || grep -q 'terminating on signal' "$OUTDIR/qemu.log"; then
        REASON="qemu exited with code $QRC: $(tail -1 "$OUTDIR/qemu.log")"
    elif [ -z "$INIT_UP" ]; then
        REASON="guest /init never started (bad kernel or initramfs?)"
    else
        REASON="guest command started but no exit marker came back"
    fi
fi

{
    if [ -n "$EXIT" ]; then echo "result=exit"; echo "exit=$EXIT"; else echo "result=infra"; echo "exit=125"; fi
    echo "reason=$REASON"
    echo "kernel=$KERNEL"
    echo "release=$RELEASE"
    echo "qemu_rc=$QRC"
    echo "wall_s=$WALL"
    echo "init_s=$INIT_UP"
    echo "cmd_s=$CMD_S"
} > "$OUTDIR/status"

if [ -z "$EXIT" ]; then
    {
        echo "run-in-vm: INFRASTRUCTURE FAILURE (not a test result): $REASON"
        echo "run-in-vm: kernel=$KERNEL wall=${WALL}s; last lines of $OUTDIR/console.log:"
        tail -20 "$OUTDIR/console.log" | sed 's/^/    /'
        echo
    } >&2
    exit 125
fi
printf 'run-in-vm: release=%s exit=%s wall=%ss (guest: init at %ss, command %ss)\n' \
    "$RELEASE" "$EXIT" "$WALL" "$INIT_UP" "${CMD_S:-?}" >&2
exit "$EXIT"
