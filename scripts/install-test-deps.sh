#!/usr/bin/env bash
# Install the Debian packages that host-side tests need. Idempotent; run as root,
# non-interactively (CI runs it with no stdin).
#
#   rdma-core  /usr/sbin/iwpmd: the reference daemon for differential and interop
#              tests (test/ref/). Installing it must not start anything: see the
#              policy-rc.d guard below (in a container there is no systemd anyway,
#              and iwpmd.service has no [Install] section; only udev pulls it in).
#   gcc        builds test/ref/nlredirect.c, the LD_PRELOAD shim that points the
#              reference iwpmd at our NETLINK_USERSOCK kernel simulator.
#   libc6-dev  headers + crt files for that build (normally pulled in by gcc).
#   strace     evidence in test/ref/README.md; tests may trace the reference daemon.
#   iproute2   `ip netns` for multi-host tests, `ss` to see bound UDP/TCP ports.
#   nftables   drop/delay UDP 3935 inside test network namespaces (loss tests).
#   tcpdump    capture UDP 3935 exchanges between daemons when debugging interop.
# Not installed: iptables (nftables covers packet filtering here).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps.sh: must run as root" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
PKGS=(rdma-core gcc libc6-dev strace iproute2 nftables tcpdump)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-test-deps.sh: all present (${PKGS[*]})"
  exit 0
fi

# Never let package scripts start services (iwpmd, rdma-ndd, ...). If the image
# already has a policy-rc.d (Docker's denies everything) leave it alone;
# otherwise install a deny-all one for the duration of the install.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  added_policy=1
fi
cleanup() { if [ "$added_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

echo "install-test-deps.sh: installing ${missing[*]}"
apt-get update -q
apt-get install -y -q --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${missing[@]}"

# A service start slipping through would leave a real iwpmd holding UDP 3935.
if pgrep -x iwpmd >/dev/null 2>&1; then
  echo "install-test-deps.sh: warning: an iwpmd process is running (pid $(pgrep -x iwpmd | tr '\n' ' '))" >&2
fi
