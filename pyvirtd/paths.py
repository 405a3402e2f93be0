"""Where pyvirtd keeps its configuration, state, sockets and logs.

Three layouts exist, chosen once at start-up and then passed around as one
immutable `Paths` value, so no other module builds a path from a constant:

- `Paths.system()`: a root daemon on a host. The sockets sit where every stock
  libvirt client looks for them (``/run/libvirt/libvirt-sock`` ...), which is
  what lets virsh and friends talk to pyvirtd unmodified.
- `Paths.session()`: an unprivileged per-user daemon, laid out after the XDG
  base-directory spec as ``libvirtd --session`` is (its sockets under
  ``$XDG_RUNTIME_DIR/libvirt``), so ``qemu:///session`` clients find it too.
- `Paths.for_root(root)`: everything below one directory, for development
  (``make run``) and tests, where nothing may touch the real host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

# The socket file names libvirt's remote driver connects to; changing them
# would make pyvirtd invisible to unmodified clients.
SOCK_RW_NAME = "libvirt-sock"
SOCK_RO_NAME = "libvirt-sock-ro"
SOCK_ADMIN_NAME = "libvirt-admin-sock"

CONFIG_NAME = "pyvirtd.yaml"
PID_NAME = "pyvirtd.pid"


@dataclass(frozen=True)
class Paths:
    """Every file-system location the daemon uses.

    Attributes:
      config_file: the YAML configuration (`pyvirtd.config.Config.load`).
      config_dir: directory holding ``config_file`` and any sibling configs.
      state_dir: persistent definitions (domain, network, pool XML ...); must
        survive reboots.
      run_dir: runtime status of running objects; lost on reboot, kept across
        daemon restarts so a new daemon can reattach to its guests.
      log_dir: per-guest and daemon log files.
      sock_rw, sock_ro, sock_admin: the read-write, read-only and admin
        (virt-admin) unix sockets.
      pid_file: holds the daemon's pid; also guards against a second daemon.
    """

    config_file: Path
    config_dir: Path
    state_dir: Path
    run_dir: Path
    log_dir: Path
    sock_rw: Path
    sock_ro: Path
    sock_admin: Path
    pid_file: Path

    @classmethod
    def for_root(cls, root: Path) -> Paths:
        """Everything under ``root``, which need not exist yet.

        ``root`` is made absolute so that the paths stay valid if the daemon
        later changes its working directory.
        """
        root = Path(root).absolute()
        run = root / "run"
        etc = root / "etc"
        return cls(
            config_file=etc / CONFIG_NAME,
            config_dir=etc,
            state_dir=root / "lib",
            run_dir=run,
            log_dir=root / "log",
            sock_rw=run / SOCK_RW_NAME,
            sock_ro=run / SOCK_RO_NAME,
            sock_admin=run / SOCK_ADMIN_NAME,
            pid_file=run / PID_NAME,
        )

    @classmethod
    def system(cls) -> Paths:
        """The layout of a daemon run by root (``pyvirtd --system``).

        Only the sockets share libvirt's directory; our own files live in
        pyvirtd-named places so they never collide with a real libvirtd's.
        """
        sockets = Path("/run/libvirt")
        return cls(
            config_file=Path("/etc/pyvirtd") / CONFIG_NAME,
            config_dir=Path("/etc/pyvirtd"),
            state_dir=Path("/var/lib/pyvirtd"),
            run_dir=Path("/run/pyvirtd"),
            log_dir=Path("/var/log/pyvirtd"),
            sock_rw=sockets / SOCK_RW_NAME,
            sock_ro=sockets / SOCK_RO_NAME,
            sock_admin=sockets / SOCK_ADMIN_NAME,
            pid_file=Path("/run") / PID_NAME,
        )

    @classmethod
    def session(
        cls, env: Mapping[str, str] | None = None, home: Path | None = None
    ) -> Paths:
        """The layout of a per-user daemon, after the XDG base-directory spec.

        Like libvirtd in session mode, sockets go to ``$XDG_RUNTIME_DIR/libvirt``
        and, when that variable is unset, to ``~/.cache/libvirt`` instead.
        libvirtd has no read-only socket in session mode; we keep one so that
        the read-only code path is the same in both modes.

        Args:
          env: the environment to read (default ``os.environ``); a parameter
            so tests need not patch the process environment.
          home: the home directory (default ``Path.home()``).
        """
        env = os.environ if env is None else env
        home = Path.home() if home is None else Path(home)

        def xdg(var: str, fallback: Path) -> Path:
            # The spec says relative values are invalid and must be ignored.
            value = env.get(var, "")
            return Path(value) if os.path.isabs(value) else fallback

        config = xdg("XDG_CONFIG_HOME", home / ".config") / "pyvirtd"
        data = xdg("XDG_DATA_HOME", home / ".local" / "share") / "pyvirtd"
        cache = xdg("XDG_CACHE_HOME", home / ".cache")
        runtime = xdg("XDG_RUNTIME_DIR", cache)
        sockets = runtime / "libvirt"
        return cls(
            config_file=config / CONFIG_NAME,
            config_dir=config,
            state_dir=data,
            run_dir=runtime / "pyvirtd",
            log_dir=cache / "pyvirtd" / "log",
            sock_rw=sockets / SOCK_RW_NAME,
            sock_ro=sockets / SOCK_RO_NAME,
            sock_admin=sockets / SOCK_ADMIN_NAME,
            pid_file=sockets / PID_NAME,
        )

    def with_socket_dir(self, directory: Path | str | None) -> Paths:
        """These paths with the three sockets in ``directory`` (unix_sock_dir).

        Only the sockets move, under the names clients look for; the pid file
        and the run directory stay, as with libvirtd's unix_sock_dir.
        ``None`` keeps the layout's own socket directory.
        """
        if directory is None:
            return self
        d = Path(directory)
        return replace(self, sock_rw=d / SOCK_RW_NAME, sock_ro=d / SOCK_RO_NAME,
                       sock_admin=d / SOCK_ADMIN_NAME)

    def directories(self) -> list[Path]:
        """Every directory the daemon needs, parents before children."""
        dirs = {self.config_dir, self.state_dir, self.run_dir, self.log_dir}
        for f in fields(self):
            if f.name.startswith("sock_") or f.name == "pid_file":
                dirs.add(getattr(self, f.name).parent)
        return sorted(dirs, key=lambda p: (len(p.parts), str(p)))

    def ensure_dirs(self) -> None:
        """Create every directory the daemon needs, mode 0o755.

        The mode is set explicitly rather than left to the umask: clients of
        the read-only socket must be able to traverse its directory even when
        the daemon runs with umask 077. Existing directories are left alone,
        their mode included, so an admin who tightened one keeps it. Raises
        `OSError` when a directory cannot be created, e.g. ``/run/libvirt`` by
        a non-root user.
        """
        for directory in self.directories():
            missing = [d for d in (directory, *directory.parents) if not d.exists()]
            for d in reversed(missing):
                d.mkdir(mode=0o755, exist_ok=True)
                os.chmod(d, 0o755)
