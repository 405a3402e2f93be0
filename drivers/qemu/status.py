"""QEMU guests on disk: persistent definitions, autostart marks, runtime status.

Layout (the qemu driver's directories under the daemon's `Paths`, after
libvirt's /etc/libvirt/qemu and /run/libvirt/qemu):

    state_dir/qemu/NAME.xml              persistent definition (survives reboots)
    state_dir/qemu/autostart/NAME.xml    symlink to it: start NAME with the daemon
    run_dir/qemu/NAME.xml                runtime status of a running guest
    run_dir/qemu/NAME.monitor            QEMU's QMP socket
    run_dir/qemu/NAME.pid                QEMU's pidfile
    log_dir/qemu/NAME.log                QEMU's stdout/stderr (libvirt's log/qemu/NAME.log)
    state_dir/cache/qemu/                probed QEMU capabilities (caps.py)

The runtime status is libvirt's <domstatus> in spirit: the state and reason,
the QEMU pid, its monitor socket, the domain id and the files handed to the
QEMU user (<dac path=...>, restored when the guest stops), wrapped around the *live*
definition (with runtime facts such as pty paths).  It is written atomically
(temp file, fsync, rename, fsync of the directory) every time the runtime
state changes, so a daemon killed at any instant leaves either the old or the
new record and a restarted daemon reattaches to every guest.

The layout and the atomic writes are `pyvirtd.driver.store.DomainStatusStore`'s;
what is QEMU's own is the <domstatus> format and the per-guest paths.
Everything here is blocking file I/O: the driver calls it through
``trio.to_thread.run_sync`` (small files; the fsyncs are what costs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

from lxml import etree

from pyvirtd.driver.store import DomainStatus, DomainStatusStore
from pyvirtd.names import name_path
from pyvirtd.paths import Paths
from pyvirtd.xml import domain as domxml
from pyvirtd.xml import hardened_parser

from .dac import Label

_PARSER = hardened_parser()


@dataclass
class RuntimeStatus(DomainStatus):
    """What a restarted daemon needs to take a running guest over again."""
    pid: int = 0
    dom_id: int = 0
    monitor: str = ""
    labels: list[Label] = field(default_factory=list)   # files handed to QEMU's user (dac.py)

    @property
    def id(self) -> int:
        return self.dom_id


class StatusStore(DomainStatusStore):
    """The qemu driver's files for one daemon (see the module docstring)."""

    def __init__(self, paths: Paths) -> None:
        super().__init__(paths, "qemu")
        self.cache_dir = paths.state_dir / "cache" / "qemu"    # probed capabilities (caps.py)

    def dirs(self) -> list[Path]:
        return [*super().dirs(), self.cache_dir]

    # -- per-guest paths ------------------------------------------------------
    def monitor_path(self, name: str) -> Path:
        return self.path(name, ".monitor")

    def pid_path(self, name: str) -> Path:
        return self.path(name, ".pid")

    def log_path(self, name: str) -> Path:
        return self.path(name, ".log")

    def snapshot_dir(self, name: str) -> Path:
        """A guest's snapshot metadata (snapshots.py), libvirt's snapshot/DOMAIN/."""
        return name_path(self.config_dir / "snapshot", name)

    # -- runtime status: <domstatus> ------------------------------------------
    def encode_status(self, st: RuntimeStatus) -> str:
        live = domxml.format(st.definition, dom_id=st.id)
        return (f"<domstatus state='{st.state}' reason='{st.reason}' pid='{st.pid}' id='{st.id}'"
                f" persistent='{'yes' if st.persistent else 'no'}'>\n"
                f"  <monitor path='{st.monitor}'/>\n{_labels_xml(st.labels)}{live}</domstatus>\n")

    def decode_status(self, text: str) -> RuntimeStatus:
        root = etree.fromstring(text.encode(), _PARSER)
        d = domxml.parse_element(root.find("domain"))
        return RuntimeStatus(
            name=d.name, state=int(root.get("state")), reason=int(root.get("reason")),
            pid=int(root.get("pid")), dom_id=int(root.get("id")),
            monitor=root.find("monitor").get("path"), definition=d,
            persistent=root.get("persistent") == "yes",
            labels=[Label(e.get("path"), e.get("readonly") == "yes", e.get("orig"))
                    for e in root.findall("dac")])


def _labels_xml(labels: list[Label]) -> str:
    out = []
    for lab in labels:
        orig = f" orig={quoteattr(lab.orig)}" if lab.orig else ""
        out.append(f"  <dac path={quoteattr(lab.path)} readonly='{'yes' if lab.readonly else 'no'}'"
                   f"{orig}/>\n")
    return "".join(out)
