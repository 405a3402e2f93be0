"""Starting, finding and stopping QEMU processes, so guests outlive pyvirtd.

QEMU runs with ``-daemonize -pidfile PATH``: the process we start forks,
the child initialises (opens the monitor socket, creates devices) and only
then does the parent exit, 0 on success.  The guest is then a child of
init, not of pyvirtd, so it survives pyvirtd being killed with SIGKILL, and a
restarted pyvirtd finds it again by pid (and reconnects to its monitor).

Contract:

    pid = await launch(argv, log_path=..., pid_path=..., timeout=30)
        # appends -daemonize and -pidfile PID_PATH to argv unless present;
        # QEMU's stdout/stderr go to LOG_PATH (appended, as libvirt's
        # log/qemu/NAME.log), preceded by a "starting up" header with the argv.
        # Returns the daemonized QEMU's pid (read from PID_PATH).
        # A failed start raises VirError(VIR_ERR_INTERNAL_ERROR,
        #   "process exited while connecting to monitor: <QEMU's own error text>")
        # (or "QEMU unexpectedly closed the monitor" when QEMU said nothing).
        # With monitor_path=PATH (a confined QEMU, which may not fork):
        # QEMU is not told to daemonize; daemonize.py starts it (prefixed with
        # run_as, e.g. setpriv), writes PID_PATH itself and reports success once
        # the monitor at PATH greets.  Same errors.
    pid = read_pidfile(pid_path)          # int | None, for reattaching
    alive = is_running(pid, marker)       # the pid is still *that* QEMU: alive, not a
                                          # zombie, and its cmdline contains marker
                                          # (e.g. the guest uuid) when marker is given
    await wait_exit(pid)                  # returns once the process has exited (pidfd;
                                          # works for non-children); cancellable
    await terminate(pid, graceful=False, marker=None, timeout=10)
        # SIGTERM; after `timeout` seconds SIGKILL (unless graceful); returns once
        # gone.  graceful and still alive -> VirError(VIR_ERR_SYSTEM_ERROR,
        # "Failed to terminate process PID with SIGTERM: Device or resource busy")
        # as libvirt's virProcessKillPainfully; an already-gone pid is success.

Nothing here blocks the trio loop: the start-up process runs under
trio.run_process, file I/O goes to a worker thread, waiting uses a pidfd.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import trio

from pyvirtd import hostinfo
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

# How long a QEMU gets to initialise and daemonize: libvirt waits 30 s for the
# monitor (src/qemu/qemu_monitor.c: QEMU_DEFAULT_MONITOR_WAIT) on a slow host.
LAUNCH_TIMEOUT = 30.0

# virProcessKillPainfully: SIGTERM, wait up to 10 s, then SIGKILL and wait again.
TERM_TIMEOUT = 10.0
KILL_TIMEOUT = 5.0

# Polling interval for the /proc fallback of wait_exit (no pidfd: Linux < 5.3).
POLL_INTERVAL = 0.05

# The start-up process of QEMUs that do not daemonize themselves.
DAEMONIZE = str(Path(__file__).with_name("daemonize.py"))


def _err(code: int, detail: str) -> VirError:
    return VirError(code, detail, domain=P.VIR_FROM_QEMU)


def _with_daemonize(argv: Sequence[str], pid_path: str) -> list[str]:
    argv = list(argv)
    if "-daemonize" not in argv:
        argv.append("-daemonize")
    if "-pidfile" not in argv:
        argv += ["-pidfile", pid_path]
    return argv


def _header(argv: Sequence[str]) -> bytes:
    # libvirt writes a similar line and the argv before QEMU's own output
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    quoted = " ".join(a if a and all(c.isalnum() or c in "-_=,./:@" for c in a) else repr(a)
                      for a in argv)
    return f"{stamp}.000+0000: starting up\n{quoted}\n".encode()


def _open_log(log_path: str, argv: Sequence[str]) -> tuple[int, int]:
    """Open the log for appending; write the header.  Returns (fd, offset after header)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.write(fd, _header(argv))
    return fd, os.lseek(fd, 0, os.SEEK_END)


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(64 * 1024).decode(errors="replace")
    except OSError:
        return ""


def read_pidfile(pid_path: str) -> int | None:
    """The pid in QEMU's pidfile, or None when missing or unreadable."""
    try:
        with open(pid_path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _failure(text: str) -> VirError:
    # libvirt keeps QEMU's error lines, drops the blank ones around them
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return _err(P.VIR_ERR_INTERNAL_ERROR, "QEMU unexpectedly closed the monitor")
    return _err(P.VIR_ERR_INTERNAL_ERROR,
                "process exited while connecting to monitor: " + "\n".join(lines))


async def launch(argv: Sequence[str], *, log_path: str, pid_path: str,
                 timeout: float = LAUNCH_TIMEOUT, env: dict[str, str] | None = None,
                 cwd: str | None = None, pass_fds: Sequence[int] = (),
                 monitor_path: str | None = None, run_as: Sequence[str] = ()) -> int:
    """Start QEMU daemonized; return the guest process's pid.

    ``argv[0]`` is the emulator.  A stale pidfile is removed first; one whose
    QEMU still runs is left, so QEMU refuses to start ("Cannot lock pid file"),
    which is the protection we want against starting a guest twice.
    ``pass_fds`` stay open in QEMU under the same numbers (tap fds for
    ``-netdev tap,fd=N``); the caller still owns and closes its own copies.
    With ``monitor_path`` QEMU does not daemonize itself (a sandboxed QEMU
    may not fork): see daemonize.py; ``run_as`` prefixes its argv.
    On failure or timeout nothing is left running and VirError is raised with
    QEMU's own stderr text.  Cancellation kills the start-up process and any
    daemonized child it already produced.
    """
    if monitor_path is None:
        full = _with_daemonize([*run_as, *argv], pid_path)
        pid_at = full[full.index("-pidfile") + 1]
    else:
        full = [sys.executable, "-I", DAEMONIZE, pid_path, monitor_path, "--", *run_as, *argv]
        pid_at = pid_path
    fd, offset = await trio.to_thread.run_sync(_open_log, log_path, full)
    try:
        # A pidfile whose QEMU still lives stays: the new QEMU fails to lock it
        # ("Cannot lock pid file"), and that guest must never be reaped below.
        live = await trio.to_thread.run_sync(read_pidfile, pid_at)
        if live is None or not is_running(live):
            live = None
            await trio.to_thread.run_sync(_unlink_quiet, pid_at)
        elif monitor_path is not None:    # nobody locks for daemonize.py: refuse here
            raise _failure(f"Cannot lock pid file {pid_at}: guest process {live} still runs")
        rc: int | None = None
        try:
            with trio.move_on_after(timeout):
                proc = await trio.run_process(full, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                              check=False, env=env, cwd=cwd,
                                              pass_fds=tuple(pass_fds))
                rc = proc.returncode
        except OSError as exc:   # the emulator binary itself cannot be run
            raise _err(P.VIR_ERR_INTERNAL_ERROR,
                       f"Unable to start emulator {full[0]}: {exc.strerror or exc}") from exc
        except BaseException:
            with trio.CancelScope(shield=True):
                await _reap_orphan(pid_at, live)
            raise
        if rc != 0:
            await _reap_orphan(pid_at, live)
            text = await trio.to_thread.run_sync(_read_from, log_path, offset)
            if rc is None:
                text = (text + "\n" if text else "") + f"timed out after {timeout:g} s"
            raise _failure(text)
        pid = await trio.to_thread.run_sync(read_pidfile, pid_at)
        if pid is None or pid == live or not is_running(pid):
            text = await trio.to_thread.run_sync(_read_from, log_path, offset)
            raise _failure(text)
        return pid
    finally:
        os.close(fd)


def bind_monitor(path: str) -> socket.socket:
    """A listening unix socket at ``path`` for QEMU's monitor (``-chardev socket,fd=N``).

    Bound by the daemon, so a confined QEMU needs no write access to the run
    directory; only root may connect (mode 0600).  It stays connectable for
    as long as QEMU holds its copy, also after a daemon restart.  Blocking:
    call it through trio.to_thread.
    """
    _unlink_quiet(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(8)
    except BaseException:
        sock.close()
        raise
    return sock


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def _reap_orphan(pid_path: str, live: int | None) -> None:
    """Kill a daemonized child that a failed or cancelled start left behind
    (never ``live``, the QEMU that already owned the pidfile)."""
    pid = await trio.to_thread.run_sync(read_pidfile, pid_path)
    if pid is not None and pid != live and is_running(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        with trio.move_on_after(KILL_TIMEOUT):
            await wait_exit(pid)


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def is_running(pid: int, marker: str | None = None) -> bool:
    """Whether ``pid`` is a live process (not a zombie) whose cmdline holds ``marker``.

    A zombie has an empty cmdline, so it counts as gone (no reaper may ever
    collect a daemonized QEMU's zombie in a container).  The marker guards
    against a recycled pid after a host or daemon restart.  Cheap: one small
    /proc read, fine to call on the loop.
    """
    if pid <= 0:
        return False
    cmdline = _cmdline(pid)
    if not cmdline:
        return False
    return marker is None or marker.encode() in cmdline


def is_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP, a debugger): its monitor cannot answer
    until it is continued.  One small /proc read, fine on the loop."""
    fields = hostinfo.task_stat(pid) if pid > 0 else None
    return fields is not None and fields[0] in ("T", "t")


async def wait_exit(pid: int) -> None:
    """Return once ``pid`` has exited (or was never there).  Cancellable.

    Uses a pidfd, which becomes readable when the process exits, also for a
    process that is not our child.  Falls back to polling /proc.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (OSError, AttributeError):
        while is_running(pid):
            await trio.sleep(POLL_INTERVAL)
        return
    try:
        if not is_running(pid):     # already a zombie: readable at once anyway
            return
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def terminate(pid: int, graceful: bool = False, *, marker: str | None = None,
                    timeout: float = TERM_TIMEOUT) -> None:
    """Stop QEMU ``pid``: SIGTERM, then SIGKILL after ``timeout`` unless ``graceful``.

    A pid that is gone (or no longer carries ``marker``) is success.  With
    ``graceful`` a process that outlives the timeout raises VirError as libvirt's
    ``virsh destroy --graceful`` does.
    """
    if not is_running(pid, marker):
        return
    if not _signal(pid, signal.SIGTERM):
        return
    if not graceful and is_stopped(pid):
        # destroy: a frozen QEMU (SIGSTOP) handles the SIGTERM once continued; a
        # graceful one stays as libvirt leaves it (and fails below)
        _signal(pid, signal.SIGCONT)
    with trio.move_on_after(timeout):
        await wait_exit(pid)
        return
    if graceful:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                       f"Failed to terminate process {pid} with SIGTERM: {os.strerror(errno.EBUSY)}",
                       domain=P.VIR_FROM_NONE)
    if not is_running(pid, marker) or not _signal(pid, signal.SIGKILL):
        return
    with trio.move_on_after(KILL_TIMEOUT):
        await wait_exit(pid)
        return
    raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                   f"Failed to terminate process {pid} with SIGKILL: {os.strerror(errno.EBUSY)}",
                   domain=P.VIR_FROM_NONE)


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def stop_helper(pid_path: str, marker: str) -> None:
    """SIGTERM a guest's helper process (swtpm, virtiofsd) whose pid ``pid_path``
    records, if it is still that program (``marker`` in its command line), and
    remove the file.  Blocking: call in a thread."""
    pid = read_pidfile(pid_path)
    if pid is not None and is_running(pid, marker):
        _signal(pid, signal.SIGTERM)
    _unlink_quiet(pid_path)


def bind_unix(path: str, uid: int | None = None, gid: int | None = None) -> socket.socket:
    """A listening unix socket at ``path`` (mode 0600, owned by ``uid``:``gid`` when
    given) that the daemon binds and hands to a helper process as an fd, so the
    helper needs no write access to the run directory.  Blocking: call it through
    trio.to_thread."""
    _unlink_quiet(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        if uid is not None:
            os.chown(path, uid, gid if gid is not None else -1)
        sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock
