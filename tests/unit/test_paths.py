"""The three directory layouts and directory creation."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from pyvirtd.paths import Paths


def test_for_root_layout(tmp_path: Path) -> None:
    p = Paths.for_root(tmp_path)
    assert p == Paths(
        config_file=tmp_path / "etc/pyvirtd.yaml",
        config_dir=tmp_path / "etc",
        state_dir=tmp_path / "lib",
        run_dir=tmp_path / "run",
        log_dir=tmp_path / "log",
        sock_rw=tmp_path / "run/libvirt-sock",
        sock_ro=tmp_path / "run/libvirt-sock-ro",
        sock_admin=tmp_path / "run/libvirt-admin-sock",
        pid_file=tmp_path / "run/pyvirtd.pid",
    )


def test_for_root_is_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    p = Paths.for_root(Path("root"))
    assert p.sock_rw == tmp_path / "root/run/libvirt-sock"
    assert all(getattr(p, f.name).is_absolute() for f in dataclasses.fields(p))


def test_system_sockets_are_where_libvirt_clients_look() -> None:
    p = Paths.system()
    assert p.sock_rw == Path("/run/libvirt/libvirt-sock")
    assert p.sock_ro == Path("/run/libvirt/libvirt-sock-ro")
    assert p.sock_admin == Path("/run/libvirt/libvirt-admin-sock")
    assert p.config_file == Path("/etc/pyvirtd/pyvirtd.yaml")
    assert p.state_dir == Path("/var/lib/pyvirtd")
    assert p.log_dir == Path("/var/log/pyvirtd")
    assert p.pid_file == Path("/run/pyvirtd.pid")


def test_session_follows_xdg() -> None:
    env = {
        "XDG_CONFIG_HOME": "/x/config",
        "XDG_DATA_HOME": "/x/data",
        "XDG_CACHE_HOME": "/x/cache",
        "XDG_RUNTIME_DIR": "/x/run",
    }
    p = Paths.session(env, home=Path("/home/u"))
    assert p.config_file == Path("/x/config/pyvirtd/pyvirtd.yaml")
    assert p.state_dir == Path("/x/data/pyvirtd")
    assert p.log_dir == Path("/x/cache/pyvirtd/log")
    assert p.run_dir == Path("/x/run/pyvirtd")
    assert p.sock_rw == Path("/x/run/libvirt/libvirt-sock")
    assert p.sock_admin == Path("/x/run/libvirt/libvirt-admin-sock")


def test_session_fallbacks_ignore_unset_and_relative_values() -> None:
    p = Paths.session({"XDG_CONFIG_HOME": "relative"}, home=Path("/home/u"))
    assert p.config_dir == Path("/home/u/.config/pyvirtd")
    assert p.state_dir == Path("/home/u/.local/share/pyvirtd")
    # Without XDG_RUNTIME_DIR libvirtd puts its sockets under ~/.cache.
    assert p.sock_rw == Path("/home/u/.cache/libvirt/libvirt-sock")


def test_paths_are_immutable(tmp_path: Path) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Paths.for_root(tmp_path).run_dir = tmp_path  # type: ignore[misc]


def test_ensure_dirs_creates_0755_whatever_the_umask(tmp_path: Path) -> None:
    root = tmp_path / "new" / "root"
    p = Paths.for_root(root)
    old = os.umask(0o077)
    try:
        p.ensure_dirs()
        p.ensure_dirs()  # idempotent
    finally:
        os.umask(old)
    for d in (root, p.config_dir, p.state_dir, p.run_dir, p.log_dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d


def test_ensure_dirs_keeps_an_existing_mode(tmp_path: Path) -> None:
    p = Paths.for_root(tmp_path)
    p.state_dir.mkdir(mode=0o700)
    os.chmod(p.state_dir, 0o700)
    p.ensure_dirs()
    assert stat.S_IMODE(p.state_dir.stat().st_mode) == 0o700


def test_ensure_dirs_covers_socket_and_pid_directories(tmp_path: Path) -> None:
    p = Paths.session({"XDG_RUNTIME_DIR": str(tmp_path / "rt")}, home=tmp_path)
    p.ensure_dirs()
    assert p.sock_rw.parent.is_dir()
    assert p.pid_file.parent.is_dir()
