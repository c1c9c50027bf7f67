#!/usr/bin/env bash
# Real-kernel end-to-end test: boots Debian's stock kernel under qemu (TCG),
# brings up soft-iWARP on a dummy netdev inside the guest and runs the
# scenarios of test/kernel/guest-main.sh against our daemon and rdma-core's
# iwpmd. No disk image: the guest runs the host's root (shared read-only over
# virtio-9p), the project checkout (its own read-only share), the extracted
# kernel tree (modules) and writes its evidence into a writable share.
#
#   npm run test:kernel            (or: bash scripts/test-kernel.sh)
#
# Exit status: 0 all scenarios passed; 1 a scenario failed or the guest did
# not finish; 77 the environment cannot run the test (not root, no qemu,
# kernel cache cannot be set up, e.g. no network for apt) - the reason is
# printed and written to <results>/skip-reason.txt.
#
# Environment:
#   IWPMD_KT_RESULTS      results folder (default <project>/test-results/kernel)
#   IWPMD_KT_SCENARIOS    space/comma separated groups to run, in order
#                         (default "nodaemon ref ours compare quirks late-reply late-reply-live"):
#                           nodaemon  rping + cmtime with no port mapper at all
#                           ref       rdma-core's /usr/sbin/iwpmd: startup, rping,
#                                     kill/restart, cmtime
#                           ours      our daemon: the same scenarios
#                           compare   kernel-visible outcome of ref vs ours
#                           quirks    our daemon: 26-record MAPINFO replay, daemon
#                                     SIGSTOPped (kernel 10 s timeouts), daemon
#                                     SIGKILLed without restart
#                           late-reply our daemon SIGSTOPped across the kernel's 10 s
#                                     timeout (rping pair), then SIGCONT: it must not
#                                     answer the timed-out ADD/QUERY (a late answer
#                                     oopses 6.1), must count them (lateDropped), and
#                                     map new connections afterwards. Keep it last.
#                         late-reply-live (default, last) late-reply with SIGCONT while
#                                           the rping pair still runs (no REMOVE queued behind
#                                           the late requests; only the stall detection can tell)
#                         opt-in:
#                           quirks-ref      the quirks with rdma-core's iwpmd
#                           late-reply-ref  late-reply with iwpmd (it does answer and
#                                           can oops the kernel: run it last)
#                           cmtime-nodaemon, cmtime-ref, cmtime-ours
#                                           only the cmtime runs (benchmarking;
#                                           cmtime-nodaemon must come first)
#                           profile-ours    cmtime with our daemon under node --cpu-prof
#                           cmtime-ours+OPT[+OPT...]  cmtime with our daemon under
#                                           extra node options, e.g. cmtime-ours+jitless,
#                                           cmtime-ours+no-opt+max-lazy (OPT = an option
#                                           without its leading "--")
#                           trace-ours[+OPT...], trace-ref  the daemon under strace -f
#                                           -tt -T (netlink, UDP, epoll) during cmtime
#                                           runs (IWPMD_KT_TRACE_RUNS x _CONNS, default 4 x 16);
#                                           summarise with test/kernel/connect-timeline.mjs
#                           count-ours[+OPT...], count-ref  the daemon under strace -f -c
#                                           during the cmtime runs (system call counts)
#   IWPMD_KT_CMTIME_RUNS  cmtime processes per daemon (default 4)
#   IWPMD_KT_CMTIME_CONNS connections per cmtime process (default 64)
#   IWPMD_KT_GUEST_TIMEOUT  seconds the guest's scenario script may take (default 600)
#   IWPMD_KT_BUILD        auto (build dist/ and the addon if missing; default),
#                         always, never
#   IWPMD_KT_SKIP_SETUP   1 = do not run scripts/setup-kernel-test.sh
#   IWPMD_KT_REQUIRE      1 = a missing prerequisite is a failure (exit 1), not a
#                         skip (for CI machines that must run the test)
#   IWPMD_KERNEL_CACHE    kernel cache folder (see setup-kernel-test.sh)
#   IWPMD_KT_APPEND       extra guest kernel command line, e.g. "clocksource=tsc
#                         tsc=reliable" (TCG marks the TSC unstable and the guest then
#                         reads the HPET, by emulated MMIO, on every clock_gettime)
#   IWPMD_KT_ACCEL        qemu accelerator (default "tcg,thread=multi"; /dev/kvm on
#                         these machines cannot run a stock kernel)
set -uo pipefail

PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${IWPMD_KERNEL_CACHE:-/var/cache/iwpmd-kernel-test}
RESULTS=${IWPMD_KT_RESULTS:-$PROJECT/test-results/kernel}
SCENARIOS=${IWPMD_KT_SCENARIOS:-nodaemon ref ours compare quirks late-reply late-reply-live}
SCENARIOS=${SCENARIOS//,/ }
CMTIME_RUNS=${IWPMD_KT_CMTIME_RUNS:-4}
CMTIME_CONNS=${IWPMD_KT_CMTIME_CONNS:-64}
GUEST_TIMEOUT=${IWPMD_KT_GUEST_TIMEOUT:-600}
BUILD=${IWPMD_KT_BUILD:-auto}
ACCEL=${IWPMD_KT_ACCEL:-tcg,thread=multi}
QEMU_TIMEOUT=$((GUEST_TIMEOUT + 90))

log() { printf '[test-kernel] %s\n' "$*" >&2; }
skip() {
  mkdir -p "$RESULTS" 2>/dev/null && printf '%s\n' "$*" > "$RESULTS/skip-reason.txt"
  if [ "${IWPMD_KT_REQUIRE:-0}" = 1 ]; then log "FAIL (IWPMD_KT_REQUIRE=1): $*"; exit 1; fi
  log "SKIP: $*"
  exit 77
}
fail() { log "FAIL: $*"; exit 1; }

# The guest sees the host root read-only with tmpfs over /tmp, /var/tmp, /root
# and /run. The project, the results and the kernel tree have their own
# shares, so they may live anywhere; node must be reachable too:
NODE_BIN=$(readlink -f "$(command -v node 2>/dev/null)" 2>/dev/null || true)
NODE_SHARE=""
GUEST_NODE=$NODE_BIN
case "$NODE_BIN" in
  "") ;;
  /tmp/*|/run/*|/root/*|/var/tmp/*)
    # e.g. nvm under /root: share node's install prefix as well
    NODE_SHARE=$(dirname "$(dirname "$NODE_BIN")")
    GUEST_NODE=/run/kt/node/bin/$(basename "$NODE_BIN") ;;
esac

[ "$(id -u)" = 0 ] || skip "must run as root (apt-get, depmod, qemu sharing / over 9p)"

# Fresh results folder (keep nothing from an earlier run).
case "$(readlink -m "$RESULTS")" in
  /|/usr|/etc|/var|/home|"$PROJECT") fail "refusing to use $RESULTS as the results folder (it is emptied)" ;;
esac
rm -rf "$RESULTS"
mkdir -p "$RESULTS" || fail "cannot create $RESULTS"

# ------------------------------------------------------------------ set-up
if [ "${IWPMD_KT_SKIP_SETUP:-0}" != 1 ]; then
  log "running scripts/setup-kernel-test.sh (log: $RESULTS/setup.log)"
  if ! timeout 1800 bash "$PROJECT/scripts/setup-kernel-test.sh" > "$RESULTS/setup.log" 2>&1; then
    tail -20 "$RESULTS/setup.log" >&2
    skip "kernel/qemu set-up failed (no network for apt? see $RESULTS/setup.log)"
  fi
fi
[ -f "$CACHE/kernel.env" ] || skip "no kernel cache at $CACHE (run scripts/setup-kernel-test.sh)"
# shellcheck disable=SC1091
. "$CACHE/kernel.env"
[ -f "${VMLINUZ:-}" ] && [ -d "${KROOT:-}/lib/modules/${KVER:-}" ] || skip "incomplete kernel cache at $CACHE"
[ -n "$NODE_BIN" ] || skip "node not found on the host"
for t in qemu-system-x86_64 cpio gzip modprobe timeout; do
  command -v "$t" >/dev/null || skip "missing host tool: $t"
done
# busybox-static installs /bin/busybox; the initramfs has no libc.
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || skip "missing /bin/busybox (package busybox-static)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then skip "$BUSYBOX is dynamically linked (install busybox-static)"; fi

# ------------------------------------------------------------- our daemon
build_ts=0 build_native=0
case "$BUILD" in
  always) build_ts=1 build_native=1 ;;
  auto)
    [ -f "$PROJECT/dist/cli/iwpmd.js" ] && [ -f "$PROJECT/dist/cli/iwpmctl.js" ] || build_ts=1
    [ -f "$PROJECT/build/Release/iwpm_native.node" ] || build_native=1 ;;
  never) ;;
  *) fail "IWPMD_KT_BUILD must be auto, always or never" ;;
esac
if [ "$build_native" = 1 ]; then
  log "npm run build:native"
  (cd "$PROJECT" && timeout 600 npm run -s build:native) > "$RESULTS/build-native.log" 2>&1 \
    || log "warning: build:native failed (see $RESULTS/build-native.log); our daemon's scenarios will fail"
fi
if [ "$build_ts" = 1 ]; then
  log "npm run build:ts"
  (cd "$PROJECT" && timeout 600 npm run -s build:ts) > "$RESULTS/build-ts.log" 2>&1 \
    || log "warning: build:ts failed (see $RESULTS/build-ts.log); our daemon's scenarios will fail"
fi

# --------------------------------------------------------------- initramfs
WORK="$RESULTS/.work"
IRD="$WORK/initramfs"
rm -rf "$WORK"
mkdir -p "$IRD/bin" "$IRD/mod" "$IRD/proc" "$IRD/sys" "$IRD/dev" "$IRD/newroot"
# The guest runs a snapshot of its scripts: editing the checkout during a run
# must not change what a running bash reads.
mkdir -p "$WORK/guest"
cp "$PROJECT/test/kernel/guest-main.sh" "$PROJECT/test/kernel/decode-strace.mjs" "$WORK/guest/"
cp "$BUSYBOX" "$IRD/bin/busybox"
cp "$PROJECT/test/kernel/init.sh" "$IRD/init"
chmod 755 "$IRD/init" "$IRD/bin/busybox"
: > "$IRD/modules.list"
deps=$(modprobe -d "$KROOT" -S "$KVER" --show-depends -a virtio_pci 9pnet_virtio 9p) \
  || fail "modprobe --show-depends failed for the virtio/9p modules"
declare -A seen=()
while read -r kind path _; do
  [ "$kind" = insmod ] || continue
  b=$(basename "$path")
  case "$b" in *.ko.xz) b=${b%.xz} ;; *.ko.zst) b=${b%.zst} ;; *.ko.gz) b=${b%.gz} ;; esac
  [ -n "${seen[$b]:-}" ] && continue
  seen[$b]=1
  case "$path" in
    *.xz) xz -dc "$path" > "$IRD/mod/$b" ;;
    *.zst) zstd -dc "$path" > "$IRD/mod/$b" ;;
    *.gz) gzip -dc "$path" > "$IRD/mod/$b" ;;
    *) cp "$path" "$IRD/mod/$b" ;;
  esac || fail "cannot copy module $path"
  echo "$b" >> "$IRD/modules.list"
done <<< "$deps"
(cd "$IRD" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$WORK/initrd.gz" \
  || fail "cannot build the initramfs"
log "initramfs: $(wc -l < "$IRD/modules.list") modules ($(tr '\n' ' ' < "$IRD/modules.list"))"

# ------------------------------------------------------- guest configuration
cat > "$RESULTS/config.env" <<EOF
GUEST_TIMEOUT=$GUEST_TIMEOUT
KT_SCENARIOS="$SCENARIOS"
KT_CMTIME_RUNS=$CMTIME_RUNS
KT_CMTIME_CONNS=$CMTIME_CONNS
KT_TRACE_RUNS=${IWPMD_KT_TRACE_RUNS:-4}
KT_TRACE_CONNS=${IWPMD_KT_TRACE_CONNS:-16}
KT_KVER=$KVER
KT_NODE=$GUEST_NODE
EOF

# -------------------------------------------------------------------- boot
QPID=""
TPID=""
cleanup() {
  local p
  if [ -n "$TPID" ] && kill -0 "$TPID" 2>/dev/null; then kill -TERM "$TPID" 2>/dev/null; fi
  if [ -f "$WORK/qemu.pid" ]; then
    p=$(cat "$WORK/qemu.pid" 2>/dev/null)
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$p" 2>/dev/null
    fi
  fi
  if [ -n "$TPID" ]; then kill -KILL "$TPID" 2>/dev/null; wait "$TPID" 2>/dev/null; fi
  return 0
}
trap cleanup EXIT
trap 'log "interrupted"; cleanup; exit 130' INT TERM HUP

P9=security_model=none,multidevs=remap
log "booting $KVER under qemu ($ACCEL), guest timeout ${GUEST_TIMEOUT}s"
start=$(date +%s)
timeout -s TERM -k 10 "$QEMU_TIMEOUT" qemu-system-x86_64 \
  -accel "$ACCEL" -cpu max -machine q35 -m 2G -smp 2 \
  -nodefaults -display none -no-reboot -nic none \
  -serial "file:$RESULTS/console.log" \
  -pidfile "$WORK/qemu.pid" \
  -kernel "$VMLINUZ" -initrd "$WORK/initrd.gz" \
  -append "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=6${IWPMD_KT_APPEND:+ $IWPMD_KT_APPEND}" \
  -virtfs "local,path=/,mount_tag=hostroot,$P9,readonly=on" \
  -virtfs "local,path=$PROJECT,mount_tag=project,$P9,readonly=on" \
  -virtfs "local,path=$KROOT,mount_tag=kroot,$P9,readonly=on" \
  -virtfs "local,path=$RESULTS,mount_tag=results,$P9" \
  ${NODE_SHARE:+-virtfs "local,path=$NODE_SHARE,mount_tag=nodedir,$P9,readonly=on"} \
  > "$WORK/qemu.out" 2>&1 &
TPID=$!
wait "$TPID"
qrc=$?
TPID=""
elapsed=$(( $(date +%s) - start ))
log "qemu exited rc=$qrc after ${elapsed}s"
[ -s "$WORK/qemu.out" ] && sed 's/^/[qemu] /' "$WORK/qemu.out" >&2

# ------------------------------------------------------------------ summary
SUM="$RESULTS/summary.txt"
rc=0
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  log "qemu was stopped by the ${QEMU_TIMEOUT}s timeout"
  rc=1
fi
if ! grep -q '^guest-main exit=' "$RESULTS/guest.log" 2>/dev/null; then
  log "the guest did not finish its scenario script; last console lines:"
  tail -25 "$RESULTS/console.log" 2>/dev/null | sed 's/^/[console] /' >&2
  [ -f "$RESULTS/guest.log" ] && tail -25 "$RESULTS/guest.log" | sed 's/^/[guest] /' >&2
  rc=1
fi
if [ ! -s "$SUM" ]; then
  log "no scenario results in $SUM"
  rc=1
else
  echo "================ real-kernel scenarios ($KVER, ${elapsed}s) ================"
  grep -E '^(PASS|FAIL|SKIP|INFO) ' "$SUM"
  echo "====================================================================="
  grep -q '^FAIL ' "$SUM" && rc=1
  grep -q '^PASS ' "$SUM" || rc=1
fi
if [ -f "$RESULTS/cmtime.txt" ]; then
  echo "cmtime (connection set-up, $CMTIME_RUNS x $CMTIME_CONNS connections):"
  sed 's/^/  /' "$RESULTS/cmtime.txt"
fi
echo "evidence: $RESULTS"
exit "$rc"
