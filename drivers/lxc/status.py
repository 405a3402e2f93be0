"""LXC containers on disk: what a container's run keeps beside the shared layout.

    state_dir/lxc/NAME.xml              persistent definition
    state_dir/lxc/autostart/NAME.xml    symlink to it: start NAME with the daemon
    run_dir/lxc/NAME.json               runtime status of a running container
    run_dir/lxc/NAME.spec.json          what its controller was started with
    run_dir/lxc/NAME.sock               its controller's socket
    run_dir/lxc/NAME.exit               how init ended, written by the controller
    log_dir/lxc/NAME.log                the controller's log

The layout, the atomic writes and the JSON status are
`pyvirtd.driver.store.JsonStatusStore`'s; what is LXC's own is the status
fields (controller and init pids, cgroup directories, host-side veths) and
the controller's files.  Blocking file I/O: the driver calls it through a thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pyvirtd.driver.store import DomainStatus, JsonStatusStore
from pyvirtd.paths import Paths


@dataclass
class RuntimeStatus(DomainStatus):
    controller_pid: int = 0
    init_pid: int = 0
    cgroup: dict = field(default_factory=dict)
    veths: list = field(default_factory=list)   # host ends, removed when the container stops

    @property
    def id(self) -> int:
        """The domain's id: libvirt's LXC driver uses the controller's pid."""
        return self.controller_pid


class StatusStore(JsonStatusStore):
    status_class = RuntimeStatus
    run_files = (".spec.json", ".exit")

    def __init__(self, paths: Paths) -> None:
        super().__init__(paths, "lxc")

    def read_exit(self, name: str) -> str | None:
        try:
            return json.loads(self.path(name, ".exit").read_text()).get("reason")
        except (OSError, ValueError):
            return None
