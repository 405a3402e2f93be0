"""LXC containers on disk: persistent definitions, autostart marks, runtime status.

    state_dir/lxc/NAME.xml              persistent definition
    state_dir/lxc/autostart/NAME.xml    symlink to it: start NAME with the daemon
    run_dir/lxc/NAME.json               runtime status of a running container
    run_dir/lxc/NAME.spec.json          what its controller was started with
    run_dir/lxc/NAME.sock               its controller's socket
    run_dir/lxc/NAME.exit               how init ended, written by the controller
    log_dir/lxc/NAME.log                the controller's log

The runtime status (controller and init pids, cgroup directories, host-side
veths, state/reason and the live definition) is written atomically whenever
it changes, so a daemon killed at any moment reattaches to every container.
Blocking file I/O: the driver calls it through a thread.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyvirtd.errors import VirError
from pyvirtd.files import write_atomic
from pyvirtd.names import name_path
from pyvirtd.paths import Paths
from pyvirtd.xml import domain as domxml

log = logging.getLogger(__name__)


@dataclass
class RuntimeStatus:
    name: str
    state: int
    reason: int
    controller_pid: int
    init_pid: int
    persistent: bool
    xml: str                                    # the live definition
    cgroup: dict = field(default_factory=dict)
    veths: list = field(default_factory=list)   # host ends, removed when the container stops

    @property
    def id(self) -> int:
        """The domain's id: libvirt's LXC driver uses the controller's pid."""
        return self.controller_pid



class StatusStore:
    def __init__(self, paths: Paths) -> None:
        self.config_dir = paths.state_dir / "lxc"
        self.autostart_dir = self.config_dir / "autostart"
        self.run_dir = paths.run_dir / "lxc"
        self.log_dir = paths.log_dir / "lxc"

    def ensure_dirs(self) -> None:
        for d in (self.config_dir, self.autostart_dir, self.run_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)

    def path(self, name: str, suffix: str) -> Path:
        return name_path(self.log_dir if suffix == ".log" else self.run_dir, name, suffix)

    # -- persistent definitions
    def save_config(self, d: domxml.DomainDef) -> None:
        write_atomic(name_path(self.config_dir, d.name, ".xml"), domxml.format(d))

    def delete_config(self, name: str) -> None:
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

    def load_configs(self) -> list[domxml.DomainDef]:
        defs = []
        for path in sorted(self.config_dir.glob("*.xml")):
            try:
                defs.append(domxml.parse(path.read_text()))
            except (OSError, VirError) as exc:
                log.error("skipping unreadable container config %s: %s", path, exc)
        return defs

    # -- runtime status
    def save_status(self, st: RuntimeStatus) -> None:
        write_atomic(name_path(self.run_dir, st.name, ".json"), json.dumps(asdict(st)))

    def delete_status(self, name: str) -> None:
        for suffix in (".json", ".spec.json", ".exit"):
            self.path(name, suffix).unlink(missing_ok=True)

    def load_statuses(self) -> list[RuntimeStatus]:
        out = []
        for path in sorted(self.run_dir.glob("*.json")):
            if path.name.endswith(".spec.json"):
                continue
            try:
                out.append(RuntimeStatus(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                log.error("dropping unreadable runtime status %s: %s", path, exc)
                path.unlink(missing_ok=True)
        return out

    def read_exit(self, name: str) -> str | None:
        try:
            return json.loads(self.path(name, ".exit").read_text()).get("reason")
        except (OSError, ValueError):
            return None
