"""One client's connection to a test-driver state: all the mixins together."""

from __future__ import annotations

from .host import HostMixin
from .state import TestState


class TestConnection(HostMixin):
    """Methods are named after RPC procedures; see pyvirtd/driver/__init__.py."""

    def __init__(self, state: TestState, uri: str) -> None:
        self.state = state
        self.uri = uri
        self.events = state.events

    def close(self) -> None:
        pass
