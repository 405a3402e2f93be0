"""The root stage in front of a confined QEMU: its private /dev and its cgroup, then exec.

A privileged daemon starts a guest's QEMU as

    python -I prelaunch.py [--private-dev [--dev PATH]... [--dev-optional PATH]...] \\
        [--cgroup DIR]... -- setpriv ... -- qemu-system-x86_64 ...

(behind daemonize.py when QEMU may not fork).  Still root, this process

1. with ``--private-dev`` (qemu.conf ``namespaces = ["mount"]``):
   enters a new mount namespace whose mounts are slaves of the host's (host
   mounts still appear in it, nothing done in it reaches the host), mounts a
   small tmpfs over /dev and fills it with copies of exactly the device nodes
   named (owner and mode as on the host at this moment, i.e. after the DAC
   labelling; symlinks are recreated and followed), plus the host's devpts,
   shm, mqueue and hugepages mounts where the host has them.  A ``--dev``
   that does not exist is an error; a ``--dev-optional`` one is skipped (the
   cgroup_device_acl list names nodes a host may lack);
2. writes its pid into each ``--cgroup`` directory's cgroup.procs, after the
   nodes are made (the device controller would refuse the mknod otherwise);
3. execs the rest of the command line, so QEMU keeps this pid, namespace and
   cgroup.

libvirt does the same in its fork-to-exec hook (qemu_namespace.c,
qemu_cgroup.c); the daemon is threaded, so nothing runs between fork and
exec there: this script is that hook.  Standard library only and run by
file name with ``-I`` (it runs at every guest start).  Errors go to stderr,
which is the guest's log, and end the start with exit status 1.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
MS_STRICTATIME = 0x1000000

# Mounts under the host's /dev that QEMU's /dev keeps (ptys are allocated
# from the devpts next to /dev/ptmx, so the pty paths match the host's).
PRESERVED = ("/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/hugepages")
# libvirt's size for this tmpfs: it only ever holds nodes.
TMPFS_OPTIONS = "mode=755,size=65536"
MAX_LINKS = 40

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


class SetupError(Exception):
    pass


def _call(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _call(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)),
          f"cannot mount {src or fstype or ''} on {target}")


def _mount_points() -> set[str]:
    points = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            raw = line.split()[4]
            # mountinfo escapes space, tab, newline and backslash as \ooo
            points.add(raw.encode().decode("unicode_escape"))
    return points


def collect(path: str, required: bool, out: list[tuple[str, os.stat_result, str | None]],
             ttl: int = MAX_LINKS) -> None:
    """Record ``path`` (and what its symlinks lead to) for recreation under /dev."""
    if ttl == 0:
        raise SetupError(f"Too many levels of symbolic links: {path}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if required:
            raise SetupError(f"Unable to stat {path}: No such file or directory") from None
        return
    link = None
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink(path)
        target = link if link.startswith("/") else os.path.join(os.path.dirname(path), link)
        if path.startswith("/dev/"):
            out.append((path, st, link))
        collect(os.path.normpath(target), required, out, ttl - 1)
        return
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        if required and path.startswith("/dev/"):
            raise SetupError(f"{path} is not a device node")
        return   # a file outside /dev: QEMU sees the host's
    if path.startswith("/dev/"):
        out.append((path, st, None))


def make_node(path: str, st: os.stat_result, link: str | None) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if link is not None:
        if not os.path.lexists(path):
            os.symlink(link, path)
        os.lchown(path, st.st_uid, st.st_gid)
        return
    if os.path.lexists(path):
        os.unlink(path)
    os.mknod(path, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
    os.chown(path, st.st_uid, st.st_gid)
    os.chmod(path, stat.S_IMODE(st.st_mode))


def private_dev(required: list[str], optional: list[str]) -> None:
    """Give this process a mount namespace whose /dev holds only the named nodes."""
    nodes: list[tuple[str, os.stat_result, str | None]] = []
    for path in required:
        collect(os.path.normpath(path), True, nodes)
    for path in optional:
        collect(os.path.normpath(path), False, nodes)
    _call(_libc.unshare(CLONE_NEWNS), "cannot unshare the mount namespace")
    _mount(None, "/", None, MS_REC | MS_SLAVE)
    points = _mount_points()
    # the host's mounts under /dev, held open: the tmpfs is about to hide them
    kept = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in PRESERVED if p in points}
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, TMPFS_OPTIONS)
    old = os.umask(0)
    try:
        for path, st, link in nodes:
            try:
                make_node(path, st, link)
            except OSError as exc:
                raise SetupError(f"Failed to make device {path}: {exc.strerror}") from None
        for path, fd in kept.items():
            os.mkdir(path, 0o755)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            os.close(fd)
    finally:
        os.umask(old)


def join_cgroups(dirs: list[str]) -> None:
    for d in dirs:
        try:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError as exc:
            raise SetupError(f"cannot join cgroup {d}: {exc.strerror}") from None


def parse(args: list[str]) -> tuple[bool, list[str], list[str], list[str], list[str]]:
    required: list[str] = []
    optional: list[str] = []
    cgroups: list[str] = []
    private = False
    i = 0
    while i < len(args) and args[i] != "--":
        opt = args[i]
        if opt == "--private-dev":
            private = True
            i += 1
            continue
        if i + 1 >= len(args):
            raise SetupError(f"{opt} needs a value")
        dest = {"--dev": required, "--dev-optional": optional, "--cgroup": cgroups}.get(opt)
        if dest is None:
            raise SetupError(f"unknown option {opt}")
        dest.append(args[i + 1])
        i += 2
    argv = args[i + 1:]
    if not argv:
        raise SetupError("usage: prelaunch.py [--private-dev [--dev PATH]... "
                         "[--dev-optional PATH]...] [--cgroup DIR]... -- ARGV...")
    if (required or optional) and not private:
        raise SetupError("--dev and --dev-optional need --private-dev")
    return private, required, optional, cgroups, argv


def main(args: list[str]) -> int:
    try:
        private, required, optional, cgroups, argv = parse(args)
        if private:
            private_dev(required, optional)
        join_cgroups(cgroups)
    except (SetupError, OSError) as exc:
        print(f"pyvirtd: cannot confine QEMU: {exc}", file=sys.stderr)
        return 1
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"pyvirtd: Unable to run {argv[0]}: {exc.strerror}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
