"""``pyvirtd``: the command line, mirroring libvirtd's options.

    pyvirtd [--root DIR [--privileged] | --system | --session] [-f FILE] [-l] [-t SECS]
            [-p FILE] [-d] [-v] [--version]
    pyvirtd cert [--dir DIR] --hostname NAME...     (pyvirtd/commands.py)
    pyvirtd sasl-user add|remove|list ...

``-l``/``--listen`` turns on the network listeners that the configuration
enables (``listen_tls`` on ``tls_port``, ``listen_tcp`` on ``tcp_port``, bound
to ``listen_addr`` or every address), as libvirtd needs both too.

Foreground by default.  SIGTERM and SIGINT shut down cleanly; SIGHUP reloads
the configuration file.  Sockets handed over by systemd (LISTEN_FDS) are used
instead of binding our own, and READY=1 goes to $NOTIFY_SOCKET once clients
can connect.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from pyvirtd import __version__, commands, logsetup, systemd
from pyvirtd.config import Config, ConfigError
from pyvirtd.client import TRANSPORT_TCP, TRANSPORT_TLS
from pyvirtd.daemon import Daemon
from pyvirtd.driver import SubsystemError
from pyvirtd.paths import Paths

log = logging.getLogger("pyvirtd")



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pyvirtd", description="libvirt-compatible management daemon")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--root", type=Path, metavar="DIR",
                      help="keep every path (config, state, sockets, logs) under DIR")
    mode.add_argument("--system", action="store_true", help="system paths (/etc, /var/lib, /run/libvirt)")
    mode.add_argument("--session", action="store_true", help="per-user paths (XDG directories)")
    p.add_argument("--privileged", action="store_true",
                   help="with --root, as root: act as the system daemon (qemu:///system, "
                        "QEMU confined) with every path under DIR")
    p.add_argument("-f", "--config", type=Path, metavar="FILE", help="configuration file (YAML)")
    p.add_argument("-l", "--listen", action="store_true",
                   help="also listen on TCP/TLS as the configuration says")
    p.add_argument("-t", "--timeout", type=int, metavar="SECS", default=0,
                   help="exit after SECS seconds without clients")
    p.add_argument("-p", "--pid-file", type=Path, metavar="FILE", help="write the daemon's pid here")
    p.add_argument("-d", "--daemon", action="store_true", help="detach and run in the background")
    p.add_argument("-v", "--verbose", action="store_true", help="log debugging messages")
    p.add_argument("--version", action="version", version=f"pyvirtd {__version__}")
    args = p.parse_args(argv)
    if args.privileged and (args.root is None or os.geteuid() != 0):
        p.error("--privileged needs --root and root's privileges")
    return args


def _paths(args: argparse.Namespace) -> tuple[Paths, bool]:
    if args.system:
        return Paths.system(), True
    if args.root:
        # --privileged: a sandboxed system daemon, for tests of what only root may do
        return Paths.for_root(args.root.resolve()), args.privileged
    if args.session or os.geteuid() != 0:
        return Paths.session(), False
    return Paths.system(), True


def _daemonize() -> None:
    """Detach like a classic daemon: fork, new session, fork, stdio to /dev/null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)


def _add_listeners(daemon: Daemon, paths: Paths, config: Config, listen: bool) -> None:
    inherited = systemd.listen_fds()
    if inherited:
        for name, socks in inherited.items():
            role = systemd.FD_NAME_ROLES.get(name, "rw")
            for raw in socks:
                if role == "admin":
                    daemon.add_inherited_listener(raw, daemon.admin, readonly=False)
                elif role in ("rw", "ro"):
                    auth = config.auth_unix_ro if role == "ro" else config.auth_unix_rw
                    daemon.add_inherited_listener(raw, daemon.libvirtd, readonly=role == "ro",
                                                  auth=auth)
                elif role in ("tcp", "tls"):
                    tls = role == "tls"
                    daemon.add_inherited_listener(
                        raw, daemon.libvirtd, readonly=False,
                        auth=config.auth_tls if tls else config.auth_tcp,
                        transport=TRANSPORT_TLS if tls else TRANSPORT_TCP)
                else:
                    log.warning("ignoring inherited %s socket: not supported yet", role)
        return
    daemon.add_unix_listener(paths.sock_rw, daemon.libvirtd, readonly=False,
                             mode=int(config.unix_sock_rw_perms, 8), auth=config.auth_unix_rw)
    daemon.add_unix_listener(paths.sock_ro, daemon.libvirtd, readonly=True,
                             mode=int(config.unix_sock_ro_perms, 8), auth=config.auth_unix_ro)
    daemon.add_unix_listener(paths.sock_admin, daemon.admin, readonly=False,
                             mode=int(config.unix_sock_admin_perms, 8),
                             backlog=config.admin_max_queued_clients)
    if listen:
        # like libvirtd: network listeners need both --listen and listen_tls/listen_tcp
        if config.listen_tls:
            daemon.add_tcp_listeners(config.listen_addr, int(config.tls_port), daemon.libvirtd,
                                     tls=True, auth=config.auth_tls)
        if config.listen_tcp:
            daemon.add_tcp_listeners(config.listen_addr, int(config.tcp_port), daemon.libvirtd,
                                     tls=False, auth=config.auth_tcp)
        if not (config.listen_tls or config.listen_tcp):
            log.warning("--listen given but neither listen_tls nor listen_tcp is enabled")


def _banner(paths: Paths, privileged: bool) -> str:
    rw, ro, admin = paths.sock_rw, paths.sock_ro, paths.sock_admin
    qemu = "system" if privileged else "session"
    return (f"pyvirtd {__version__} ready\n"
            f"  virsh -c 'test+unix:///default?socket={rw}' list --all\n"
            f"  virsh -c 'qemu+unix:///{qemu}?socket={rw}' list --all\n"
            f"  virsh -c 'lxc+unix:///system?socket={rw}' list --all\n"
            f"  virsh -c 'test+unix:///default?socket={ro}' list --all   (read-only)\n"
            f"  virt-admin -c 'libvirtd+unix:///system?socket={admin}' srv-list\n")


async def _run(daemon: Daemon, config_path: Path, timeout: int, banner: str) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        systemd.notify("READY=1")
        print(banner, end="", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            if timeout:
                nursery.start_soon(_idle_timeout, daemon, timeout, nursery.cancel_scope)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    _reload(daemon, config_path)
                    continue
                log.info("received %s, shutting down", signal.Signals(signum).name)
                systemd.notify("STOPPING=1")
                nursery.cancel_scope.cancel()
                break


async def _idle_timeout(daemon: Daemon, timeout: int, scope: trio.CancelScope) -> None:
    """libvirtd --timeout: exit once no client has been connected for SECS seconds."""
    idle_since = trio.current_time()
    while True:
        await trio.sleep(1)
        if daemon.client_count():
            idle_since = trio.current_time()
        elif trio.current_time() - idle_since >= timeout:
            log.info("no clients for %d seconds, exiting", timeout)
            scope.cancel()
            return


def _reload(daemon: Daemon, config_path: Path) -> None:
    try:
        new = Config.load(config_path)
    except ConfigError as exc:
        log.error("reload failed, keeping the old configuration: %s", exc)
        return
    daemon.reload(new)
    log.info("configuration reloaded from %s", config_path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in commands.SUBCOMMANDS:
        return commands.main(argv)
    args = parse_args(argv)
    paths, privileged = _paths(args)
    config_path = args.config or paths.config_file
    try:
        config = Config.load(config_path)
    except ConfigError as exc:
        print(f"pyvirtd: {exc}", file=sys.stderr)
        return 2
    paths = paths.with_socket_dir(config.unix_sock_dir)
    try:
        logsetup.configure(config.log_level, config.log_outputs, config.log_filters,
                           verbose=args.verbose)
    except logsetup.LogSettingError as exc:
        print(f"pyvirtd: {config_path}: {exc}", file=sys.stderr)
        return 2
    paths.ensure_dirs()
    if args.daemon:
        _daemonize()
    pid_file = args.pid_file or paths.pid_file
    try:
        daemon = Daemon(config, paths, privileged=privileged)
    except ValueError as exc:
        print(f"pyvirtd: {config_path}: {exc}", file=sys.stderr)
        return 2
    except SubsystemError as exc:
        print(f"pyvirtd: {exc}", file=sys.stderr)
        return 1
    daemon.verbose = args.verbose
    if config.audit_level == 1:
        # libvirtd's meaning of 1: audit when the host can, else go on without
        log.info("audit_level 1: pyvirtd writes no audit records; running without auditing")
    try:
        _add_listeners(daemon, paths, config, args.listen)
    except (OSError, ValueError) as exc:
        print(f"pyvirtd: cannot listen: {exc}", file=sys.stderr)
        return 1
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        trio.run(_run, daemon, config_path, args.timeout, _banner(paths, privileged))
    except KeyboardInterrupt:
        pass
    finally:
        pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
