#!/bin/sh
# The lab guest's job (copied into the share as /lab/job.sh by tests/lab/runner.py;
# run by /lab-init, see tools/lab/build.py).  Output goes to /lab/job.log.
#
#   /src        the checkout, read-only
#   /lab        the harness's work directory: wheels/, args (pytest arguments),
#               results: junit.xml, pytest.log, phases (timestamps)
#   /dev/vdb, /dev/vdc   blank disks for the logical pools
#
# Services are started by hand (no systemd): udevd, tgtd with one target of
# two LUNs on 127.0.0.1:3260, iscsid, and the NFS server (rpcbind, statd,
# mountd, nfsd) exporting /srv/nfs/*.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 LC_ALL=C.UTF-8
phase() { echo "$(cut -d' ' -f1 /proc/uptime) $*" >>/lab/phases; echo "=== $*"; }

# pyvirtd and its dependencies into a venv, from the wheels the harness prepared
# (in the background, while the services start; see tests/lab/install_wheels.py)
phase venv
python3 -m venv --without-pip --system-site-packages /opt/venv
# then start pyvirtd (the inside tests adopt it: LAB_DAEMON_ROOT) and compile
# what pytest imports, while the services come up: under TCG, Python's start-up
# and the QEMU driver's capability probe take tens of seconds each
SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths(vars={"base": "/opt/venv", "platbase": "/opt/venv"})["purelib"])')
export LAB_DAEMON_ROOT=/tmp/lab-daemon
(
    /opt/venv/bin/python /src/tests/lab/install_wheels.py /lab/wheels/*.whl || exit 1
    mkdir -p $LAB_DAEMON_ROOT
    cd / && setsid /opt/venv/bin/python -m pyvirtd.cli --root $LAB_DAEMON_ROOT \
        >$LAB_DAEMON_ROOT/daemon.log 2>&1 </dev/null &
    echo $! >$LAB_DAEMON_ROOT/pid
    for pkg in _pytest pytest pluggy pytest_trio iniconfig packaging; do
        /opt/venv/bin/python -m compileall -q "$SITE/$pkg" >/dev/null
    done
) >/tmp/install.log 2>&1 &
INSTALL=$!

phase services
for m in dm_mod dm_snapshot dm_thin_pool iscsi_tcp sd_mod nfsd nfs nfsv3 nfsv4; do
    modprobe "$m" || echo "modprobe $m failed"
done
mkdir -p /run/udev /run/lvm /run/lock/lvm /var/lib/nfs/rpc_pipefs /run/rpcbind
/lib/systemd/systemd-udevd --daemon
udevadm trigger --action=add --subsystem-match=block >/dev/null 2>&1
udevadm settle --timeout=30

# the iSCSI target and the NFS server come up side by side (each takes seconds under TCG)
(
# iSCSI target: tgtd on loopback, two file-backed LUNs
IQN=iqn.2024-01.lab.pyvirtd:store
mkdir -p /var/lib/lab
truncate -s 64M /var/lib/lab/lun1.img
truncate -s 32M /var/lib/lab/lun2.img
tgtd --iscsi portal=127.0.0.1:3260
for i in $(seq 50); do tgtadm --lld iscsi --mode target --op show >/dev/null 2>&1 && break; sleep 0.1; done
tgtadm --lld iscsi --mode target --op new --tid 1 --targetname "$IQN"
tgtadm --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 --backing-store /var/lib/lab/lun1.img
tgtadm --lld iscsi --mode logicalunit --op new --tid 1 --lun 2 --backing-store /var/lib/lab/lun2.img
tgtadm --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL
iscsid
) &
ISCSI=$!
(
# NFS server: two exports (one for the lifecycle test, one for the dead-server case)
mkdir -p /srv/nfs/a /srv/nfs/b
cat >/etc/exports <<'EOF'
/srv/nfs/a 127.0.0.1(rw,no_root_squash,no_subtree_check,insecure)
/srv/nfs/b 127.0.0.1(rw,no_root_squash,no_subtree_check,insecure)
EOF
mount -t rpc_pipefs rpc_pipefs /var/lib/nfs/rpc_pipefs 2>/dev/null
mount -t nfsd nfsd /proc/fs/nfsd
# a short NFSv4 grace period: the dead-server test restarts nfsd
echo 10 >/proc/fs/nfsd/nfsv4gracetime
echo 10 >/proc/fs/nfsd/nfsv4leasetime
rpcbind -w
rpc.statd --no-notify
exportfs -ra
rpc.mountd
rpc.nfsd 4
) &
NFS=$!
wait $ISCSI $NFS
phase "services up"

wait $INSTALL || { cat /tmp/install.log; echo "installing the wheels failed"; exit 3; }
phase installed
phase tests
# The tests run from a copy of tests/ (not from /src), so `import pyvirtd`
# finds the installed wheel, not the source tree.
mkdir -p /tmp/work
cp -r /src/tests /src/pyproject.toml /tmp/work/
cd /tmp/work
ARGS=$(cat /lab/args 2>/dev/null || echo tests/lab/inside)
LAB_GUEST=1 timeout "${LAB_TEST_TIMEOUT:-400}" \
    /opt/venv/bin/python -m pytest -p no:cacheprovider -v -rA --durations=0 $ARGS \
    --junitxml=/lab/junit.xml >/lab/pytest.log 2>&1
rc=$?
phase "done rc=$rc"
exit $rc
