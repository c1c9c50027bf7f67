#!/usr/bin/env bash
# The one set-up command: installs what the tests need from Debian's packages
# (as root), prepares the real-kernel test cache, then installs the npm
# dependencies and builds everything (C++ addon + TypeScript) with `npm ci`.
#
#   IWPMD_SKIP_KERNEL_SETUP=1   skip the kernel download/siw build (~720 MB, a few minutes);
#                               the real-kernel test then skips with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
  bash scripts/install-test-deps.sh
  if [ "${IWPMD_SKIP_KERNEL_SETUP:-0}" != 1 ]; then
    bash scripts/setup-kernel-test.sh || echo "setup.sh: real-kernel test set-up failed; that test will skip with the reason" >&2
  fi
else
  echo "setup.sh: not root: skipping Debian packages (rdma-core, nftables, qemu, ...); tests that need them will skip" >&2
fi

npm ci
