"""Which host devices a confined QEMU can reach: its private /dev and its cgroup's device ACL.

For a privileged daemon, as libvirt's qemu_namespace.c and qemu_cgroup.c:

* ``namespaces: [mount]`` (the default): QEMU runs in its own mount
  namespace whose /dev is a small tmpfs holding only the nodes of
  ``cgroup_device_acl`` that exist (/dev/kvm only for a kvm guest), the
  device nodes of the guest's disks, and the host's devpts/shm/mqueue/
  hugepages mounts.  The rest of the host's /dev is not there to open.
  prelaunch.py builds it between fork and exec, from the argv made here.
* cgroups: each QEMU runs in ``machine/qemu-UUID8-NAME.libvirt-qemu`` of
  the cpu, cpuacct, cpuset, memory, devices and blkio controllers (libvirt's
  default ``cgroup_controllers``).  Its device list is ``deny a``, then
  ``rw`` for each node of ``cgroup_device_acl``, every pty (``c 136:* rw``)
  and each disk node (``r`` when read-only).  Even a node that QEMU finds or
  is handed is refused by the kernel unless allowed here.  The group is
  removed when the guest stops.  (The UUID prefix keeps two daemons' guests
  of the same name apart; libvirt's ``qemu-ID-NAME`` does that with the id.)

A disk hotplugged into a running guest gets its rule and its node (made in
QEMU's namespace through /proc/PID/root, owner and mode copied from the host
node after labelling, as libvirt copies them) before QEMU opens it
(`grant`); an unplugged one loses both (`revoke`).

The blocking parts (cgroupfs, stat, mknod) run in worker threads.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

import trio

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml import domain as domxml

from ..lxc import cgroup as cgfs
from . import dac, prelaunch

if TYPE_CHECKING:
    from .confine import Confinement

log = logging.getLogger(__name__)

# qemu.conf's cgroup_device_acl default (libvirt's defaultDeviceACL).
DEFAULT_ACL = ("/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom",
               "/dev/ptmx", "/dev/kvm")
# libvirt's default cgroup_controllers that this kind of host offers.
CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "blkio")
PTY_RULE = "c 136:* rw"
PRELAUNCH = str(Path(__file__).with_name("prelaunch.py"))


def machine_name(live: domxml.DomainDef) -> str:
    return f"qemu-{live.uuid_str[:8]}-{live.name[:64]}"


def cgroup_dirs(live: domxml.DomainDef) -> dict[str, str]:
    """controller -> directory of the guest's group (blocking: reads /proc/self/cgroup)."""
    paths = cgfs.machine_paths(machine_name(live), "qemu")
    return {c: d for c, d in paths.items() if c in CONTROLLERS or c == "unified"}


def node_rule(path: str, perms: str) -> str | None:
    """The devices-controller rule for the node at ``path`` (symlinks followed), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISBLK(st.st_mode):
        kind = "b"
    elif stat.S_ISCHR(st.st_mode):
        kind = "c"
    else:
        return None
    return f"{kind} {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} {perms}"


def acl_paths(conf: "Confinement", live: domxml.DomainDef) -> list[str]:
    """cgroup_device_acl for this guest: /dev/kvm only when it uses KVM."""
    return [p for p in conf.device_acl if p != "/dev/kvm" or live.type == "kvm"]


def disk_nodes(live: domxml.DomainDef, volume_paths: Mapping[tuple[str, str], str]
               ) -> list[tuple[str, bool]]:
    """(path, read-only) of each disk whose source is a device node (blocking: stat)."""
    out = []
    for dev in devmod.parse_devices(live):
        if not isinstance(dev, devmod.Disk):
            continue
        path = dac.disk_path(dev, volume_paths)
        if path and node_rule(path, "r"):
            out.append((path, dev.readonly or dev.device in ("cdrom", "floppy")))
    return out


def _write(d: str, key: str, value: str) -> None:
    with open(os.path.join(d, key), "w") as f:
        f.write(value)


def _err(what: str, exc: OSError) -> VirError:
    return VirError(P.VIR_ERR_SYSTEM_ERROR, f"{what}: {exc.strerror or exc}",
                    domain=P.VIR_FROM_CGROUP)


def setup(conf: "Confinement", live: domxml.DomainDef,
          volume_paths: Mapping[tuple[str, str], str]) -> list[str]:
    """Create the guest's cgroup with its device ACL; return the prelaunch.py argv
    prefix that puts QEMU into it and into its private /dev ([] when neither is on).
    Blocking."""
    args: list[str] = []
    disks = disk_nodes(live, volume_paths)
    if "mount" in conf.namespaces:
        args.append("--private-dev")
        for path in acl_paths(conf, live):
            args += ["--dev-optional", path]
        for path, _ro in disks:
            args += ["--dev", path]
    if conf.cgroups:
        dirs = cgroup_dirs(live)
        try:
            cgfs.create(dirs)
            if "devices" in dirs:
                d = dirs["devices"]
                _write(d, "devices.deny", "a")
                rules = [node_rule(p, "rw") for p in acl_paths(conf, live)]
                rules += [PTY_RULE] + [node_rule(p, "r" if ro else "rw") for p, ro in disks]
                for rule in rules:
                    if rule:
                        _write(d, "devices.allow", rule)
        except OSError as exc:
            teardown(dirs)
            raise _err(f"Unable to set up cgroup for {live.name}", exc) from None
        for d in dirs.values():
            args += ["--cgroup", d]
    return [sys.executable, "-I", PRELAUNCH, *args, "--"] if args else []


def teardown(dirs: Mapping[str, str]) -> None:
    """Remove the guest's groups once its QEMU is gone; never raises (blocking)."""
    try:
        cgfs.remove(dict(dirs))
    except OSError as exc:
        log.warning("cannot remove cgroup %s: %s", next(iter(dirs.values()), "?"), exc)


async def prepare(conf: "Confinement", live: domxml.DomainDef,
                  volume_paths: Mapping[tuple[str, str], str]) -> list[str]:
    """`setup` off the event loop."""
    if not conf.namespaces and not conf.cgroups:
        return []
    return await trio.to_thread.run_sync(setup, conf, live, volume_paths)


async def release(conf: "Confinement", live: domxml.DomainDef) -> None:
    """Remove the cgroup of ``live``'s run (guest stopped, or its start failed)."""
    if conf.cgroups:
        dirs = await trio.to_thread.run_sync(cgroup_dirs, live)
        await trio.to_thread.run_sync(teardown, dirs)


# -- hotplug -------------------------------------------------------------------------

def _in_namespace(pid: int, path: str) -> str:
    return f"/proc/{pid}/root{path}"


def _grant(conf: "Confinement", live: domxml.DomainDef, pid: int, path: str,
           readonly: bool) -> bool:
    rule = node_rule(path, "r" if readonly else "rw")
    if rule is None:
        return False            # an image file: nothing to allow
    if conf.cgroups:
        dirs = cgroup_dirs(live)
        if "devices" in dirs:
            try:
                _write(dirs["devices"], "devices.allow", rule)
            except OSError as exc:
                raise _err(f"Unable to allow device {path} for {live.name}", exc) from None
    if "mount" in conf.namespaces:
        nodes: list = []
        try:
            prelaunch.collect(os.path.normpath(path), True, nodes)
            for dev_path, st, link in nodes:
                prelaunch.make_node(_in_namespace(pid, dev_path), st, link)
        except (prelaunch.SetupError, OSError) as exc:
            _revoke(conf, live, pid, path, rule)
            raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                           f"Unable to create device {path} in the namespace of "
                           f"{live.name}: {exc}", domain=P.VIR_FROM_QEMU) from None
    return True


def _revoke(conf: "Confinement", live: domxml.DomainDef, pid: int, path: str,
            rule: str | None = None) -> None:
    rule = rule or node_rule(path, "rwm")
    if rule is None:
        return
    if conf.cgroups:
        dirs = cgroup_dirs(live)
        if "devices" in dirs:
            try:
                _write(dirs["devices"], "devices.deny", rule.rsplit(" ", 1)[0] + " rwm")
            except OSError as exc:
                log.warning("%s: cannot deny device %s: %s", live.name, path, exc)
    if "mount" in conf.namespaces and path.startswith("/dev/"):
        try:
            os.unlink(_in_namespace(pid, os.path.normpath(path)))
        except OSError:
            pass


async def grant(conf: "Confinement", live: domxml.DomainDef, pid: int | None,
                path: str | None, readonly: bool) -> bool:
    """Let the running QEMU ``pid`` reach the node ``path`` (a hotplugged disk);
    False when ``path`` is no device node (or confinement is off)."""
    if not path or pid is None or not (conf.namespaces or conf.cgroups):
        return False
    return await trio.to_thread.run_sync(_grant, conf, live, pid, path, readonly)


async def revoke(conf: "Confinement", live: domxml.DomainDef, pid: int | None,
                 paths: Iterable[str | None]) -> None:
    """Take the nodes at ``paths`` away from QEMU ``pid`` again (an unplugged disk)."""
    if pid is None or not (conf.namespaces or conf.cgroups):
        return
    for path in paths:
        if path:
            await trio.to_thread.run_sync(_revoke, conf, live, pid, path)
