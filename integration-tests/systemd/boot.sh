#!/bin/bash
# Used by tests/systemd_units.rs: boots real systemd as PID 1 of a
# systemd-nspawn container whose root is an overlay of the host's /, with
# dbfleet installed the way docs/deploy.md says.
#
#   unshare --mount --propagation private -- boot.sh SCRATCH BIN STAGE NAME MARK
#
# Runs in a private mount namespace, so the overlay is never visible on the
# host and disappears with the last process in that namespace (this one,
# which becomes systemd-nspawn). Writes go to SCRATCH/upper; the host's
# files are never changed. BIN holds the freshly built binaries, STAGE the
# files the test rendered (configs, my.cnf, prepare.sh). NAME names the
# machine and the cgroups this makes. MARK is an extra argument of the
# container's PID 1, by which the test finds it.
set -euo pipefail
S=$1 BIN=$2 STAGE=$3 NAME=$4 MARK=$5
R=$S/root

# A cgroup of our own in each hierarchy (the test machine's is hybrid:
# name=systemd plus cgroup2 at unified/): nspawn makes its payload and
# supervisor groups under it, not at the root where another container
# would meet them, and the test kills and removes it at the end.
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
  roots=/sys/fs/cgroup
else
  roots=/sys/fs/cgroup/systemd
  [ -e /sys/fs/cgroup/unified/cgroup.controllers ] && roots="$roots /sys/fs/cgroup/unified"
fi
for h in $roots; do
  mkdir -p "$h/$NAME"
  echo $$ > "$h/$NAME/cgroup.procs"
done

mkdir -p "$S/upper" "$S/work" "$R"
# redirect_dir=on: without it overlayfs refuses (EXDEV) to rename a
# directory of the lower layer, e.g. /var/lib/mysql/mysql during a restore.
mount -t overlay overlay \
  -o "lowerdir=/,upperdir=$S/upper,workdir=$S/work,redirect_dir=on" "$R"

# A machine-id of its own: nspawn refuses to link journals when the host's
# and the container's are equal.
systemd-id128 new > "$R/etc/machine-id"
echo db1 > "$R/etc/hostname"

# Services of the host image that have no place here (ports, hardware,
# timers): masked, for a fast and quiet boot.
for u in prometheus.service prometheus-node-exporter.service \
         prometheus-mysqld-exporter.service postgresql.service \
         postgresql@15-main.service nvmf-autoconnect.service \
         nvmefc-boot-connections.service openipmi.service smartmontools.service \
         smartd.service e2scrub_reap.service systemd-pstore.service \
         systemd-timesyncd.service uuidd.socket getty@tty1.service \
         apt-daily-upgrade.timer apt-daily.timer dpkg-db-backup.timer \
         e2scrub_all.timer fstrim.timer man-db.timer \
         prometheus-node-exporter-apt.timer \
         prometheus-node-exporter-ipmitool-sensor.timer \
         prometheus-node-exporter-mellanox-hca-temp.timer \
         prometheus-node-exporter-nvme.timer \
         prometheus-node-exporter-smartmon.timer; do
  ln -sfn /dev/null "$R/etc/systemd/system/$u"
done

# docs/deploy.md §5-§6: the binaries in /usr/bin, the shipped units.
install -m 0755 "$BIN/dbfleet" "$BIN/dbfleet-agent" "$BIN/dbfleet-coordinator" "$R/usr/bin/"
rm -rf "$R/root/stage"
cp -r "$STAGE" "$R/root/stage"
chroot "$R" /bin/bash /root/stage/prepare.sh

# No lock on the directory: this root is ours alone, and a killed nspawn
# would leave the lock file in /run behind.
export SYSTEMD_NSPAWN_LOCK=0
exec systemd-nspawn -D "$R" -b -M "$NAME" --register=no --keep-unit \
  --private-network --console=pipe -- "$MARK" </dev/null
