"""UML guests on disk: what a kernel's run keeps beside the shared layout.

    state_dir/uml/NAME.xml              persistent definition
    state_dir/uml/autostart/NAME.xml    symlink to it: start NAME with the daemon
    run_dir/uml/NAME.json               runtime status of a running guest
    run_dir/uml/NAME/                   the kernel's uml_dir entry: pid, mconsole socket
    run_dir/uml/NAME.notify             our socket for the kernel's notifications
    run_dir/uml/NAME.exit               the kernel's exit status (launcher.py)
    log_dir/uml/NAME.log                the kernel's boot output

The layout, the atomic writes and the JSON status are
`pyvirtd.driver.store.JsonStatusStore`'s.  Blocking file I/O: the driver
calls it through a thread.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from pyvirtd.driver.store import DomainStatus, JsonStatusStore
from pyvirtd.paths import Paths


@dataclass
class RuntimeStatus(DomainStatus):
    pid: int = 0                # the launcher's (session leader, kernel's parent)
    dom_id: int = 0
    taps: list = field(default_factory=list)    # [tap, mac] the daemon made (nics.py)

    @property
    def id(self) -> int:
        return self.dom_id


class StatusStore(JsonStatusStore):
    status_class = RuntimeStatus

    def __init__(self, paths: Paths) -> None:
        super().__init__(paths, "uml")

    def mconsole(self, name: str) -> str:
        return str(self.path(name) / "mconsole")

    def clear_run(self, name: str) -> None:
        """What a previous run left: exit status, notify socket, the kernel's uml_dir entry."""
        for suffix in (".exit", ".notify"):
            self.path(name, suffix).unlink(missing_ok=True)
        shutil.rmtree(self.path(name), ignore_errors=True)

    def read_exit(self, name: str) -> int | None:
        try:
            return int(self.path(name, ".exit").read_text().strip())
        except (OSError, ValueError):
            return None
