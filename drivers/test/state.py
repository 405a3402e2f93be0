"""The in-memory state of one test-driver instance (test:///default or a node file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyvirtd.events import EventBus
from pyvirtd.secrets.objects import SecretList


@dataclass
class NodeInfo:
    """What NODE_GET_INFO reports (virNodeInfo)."""
    model: str = "i686"
    memory: int = 3145728       # KiB
    cpus: int = 16
    mhz: int = 1400
    nodes: int = 2
    sockets: int = 2
    cores: int = 2
    threads: int = 2


@dataclass(eq=False)
class TestState:
    """Every object of one test-driver instance, shared by its connections.

    Object maps are keyed by name and keep definition order, which is the order
    libvirt's test driver lists them in.
    """
    node: NodeInfo = field(default_factory=NodeInfo)
    domains: dict[str, Any] = field(default_factory=dict)
    networks: dict[str, Any] = field(default_factory=dict)
    interfaces: dict[str, Any] = field(default_factory=dict)
    pools: dict[str, Any] = field(default_factory=dict)
    node_devices: dict[str, Any] = field(default_factory=dict)
    secrets: SecretList = field(default_factory=SecretList)
    events: EventBus = field(default_factory=EventBus)
    # Interface definitions saved by INTERFACE_CHANGE_BEGIN (None: no transaction).
    iface_backup: list | None = None
    next_domain_id: int = 1
    # CPUs the test driver reports as present (NODE_GET_CPU_MAP) and online.
    cpu_map_size: int = 8
    cpu_online: tuple = (0, 2, 4)

    def allocate_domain_id(self) -> int:
        dom_id = self.next_domain_id
        self.next_domain_id += 1
        return dom_id
