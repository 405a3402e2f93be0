"""Work inside a running container's mount namespace: bind mounts and initctl requests.

``python -m pyvirtd.drivers.lxc.mountin mount|umount INIT_PID SOURCE TARGET ro|rw``,
run by the driver (hotplug.py), binds a host directory into the container or
takes it away (filesystem hotplug); ``... initctl INIT_PID LEVEL - -`` asks
the container's sysvinit-style init for runlevel LEVEL through its initctl
FIFO (shutdown and reboot, virInitctlSetRunLevel), exiting with NO_FIFO when
the container has none.  Paths, symlinks included, resolve in the
container's own tree, never the host's.  A process can enter another mount namespace
only while it is single-threaded, which the daemon never is; this helper is.
For ``mount`` it takes a detached copy of SOURCE's mount tree on the host
(open_tree with OPEN_TREE_CLONE), enters the mount namespace of the
container's init, and attaches the copy at TARGET there (move_mount),
read-only if asked; ``umount`` detaches TARGET inside the container.  The
outcome is the exit status; the reason, on stderr, one line.  Python 3.11
has none of these calls: ctypes, as nsutil.py does.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
import sys

from . import nsutil as ns

# arch/x86/entry/syscalls/syscall_64.tbl
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
# include/uapi/linux/mount.h, fcntl.h
OPEN_TREE_CLONE = 1
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4


def _syscall(number: int, *args: object, what: str) -> int:
    res = ns._libc.syscall(ctypes.c_long(number), *args)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return res


def _enter(init_pid: int) -> None:
    fd = os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        ns.setns(fd, ns.CLONE_NEWNS)
    finally:
        os.close(fd)
    os.chdir("/")


def mount(init_pid: int, source: str, target: str, readonly: bool) -> None:
    if not os.path.isdir(source):
        raise OSError(2, f"Failed to access '{source}': No such file or directory")
    tree = _syscall(SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), os.fsencode(source),
                    ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE),
                    what=f"open_tree {source}")
    _enter(init_pid)
    if os.path.ismount(target):
        raise OSError(16, f"target {target} is already a mount point in the container")
    os.makedirs(target, mode=0o755, exist_ok=True)
    _syscall(SYS_MOVE_MOUNT, ctypes.c_int(tree), b"", ctypes.c_int(AT_FDCWD),
             os.fsencode(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
             what=f"mount {source} on {target}")
    if readonly:
        ns.mount(None, target, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY)


def umount(init_pid: int, target: str) -> None:
    _enter(init_pid)
    ns.umount2(target, ns.MNT_DETACH)


# virInitctlFifos: where an init listens, in libvirt's order
INITCTL_FIFOS = ("/run/initctl", "/dev/initctl", "/etc/.initctl")
INIT_MAGIC = 0x03091969         # sysvinit's initreq.h: INIT_MAGIC, INIT_CMD_RUNLVL
INIT_CMD_RUNLVL = 1
NO_FIFO = 3


def initctl(init_pid: int, level: str) -> bool:
    """Write a runlevel request to the container's initctl FIFO; False if it has none."""
    _enter(init_pid)
    for path in INITCTL_FIFOS:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno == 6:      # ENXIO: a FIFO nobody reads
                continue
            raise OSError(exc.errno, f"Cannot open init control {path}: {exc.strerror}")
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            # struct init_request: magic, cmd, runlevel, sleeptime, then 368 bytes of data
            request = struct.pack("=iiii368s", INIT_MAGIC, INIT_CMD_RUNLVL, ord(level), 0, b"")
            os.write(fd, request)
            return True
        finally:
            os.close(fd)
    return False


def main(argv: list[str]) -> int:
    action, init_pid, source, target, mode = argv
    try:
        if action == "mount":
            mount(int(init_pid), source, target, mode == "ro")
        elif action == "umount":
            umount(int(init_pid), target)
        elif action == "initctl":
            if not initctl(int(init_pid), source):
                return NO_FIFO
        else:
            raise ValueError(f"unknown action {action}")
    except (OSError, ValueError) as exc:
        print(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc,
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
