"""A guest's console through python-libvirt, for the driver tests (LXC, UML).

``console_expect`` opens the console on a stream, types a line and reads
until the expected answer shows; it then finishes the stream as a console
client does.  The daemon relays the pty (pyvirtd/consoles.py).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


def console_expect(conn: Any, dom: Any, send: bytes, expect: bytes, timeout: float = 10, *,
                   repeat: bool = False) -> bytes:
    """What the console printed until ``expect`` showed (or ``timeout`` passed).

    ``repeat``: type the line again every second until the answer shows, for a
    shell that may still be starting when the console opens (UML's); not for a
    command with effects.
    """
    st = conn.newStream(0)
    dom.openConsole(None, st, 0)
    got = bytearray()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                data = st.recv(4096)
            except Exception:
                return
            if not isinstance(data, bytes) or not data:
                return
            got.extend(data)
            if expect in got:
                done.set()

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    st.send(send)
    while repeat and not done.is_set() and time.monotonic() < deadline:
        if not done.wait(1):
            st.send(send)
    done.wait(max(0.0, deadline - time.monotonic()))
    # finish ends the session as a console client does (an abort would be
    # confirmed too, since issue #11)
    closer = threading.Thread(target=lambda: quietly(st.finish), daemon=True)
    closer.start()
    closer.join(5)
    return bytes(got)


def quietly(fn: Callable[[], Any]) -> None:
    """Call ``fn`` ignoring what it raises (tearing down a stream the daemon may have ended)."""
    try:
        fn()
    except Exception:
        pass
