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

Everything here is blocking file I/O: the driver calls it through
``trio.to_thread.run_sync`` (small files; the fsyncs are what costs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.files import write_atomic
from pyvirtd.names import name_path
from pyvirtd.paths import Paths
from pyvirtd.xml import domain as domxml
from pyvirtd.xml import hardened_parser

from .dac import Label

log = logging.getLogger(__name__)

_PARSER = hardened_parser()


@dataclass
class RuntimeStatus:
    """What a restarted daemon needs to take a running guest over again."""
    name: str
    state: int
    reason: int
    pid: int
    id: int
    monitor: str
    definition: domxml.DomainDef      # the live definition
    persistent: bool
    labels: list[Label] = field(default_factory=list)   # files handed to QEMU's user (dac.py)


class StatusStore:
    """The qemu driver's files for one daemon (see the module docstring)."""

    def __init__(self, paths: Paths) -> None:
        self.config_dir = paths.state_dir / "qemu"
        self.autostart_dir = self.config_dir / "autostart"
        self.run_dir = paths.run_dir / "qemu"
        self.log_dir = paths.log_dir / "qemu"
        self.cache_dir = paths.state_dir / "cache" / "qemu"    # probed capabilities (caps.py)

    def ensure_dirs(self) -> None:
        for d in (self.config_dir, self.autostart_dir, self.run_dir, self.log_dir, self.cache_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- per-guest runtime paths ----------------------------------------------
    def monitor_path(self, name: str) -> Path:
        return name_path(self.run_dir, name, ".monitor")

    def pid_path(self, name: str) -> Path:
        return name_path(self.run_dir, name, ".pid")

    def log_path(self, name: str) -> Path:
        return name_path(self.log_dir, name, ".log")

    # -- persistent definitions -----------------------------------------------
    def snapshot_dir(self, name: str) -> Path:
        """A guest's snapshot metadata (snapshots.py), libvirt's snapshot/DOMAIN/."""
        return name_path(self.config_dir / "snapshot", name)

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
            return
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("..") / link.name)

    def is_autostart(self, name: str) -> bool:
        return name_path(self.autostart_dir, name, ".xml").is_symlink()

    def load_configs(self) -> list[domxml.DomainDef]:
        """Every persistent definition; an unreadable one is logged and skipped."""
        defs = []
        if not self.config_dir.is_dir():
            return defs
        for path in sorted(self.config_dir.glob("*.xml")):
            try:
                defs.append(domxml.parse(path.read_text()))
            except (OSError, VirError) as exc:
                log.error("skipping unreadable domain config %s: %s", path, exc)
        return defs

    # -- runtime status -------------------------------------------------------
    def save_status(self, st: RuntimeStatus) -> None:
        live = domxml.format(st.definition, dom_id=st.id)
        text = (f"<domstatus state='{st.state}' reason='{st.reason}' pid='{st.pid}' id='{st.id}'"
                f" persistent='{'yes' if st.persistent else 'no'}'>\n"
                f"  <monitor path='{st.monitor}'/>\n{_labels_xml(st.labels)}{live}</domstatus>\n")
        write_atomic(name_path(self.run_dir, st.name, ".xml"), text)

    def delete_status(self, name: str) -> None:
        name_path(self.run_dir, name, ".xml").unlink(missing_ok=True)

    def load_statuses(self) -> list[RuntimeStatus]:
        """Every runtime status record; a broken one is logged and removed."""
        out = []
        if not self.run_dir.is_dir():
            return out
        for path in sorted(self.run_dir.glob("*.xml")):
            try:
                root = etree.fromstring(path.read_bytes(), _PARSER)
                d = domxml.parse_element(root.find("domain"))
                out.append(RuntimeStatus(
                    name=d.name, state=int(root.get("state")), reason=int(root.get("reason")),
                    pid=int(root.get("pid")), id=int(root.get("id")),
                    monitor=root.find("monitor").get("path"), definition=d,
                    persistent=root.get("persistent") == "yes",
                    labels=[Label(e.get("path"), e.get("readonly") == "yes", e.get("orig"))
                            for e in root.findall("dac")]))
            except (OSError, ValueError, TypeError, AttributeError, etree.XMLSyntaxError,
                    VirError) as exc:
                log.error("dropping unreadable runtime status %s: %s", path, exc)
                path.unlink(missing_ok=True)
        return out


def _labels_xml(labels: list[Label]) -> str:
    out = []
    for lab in labels:
        orig = f" orig={quoteattr(lab.orig)}" if lab.orig else ""
        out.append(f"  <dac path={quoteattr(lab.path)} readonly='{'yes' if lab.readonly else 'no'}'"
                   f"{orig}/>\n")
    return "".join(out)
