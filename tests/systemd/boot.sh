#!/bin/bash
# Run by tests/systemd/container.py inside new pid, mount, cgroup, net, uts and ipc namespaces
# (util-linux unshare): build a throw-away root from this machine's own / and exec systemd in it
# as PID 1. Nothing on the host changes: the root is an overlay whose upper layer is a tmpfs,
# and every mount below is private to the new mount namespace.
#   $1 an empty directory to become the root   $2 an empty directory for the overlay's layers
#   $3 a host directory shown read-only at /io (wheels, answers, the test's files)
set -euo pipefail
root=$1 layers=$2 io=$3

mount -t tmpfs -o size=2g,mode=0755 till-layers "$layers"
mkdir "$layers/upper" "$layers/work"
mount -t overlay till-root -o lowerdir=/,upperdir="$layers/upper",workdir="$layers/work" "$root"

# The kernel file systems systemd expects, fresh for this pid namespace.
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
# Inside the new cgroup namespace the hierarchies show only our own subtree, as their root:
# systemd in a container uses the name=systemd and the unified one (this host is hybrid v1).
mount -t tmpfs -o mode=0755,nosuid,nodev,noexec cgroup "$root/sys/fs/cgroup"
mkdir "$root/sys/fs/cgroup/systemd" "$root/sys/fs/cgroup/unified"
mount -t cgroup -o none,name=systemd,nosuid,nodev,noexec cgroup "$root/sys/fs/cgroup/systemd"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$root/sys/fs/cgroup/unified"
mount -o remount,ro,bind "$root/sys/fs/cgroup"

# A small /dev of our own with the usual nodes and a new pty instance.
mount -t tmpfs -o mode=0755,nosuid dev "$root/dev"
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  IFS=: read -r name major minor <<< "$node"
  mknod -m 666 "$root/dev/$name" c "$major" "$minor"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
mount -t tmpfs -o mode=0755,nosuid,nodev run "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$root/tmp"
mkdir -p "$root/io"
mount --bind "$io" "$root/io"
mount -o remount,ro,bind "$root/io"

cd "$root"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
# systemd leaves mount propagation alone in a container; without shared propagation the
# files of LoadCredential= never reach the service's mount namespace.
mount --make-rshared /
exec env -i container=till-agent-test /lib/systemd/systemd \
  systemd.mask=postgresql.service systemd.mask=avahi-daemon.service
