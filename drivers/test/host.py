"""Connection and host procedures: type, version, hostname, node information."""

from __future__ import annotations

import socket

from pyvirtd.rpc import _generated as P

from .state import TestState

# The test driver reports hypervisor version 2.0.0 (virsh: "Running hypervisor: Test 2.0.0").
HYPERVISOR_VERSION = 2_000_000


class HostMixin:
    state: TestState
    uri: str

    def connect_get_type(self) -> str:
        return "Test"

    def connect_get_version(self) -> int:
        return HYPERVISOR_VERSION

    def connect_get_hostname(self) -> str:
        return socket.gethostname()

    def connect_is_secure(self) -> int:
        return 1

    def connect_is_encrypted(self) -> int:
        return 0

    def node_get_info(self) -> tuple:
        n = self.state.node
        return (n.model.encode(), n.memory, n.cpus, n.mhz, n.nodes, n.sockets, n.cores, n.threads)
