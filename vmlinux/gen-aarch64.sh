#!/bin/bash
# gen-aarch64.sh — regenerate vmlinux/aarch64/vmlinux.h from a real arm64 kernel's BTF.
#
# What it does (see vmlinux/README.md for the recorded results):
#   1. Downloads Debian bookworm's arm64 cloud kernel (meta package
#      linux-image-cloud-arm64 -> its versioned linux-image-*-cloud-arm64 dependency)
#      and the arm64 busybox-static .deb with `apt-get download`, using a PRIVATE apt
#      configuration and state under a temp dir (the system's apt configuration, its
#      architectures and its package lists are neither read nor modified; packages are
#      still verified against the signed Release files with the system's Debian keyring).
#   2. Extracts both with `dpkg -x`, turns the kernel's vmlinuz into something
#      `qemu-system-aarch64 -kernel` can boot (gzip'd Image, plain Image or EFI zboot).
#   3. Builds a tiny initramfs (cpio newc): static busybox + /init, which mounts sysfs
#      and writes /sys/kernel/btf/vmlinux base64-encoded to the serial port, then powers off.
#   4. Boots it with `qemu-system-aarch64 -M virt -cpu max -accel tcg` (no KVM needed),
#      decodes and checks (size + sha256) the BTF blob.
#   5. `bpftool btf dump file <btf> format c > vmlinux/aarch64/vmlinux.h`.
#
# Idempotent: every run starts from an empty temp dir, the header is replaced atomically,
# the temp dir is removed on exit (KEEP=1 keeps it). Needs root (apt-get install).
#
# Knobs (environment):
#   MIRROR=http://deb.debian.org/debian              Debian mirror
#   SECURITY_MIRROR=http://deb.debian.org/debian-security
#   SUITE=bookworm                                   (bookworm, bookworm-updates and
#                                                     bookworm-security are searched)
#   KERNEL_META=linux-image-cloud-arm64              meta package to resolve
#   KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
#   MEM=1024 SMP=2 TIMEOUT=900                        qemu guest RAM (MiB), vCPUs, seconds
#   CPU=max                                          qemu -cpu (default: max,pauth-impdef=on
#                                                     if this qemu knows it, else max)
#   OUT=<dir of this script>/aarch64/vmlinux.h       output header
#   KEEP=1                                           keep the temp dir
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-$SCRIPT_DIR/aarch64/vmlinux.h}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=${SUITE:-bookworm}
KERNEL_META=${KERNEL_META:-linux-image-cloud-arm64}
KEYRING=${KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
MEM=${MEM:-1024}
SMP=${SMP:-2}
TIMEOUT=${TIMEOUT:-900}
CPU=${CPU:-}

log() { printf '[gen-aarch64 %6.1fs] %s\n' "$(elapsed "$T_START")" "$*" >&2; }
die() { printf 'gen-aarch64: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

T_START=$(now)
declare -a TIMINGS=()
phase_start() { PHASE_NAME=$1; PHASE_T=$(now); log "== $1"; }
phase_end() { TIMINGS+=("$(printf '%-22s %6ss' "$PHASE_NAME" "$(elapsed "$PHASE_T")")"); }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages with apt-get)"

# ---------------------------------------------------------------- host tools
phase_start "host packages"
need=()
for p in qemu-system-arm cpio bpftool file gzip xz-utils zstd lz4 ca-certificates; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$st" = "install ok installed" ] || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${need[@]}" >&2; then
        apt-get update >&2
        apt-get install -y --no-install-recommends "${need[@]}" >&2
    fi
fi
command -v qemu-system-aarch64 >/dev/null || die "qemu-system-aarch64 not found"
BPFTOOL=$(command -v bpftool || true)
[ -n "$BPFTOOL" ] || BPFTOOL=/usr/sbin/bpftool
[ -x "$BPFTOOL" ] || die "bpftool not found"
[ -r "$KEYRING" ] || die "Debian archive keyring $KEYRING missing (apt-get install debian-archive-keyring)"
phase_end

TMP=$(mktemp -d /tmp/gen-aarch64.XXXXXX)
if [ -n "${KEEP:-}" ]; then
    trap 'log "temp dir kept: $TMP"' EXIT
else
    trap 'rm -rf "$TMP"' EXIT
fi

# ------------------------------------------------------- private apt (arm64)
phase_start "apt update (arm64)"
A=$TMP/apt
mkdir -p "$A/etc/apt/apt.conf.d" "$A/etc/apt/preferences.d" "$A/etc/apt/sources.list.d" \
         "$A/etc/apt/trusted.gpg.d" "$A/var/lib/apt/lists/partial" \
         "$A/var/cache/apt/archives/partial" "$A/var/lib/dpkg" "$A/var/log/apt"
: > "$A/var/lib/dpkg/status"
cat > "$A/etc/apt/sources.list" <<EOF
deb [arch=arm64 signed-by=$KEYRING] $MIRROR $SUITE main
deb [arch=arm64 signed-by=$KEYRING] $MIRROR $SUITE-updates main
deb [arch=arm64 signed-by=$KEYRING] $SECURITY_MIRROR $SUITE-security main
EOF
# APT_CONFIG is read before /etc/apt/apt.conf{,.d}; moving Dir (and with it Dir::Etc)
# into the temp dir means none of the system's apt configuration is read or written.
cat > "$A/apt.conf" <<EOF
Dir "$A/";
Dir::State::status "$A/var/lib/dpkg/status";
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Sandbox::User "root";
Acquire::Languages { "none"; };
Acquire::Retries "3";
EOF
export APT_CONFIG=$A/apt.conf
apt-get -q update >&2 || die "apt-get update (private arm64 config) failed"
phase_end

phase_start "download .debs"
meta_dep=$(apt-cache show --no-all-versions "$KERNEL_META" | sed -n 's/^Depends: //p' | sed -n 1p)
[ -n "$meta_dep" ] || die "cannot read Depends of $KERNEL_META"
KPKG=$(printf '%s\n' "$meta_dep" | tr ',' '\n' | sed -E 's/^ *//; s/ .*//' \
       | grep -E '^linux-image-.*-cloud-arm64(-unsigned)?$' | sed -n 1p)
[ -n "$KPKG" ] || die "no linux-image-*-cloud-arm64 in '$meta_dep'"
META_VER=$(apt-cache show --no-all-versions "$KERNEL_META" | sed -n 's/^Version: //p' | sed -n 1p)
KVER=$(apt-cache show --no-all-versions "$KPKG" | sed -n 's/^Version: //p' | sed -n 1p)
BBVER=$(apt-cache show --no-all-versions busybox-static | sed -n 's/^Version: //p' | sed -n 1p)
log "$KERNEL_META $META_VER -> $KPKG $KVER; busybox-static $BBVER"
mkdir -p "$TMP/debs"
(cd "$TMP/debs" && apt-get -q download "$KPKG" busybox-static >&2)
unset APT_CONFIG
KDEB=$(ls "$TMP"/debs/"$KPKG"_*_arm64.deb)
BBDEB=$(ls "$TMP"/debs/busybox-static_*_arm64.deb)
phase_end

# --------------------------------------------------------------- extraction
phase_start "extract + initramfs"
dpkg -x "$KDEB" "$TMP/kernel"
dpkg -x "$BBDEB" "$TMP/busybox"
VMLINUZ=$(ls "$TMP"/kernel/boot/vmlinuz-* | sed -n 1p)
KREL=${VMLINUZ##*/vmlinuz-}
CONFIG=$TMP/kernel/boot/config-$KREL
if [ -f "$CONFIG" ]; then
    for opt in CONFIG_DEBUG_INFO_BTF CONFIG_SERIAL_AMBA_PL011_CONSOLE CONFIG_DEVTMPFS CONFIG_BLK_DEV_INITRD; do
        grep -q "^$opt=y" "$CONFIG" || die "$KREL: $opt is not =y"
    done
fi

# qemu's -kernel for aarch64 takes a plain or gzip'd arm64 Image; an EFI zboot image
# (PE file, "zimg" at offset 4) carries a compressed Image that we unpack ourselves.
IMAGE=$TMP/Image
magic_at() { dd if="$1" bs=1 skip="$2" count="$3" status=none | od -An -tx1 | tr -d ' \n'; }
le32_at() { od -An -tu4 -j "$2" -N 4 "$1" | tr -d ' '; }
decompress() { # decompress TYPE IN OUT
    case "$1" in
        gzip) gzip -dc "$2" > "$3" ;;
        zstd) zstd -q -dc "$2" > "$3" ;;
        xz)   xz -dc "$2" > "$3" ;;
        lzma) xz -dc --format=lzma "$2" > "$3" ;;
        lz4)  lz4 -q -dc "$2" > "$3" ;;
        *) die "unsupported compression '$1'" ;;
    esac
}
if [ "$(magic_at "$VMLINUZ" 0 2)" = 1f8b ]; then
    KFORMAT="gzip-compressed arm64 Image"
    decompress gzip "$VMLINUZ" "$IMAGE"
elif [ "$(magic_at "$VMLINUZ" 4 4)" = 7a696d67 ]; then      # "zimg"
    off=$(le32_at "$VMLINUZ" 8); size=$(le32_at "$VMLINUZ" 12)
    ctype=$(dd if="$VMLINUZ" bs=1 skip=24 count=8 status=none | tr -d '\0')
    KFORMAT="EFI zboot ($ctype) arm64 Image"
    dd if="$VMLINUZ" of="$TMP/payload" bs=4M iflag=skip_bytes,count_bytes skip="$off" count="$size" status=none
    decompress "$ctype" "$TMP/payload" "$IMAGE"
else
    KFORMAT="uncompressed arm64 Image"
    cp "$VMLINUZ" "$IMAGE"
fi
[ "$(magic_at "$IMAGE" 56 4)" = 41524d64 ] || die "$IMAGE is not an arm64 Image (no ARMd magic)"
log "kernel $KREL: vmlinuz format: $KFORMAT ($(stat -c %s "$VMLINUZ") -> $(stat -c %s "$IMAGE") bytes)"

BB=$TMP/busybox/bin/busybox
BB_FILE=$(file -L "$BB")
[[ $BB_FILE == *"ARM aarch64"* ]] || die "busybox is not an aarch64 binary: $BB_FILE"
[[ $BB_FILE == *"statically linked"* ]] || die "busybox is not static: $BB_FILE"

R=$TMP/initramfs
mkdir -p "$R"/{bin,dev,proc,sys}
cp "$BB" "$R/bin/busybox"
cat > "$R/init" <<'EOF'
#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk          # keep kernel messages off the serial line
TTY=/dev/ttyAMA0
$B stty -F $TTY raw -echo 2>/dev/null || true
{
    if [ -r /sys/kernel/btf/vmlinux ]; then
        echo "BTF-BEGIN release=$($B uname -r) machine=$($B uname -m) size=$($B wc -c < /sys/kernel/btf/vmlinux) sha256=$($B sha256sum /sys/kernel/btf/vmlinux | $B cut -d' ' -f1)"
        $B base64 /sys/kernel/btf/vmlinux
        echo "BTF-END"
    else
        echo "BTF-MISSING release=$($B uname -r)"
    fi
} > $TTY
$B sync
$B poweroff -f
EOF
chmod 755 "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet) | gzip -1 > "$TMP/initrd.cpio.gz"
phase_end

# ------------------------------------------------------------------- boot
phase_start "qemu boot (tcg)"
# pauth-impdef=on: same "max" CPU, but QEMU's cheap pointer-auth hash instead of
# QARMA (a large TCG speed-up); dropped if this qemu does not know the property.
if [ -z "$CPU" ]; then
CPU=max
probe_rc=0
timeout 2 qemu-system-aarch64 -M virt -cpu max,pauth-impdef=on -accel tcg -S -display none \
    -nodefaults -no-user-config -monitor none </dev/null >/dev/null 2>&1 || probe_rc=$?
[ "$probe_rc" = 124 ] && CPU=max,pauth-impdef=on      # 124: still running => property accepted
fi
log "qemu $(qemu-system-aarch64 --version | awk 'NR==1 {print $4}'), -cpu $CPU, -m $MEM, -smp $SMP"
QEMU_RC=0
timeout --foreground -k 10 "$TIMEOUT" qemu-system-aarch64 \
    -M virt -cpu "$CPU" -accel tcg,thread=multi -m "$MEM" -smp "$SMP" \
    -display none -nodefaults -no-user-config -no-reboot -monitor none \
    -kernel "$IMAGE" -initrd "$TMP/initrd.cpio.gz" \
    -serial "file:$TMP/serial.log" \
    -append "console=ttyAMA0 rdinit=/init panic=-1 quiet loglevel=1 mitigations=off" \
    > "$TMP/qemu.log" 2>&1 || QEMU_RC=$?
tr -d '\r' < "$TMP/serial.log" > "$TMP/serial.txt"
if ! grep -q '^BTF-END$' "$TMP/serial.txt"; then
    echo "--- qemu (rc=$QEMU_RC) ---" >&2; cat "$TMP/qemu.log" >&2
    echo "--- serial (tail) ---" >&2; tail -40 "$TMP/serial.txt" >&2
    die "no BTF came back from the guest"
fi
phase_end

# ------------------------------------------------------------ decode + dump
phase_start "decode + bpftool dump"
hdr=$(grep -m1 '^BTF-BEGIN ' "$TMP/serial.txt")
field() { printf '%s\n' "$hdr" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
G_REL=$(field release); G_MACH=$(field machine); G_SIZE=$(field size); G_SHA=$(field sha256)
sed -n '/^BTF-BEGIN /,/^BTF-END$/p' "$TMP/serial.txt" | sed '1d;$d' | base64 -d > "$TMP/vmlinux.btf"
[ "$G_REL" = "$KREL" ] || die "guest kernel release '$G_REL' != package's '$KREL'"
[ "$G_MACH" = aarch64 ] || die "guest machine '$G_MACH' is not aarch64"
[ "$(stat -c %s "$TMP/vmlinux.btf")" = "$G_SIZE" ] || die "BTF size mismatch"
[ "$(sha256sum "$TMP/vmlinux.btf" | cut -d' ' -f1)" = "$G_SHA" ] || die "BTF sha256 mismatch"
[ "$(magic_at "$TMP/vmlinux.btf" 0 2)" = 9feb ] || die "decoded blob has no BTF magic"

mkdir -p "$(dirname "$OUT")"
"$BPFTOOL" btf dump file "$TMP/vmlinux.btf" format c > "$TMP/vmlinux.h"
for t in 'struct user_pt_regs {' 'struct task_struct {' 'struct pt_regs {'; do
    grep -qF "$t" "$TMP/vmlinux.h" || die "generated header lacks '$t'"
done
mv -f "$TMP/vmlinux.h" "$OUT.tmp.$$" && mv -f "$OUT.tmp.$$" "$OUT"
phase_end

BPFTOOL_VER=$("$BPFTOOL" version 2>/dev/null | sed -n 1p)
cat >&2 <<EOF

gen-aarch64: wrote $OUT
  kernel package : $KPKG $KVER (via $KERNEL_META $META_VER)
  kernel release : $KREL ($KFORMAT)
  busybox-static : $BBVER
  BTF            : $G_SIZE bytes, sha256 $G_SHA
  header         : $(stat -c %s "$OUT") bytes, $(wc -l < "$OUT") lines, sha256 $(sha256sum "$OUT" | cut -d' ' -f1)
  bpftool        : $BPFTOOL_VER
timings:
EOF
for t in "${TIMINGS[@]}"; do printf '  %s\n' "$t" >&2; done
printf '  %-22s %6ss\n' total "$(elapsed "$T_START")" >&2
