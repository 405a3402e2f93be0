"""<filesystem type='mount'>: a host directory shared with the guest (qemu_fs.c,
qemu_virtiofs.c).

* 9p (the default driver, or ``type='path'``): QEMU itself serves the
  directory, ``-fsdev local`` with the access mode as security model and a
  ``virtio-9p-pci`` device with the target as mount tag;
* virtiofs (``<driver type='virtiofs'/>``): one virtiofsd per filesystem
  (QEMU 7.2's /usr/lib/qemu/virtiofsd, found through QEMU's vhost-user
  descriptors) serves it over a vhost-user socket that the daemon binds and
  hands over (``--fd``), so QEMU's ``vhost-user-fs-pci`` can connect as soon as
  it starts.  The guest's memory must be shared with virtiofsd: libvirt
  refuses the definition otherwise ("'virtiofs' requires shared memory").
  virtiofsd needs root; it runs as the daemon, as libvirt's does, and the
  socket is handed to QEMU's user.  It exits when QEMU goes; ``stop`` kills
  what is left (also after a daemon restart, by the pid recorded beside the
  socket).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml.devices import Filesystem

from pyvirtd.names import name_path

from . import process
from .devprops import ArgvBuilder, opts, unsupported

if TYPE_CHECKING:
    from .guest import QemuState

VHOST_USER_DIRS = ("/etc/qemu/vhost-user", "/usr/share/qemu/vhost-user")
# libvirt's accessmode -> QEMU's 9p security model
_SECURITY_MODELS = {"passthrough": "passthrough", "mapped": "mapped", "squash": "none"}


def has_shared_memory(defn) -> bool:
    """Whether all the guest's memory can be shared with another process: the
    <memoryBacking><access mode='shared'/>, or every NUMA cell memAccess='shared'."""
    from .memory import cells, shared_default
    default = "shared" if shared_default(defn) else None
    numa = cells(defn)
    if not numa:
        return default == "shared"
    return all((c.get("memAccess") or default) == "shared" for c in numa)


def validate(defn) -> None:
    """libvirt's define-time check of virtiofs."""
    fss = [d for d in devmod.parse_devices(defn) if isinstance(d, Filesystem)]
    if any(f.virtiofs for f in fss) and not has_shared_memory(defn):
        raise unsupported("'virtiofs' requires shared memory")


def ninep_args(b: ArgvBuilder, fs: Filesystem) -> list[str]:
    alias = b.alias(fs)
    return ["-fsdev", opts("local", ("security_model", _SECURITY_MODELS[fs.accessmode]),
                           ("writeout", fs.driver.get("wrpolicy")), ("id", f"fsdev-{alias}"),
                           ("path", fs.source_dir), ("readonly", True if fs.readonly else None)),
            "-device", opts("virtio-9p-pci", ("id", alias), ("fsdev", f"fsdev-{alias}"),
                            ("mount_tag", fs.target_dir), *b.pci(fs))]


def virtiofs_args(b: ArgvBuilder, fs: Filesystem, sockets: dict[str, str]) -> list[str]:
    alias = b.alias(fs)
    path = sockets.get(alias)
    if path is None:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"virtiofsd for {alias} was not started",
                       domain=P.VIR_FROM_QEMU)
    return ["-chardev", opts("socket", ("id", f"chr-vu-{alias}"), ("path", path)),
            "-device", opts("vhost-user-fs-pci", ("id", alias), ("chardev", f"chr-vu-{alias}"),
                            ("queue-size", fs.driver.get("queue")), ("tag", fs.target_dir),
                            *b.pci(fs))]


def filesystem_args(b: ArgvBuilder, sockets: dict[str, str]) -> None:
    for dev in devmod.parse_devices(b.defn):
        if isinstance(dev, Filesystem):
            b.add(*(virtiofs_args(b, dev, sockets) if dev.virtiofs else ninep_args(b, dev)))


# -- virtiofsd ------------------------------------------------------------------

def virtiofsd_binary() -> str | None:
    """The virtiofsd QEMU's vhost-user descriptors name (type "fs"), first by file name."""
    found: dict[str, Path] = {}
    for d in reversed(VHOST_USER_DIRS):         # /etc overrides /usr/share
        if os.path.isdir(d):
            for name in os.listdir(d):
                found[name] = Path(d) / name
    for name in sorted(found):
        try:
            desc = json.loads(found[name].read_text())
        except (OSError, ValueError):
            continue
        if desc.get("type") == "fs" and os.access(desc.get("binary", ""), os.X_OK):
            return desc["binary"]
    return None


def _paths(state: "QemuState", name: str, alias: str) -> tuple[Path, Path]:
    """The vhost-user socket (beside the monitor's, as short) and virtiofsd's pid file."""
    run = state.store.run_dir
    return name_path(run, name, f"-{alias}.vfs"), name_path(run / "virtiofs", name,
                                                            f"-{alias}.pid")


def _open_log(path: Path, pid_dir: Path):
    pid_dir.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")


async def start(state: "QemuState", live) -> dict[str, str]:
    """One virtiofsd per virtiofs filesystem of ``live``: alias -> vhost-user socket."""
    from .devprops import device_alias
    fss = [d for d in devmod.parse_devices(live) if isinstance(d, Filesystem)]
    if not any(f.virtiofs for f in fss):
        return {}
    if os.geteuid() != 0:
        raise unsupported("virtiofs is not yet supported in session mode")
    binary = await trio.to_thread.run_sync(virtiofsd_binary)
    if binary is None:
        raise VirError(P.VIR_ERR_OPERATION_FAILED, "Unable to find a satisfying virtiofsd",
                       domain=P.VIR_FROM_QEMU)
    conf = state.confinement
    counters: dict[str, int] = {}
    sockets: dict[str, str] = {}
    for fs in fss:
        alias = device_alias(fs, counters, devmod.is_q35(live.machine))
        if not fs.virtiofs:
            continue
        sock_path, pid_path = _paths(state, live.name, alias)
        sock = await trio.to_thread.run_sync(process.bind_unix, str(sock_path), conf.uid,
                                             conf.gid)
        try:
            log = await trio.to_thread.run_sync(
                _open_log, name_path(state.store.log_dir, live.name, f"-{alias}-virtiofsd.log"),
                pid_path.parent)
            try:
                proc = await trio.lowlevel.open_process(
                    [binary, f"--fd={sock.fileno()}", "-o", f"source={fs.source_dir}"],
                    pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=log, start_new_session=True)
            finally:
                log.close()
        finally:
            sock.close()                       # virtiofsd holds it now
        await trio.to_thread.run_sync(pid_path.write_text, str(proc.pid))
        state.spawn(proc.wait)                 # reaped whenever it exits
        sockets[alias] = str(sock_path)
    return sockets


def stop(state: "QemuState", live) -> None:
    """Kill the guest's virtiofsd processes still running (blocking: call in a thread)."""
    base = state.store.run_dir / "virtiofs"
    mine = re.compile(re.escape(live.name) + r"-(fs\d+)\.pid")
    for pid_path in list(base.iterdir()) if base.is_dir() else []:
        match = mine.fullmatch(pid_path.name)
        if match:
            process.stop_helper(str(pid_path), "virtiofsd")
            _paths(state, live.name, match.group(1))[0].unlink(missing_ok=True)
