"""The per-container controller: a small process that owns one running container.

``python -m pyvirtd.drivers.lxc.controller SPEC.json HANDSHAKE_FD`` (started
by the driver, see process.py) detaches from the daemon (a second fork and
its own session), so the container outlives pyvirtd restarts, as libvirt's
libvirt_lxc does.  It then:

1. creates the container's cgroup and joins it (cgroup.py);
2. opens two ptys, the container's console and the host side the daemon's
   console streams open, and relays bytes between their masters;
3. forks a child into new mount/uts/ipc/net/pid namespaces (user too with
   <idmap>), which forks init (pid 1 there) and exits; the controller is a
   child subreaper, so init becomes its child;
4. moves the veths into init's network namespace, puts init in the cgroup,
   lets it go on (container.py), and learns through a close-on-exec pipe
   whether exec of init worked;
5. writes the outcome on HANDSHAKE_FD (one JSON object), then serves the
   daemon on SPEC["socket"] until init exits.

Wire protocol on the socket: one JSON object per line.  On connect the
controller sends ``{"event": "hello", "init_pid", "controller_pid", "pty"}``;
the daemon sends ``{"cmd": "shutdown"}`` (SIGTERM to init, libvirt's
VIR_DOMAIN_SHUTDOWN_SIGNAL) or ``{"cmd": "destroy"}`` (SIGKILL to init: the
kernel then kills the whole pid namespace).  When init is gone the
controller writes ``{"event": "exit", "reason": "shutdown"|"reboot"|"destroyed"|
"crashed"}`` to every client and into SPEC["exit_file"] (for a daemon that
was away), removes the cgroup and exits.  This module must not import trio:
it is a plain select() loop, and small.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import selectors
import signal
import socket
import sys
import termios
import traceback
import tty

from . import cgroup
from . import nsutil as ns

log = logging.getLogger("pyvirtd.lxc.controller")

READ_CHUNK = 4096


def _nonblock(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def _read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


class Controller:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.cgroup = spec.get("cgroup") or {}
        self.init_pid = 0
        self.reason = "shutdown"
        self.clients: list[socket.socket] = []
        self.buffers: dict[socket.socket, bytes] = {}
        self.listener: socket.socket | None = None

    # ------------------------------------------------------------- start
    def start(self) -> None:
        spec = self.spec
        cgroup.create(self.cgroup)
        cgroup.apply_limits(self.cgroup, spec.get("limits", {}))
        cgroup.add_process(self.cgroup, os.getpid())
        # container side pty (init's console) and host side (the daemon's console streams)
        self.cont_master, cont_slave = os.openpty()
        self.host_master, self.host_slave = os.openpty()
        tty.setraw(self.host_slave, termios.TCSANOW)
        tty.setraw(self.host_master, termios.TCSANOW)
        self.pty = os.ttyname(self.host_slave)
        cont_path = os.ttyname(cont_slave)
        spec["console"] = cont_path
        go_r, go_w = os.pipe()
        pid_r, pid_w = os.pipe()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            try:
                os.close(go_w), os.close(pid_r), os.close(err_r)
                self._child(go_r, pid_w, err_w, cont_slave)
            finally:
                os._exit(127)
        os.close(go_r), os.close(pid_w), os.close(err_w)
        os.close(cont_slave)
        try:
            with os.fdopen(os.dup(pid_r), "rb") as reports:
                for line in reports:
                    if line == b"userns\n":      # the child made its user namespace
                        self._write_idmap(child)
                        os.write(go_w, b"m")
                    elif line.startswith(b"pid "):
                        self.init_pid = int(line.split()[1])
                    else:
                        raise RuntimeError(line.decode(errors="replace").strip()
                                           or "container setup failed")
            os.waitpid(child, 0)
            if not self.init_pid:
                raise RuntimeError("container setup failed")
            cgroup.add_process(self.cgroup, self.init_pid)
            self._move_interfaces()
            os.write(go_w, b"go")
            os.close(go_w)
            go_w = -1
            err = _read_all(err_r)     # EOF at exec of init: success
            if err:
                raise RuntimeError(err.decode(errors="replace"))
        except BaseException:
            if self.init_pid:
                try:
                    os.kill(self.init_pid, signal.SIGKILL)
                    os.waitpid(self.init_pid, 0)
                except OSError:
                    pass
            raise
        finally:
            os.close(pid_r), os.close(err_r)
            if go_w >= 0:
                os.close(go_w)

    def _child(self, go_r: int, pid_w: int, err_w: int, cont_slave: int) -> None:
        """The short-lived child: make the namespaces, fork init, report its pid, exit."""
        try:
            # imported here, in the short-lived child: the controller stays small, and
            # inside a user namespace the host's Python files may not all be readable
            import pyroute2  # noqa: F401
            from . import container  # noqa: F401
            flags = ns.CLONE_NEWNS | ns.CLONE_NEWUTS | ns.CLONE_NEWIPC | ns.CLONE_NEWPID
            if self.spec.get("netns", True):
                flags |= ns.CLONE_NEWNET
            if self.spec.get("idmap"):
                # the maps must be written from outside (CAP_SETUID in the parent namespace)
                ns.unshare(ns.CLONE_NEWUSER)
                os.write(pid_w, b"userns\n")
                if os.read(go_r, 1) != b"m":
                    os._exit(1)
                os.setgid(0)
                os.setuid(0)
            ns.unshare(flags)
            init = os.fork()
        except BaseException as exc:
            os.write(pid_w, f"{exc}\n".encode())
            os._exit(1)
        if init:
            os.write(pid_w, f"pid {init}\n".encode())
            os._exit(0)
        # pid 1 of the container
        os.close(pid_w)
        try:
            if os.read(go_r, 2) != b"go":
                os._exit(1)
            os.close(go_r)
            _oom_score_adj(0)
            from .container import become_init
            for fd in (self.cont_master, self.host_master, self.host_slave):
                os.close(fd)
            become_init(self.spec, cont_slave)
        except BaseException as exc:
            msg = str(exc) if isinstance(exc, OSError) or type(exc).__name__ == "ContainerError" \
                else traceback.format_exc()
            os.write(err_w, msg.encode())
        os._exit(1)

    def _write_idmap(self, pid: int) -> None:
        """uid_map/gid_map of the child's new user namespace (<idmap>)."""
        idmap = self.spec["idmap"]
        for kind in ("uid", "gid"):
            lines = "".join(f"{s} {t} {c}\n" for s, t, c in idmap.get(kind, []))
            if lines:
                with open(f"/proc/{pid}/{kind}_map", "w") as f:
                    f.write(lines)

    def _move_interfaces(self) -> None:
        if not self.spec.get("interfaces"):
            return
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            for iface in self.spec["interfaces"]:
                idx = ipr.link_lookup(ifname=iface["peer"])
                if not idx:
                    raise RuntimeError(f"Cannot find interface {iface['peer']}")
                ipr.link("set", index=idx[0], net_ns_pid=self.init_pid)

    # ------------------------------------------------------------- serve
    def serve(self, announce) -> None:
        path = self.spec["socket"]
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.listener.listen(8)
        self.listener.setblocking(False)
        announce()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *a: None)
        signal.signal(signal.SIGTERM, lambda *a: None)   # only the daemon's destroy ends us
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        for fd in (self.cont_master, self.host_master):
            _nonblock(fd)
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "accept")
        sel.register(wake_r, selectors.EVENT_READ, "signal")
        sel.register(self.cont_master, selectors.EVENT_READ, "from-container")
        sel.register(self.host_master, selectors.EVENT_READ, "from-host")
        self.sel = sel
        status = self._reap()
        while status is None:
            for key, _ in sel.select():
                what = key.data
                if what == "accept":
                    self._accept()
                elif what == "signal":
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
                elif what == "from-container":
                    self._relay(self.cont_master, self.host_master)
                elif what == "from-host":
                    self._relay(self.host_master, self.cont_master)
                else:
                    self._client_input(key.fileobj)
            status = self._reap()
        self._finish(status)

    def _reap(self) -> int | None:
        """Reap children (init's orphans land here too); init's wait status once it is gone."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 0
            if pid == 0:
                return None
            if pid == self.init_pid:
                return status

    def _relay(self, src: int, dst: int) -> None:
        try:
            data = os.read(src, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:   # the other side has no reader right now
                return
            raise
        try:
            os.write(dst, data)
        except BlockingIOError:
            pass    # nobody reads the console: drop, as a serial line would

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        self.clients.append(conn)
        self.buffers[conn] = b""
        self.sel.register(conn, selectors.EVENT_READ, "client")
        self._send(conn, {"event": "hello", "init_pid": self.init_pid,
                          "controller_pid": os.getpid(), "pty": self.pty})

    def _send(self, conn: socket.socket, msg: dict) -> None:
        try:
            conn.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        if conn in self.clients:
            self.clients.remove(conn)
            self.sel.unregister(conn)
            self.buffers.pop(conn, None)
            conn.close()

    def _client_input(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buf = self.buffers[conn] + data
        *lines, self.buffers[conn] = buf.split(b"\n")
        for line in lines:
            try:
                cmd = json.loads(line).get("cmd")
            except ValueError:
                continue
            if cmd == "shutdown":
                self._signal_init(signal.SIGTERM)
                self._send(conn, {"reply": "shutdown", "ok": True})
            elif cmd == "destroy":
                self.reason = "destroyed"
                self._signal_init(signal.SIGKILL)
                self._send(conn, {"reply": "destroy", "ok": True})
            elif cmd == "ping":
                self._send(conn, {"reply": "ping", "ok": True})

    def _signal_init(self, sig: int) -> None:
        try:
            os.kill(self.init_pid, sig)
        except ProcessLookupError:
            pass

    def _finish(self, status: int) -> None:
        reason = self.reason
        if reason != "destroyed" and os.WIFSIGNALED(status):
            # reboot(2) inside a pid namespace ends its init "killed by SIGHUP"
            # (restart) or SIGINT (halt, power off): libvirt_lxc's reboot and shutdown
            sig = os.WTERMSIG(status)
            if sig == signal.SIGKILL:
                reason = "crashed"
            elif sig == signal.SIGHUP:
                reason = "reboot"
        log.info("init exited (status %#x): %s", status, reason)
        msg = {"event": "exit", "reason": reason, "status": status}
        with open(self.spec["exit_file"] + ".tmp", "w") as f:
            json.dump(msg, f)
        os.replace(self.spec["exit_file"] + ".tmp", self.spec["exit_file"])
        self._cleanup()
        for conn in list(self.clients):
            self._send(conn, msg)
            conn.close()

    def _cleanup(self) -> None:
        try:
            os.unlink(self.spec["socket"])
        except FileNotFoundError:
            pass
        try:
            # leave the group ourselves first, or it can never be removed
            parent = {k: os.path.dirname(os.path.dirname(v)) for k, v in self.cgroup.items()}
            cgroup.add_process(parent, os.getpid())
            cgroup.kill_all(self.cgroup, signal.SIGKILL)
            cgroup.remove(self.cgroup)
        except OSError as exc:
            log.warning("removing cgroup: %s", exc)


def _oom_score_adj(value: int) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as exc:
        log.warning("cannot set oom_score_adj: %s", exc)


def main(argv: list[str]) -> int:
    spec_path, handshake_fd = argv[0], int(argv[1])
    os.set_inheritable(handshake_fd, False)   # init must not keep the daemon waiting
    with open(spec_path) as f:
        spec = json.load(f)
    # detach: the daemon reaps our parent at once; we belong to no one's session
    if os.fork():
        os._exit(0)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    ns.prctl(ns.PR_SET_CHILD_SUBREAPER, 1)
    # The controller sits in the container's memory cgroup (virsh lxc-enter-namespace
    # checks every controller's placement), so a container over its limit must
    # never get the OOM killer to pick the controller; init goes back to 0.
    _oom_score_adj(-1000)
    ctrl = Controller(spec)
    try:
        ctrl.start()
    except BaseException as exc:
        log.error("container %s failed to start: %s", spec.get("name"), exc)
        try:
            os.write(handshake_fd, json.dumps({"ok": False, "error": str(exc)}).encode())
        finally:
            ctrl._cleanup()
        return 1
    ready = {"ok": True, "init_pid": ctrl.init_pid, "controller_pid": os.getpid(),
             "pty": ctrl.pty}

    def announce() -> None:   # once the socket listens: the daemon connects right after
        os.write(handshake_fd, json.dumps(ready).encode())
        os.close(handshake_fd)

    ctrl.serve(announce)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
