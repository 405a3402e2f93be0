"""UML's management console: the datagram protocol of arch/um/drivers/mconsole.h.

A request is (magic, version 2, length, 512 bytes of text) sent to the
guest's ``mconsole`` socket from a socket bound to an address of our own
(the kernel answers to the sender); a reply is (error, more, length, 512
bytes) and long answers come in several replies with ``more`` set.  The
kernel also sends notifications, (magic, version, type, length, text), to
the socket named by ``mconsole=notify:PATH``: type 0 when its mconsole
socket is ready (after boot and after each reboot, which re-executes the
kernel), 1 on a panic.  Commands used: version, config conN, cad, halt,
reboot, stop, go.  Our own code after the header's layout.
"""

from __future__ import annotations

import os
import socket
import struct

import trio

MAGIC = 0xCAFEBABE
VERSION = 2
DATA = 512
REQUEST = struct.Struct(f"=III{DATA}s")
REPLY = struct.Struct(f"=III{DATA}s")
NOTIFY = struct.Struct(f"=IIII{DATA}s")
NOTIFY_SOCKET, NOTIFY_PANIC, NOTIFY_HANG, NOTIFY_USER = 0, 1, 2, 3
# A stopped (suspended) kernel still answers; a busy one within this time.
REPLY_TIMEOUT = 10.0


class MconsoleError(Exception):
    """The guest refused a command (its error text), or did not answer."""


async def command(path: str, text: str, timeout: float = REPLY_TIMEOUT) -> str:
    """Send one command to the mconsole socket at ``path``; its whole answer."""
    if len(text) >= DATA:
        raise MconsoleError("command too long")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        # an abstract address of our own: the kernel answers to the sender
        await sock.bind(f"\0pyvirtd-uml-{os.getpid()}-{id(sock):x}-{os.urandom(4).hex()}")
        req = REQUEST.pack(MAGIC, VERSION, len(text), text.encode())
        try:
            await sock.sendto(req, path)
        except OSError as exc:
            raise MconsoleError(f"cannot reach {path}: {exc.strerror}") from None
        parts = []
        with trio.move_on_after(timeout) as scope:
            while True:
                data = await sock.recv(REPLY.size)
                err, more, length, body = REPLY.unpack(data.ljust(REPLY.size, b"\0"))
                parts.append(body[:length].split(b"\0", 1)[0].decode(errors="replace"))
                if err:
                    raise MconsoleError("".join(parts).strip() or f"error {err}")
                if not more:
                    break
        if scope.cancelled_caught:
            raise MconsoleError(f"no answer from {path}")
        return "".join(parts)


def parse_notify(data: bytes) -> tuple[int, str] | None:
    """(type, text) of a notification, or None if it is not one."""
    if len(data) < NOTIFY.size - DATA:
        return None
    magic, version, kind, length, body = NOTIFY.unpack(data.ljust(NOTIFY.size, b"\0"))
    if magic != MAGIC:
        return None
    return kind, body[:length].decode(errors="replace")
