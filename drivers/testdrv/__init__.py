"""The ``test`` driver: libvirt's test:///default, served by pyvirtd.

It needs no hypervisor: every object lives in memory.  ``test:///default``
is one shared state for all connections of the daemon, built from
default.xml; ``test:///PATH.xml`` gives each connection a private state
loaded from a node description in libvirt's test-driver format.  It is the
reference implementation of the driver interface: read it first.

A custom file is read by the daemon, as root, for a client: so it is read
off the event loop, only when it is a regular file of sane size (a FIFO
would block the reader forever, a device could react to being opened), only
for read-write clients (a read-only client must not make root read files for
it), and every failure is the same message naming the path, never a line of
the file (libvirtd 9.0 echoes the offending line of any root-readable file).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult

import trio
from lxml import etree

from pyvirtd.driver import DriverContext
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

from .connection import TestConnection
from .node import load_node, node_state
from .state import TestState

log = logging.getLogger(__name__)

DEFAULT_NODE = Path(__file__).with_name("default.xml")
CONNECT_RO = 1      # virConnectFlags: the connection is read-only
# A node file describes a handful of objects; anything bigger is not one.
MAX_NODE_FILE = 16 * 1024 * 1024
_NODE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)


class _Unusable(Exception):
    """Why a custom node file cannot be used (for the daemon's log only)."""


def _read_node_file(path: str) -> bytes:
    """A regular file's bytes, without ever blocking on a FIFO or opening a device."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _Unusable("not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Unusable(exc.strerror) from None
    try:
        st = os.fstat(fd)                # the file opened, not one swapped in meanwhile
        if not stat.S_ISREG(st.st_mode):
            raise _Unusable("not a regular file")
        if not 0 < st.st_size <= MAX_NODE_FILE:   # pseudo-files (/proc) say 0
            raise _Unusable(f"size {st.st_size}")
        data = os.read(fd, MAX_NODE_FILE + 1)
    except OSError as exc:
        raise _Unusable(exc.strerror) from None
    finally:
        os.close(fd)
    if len(data) > MAX_NODE_FILE:
        raise _Unusable("grew too large while read")
    return data


def _load_custom(path: str) -> TestState:
    data = _read_node_file(path)
    try:
        root = etree.fromstring(data, _NODE_PARSER)
    except etree.XMLSyntaxError as exc:
        raise _Unusable(f"not XML (line {exc.lineno})") from None
    if root.tag != "node":
        raise _Unusable("its root element is not <node>")
    return node_state(root)


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

    async def open(self, uri: SplitResult, name: str, flags: int, client: Any) -> TestConnection:
        path = uri.path
        if not path or path == "/":
            raise VirError(P.VIR_ERR_INVALID_ARG, "testOpen: supply a path or use test:///default",
                           domain=P.VIR_FROM_TEST)
        if path == "/default":
            return TestConnection(self.default_state(), "test:///default")
        if flags & CONNECT_RO:
            raise VirError(P.VIR_ERR_OPERATION_DENIED,
                           "read only access prevents loading a test driver file",
                           domain=P.VIR_FROM_TEST)
        try:
            # abandoned on cancel: a file system that hangs keeps a thread, not the client
            state = await trio.to_thread.run_sync(_load_custom, path, abandon_on_cancel=True)
        except Exception as exc:
            # whatever went wrong (a bad object inside a <node> too: its detail
            # may quote the file) goes to the log; the client gets the path only
            log.info("test driver file %s refused: %s", path, exc)
            raise VirError(P.VIR_ERR_XML_ERROR, f"failed to parse xml document '{path}'",
                           domain=P.VIR_FROM_TEST) from None
        return TestConnection(state, f"test://{path}")
