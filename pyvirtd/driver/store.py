"""The files that keep defined objects across daemon restarts: config, status, autostart.

One layout for every kind that libvirt keeps this way (networks, storage
pools)::

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

The guests of a local hypervisor driver (QEMU, LXC, UML) keep the same
definitions and autostart links, and beside them a runtime status record per
running guest (`DomainStatus`: the live definition plus what the driver needs
to reattach); `DomainStatusStore` is that layout, `JsonStatusStore` its JSON
form.  A driver subclasses them with its own fields and files only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import trio

from pyvirtd.errors import VirError
from pyvirtd.files import write_atomic
from pyvirtd.names import name_path
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

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


# --- the guests of a local hypervisor driver ------------------------------------

# what reading a damaged status file raises (lxml's XMLSyntaxError is a SyntaxError)
_BROKEN = (OSError, ValueError, TypeError, KeyError, AttributeError, SyntaxError, VirError)


@dataclass
class DomainStatus:
    """What a restarted daemon needs to take a running guest over again.

    Every local driver's record has these; a driver's subclass adds its own
    fields (LXC: the controller's pid, UML: the launcher's, QEMU: its monitor).
    """
    name: str
    state: int
    reason: int
    persistent: bool
    definition: Any                     # the live domxml.DomainDef

    @property
    def id(self) -> int:
        """The domain id of the run (a subclass says where it keeps it)."""
        raise NotImplementedError


class DomainStatusStore:
    """A local driver's files: definitions, autostart links, runtime status of running guests::

        state_dir/DRIVER/NAME.xml              persistent definition
        state_dir/DRIVER/autostart/NAME.xml    symlink to it: start NAME with the daemon
        run_dir/DRIVER/NAME<status_suffix>     runtime status of a running guest
        log_dir/DRIVER/NAME.log                the guest's log

    Blocking file I/O: the driver state calls it through a thread (daemon
    start excepted).  A status file is written whole, atomically, so a daemon
    killed at any moment leaves the old record or the new one.  A driver
    subclasses it with its status format (``encode_status`` /
    ``decode_status``) and its own per-guest paths.
    """
    status_suffix = ".xml"
    # other per-guest files in run_dir removed with the status (load_statuses skips them)
    run_files: tuple[str, ...] = ()

    def __init__(self, paths: Any, driver: str) -> None:
        self.driver = driver
        self.config_dir = paths.state_dir / driver
        self.autostart_dir = self.config_dir / "autostart"
        self.run_dir = paths.run_dir / driver
        self.log_dir = paths.log_dir / driver

    def dirs(self) -> list[Path]:
        return [self.config_dir, self.autostart_dir, self.run_dir, self.log_dir]

    def ensure_dirs(self) -> None:
        for d in self.dirs():
            d.mkdir(parents=True, exist_ok=True)

    def path(self, name: str, suffix: str = "") -> Path:
        """A guest's file in run_dir (its log in log_dir)."""
        return name_path(self.log_dir if suffix == ".log" else self.run_dir, name, suffix)

    def status_path(self, name: str) -> Path:
        return self.path(name, self.status_suffix)

    # -- persistent definitions
    def save_config(self, d: Any) -> None:
        write_atomic(name_path(self.config_dir, d.name, ".xml"), domxml.format(d))

    def delete_config(self, name: str) -> None:
        """The definition and its autostart link (the link first: never a dangling one)."""
        for path in (name_path(self.autostart_dir, name, ".xml"),
                     name_path(self.config_dir, name, ".xml")):
            path.unlink(missing_ok=True)

    def set_autostart(self, name: str, on: bool) -> None:
        link = name_path(self.autostart_dir, name, ".xml")
        if not on:
            link.unlink(missing_ok=True)
        elif not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("..") / link.name)

    def is_autostart(self, name: str) -> bool:
        return name_path(self.autostart_dir, name, ".xml").is_symlink()

    def load_configs(self) -> list[Any]:
        """Every persistent definition; an unreadable one is logged and skipped."""
        defs: list[Any] = []
        if not self.config_dir.is_dir():
            return defs
        for path in sorted(self.config_dir.glob("*.xml")):
            try:
                defs.append(domxml.parse(path.read_text()))
            except (OSError, VirError) as exc:
                log.error("skipping unreadable %s domain config %s: %s", self.driver, path, exc)
        return defs

    # -- runtime status
    def encode_status(self, st: Any) -> str:
        """The status file's text (called on the event loop: the live definition is
        formatted where nothing changes it meanwhile)."""
        raise NotImplementedError

    def decode_status(self, text: str) -> Any:
        """A status record from its file's text; ValueError (or the parser's) if broken."""
        raise NotImplementedError

    def write_status(self, name: str, text: str) -> None:
        write_atomic(self.status_path(name), text)

    def delete_status(self, name: str) -> None:
        for suffix in (self.status_suffix, *self.run_files):
            self.path(name, suffix).unlink(missing_ok=True)

    def load_statuses(self) -> list[Any]:
        """Every runtime status record; a broken one is logged and removed."""
        out: list[Any] = []
        if not self.run_dir.is_dir():
            return out
        for path in sorted(self.run_dir.glob(f"*{self.status_suffix}")):
            if path.name.endswith(self.run_files):
                continue
            try:
                out.append(self.decode_status(path.read_text()))
            except _BROKEN as exc:
                log.error("dropping unreadable runtime status %s: %s", path, exc)
                path.unlink(missing_ok=True)
        return out


class JsonStatusStore(DomainStatusStore):
    """Status records as JSON: the record's fields, the live definition as ``xml``."""
    status_suffix = ".json"
    status_class: type[DomainStatus]

    def encode_status(self, st: DomainStatus) -> str:
        data = {f.name: getattr(st, f.name) for f in fields(st) if f.name != "definition"}
        data["xml"] = domxml.format(st.definition, dom_id=st.id)
        return json.dumps(data)

    def decode_status(self, text: str) -> DomainStatus:
        data = json.loads(text)
        data["definition"] = domxml.parse(data.pop("xml"))
        return self.status_class(**data)

