#!/usr/bin/env python3
"""Build the lab VM image: a Debian bookworm guest for what the host kernel lacks.

The host kernel has no device-mapper, NFS or iSCSI initiator, so the logical,
netfs and iscsi storage backends are tested inside this guest (tests/lab/).
The image is built from Debian packages with debootstrap and cached in the
checkout:

    .cache/lab/vmlinuz        the guest kernel (Debian's linux-image-amd64)
    .cache/lab/initrd.img     its initramfs (loads virtio_blk, mounts root)
    .cache/lab/rootfs.ext4    the root file system, made by `mkfs.ext4 -d`
                              (no loop device needed); booted with snapshot=on
    .cache/lab/stamp          the key of the build: a hash of this script
                              (which holds the package list) and the mirror

It is rebuilt when this script changes.  The first build takes about
1.5-3 minutes (downloading ~300 MB of packages); later runs reuse it.

The guest's init (/lab-init, written below) mounts the 9p shares "src" (the
checkout, read-only, at /src) and "lab" (the harness's work directory, at
/lab), runs /lab/job.sh with its output in /lab/job.log, and powers off.

Usage: tools/lab/build.py [--force] [--check] [--mirror URL]
    --check   exit 0 if the cached image is current, 1 if not (no build)
Needs root (debootstrap, chroot) and the debootstrap package (`make deps`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "lab"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# What the guest needs, and why.
PACKAGES = [
    "linux-image-amd64", "initramfs-tools",     # the distro kernel; initrd loads virtio_blk
    "kmod", "udev", "procps", "iproute2", "util-linux", "mount",
    "lvm2", "thin-provisioning-tools",          # logical pools (thin pools too)
    "open-iscsi", "tgt",                        # iscsi pools: initiator + target on 127.0.0.1
    "nfs-kernel-server", "nfs-common", "rpcbind",   # netfs pools: export + mount.nfs, showmount
    "python3", "python3-venv",                  # the venv the harness installs pyvirtd into
    "python3-libvirt", "libvirt-clients",       # python-libvirt and virsh, Debian's (9.0)
    "qemu-utils",                               # qemu-img, for file volumes (netfs)
    "qemu-system-x86",                          # the QEMU driver loads only with a binary:
                                                # qemu:///session is how clients reach storage
]

INIT = r"""#!/bin/sh
# /lab-init: PID 1 of the lab guest (written by tools/lab/build.py).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
mkdir -p /run/lock
hostname lab
ip link set lo up
for m in 9p 9pnet_virtio; do modprobe "$m"; done
mkdir -p /src /lab
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro src /src
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 lab /lab
echo "lab-init: shares mounted"
if [ -f /lab/job.sh ]; then
    /bin/sh /lab/job.sh >/lab/job.log 2>&1
    echo "$?" >/lab/job.rc
else
    echo "lab-init: no /lab/job.sh" >&2
fi
sync
echo "lab-init: powering off"
echo o >/proc/sysrq-trigger
sleep 30
"""


def build_key(mirror: str) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(mirror.encode())
    return h.hexdigest()[:16]


def is_current(mirror: str) -> bool:
    stamp = CACHE / "stamp"
    return (stamp.exists() and stamp.read_text().strip() == build_key(mirror)
            and all((CACHE / f).exists() for f in ("vmlinuz", "initrd.img", "rootfs.ext4")))


def run(argv: list[str], **kw) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, **kw)


def configure(root: Path) -> tuple[Path, Path]:
    """Make the debootstrapped tree bootable by /lab-init."""
    (root / "lab-init").write_text(INIT)
    (root / "lab-init").chmod(0o755)
    (root / "etc/hostname").write_text("lab\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost lab\n")
    (root / "etc/fstab").write_text("# the lab guest mounts what it needs in /lab-init\n")
    # an initiator name for open-iscsi (its postinst makes one only under systemd)
    iname = root / "etc/iscsi/initiatorname.iscsi"
    iname.parent.mkdir(parents=True, exist_ok=True)
    iname.write_text("InitiatorName=iqn.1993-08.org.debian:01:pyvirtdlab\n")
    # udev-managed LVM in a guest where udevd is started by hand: keep defaults,
    # but do not wait for udev when it is absent
    # no docs/man/locale: a smaller image
    for sub in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt/archives"):
        for p in (root / sub).glob("*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.endswith(".deb"):
                p.unlink()
    # the kernel and initrd the harness boots with -kernel/-initrd
    boot = root / "boot"
    kernel = sorted(boot.glob("vmlinuz-*"))[-1]
    initrd = sorted(boot.glob("initrd.img-*"))[-1]
    return kernel, initrd


def build(mirror: str) -> None:
    if os.geteuid() != 0:
        sys.exit("tools/lab/build.py: debootstrap needs root")
    if shutil.which("debootstrap") is None:
        sys.exit("tools/lab/build.py: debootstrap is not installed (make deps)")
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
    try:
        root = work / "root"
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             "--components=main", SUITE, str(root), mirror])
        kernel, initrd = configure(root)
        shutil.copyfile(kernel, work / "vmlinuz")
        shutil.copyfile(initrd, work / "initrd.img")
        used = int(subprocess.run(["du", "-sxk", str(root)], check=True, capture_output=True,
                                  text=True).stdout.split()[0])
        size_mb = used * 13 // 10 // 1024 + 768         # room for the tests' files
        image = work / "rootfs.ext4"
        run(["mkfs.ext4", "-q", "-F", "-L", "labroot", "-d", str(root), str(image),
             f"{size_mb}M"])
        shutil.rmtree(root)
        stamp = CACHE / "stamp"
        stamp.unlink(missing_ok=True)
        for name in ("vmlinuz", "initrd.img", "rootfs.ext4"):
            os.replace(work / name, CACHE / name)
        stamp.write_text(build_key(mirror) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"lab image built in {time.monotonic() - t0:.0f} s: {CACHE}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if current")
    ap.add_argument("--check", action="store_true", help="only tell whether the image is current")
    ap.add_argument("--mirror", default=os.environ.get("LAB_MIRROR", DEFAULT_MIRROR))
    args = ap.parse_args()
    if args.check:
        sys.exit(0 if is_current(args.mirror) else 1)
    if is_current(args.mirror) and not args.force:
        print(f"lab image is current: {CACHE}")
        return
    build(args.mirror)


if __name__ == "__main__":
    main()
