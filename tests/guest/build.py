#!/usr/bin/env python3
"""The tiny bootable test guest: Debian's kernel and a busybox-static initramfs.

    python3 tests/guest/build.py [--cache DIR] [--force]    # prints the paths as JSON

or, from a test::

    from tests.guest.build import ensure_guest
    g = ensure_guest()          # TinyGuest(kernel=..., initrd=..., cmdline=..., version=...)

Nothing is installed on the host.  The kernel comes from a kernel already in
/boot when there is one, otherwise from Debian's ``linux-image-amd64``: the
package it depends on (``linux-image-<version>-amd64``) is fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` into the cache.  The
initramfs (newc cpio, gzip) is written here in Python and holds:

* ``/bin/busybox`` (busybox-static, which ``make deps`` installs) and an
  ``/init`` that mounts proc/sys/dev, loads a handful of modules (Debian
  builds the ACPI button, evdev, the NIC, virtio disk and SCSI, i6300esb
  watchdog and balloon drivers as modules; the SATA CD-ROM's come in too,
  loaded by ``load-on-demand``), starts
  busybox ``acpid`` so that the ACPI power button runs ``poweroff -f``,
  brings ``eth0`` up with ``udhcpc`` when there is one, prints
  ``GUEST READY`` on the serial console and then runs a shell there
  (prompt ``guest# ``; an exiting shell is started again);
* the modules those need, with their dependencies (read from each module's
  ``depends=`` modinfo, since the package ships no modules.dep).

With ``root=/dev/vdX`` on the kernel command line, ``/init`` instead loads
virtio_blk and ext4, mounts that disk and ``switch_root``s into it, running
its ``/init``; `make_root_image` makes such a disk (busybox and an init that
mounts proc/sys/dev and runs the same shell, prompt ``guest# ``).  Without
``root=`` nothing changes: those modules are in the initramfs, not loaded.

Lines the guest prints for tests to wait for::

    GUEST IP <address>        udhcpc got a lease on eth0
    GUEST NO LEASE            udhcpc gave up (it keeps trying in the background)
    GUEST READY               boot finished, the shell follows
    GUEST POWER BUTTON        acpid saw the power button; poweroff -f follows
    GUEST ROOT <device>       root= was mounted; switch_root follows
    GUEST ROOT FAILED         root= could not be mounted (or has no /init): the
                              initramfs boots on as without root=
    GUEST ROOTFS READY        the root image's /init ran; its shell follows

Everything is cached under ``.cache/guest/`` in the checkout (git-ignored),
in a directory named after the kernel version and a hash of what goes into
the initramfs, so a changed init builds a new one and an unchanged one is
reused.  A lock file serialises concurrent builders.  The first build
downloads ~70 MB and takes about 15 s here; later calls return at once.

The kernel handed to QEMU is the ELF vmlinux unpacked from Debian's bzImage
(QEMU boots it through its PVH entry point, skipping the decompressor that
is slow under TCG); a kernel that cannot be unpacked is used as it is.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_CACHE = REPO / ".cache" / "guest"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

# Modules the guest loads, in this order (each after its dependencies).
MODULES = ("button", "evdev", "virtio_pci", "virtio_net", "e1000", "8139cp", "8139too",
           # hotplugged disks (virtio and SCSI), the i6300esb watchdog, the balloon
           "virtio_blk", "virtio_scsi", "sd_mod", "i6300esb", "virtio_balloon")
# Modules loaded only to mount a root disk (root=... on the kernel command line):
# ext4 checksums its metadata with crc32c (a soft dependency modinfo does not list).
ROOT_MODULES = ("crc32c_generic", "virtio_blk", "ext4")
# Modules packed but loaded only when a test asks (``load-on-demand`` in the
# guest's shell): the SATA CD-ROM's, USB storage's and the LSI SCSI controller's,
# since probing the q35 AHCI and the XHCI controller costs every boot.
ON_DEMAND = ("ahci", "sr_mod", "xhci_pci", "usb_storage", "sym53c8xx")

# Bumped when what the build makes changes in a way the hash below cannot see.
RECIPE = "2: PVH vmlinux"

# The kernel command line a domain definition should use (<cmdline>).
CMDLINE = "console=ttyS0 panic=-1 loglevel=6"   # 6: the boot banner, not every driver

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin /var/run
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
while read -r m; do insmod "/lib/modules/$m.ko" 2>/dev/null; done < /etc/modules
root=
for arg in $(cat /proc/cmdline); do
    case "$arg" in root=*) root="${arg#root=}" ;; esac
done
if [ -n "$root" ]; then
    while read -r m; do insmod "/lib/modules/$m.ko" 2>/dev/null; done < /etc/modules-root
    i=0
    while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
    mkdir -p /newroot
    if mount -t ext4 "$root" /newroot && [ -x /newroot/init ]; then
        echo "GUEST ROOT $root"
        umount /dev/pts /dev /sys /proc 2>/dev/null
        exec switch_root /newroot /init
    fi
    echo "GUEST ROOT FAILED"
fi
hostname tinyguest
ip link set lo up
# acpid reads the power button from /dev/input/event*: wait for evdev's nodes
i=0
while [ ! -e /dev/input/event0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
acpid -c /etc/acpi -l /tmp/acpid.log
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    udhcpc -i eth0 -s /etc/udhcpc.sh -t 30 -T 1 -b -x hostname:tinyguest -F tinyguest \
        || echo "GUEST NO LEASE"
fi
echo "GUEST READY"
while true; do
    setsid cttyhack sh -l
    sleep 1
done
"""

POWER_BUTTON = """#!/bin/sh
echo "GUEST POWER BUTTON" > /dev/console
poweroff -f
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "GUEST IP $ip" > /dev/console
    ;;
esac
exit 0
"""

PROFILE = """export PS1='guest# '
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
"""

# /init of a root file system made by make_root_image: mounts what a shell
# needs, says so, and runs a shell on the console like the initramfs does.
ROOT_INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
hostname rootguest
echo "GUEST ROOTFS READY"
while true; do
    setsid cttyhack sh -l
    sleep 1
done
"""


@dataclass
class TinyGuest:
    kernel: str
    initrd: str
    cmdline: str
    version: str


# ---------------------------------------------------------------- the kernel

def _host_kernel() -> tuple[str, Path, Path] | None:
    """A kernel in /boot with its modules in /lib/modules: (version, vmlinuz, modules dir)."""
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        version = vmlinuz[len("/boot/vmlinuz-"):]
        moddir = Path("/lib/modules") / version
        if os.access(vmlinuz, os.R_OK) and moddir.is_dir():
            return version, Path(vmlinuz), moddir
    return None


def _debian_kernel_package() -> str:
    """The versioned package linux-image-amd64 depends on (linux-image-6.1.0-N-amd64)."""
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    raise RuntimeError(f"cannot tell which kernel linux-image-amd64 depends on:\n{out}")


def _debian_kernel_deb(cache: Path) -> tuple[str, Path]:
    """(version, the .deb of linux-image-VERSION), fetched once with apt-get download."""
    dl = cache / "download"
    have = sorted(dl.glob("linux-image-*.deb"))
    if have:   # fetched before: no apt-cache call (it costs a second or two)
        return have[-1].name.split("_")[0][len("linux-image-"):], have[-1]
    pkg = _debian_kernel_package()
    dl.mkdir(parents=True, exist_ok=True)
    os.chmod(dl, 0o755)
    debs = sorted(dl.glob(f"{pkg}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", "-q", pkg], cwd=dl, check=True,
                       capture_output=True)
        debs = sorted(dl.glob(f"{pkg}_*.deb"))
    return pkg[len("linux-image-"):], debs[-1]


def _extract_deb(deb: Path, into: Path) -> tuple[Path, Path]:
    """dpkg-deb -x: (vmlinuz, modules dir) of the unpacked package."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)
    vmlinuz = next(iter(sorted((into / "boot").glob("vmlinuz-*"))))
    version = vmlinuz.name[len("vmlinuz-"):]
    return vmlinuz, into / "lib" / "modules" / version


def _pvh_vmlinux(vmlinuz: Path) -> bytes | None:
    """The uncompressed ELF kernel inside a bzImage, for QEMU's PVH direct boot.

    Under TCG, decompressing an 8 MB bzImage costs the guest about 6 s; an
    ELF vmlinux with a PVH note (Debian's kernels have CONFIG_PVH) starts at
    once, so a boot to GUEST READY takes ~4 s instead of ~10 s.  None when
    the payload is not xz (Debian's is) or the result has no ELF header.
    """
    data = vmlinuz.read_bytes()
    at = data.find(b"\xfd7zXZ\x00")
    if at < 0:
        return None
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[at:])
    except lzma.LZMAError:
        return None
    return elf if elf[:4] == b"\x7fELF" and b"Xen" in elf else None


# ------------------------------------------------------------- the modules

def _module_index(moddir: Path) -> dict[str, Path]:
    index = {}
    for path in moddir.rglob("*.ko"):
        index[path.name[:-3].replace("-", "_")] = path
    return index


def _depends(path: Path) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", path.read_bytes())
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def _module_closure(moddir: Path, wanted: tuple[str, ...]) -> list[tuple[str, Path]]:
    """The wanted modules and their dependencies, each after what it needs."""
    index = _module_index(moddir)
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        path = index.get(name)
        if path is None:
            return   # built into this kernel
        for dep in _depends(path):
            visit(dep)
        order.append((name, path))

    for name in wanted:
        visit(name)
    return order


# ------------------------------------------------------------- the initramfs

class Cpio:
    """A newc ("070701") cpio archive written in memory."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        namez = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + namez)
        self.buf.write(b"\0" * (-(110 + len(namez)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _busybox() -> Path:
    for cand in BUSYBOX_CANDIDATES:
        p = Path(cand)
        if p.is_file():
            # a dynamically linked busybox cannot run in an initramfs without libc
            head = p.read_bytes()
            if b"ld-linux" not in head[:8192] and b"/lib64/ld-" not in head:
                return p
    raise RuntimeError("no static busybox found (apt-get install busybox-static, or make deps)")


LOAD_ON_DEMAND = """#!/bin/sh
while read -r m; do insmod "/lib/modules/$m.ko" 2>/dev/null; done < /etc/modules-on-demand
echo "MODULES LOADED"
"""


def _initramfs(busybox: Path, modules: list[tuple[str, Path]],
               root_modules: list[tuple[str, Path]] = (),
               on_demand: list[tuple[str, Path]] = ()) -> bytes:
    c = Cpio()
    for d in ("bin", "dev", "etc", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules",
              "proc", "sys", "tmp", "root"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    c.symlink("bin/sh", "busybox")
    c.file("init", INIT.encode(), 0o755)
    c.file("etc/acpi/PWRF/00000080", POWER_BUTTON.encode(), 0o755)
    c.file("etc/udhcpc.sh", UDHCPC_SCRIPT.encode(), 0o755)
    c.file("etc/profile", PROFILE.encode())
    c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    c.file("etc/group", b"root:x:0:\n")
    c.file("etc/modules", "".join(f"{name}\n" for name, _ in modules).encode())
    c.file("etc/modules-root", "".join(f"{name}\n" for name, _ in root_modules).encode())
    loaded = {name for name, _ in modules} | {name for name, _ in root_modules}
    on_demand = [(n, p) for n, p in on_demand if n not in loaded]
    c.file("etc/modules-on-demand", "".join(f"{name}\n" for name, _ in on_demand).encode())
    c.file("bin/load-on-demand", LOAD_ON_DEMAND.encode(), 0o755)
    modules = list(modules) + list(root_modules) + on_demand
    for name, path in modules:
        c.file(f"lib/modules/{name}.ko", path.read_bytes())
    return gzip.compress(c.finish(), compresslevel=6, mtime=0)


# --------------------------------------------------------------------- main

def _recipe_hash(busybox: Path) -> str:
    h = hashlib.sha256()
    for part in (RECIPE, CMDLINE, INIT, POWER_BUTTON, UDHCPC_SCRIPT, PROFILE, " ".join(MODULES),
                 " ".join(ROOT_MODULES), " ".join(ON_DEMAND), LOAD_ON_DEMAND):
        h.update(part.encode() + b"\0")
    st = busybox.stat()
    h.update(f"{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def ensure_guest(cache: Path | str | None = None, force: bool = False) -> TinyGuest:
    """Build the guest unless the cache already holds it; returns its paths."""
    cache = Path(cache) if cache else DEFAULT_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        busybox = _busybox()
        host = _host_kernel()
        deb = None
        if host:
            version, vmlinuz, moddir = host
        else:
            version, deb = _debian_kernel_deb(cache)
        out = cache / f"{version}-{_recipe_hash(busybox)}"
        info_path = out / "guest.json"
        if info_path.exists() and not force:
            return TinyGuest(**json.loads(info_path.read_text()))
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        tmp = Path(tempfile.mkdtemp(prefix="extract-", dir=cache))
        try:
            if deb is not None:   # only the kernel and a few modules are kept
                vmlinuz, moddir = _extract_deb(deb, tmp)
            modules = _module_closure(moddir, MODULES)
            have = {name for name, _ in modules}
            root_modules = [m for m in _module_closure(moddir, MODULES + ROOT_MODULES)
                            if m[0] not in have]
            on_demand = _module_closure(moddir, ON_DEMAND)
            elf = _pvh_vmlinux(vmlinuz)
            kernel = out / ("vmlinux" if elf else "vmlinuz")
            if elf:
                kernel.write_bytes(elf)
            else:
                shutil.copy2(vmlinuz, kernel)
            (out / "initrd.gz").write_bytes(_initramfs(busybox, modules, root_modules, on_demand))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        guest = TinyGuest(kernel=str(kernel), initrd=str(out / "initrd.gz"),
                          cmdline=CMDLINE, version=version)
        part = info_path.with_suffix(".tmp")
        part.write_text(json.dumps(asdict(guest), indent=2))
        os.replace(part, info_path)
        return guest


# ------------------------------------------------------- the agent variant

# /bin/start-agent of the agent variant: the virtio console driver, the
# /dev/virtio-ports/NAME links udev would make, then Debian's qemu-ga on the
# guest agent's port, in the background; its pid is printed for tests to
# stop or kill it.
START_AGENT = r"""#!/bin/sh
insmod /lib/modules/virtio_console.ko 2>/dev/null
i=0
while ! ls /sys/class/virtio-ports/vport* >/dev/null 2>&1 && [ $i -lt 100 ]; do
    sleep 0.1; i=$((i+1))
done
mkdir -p /dev/virtio-ports /var/run
for p in /sys/class/virtio-ports/vport*; do
    ln -sf "/dev/${p##*/}" "/dev/virtio-ports/$(cat "$p/name")"
done
qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /var/run \
    >/tmp/qemu-ga.log 2>&1 &
echo "AGENT STARTED $!"
"""

# qemu-ga's guest-shutdown runs /sbin/shutdown, which busybox lacks
SHUTDOWN = r"""#!/bin/sh
echo "GUEST SHUTDOWN $*" > /dev/console
for arg in "$@"; do
    case "$arg" in
      -r) reboot -f ;;
      -H) halt -f ;;
      -P) poweroff -f ;;
    esac
done
poweroff -f
"""

QEMU_GA = "/usr/sbin/qemu-ga"


def _shared_libs(binary: str) -> list[Path]:
    """The shared libraries ``binary`` loads (ldd), the dynamic loader included."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def ensure_agent_guest(cache: Path | str | None = None) -> TinyGuest:
    """The tiny guest plus Debian's qemu-ga: its initramfs is the base one with a
    second archive appended (the kernel unpacks both) holding ``/usr/sbin/qemu-ga``,
    the libraries it needs, ``virtio_console.ko`` and ``/bin/start-agent``.
    Needs the qemu-guest-agent package on the host (``make deps``)."""
    if not os.path.exists(QEMU_GA):
        raise RuntimeError(f"{QEMU_GA} is missing (apt-get install qemu-guest-agent)")
    base = ensure_guest(cache)
    cache = Path(cache) if cache else DEFAULT_CACHE
    st = os.stat(QEMU_GA)
    h = hashlib.sha256(f"{START_AGENT}{SHUTDOWN}{st.st_size}:{int(st.st_mtime)}".encode())
    out = Path(base.initrd).parent / f"agent-{h.hexdigest()[:12]}-initrd.gz"
    if out.exists():
        return TinyGuest(kernel=base.kernel, initrd=str(out), cmdline=base.cmdline,
                         version=base.version)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        host = _host_kernel()
        tmp = Path(tempfile.mkdtemp(prefix="extract-", dir=cache))
        try:
            if host:
                moddir = host[2]
            else:
                _, deb = _debian_kernel_deb(cache)
                _, moddir = _extract_deb(deb, tmp)
            c = Cpio()
            made: set[str] = set()
            for lib in [Path(QEMU_GA), *_shared_libs(QEMU_GA)]:
                parts = lib.parts[1:]
                for n in range(1, len(parts)):
                    d = "/".join(parts[:n])
                    if d not in made:
                        made.add(d)
                        c.dir(d)
                c.file("/".join(parts), lib.read_bytes(), 0o755)
            for d in ("bin", "sbin", "lib", "lib/modules"):
                if d not in made:
                    c.dir(d)
            for name, path in _module_closure(moddir, ("virtio_console",)):
                c.file(f"lib/modules/{name}.ko", path.read_bytes())
            c.file("bin/start-agent", START_AGENT.encode(), 0o755)
            c.file("sbin/shutdown", SHUTDOWN.encode(), 0o755)
            overlay = gzip.compress(c.finish(), compresslevel=6, mtime=0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        part = out.with_suffix(".tmp")
        part.write_bytes(Path(base.initrd).read_bytes() + overlay)
        os.replace(part, out)
    return TinyGuest(kernel=base.kernel, initrd=str(out), cmdline=base.cmdline,
                     version=base.version)


def make_root_image(path: Path | str, files: dict[str, bytes] | None = None,
                    size_mib: int = 16) -> None:
    """An ext4 image at ``path`` that the guest boots into with ``root=/dev/vdX``.

    It holds busybox, ROOT_INIT as /init, the shell profile and ``files``
    (path inside the image -> content).  ``mke2fs -d`` (e2fsprogs) fills it
    from a directory, so no loop device or mount is needed.
    """
    tree = Path(tempfile.mkdtemp(prefix="rootfs-"))
    try:
        for d in ("bin", "etc", "dev", "proc", "sys", "tmp", "root"):
            (tree / d).mkdir()
        shutil.copy2(_busybox(), tree / "bin" / "busybox")
        (tree / "bin" / "sh").symlink_to("busybox")
        (tree / "init").write_text(ROOT_INIT)
        (tree / "init").chmod(0o755)
        (tree / "etc" / "profile").write_text(PROFILE)
        (tree / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        for name, data in (files or {}).items():
            dest = tree / name.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "tinyroot", "-d", str(tree),
                        str(path), f"{size_mib}M"], check=True, capture_output=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help="cache directory")
    ap.add_argument("--force", action="store_true", help="rebuild the initramfs")
    args = ap.parse_args(argv)
    print(json.dumps(asdict(ensure_guest(args.cache, args.force)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
