"""Who QEMU runs as, and how it is fenced in (libvirt's qemu.conf user/group/seccomp_sandbox).

A privileged daemon (qemu:///system) never runs a guest's QEMU as root: a
guest that breaks out of QEMU would own the host.  As libvirt does, QEMU
runs as an unprivileged user and group (the ``user`` and ``group`` knobs,
default ``pyvirtd-qemu``, which ``pyvirtd qemu-user`` creates), with no
capabilities at all (inheritable and bounding sets cleared; the uid change
clears the others), ``NoNewPrivs`` set so that no setuid binary gives any
back, and under QEMU's seccomp sandbox.  The files a guest needs are handed
to that user while it runs (dac.py); the daemon binds the monitor socket
and writes the pidfile itself, so QEMU needs no write access to the daemon's
directories.

The privilege drop is util-linux's ``setpriv`` exec'd in front of QEMU, so no
code runs between fork and exec in the (threaded) daemon, and the loop never
blocks.  ``user: root`` keeps the old unconfined behaviour.  A session daemon
runs QEMU as its own user, unchanged; ``seccomp_sandbox: 1`` sandboxes it too.

A privileged daemon also gives each QEMU a private /dev (``namespaces``) and
a cgroup whose device list is ``cgroup_device_acl`` plus the guest's disks:
devacl.py, and prelaunch.py, the root stage exec'd in front of setpriv.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
from dataclasses import dataclass

from pyvirtd.config import Config
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

log = logging.getLogger(__name__)

DEFAULT_USER = "pyvirtd-qemu"

# What libvirt turns seccomp_sandbox on into (qemuBuildSeccompSandboxCommandLine):
# no obsolete system calls, no setuid & co., no fork/exec, no changes to
# scheduling or affinity (the daemon does those from outside).
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True)
class Confinement:
    """How this daemon's QEMUs run; ``uid`` None means as the daemon's own user."""
    uid: int | None = None
    gid: int | None = None
    user: str | None = None
    sandbox: bool = False
    dynamic_ownership: bool = False     # chown the guest's files to uid:gid (dac.py)
    remember_owner: bool = True         # keep the original owners in xattrs
    error: str | None = None            # why guests cannot start (user missing)
    # private /dev and cgroup device ACL (devacl.py); privileged daemons only
    namespaces: tuple[str, ...] = ()    # qemu.conf namespaces: ("mount",) or ()
    device_acl: tuple[str, ...] = ()    # cgroup_device_acl: nodes of every QEMU's /dev and cgroup
    cgroups: bool = False               # each QEMU in its own cgroup (cgroupfs is mounted)

    @property
    def switches_user(self) -> bool:
        return self.uid is not None

    @property
    def own_start(self) -> bool:
        """Whether QEMU cannot daemonize itself (sandboxed: no fork), see daemonize.py."""
        return self.sandbox

    def check(self) -> None:
        if self.error:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, self.error, domain=P.VIR_FROM_QEMU)

    def run_as(self) -> list[str]:
        """The argv prefix that drops to uid:gid, with no capabilities and NoNewPrivs."""
        if not self.switches_user:
            return []
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        groups = ["--init-groups"] if self.user else ["--clear-groups"]
        return [setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", *groups,
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


def _uid_gid(user: str, group: str) -> tuple[int, int, str | None]:
    """uid, gid and user name of the knobs (names, or numbers written ``+107``)."""
    if user.startswith("+"):
        uid, name = int(user[1:]), None
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            pass
    else:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise LookupError(f"Failed to parse user '{user}'") from None
        uid, name = pw.pw_uid, user
    if group.startswith("+"):
        gid = int(group[1:])
    else:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise LookupError(f"Failed to parse group '{group}'") from None
    return uid, gid, name


def resolve(config: Config, privileged: bool) -> Confinement:
    """The daemon's confinement, from the configuration (read once, at driver start).

    A user that does not exist does not stop the daemon: it is logged, and
    starting a guest fails with libvirt's message until the user exists.
    """
    if not privileged or os.geteuid() != 0:
        return Confinement(sandbox=config.seccomp_sandbox == 1)
    sandbox = config.seccomp_sandbox != 0
    fences = {"namespaces": tuple(config.namespaces),
              "device_acl": tuple(config.cgroup_device_acl), "cgroups": _has_cgroups()}
    if config.user in ("root", "+0"):
        return Confinement(sandbox=sandbox, **fences)
    try:
        uid, gid, name = _uid_gid(config.user, config.group)
    except (LookupError, ValueError) as exc:
        msg = str(exc) if isinstance(exc, LookupError) else f"Failed to parse user '{config.user}'"
        log.error("%s: QEMU guests cannot start (create it with `pyvirtd qemu-user`)", msg)
        return Confinement(sandbox=sandbox, error=msg, **fences)
    return Confinement(uid=uid, gid=gid, user=name, sandbox=sandbox,
                       dynamic_ownership=config.dynamic_ownership,
                       remember_owner=config.remember_owner, **fences)


def _has_cgroups() -> bool:
    """Whether cgroupfs is mounted (a host without it runs QEMU in the daemon's group)."""
    root = "/sys/fs/cgroup"
    return os.path.isdir(os.path.join(root, "devices")) or \
        os.path.exists(os.path.join(root, "cgroup.controllers"))
