#!/bin/busybox sh
# Stage 1: /init of the test initramfs (busybox-static + virtio/9p modules).
# Mounts the host's root (read-only), the project checkout, the extracted
# kernel tree and the writable results folder over virtio-9p, then becomes
# stage 2 (guest-pid1.sh) inside the host root with `exec chroot`, so that
# PID 1 and the kernel's usermode helpers (request_module) share that root.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "kt-init: stage 1 at $(cut -d' ' -f1 /proc/uptime)s" > /dev/kmsg
for m in $(cat /modules.list); do
  insmod "/mod/$m" || echo "kt-init: insmod $m failed" > /dev/kmsg
done
P9='trans=virtio,version=9p2000.L,msize=512000'
R=/newroot
mkdir -p $R
fail() { echo "kt-init: FATAL: $*" > /dev/kmsg; echo "kt-init: FATAL: $*"; sleep 1; echo o > /proc/sysrq-trigger; sleep 10; }
mount -t 9p -o "$P9,cache=loose,ro" hostroot $R || fail "cannot mount hostroot"
for d in run tmp var/tmp root; do mount -t tmpfs -o mode=1777 tmpfs "$R/$d" || fail "tmpfs $d"; done
chmod 700 "$R/root"
mkdir -p $R/run/kt/project $R/run/kt/results $R/run/kt/kroot $R/run/kt/work
mount -t 9p -o "$P9,cache=loose,ro" project $R/run/kt/project || fail "cannot mount project"
mount -t 9p -o "$P9,cache=loose,ro" kroot $R/run/kt/kroot || fail "cannot mount kroot"
mount -t 9p -o "$P9" results $R/run/kt/results || fail "cannot mount results"
# node's install prefix, shared only when it lives under a tmpfs-covered folder
mkdir -p $R/run/kt/node
mount -t 9p -o "$P9,cache=loose,ro" nodedir $R/run/kt/node 2>/dev/null || rmdir $R/run/kt/node
mount --move /dev $R/dev
mount --move /proc $R/proc
mount --move /sys $R/sys
mkdir -p $R/dev/shm $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t devpts devpts $R/dev/pts
ln -sf /proc/self/fd $R/dev/fd
ln -sf /proc/self/fd/0 $R/dev/stdin
ln -sf /proc/self/fd/1 $R/dev/stdout
ln -sf /proc/self/fd/2 $R/dev/stderr
cd $R
exec chroot . /bin/sh /run/kt/project/test/kernel/guest-pid1.sh
