"""Start-up process of a QEMU that cannot daemonize itself (process.launch, confined guests).

QEMU's seccomp sandbox with ``spawn=deny`` forbids fork(), so a sandboxed
QEMU cannot run with ``-daemonize``.  This script does QEMU's part of the
start-up contract instead, as libvirt's virCommandDaemonize does:

    python -I daemonize.py PIDFILE MONITOR -- ARGV...

runs ARGV (``setpriv ... -- qemu-system-x86_64 ...``) in a new session as a
grandchild (so it is a child of init and outlives the daemon), writes its
pid to PIDFILE (as the daemon's own user: the confined QEMU could not write
there), and exits once QEMU is ready: 0 when the QMP monitor at MONITOR sent
its greeting, 1 when QEMU exited first (its own error is in the log, which
is our stdout/stderr).  The monitor socket is usually one the daemon bound
and handed to QEMU (``-chardev socket,fd=N``), so connecting succeeds at
once and the greeting is what says QEMU finished initialising.  QEMU takes
the next client once we hang up.

Standard library only, and run by file name with ``-I``: it starts on every
guest start, and importing the driver package would cost more than QEMU.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys

# How often a monitor that is not there yet is tried again.
RETRY = 0.02
# How long a QEMU that hung up on us gets to exit (and finish its error message).
EXIT_WAIT = 1.0


def _spawn(argv: list[str]) -> int:
    """Run ``argv`` as an orphan in its own session; return its pid."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        os.setsid()
        grandchild = os.fork()
        if grandchild:
            os.write(w, str(grandchild).encode())
            os._exit(0)
        os.close(w)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"Unable to run {argv[0]}: {exc.strerror}\n".encode())
        os._exit(127)
    os.close(w)
    data = b""
    while chunk := os.read(r, 64):
        data += chunk
    os.close(r)
    os.waitpid(child, 0)
    return int(data)


def _write_pidfile(path: str, pid: int) -> None:
    tmp = f"{path}.new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{pid}\n".encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _connect(path: str, pidfd: int) -> socket.socket | None:
    """A connection to the monitor, or None once QEMU exited without one."""
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                raise
        if select.select([pidfd], [], [], RETRY)[0]:
            return None


def _greeted(sock: socket.socket, pidfd: int) -> bool:
    """Whether QEMU sends its QMP greeting before it exits."""
    data = b""
    while b"\n" not in data:
        ready = select.select([sock, pidfd], [], [])[0]
        if sock in ready:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            data += chunk
        elif pidfd in ready:
            return False
    return data.startswith(b'{"QMP"')


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        print("usage: daemonize.py PIDFILE MONITOR -- ARGV...", file=sys.stderr)
        return 2
    pidfile, monitor, argv = args[0], args[1], args[3:]
    pid = _spawn(argv)
    _write_pidfile(pidfile, pid)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return 1
    sock = _connect(monitor, pidfd)
    if sock is None:
        return 1
    with sock:
        ok = _greeted(sock, pidfd)
    if not ok:
        # let QEMU finish writing its error: the caller reads the log next
        select.select([pidfd], [], [], EXIT_WAIT)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
