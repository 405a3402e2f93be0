"""The ``test`` driver: libvirt's test:///default, served by pyvirtd.

It needs no hypervisor: every object lives in memory.  ``test:///default``
is one shared state for all connections of the daemon, built from
default.xml; ``test:///PATH.xml`` gives each connection a private state
loaded from a node description in libvirt's test-driver format.  It is the
reference implementation of the driver interface: read it first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import SplitResult

from pyvirtd.driver import DriverContext
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

from .connection import TestConnection
from .node import load_node
from .state import TestState

DEFAULT_NODE = Path(__file__).with_name("default.xml")


class TestDriver:
    name = "test"
    schemes = ("test",)

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self._default: TestState | None = None

    def probe(self) -> str | None:
        return None

    def default_state(self) -> TestState:
        if self._default is None:
            self._default = load_node(DEFAULT_NODE)
        return self._default

    def open(self, uri: SplitResult, name: str, flags: int, client: Any) -> TestConnection:
        path = uri.path
        if not path or path == "/":
            raise VirError(P.VIR_ERR_INVALID_ARG, "testOpen: supply a path or use test:///default",
                           domain=P.VIR_FROM_TEST)
        if path == "/default":
            return TestConnection(self.default_state(), "test:///default")
        try:
            state = load_node(Path(path))
        except OSError as exc:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"failed to load {path}: {exc.strerror}",
                           domain=P.VIR_FROM_TEST) from None
        return TestConnection(state, f"test://{path}")
