#!/bin/sh
# Stage 2: PID 1 inside the host's root (read-only 9p; /run, /tmp tmpfs).
# Runs guest-main.sh bounded in time, saves the kernel log, powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
cd /
KT=/run/kt
. $KT/results/config.env
echo "kt-init: stage 2 at $(cut -d' ' -f1 /proc/uptime)s" > /dev/kmsg
MAIN=$KT/results/.work/guest/guest-main.sh   # snapshot taken by scripts/test-kernel.sh
[ -f "$MAIN" ] || MAIN=$KT/project/test/kernel/guest-main.sh
timeout -s KILL "${GUEST_TIMEOUT:-300}" /bin/bash "$MAIN" \
  > $KT/results/guest.log 2>&1
echo "guest-main exit=$?" >> $KT/results/guest.log
dmesg > $KT/results/dmesg.final.txt 2>/dev/null
sync
echo o > /proc/sysrq-trigger
sleep 30
