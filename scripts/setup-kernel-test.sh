#!/usr/bin/env bash
# Prepare the host for scripts/test-kernel.sh (real-kernel test under qemu).
#
#  * installs host tools from Debian's packages (qemu, busybox-static, kmod,
#    cpio, rdma-core, rdmacm-utils, ibverbs-providers, strace, gcc-12, ...);
#  * downloads Debian's stock kernel (the image package linux-image-amd64
#    depends on), its headers (+ -common) and linux-kbuild-6.1, and
#    linux-source-6.1 with `apt-get download` and extracts them with
#    `dpkg-deb -x` into a cache folder; nothing is installed on the host;
#  * builds siw.ko (soft-iWARP, not enabled in Debian's kernel) out of tree
#    against the extracted headers and registers it with `depmod -b`.
#
# Safe to run twice: every step leaves a stamp file and is skipped next time.
# Writes $CACHE/kernel.env (KVER, KROOT, VMLINUZ) for the test script.
#
# Environment:
#   IWPMD_KERNEL_CACHE    cache folder (default /var/cache/iwpmd-kernel-test)
#   IWPMD_KERNEL_REFRESH  1 = run apt-get update and re-resolve the kernel
#                         version even if a complete cache exists
set -euo pipefail

CACHE=${IWPMD_KERNEL_CACHE:-/var/cache/iwpmd-kernel-test}
REFRESH=${IWPMD_KERNEL_REFRESH:-0}
HOST_PKGS=(qemu-system-x86 busybox-static kmod cpio xz-utils gcc-12 make libc6-dev
           strace iproute2 procps coreutils rdma-core rdmacm-utils ibverbs-providers
           ibverbs-utils)

log() { printf '[setup-kernel-test] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, depmod, qemu's 9p sharing of /)"
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
  || die "needs a Debian system (apt-get, dpkg-deb)"

mkdir -p "$CACHE/debs" "$CACHE/stamps"
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- host tools
missing=()
for p in "${HOST_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
apt_updated=0
apt_update() {
  [ "$apt_updated" = 1 ] && return 0
  log "apt-get update"
  apt-get update -qq
  apt_updated=1
}
if [ "${#missing[@]}" -gt 0 ]; then
  apt_update
  log "installing: ${missing[*]}"
  # policy-rc.d keeps rdma-core's iwpmd from being started on the host
  had_policy=1
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    had_policy=0
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$had_policy" = 1 ] || rm -f /usr/sbin/policy-rc.d
else
  log "host packages already installed"
fi

# ------------------------------------------------------- kernel version pick
# Reuse the version of a complete cache unless asked to refresh: the second
# run must not depend on the network.
KVER=""
if [ "$REFRESH" != 1 ] && [ -f "$CACHE/kernel.env" ]; then
  # shellcheck disable=SC1091
  KVER=$(. "$CACHE/kernel.env"; echo "${KVER:-}")
  [ -f "$CACHE/stamps/ready-$KVER" ] || KVER=""
fi
if [ -z "$KVER" ]; then
  apt_update
  img=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$img" ] || die "cannot resolve linux-image-amd64's image package"
  KVER=${img#linux-image-}
  # an -unsigned variant name would end in -unsigned; strip it
  KVER=${KVER%-unsigned}
fi
log "kernel version: $KVER"
KROOT="$CACHE/root-$KVER"
ST="$CACHE/stamps"
KBUILD_PKG=linux-kbuild-6.1
SRC_PKG=linux-source-6.1
COMMON_PKG="linux-headers-${KVER%-amd64}-common"
PKGS=("linux-image-$KVER" "linux-headers-$KVER" "$COMMON_PKG" "$KBUILD_PKG" "$SRC_PKG")

# ------------------------------------------------------------- download .debs
for p in "${PKGS[@]}"; do
  if [ -f "$ST/dl-$p-$KVER" ] && ls "$CACHE/debs/${p}_"*.deb >/dev/null 2>&1; then
    continue
  fi
  apt_update
  log "apt-get download $p"
  rm -f "$CACHE/debs/${p}_"*.deb
  # _apt must be able to write there, or apt warns about an unsandboxed download
  chown _apt "$CACHE/debs" 2>/dev/null || true
  (cd "$CACHE/debs" && apt-get download -qq "$p")
  touch "$ST/dl-$p-$KVER"
done
deb_of() { ls "$CACHE/debs/${1}_"*.deb | sort -V | tail -1; }

# ------------------------------------------------------------------- extract
mkdir -p "$KROOT"
for p in "linux-image-$KVER" "linux-headers-$KVER" "$COMMON_PKG" "$KBUILD_PKG"; do
  if [ ! -f "$ST/x-$p-$KVER" ]; then
    log "extracting $p"
    dpkg-deb -x "$(deb_of "$p")" "$KROOT"
    touch "$ST/x-$p-$KVER"
  fi
done
VMLINUZ="$KROOT/boot/vmlinuz-$KVER"
[ -f "$VMLINUZ" ] || die "no kernel image at $VMLINUZ"

# The headers' Makefile includes the -common tree by an absolute /usr/src path;
# point it at our extraction instead.
HDR="$KROOT/usr/src/linux-headers-$KVER"
COMMON="$KROOT/usr/src/${COMMON_PKG}"
if [ ! -f "$ST/hdrfix-$KVER" ]; then
  log "pointing extracted headers at $COMMON"
  sed -i "s#/usr/src/${COMMON_PKG}#${COMMON}#g" "$HDR/Makefile"
  touch "$ST/hdrfix-$KVER"
fi

# --------------------------------------------------------------- build siw.ko
SIWDIR="$CACHE/siw-src-$KVER"
SIWKO="$KROOT/lib/modules/$KVER/updates/siw.ko"
if [ ! -f "$ST/siw-$KVER" ] || [ ! -f "$SIWKO" ]; then
  log "building siw.ko out of tree"
  src_deb=$(deb_of "$SRC_PKG")
  rm -rf "$SIWDIR" "$CACHE/src-tmp"
  mkdir -p "$CACHE/src-tmp"
  # The .deb holds usr/src/linux-source-6.1.tar.xz; take only siw out of it.
  dpkg-deb --fsys-tarfile "$src_deb" \
    | tar -x -C "$CACHE/src-tmp" --wildcards './usr/src/linux-source-*.tar.xz'
  tarball=$(ls "$CACHE"/src-tmp/usr/src/linux-source-*.tar.xz | head -1)
  mkdir -p "$SIWDIR"
  tar -xJf "$tarball" -C "$SIWDIR" --strip-components=5 --wildcards '*/drivers/infiniband/sw/siw/*'
  rm -rf "$CACHE/src-tmp"
  [ -f "$SIWDIR/siw_main.c" ] || die "siw sources not found in $tarball"
  make -s -C "$HDR" M="$SIWDIR" CONFIG_RDMA_SIW=m CC=gcc-12 modules >"$CACHE/siw-build.log" 2>&1 \
    || { tail -30 "$CACHE/siw-build.log" >&2; die "siw build failed (log: $CACHE/siw-build.log)"; }
  mkdir -p "$(dirname "$SIWKO")"
  cp "$SIWDIR/siw.ko" "$SIWKO"
  rm -f "$ST/depmod-$KVER"
  touch "$ST/siw-$KVER"
fi

# -------------------------------------------------------------------- depmod
if [ ! -f "$ST/depmod-$KVER" ]; then
  log "depmod -b $KROOT $KVER"
  depmod -b "$KROOT" "$KVER"
  touch "$ST/depmod-$KVER"
fi
modinfo -b "$KROOT" -k "$KVER" -F vermagic siw >/dev/null || die "siw not found by modinfo"

cat > "$CACHE/kernel.env" <<EOF
KVER=$KVER
KROOT=$KROOT
VMLINUZ=$VMLINUZ
EOF
touch "$ST/ready-$KVER"
log "ready: KVER=$KVER KROOT=$KROOT"
