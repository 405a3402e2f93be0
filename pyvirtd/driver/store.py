"""The files that keep defined objects across daemon restarts: config, status, autostart.

One layout for every kind that libvirt keeps this way (networks, storage
pools; domains later)::

    CONFIG_DIR/NAME.xml               the persistent definition
    CONFIG_DIR/autostart/NAME.xml     a symbolic link to it while autostart is on
    STATUS_DIR/NAME.xml               the live definition of a running object

Every path is built by `pyvirtd.names.name_path` (a name never leaves its
directory), every file is written by `pyvirtd.files.write_atomic` (the old
content or the new, one temporary name per file).  The ``*_sync`` methods
block and are for threads and daemon start; the async ones run them on a
worker thread and turn an OSError into libvirt's system error, so a full or
broken disk reaches the client in libvirt's words and the caller's memory
stays as it was (write first, then commit to memory).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pyvirtd.errors import VirError
from pyvirtd.files import write_atomic
from pyvirtd.names import name_path
from pyvirtd.rpc import _generated as P

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """What `ObjectStore.load_sync` found: definitions with their autostart, live states."""
    configs: list[tuple[Any, bool]] = field(default_factory=list)
    statuses: list[Any] = field(default_factory=list)


class ObjectStore:
    """Config, status and autostart files of one kind of object.

    ``parse(text)`` and ``format(definition)`` are the kind's XML functions
    (a definition has ``name``); ``what`` names the kind in log lines and in
    the undefine error; ``error_domain`` is the VIR_FROM_* of its errors.
    """

    def __init__(self, config_dir: Path | str, status_dir: Path | str, *,
                 parse: Callable[[str], Any], format: Callable[[Any], str],
                 what: str, error_domain: int) -> None:
        self.config_dir = Path(config_dir)
        self.autostart_dir = self.config_dir / "autostart"
        self.status_dir = Path(status_dir)
        self.parse = parse
        self.format = format
        self.what = what
        self.error_domain = error_domain

    # --- paths ----------------------------------------------------------------

    def config_path(self, name: str) -> Path:
        return name_path(self.config_dir, name, ".xml")

    def autostart_path(self, name: str) -> Path:
        return name_path(self.autostart_dir, name, ".xml")

    def status_path(self, name: str) -> Path:
        return name_path(self.status_dir, name, ".xml")

    # --- blocking: threads and daemon start -----------------------------------

    def load_sync(self) -> Loaded:
        """Every readable definition (with its autostart) and live state.

        A file that does not parse, or whose name is not its object's (a
        copied file), is logged and left out, as libvirt skips it.
        """
        found = Loaded()
        for defn in self._read_all(self.config_dir):
            found.configs.append((defn, self.autostart_path(defn.name).exists()))
        found.statuses = self._read_all(self.status_dir)
        return found

    def _read_all(self, directory: Path) -> list[Any]:
        out: list[Any] = []
        if not directory.is_dir():
            return out
        for path in sorted(directory.glob("*.xml")):
            try:
                defn = self.parse(path.read_text())
            except (OSError, VirError) as exc:
                log.error("%s file %s ignored: %s", self.what, path, exc)
                continue
            if defn.name != path.stem:
                log.error("%s file %s ignored: it defines '%s'", self.what, path, defn.name)
                continue
            out.append(defn)
        return out

    def save_config_sync(self, definition: Any) -> None:
        write_atomic(self.config_path(definition.name), self.format(definition))

    def save_status_sync(self, definition: Any) -> None:
        write_atomic(self.status_path(definition.name), self.format(definition))

    def remove_config_sync(self, name: str) -> None:
        """The definition and its autostart link (the link first: never a dangling one)."""
        self.autostart_path(name).unlink(missing_ok=True)
        self.config_path(name).unlink(missing_ok=True)

    def remove_status_sync(self, name: str) -> None:
        self.status_path(name).unlink(missing_ok=True)

    def set_autostart_sync(self, name: str, on: bool) -> None:
        """The link is the state (libvirt's virFileLinkPointsTo): made or removed."""
        link = self.autostart_path(name)
        if on:
            self.autostart_dir.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(self.config_path(name))
        else:
            link.unlink(missing_ok=True)

    # --- async: off the event loop, libvirt's errors --------------------------

    def _system_error(self, message: str) -> VirError:
        return VirError(P.VIR_ERR_SYSTEM_ERROR, domain=self.error_domain, message=message)

    async def _write(self, path: Path, fn: Callable[[Any], None], definition: Any) -> None:
        try:
            await trio.to_thread.run_sync(fn, definition)
        except OSError as exc:      # virFileRewrite's wording
            raise self._system_error(
                f"cannot write data to file '{path}': {exc.strerror or exc}") from None

    async def load(self) -> Loaded:
        return await trio.to_thread.run_sync(self.load_sync)

    async def write_config(self, definition: Any) -> None:
        await self._write(self.config_path(definition.name), self.save_config_sync, definition)

    async def write_status(self, definition: Any) -> None:
        await self._write(self.status_path(definition.name), self.save_status_sync, definition)

    async def delete_config(self, name: str) -> None:
        try:
            await trio.to_thread.run_sync(self.remove_config_sync, name)
        except OSError as exc:
            raise self._system_error(f"cannot remove config file of {self.what} '{name}': "
                                     f"{exc.strerror or exc}") from None

    async def delete_status(self, name: str) -> None:
        try:
            await trio.to_thread.run_sync(self.remove_status_sync, name)
        except OSError as exc:
            raise self._system_error(f"cannot remove status file of {self.what} '{name}': "
                                     f"{exc.strerror or exc}") from None

    async def set_autostart(self, name: str, on: bool) -> None:
        try:
            await trio.to_thread.run_sync(self.set_autostart_sync, name, on)
        except OSError as exc:
            raise self._system_error(
                f"Failed to {'create' if on else 'delete'} symlink "
                f"'{self.autostart_path(name)}': {exc.strerror or exc}") from None
