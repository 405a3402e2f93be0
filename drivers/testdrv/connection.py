"""One client's connection to a test-driver state: all the mixins together."""

from __future__ import annotations

from .domains import DomainMixin
from .host import HostMixin
from .interfaces import InterfaceMixin
from .networks import NetworkMixin
from .nodedevs import NodeDeviceMixin
from .secrets import SecretMixin
from .snapshots import SnapshotMixin
from .state import TestState
from .stats import StatsMixin
from .storage import StorageMixin


class TestConnection(HostMixin, DomainMixin, SnapshotMixin, NetworkMixin, StorageMixin, InterfaceMixin,
                     NodeDeviceMixin, SecretMixin, StatsMixin):
    """Methods are named after RPC procedures; see pyvirtd/driver/__init__.py."""

    def __init__(self, state: TestState, uri: str) -> None:
        self.state = state
        self.uri = uri
        self.events = state.events

    def close(self) -> None:
        pass
