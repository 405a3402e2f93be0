"""LXC driver connection: host procedures plus the domain ones (domains.py)."""

from __future__ import annotations

import os
import socket
from typing import Any

from pyvirtd import hostinfo
from pyvirtd.rpc import _generated as P

from .domains import DomainMixin
from .driver import LxcDriverState

_CAPS = """<capabilities>
  <host>
    <uuid>{uuid}</uuid>
    <cpu>
      <arch>{arch}</arch>
    </cpu>
  </host>
  <guest>
    <os_type>exe</os_type>
    <arch name='{arch}'>
      <wordsize>64</wordsize>
      <emulator>/usr/libexec/libvirt_lxc</emulator>
      <domain type='lxc'/>
    </arch>
  </guest>
</capabilities>
"""


def _meminfo_kib(key: str) -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class HostMixin:
    def connect_get_type(self) -> str:
        return "LXC"

    def connect_get_version(self) -> int:
        major, minor, *rest = (os.uname().release.split("-")[0].split(".") + ["0"])[:3]
        return int(major) * 1_000_000 + int(minor) * 1_000 + int(rest[0] or 0)

    def connect_get_hostname(self) -> str:
        return socket.gethostname()

    def connect_is_secure(self) -> int:
        return 1

    def connect_is_encrypted(self) -> int:
        return 0

    def connect_is_alive(self) -> int:
        return 1

    def connect_supports_feature(self, feature: int) -> int:
        return int(feature == P.VIR_DRV_FEATURE_TYPED_PARAM_STRING)

    def connect_get_capabilities(self) -> str:
        return _CAPS.format(arch=os.uname().machine,
                            uuid=self.driver.ctx.host_uuid or hostinfo.host_uuid())

    def node_get_info(self) -> tuple:
        cpus = os.cpu_count() or 1
        return (os.uname().machine.encode(), _meminfo_kib("MemTotal"), cpus, 0, 1, 1, cpus, 1)

    def node_get_free_memory(self) -> int:
        return _meminfo_kib("MemAvailable") * 1024

    def node_get_security_model(self) -> tuple:
        # no security driver: virsh lxc-enter-namespace then enters no label
        return (b"none\0", b"0\0")


class LxcConnection(HostMixin, DomainMixin):
    """One client's lxc:/// connection; methods are named after RPC procedures."""

    def __init__(self, driver: LxcDriverState, uri: str, subsystems: tuple[Any, ...]) -> None:
        self.driver = driver
        self.uri = uri
        self.events = driver.events
        self.subsystems = subsystems

    def close(self) -> None:
        pass
