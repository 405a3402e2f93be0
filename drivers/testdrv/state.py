"""The in-memory state of one test-driver instance (test:///default or a node file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyvirtd.driver.objects import (DOMAIN, INTERFACE, NETWORK, NODE_DEVICE, STORAGE_POOL,
                                    ObjectList)
from pyvirtd.events import EventBus
from pyvirtd.rpc import _generated as P
from pyvirtd.secrets.objects import SecretList

# The object kinds as libvirt's test driver reports them: lookups and state
# errors from VIR_FROM_TEST, define conflicts from the kind's own conf code,
# names listed in definition order.
TEST_DOMAIN = DOMAIN.for_driver(P.VIR_FROM_TEST)
TEST_NETWORK = NETWORK.for_driver(P.VIR_FROM_TEST, sorted_names=False,
                                  transient_autostart=None)   # it takes autostart on any
TEST_POOL = STORAGE_POOL.for_driver(P.VIR_FROM_TEST, transient_autostart=(
    P.VIR_ERR_INVALID_ARG, "pool has no config file"))
TEST_INTERFACE = INTERFACE.for_driver(P.VIR_FROM_TEST)
TEST_NODE_DEVICE = NODE_DEVICE.for_driver(P.VIR_FROM_TEST)


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

    Object lists are keyed by name and keep definition order, which is the order
    libvirt's test driver lists them in.
    """
    node: NodeInfo = field(default_factory=NodeInfo)
    domains: ObjectList[Any] = field(default_factory=lambda: ObjectList(TEST_DOMAIN))
    networks: ObjectList[Any] = field(default_factory=lambda: ObjectList(TEST_NETWORK))
    interfaces: ObjectList[Any] = field(default_factory=lambda: ObjectList(TEST_INTERFACE))
    pools: ObjectList[Any] = field(default_factory=lambda: ObjectList(TEST_POOL))
    node_devices: ObjectList[Any] = field(default_factory=lambda: ObjectList(TEST_NODE_DEVICE))
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
