"""UML guests on disk: persistent definitions, autostart marks, runtime status.

    state_dir/uml/NAME.xml              persistent definition
    state_dir/uml/autostart/NAME.xml    symlink to it: start NAME with the daemon
    run_dir/uml/NAME.json               runtime status of a running guest
    run_dir/uml/NAME/                   the kernel's uml_dir entry: pid, mconsole socket
    run_dir/uml/NAME.notify             our socket for the kernel's notifications
    run_dir/uml/NAME.exit               the kernel's exit status (launcher.py)
    log_dir/uml/NAME.log                the kernel's boot output

Blocking file I/O: the driver calls it through a thread.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyvirtd.errors import VirError
from pyvirtd.files import write_atomic
from pyvirtd.paths import Paths
from pyvirtd.xml import domain as domxml

log = logging.getLogger(__name__)


@dataclass
class RuntimeStatus:
    name: str
    state: int
    reason: int
    pid: int                    # the launcher's (session leader, kernel's parent)
    dom_id: int
    persistent: bool
    xml: str                    # the live definition
    taps: list = field(default_factory=list)    # [tap, mac] the daemon made (nics.py)

    @property
    def id(self) -> int:
        return self.dom_id


class StatusStore:
    def __init__(self, paths: Paths) -> None:
        self.config_dir = paths.state_dir / "uml"
        self.autostart_dir = self.config_dir / "autostart"
        self.run_dir = paths.run_dir / "uml"
        self.log_dir = paths.log_dir / "uml"

    def ensure_dirs(self) -> None:
        for d in (self.config_dir, self.autostart_dir, self.run_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)

    def path(self, name: str, suffix: str = "") -> Path:
        return (self.log_dir if suffix == ".log" else self.run_dir) / f"{name}{suffix}"

    def mconsole(self, name: str) -> str:
        return str(self.run_dir / name / "mconsole")

    # -- persistent definitions
    def save_config(self, d: domxml.DomainDef) -> None:
        write_atomic(self.config_dir / f"{d.name}.xml", domxml.format(d))

    def delete_config(self, name: str) -> None:
        for path in (self.autostart_dir / f"{name}.xml", self.config_dir / f"{name}.xml"):
            path.unlink(missing_ok=True)

    def set_autostart(self, name: str, on: bool) -> None:
        link = self.autostart_dir / f"{name}.xml"
        if not on:
            link.unlink(missing_ok=True)
        elif not link.is_symlink():
            link.symlink_to(Path("..") / f"{name}.xml")

    def is_autostart(self, name: str) -> bool:
        return (self.autostart_dir / f"{name}.xml").is_symlink()

    def load_configs(self) -> list[domxml.DomainDef]:
        defs = []
        for path in sorted(self.config_dir.glob("*.xml")):
            try:
                defs.append(domxml.parse(path.read_text()))
            except (OSError, VirError) as exc:
                log.error("skipping unreadable UML guest config %s: %s", path, exc)
        return defs

    # -- runtime
    def clear_run(self, name: str) -> None:
        """What a previous run left: exit status, notify socket, the kernel's uml_dir entry."""
        for suffix in (".exit", ".notify"):
            self.path(name, suffix).unlink(missing_ok=True)
        shutil.rmtree(self.path(name), ignore_errors=True)

    def save_status(self, st: RuntimeStatus) -> None:
        write_atomic(self.run_dir / f"{st.name}.json", json.dumps(asdict(st)))

    def delete_status(self, name: str) -> None:
        self.path(name, ".json").unlink(missing_ok=True)

    def load_statuses(self) -> list[RuntimeStatus]:
        out = []
        for path in sorted(self.run_dir.glob("*.json")):
            try:
                out.append(RuntimeStatus(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                log.error("dropping unreadable runtime status %s: %s", path, exc)
                path.unlink(missing_ok=True)
        return out

    def read_exit(self, name: str) -> int | None:
        try:
            return int(self.path(name, ".exit").read_text().strip())
        except (OSError, ValueError):
            return None
