"""Event bus: one per driver instance, fanning events out to registered clients.

A driver calls ``emit(kind, event_id, obj, *fields)`` whenever something
happens; every client that registered a callback for that kind and event id
(optionally filtered to one object) gets a MESSAGE packet.  Emitting never
blocks: packets go into each client's outbox, so a slow client cannot stall
the driver or the other clients.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame

log = logging.getLogger(__name__)

# Object kinds as the protocol facts name them (event_ids in libvirt-rpc.json).
KINDS = ("domain", "network", "storage", "nodeDevice", "secret")
# Server-sent event MESSAGEs carry serial 1 (remote_daemon_dispatch.c; trace).
EVENT_SERIAL = 1

_BY_NAME = {f"REMOTE_PROC_{p.name}": p for p in P.PROCEDURES if p.program == "remote"}


class EventSink(Protocol):
    """What the bus needs from a client: a non-blocking way to queue bytes."""

    def send_event(self, data: bytes) -> None: ...


@dataclass(eq=False)
class Registration:
    sink: EventSink
    kind: str
    event_id: int
    callback_id: int
    key: Any                # only events about this object (object_key), or None
    legacy: bool            # legacy style: no callbackID in the message


def _event_procedures(kind: str, event_id: int) -> tuple[Any, Any]:
    callback_name, legacy_name = P.EVENT_PROCEDURES[kind][event_id]
    return _BY_NAME[callback_name], _BY_NAME.get(legacy_name) if legacy_name else None


class EventBus:
    """Registrations and delivery of one driver instance's events."""

    def __init__(self) -> None:
        self._regs: dict[str, list[Registration]] = {k: [] for k in KINDS}
        self._ids = {k: itertools.count(1) for k in KINDS}

    def register(self, sink: EventSink, kind: str, event_id: int,
                 obj: Any = None, legacy: bool = False) -> int:
        """Add a callback, for every object or only ``obj``; returns its id.

        Ids are counted per object kind, as libvirt's are (trace: a network
        callback got id 1 while domain ids were in the forties).
        """
        if event_id not in P.EVENT_PROCEDURES[kind]:
            from pyvirtd.errors import invalid_arg
            raise invalid_arg(f"unsupported event ID {event_id}")
        reg = Registration(sink, kind, event_id, next(self._ids[kind]),
                           None if obj is None else object_key(obj), legacy)
        self._regs[kind].append(reg)
        return reg.callback_id

    def deregister(self, sink: EventSink, kind: str, callback_id: int) -> bool:
        regs = self._regs[kind]
        for i, reg in enumerate(regs):
            if reg.sink is sink and reg.callback_id == callback_id:
                del regs[i]
                return True
        return False

    def deregister_legacy(self, sink: EventSink, kind: str, event_id: int) -> bool:
        regs = self._regs[kind]
        for i, reg in enumerate(regs):
            if reg.sink is sink and reg.legacy and reg.event_id == event_id:
                del regs[i]
                return True
        return False

    def drop(self, sink: EventSink) -> None:
        """Forget every callback of a client that went away."""
        for kind, regs in self._regs.items():
            self._regs[kind] = [r for r in regs if r.sink is not sink]

    def has_listeners(self, kind: str) -> bool:
        return bool(self._regs[kind])

    def emit(self, kind: str, event_id: int, obj: Any, *fields: Any) -> None:
        """Deliver one event about ``obj`` (a remote_nonnull_* value) to its listeners."""
        regs = self._regs[kind]
        if not regs:
            return
        key = object_key(obj)
        callback_proc, legacy_proc = _event_procedures(kind, event_id)
        wrapped = callback_proc.pack_msg is not None and _is_wrapped(callback_proc)
        for reg in regs:
            if reg.event_id != event_id or (reg.key is not None and reg.key != key):
                continue
            if reg.legacy:
                if legacy_proc is None:
                    continue
                proc, body = legacy_proc, (obj, *fields)
            elif wrapped:
                proc, body = callback_proc, (reg.callback_id, (obj, *fields))
            else:
                proc, body = callback_proc, (reg.callback_id, obj, *fields)
            packet = frame.build(proc.prog, 1, proc.number, frame.MESSAGE, EVENT_SERIAL,
                                 frame.OK, proc.pack_msg, body)
            try:
                reg.sink.send_event(packet)
            except Exception:  # one broken client must not stop delivery to others
                log.exception("dropping event for a client")


def object_key(obj: Any) -> Any:
    """What identifies an object in a filter: its uuid, or its name (node devices)."""
    return getattr(obj, "uuid", None) or obj.name


_WRAPPED: dict[str, bool] = {}


def _is_wrapped(proc: Any) -> bool:
    """True when the callback message is {callbackID, legacy message struct}."""
    known = _WRAPPED.get(proc.name)
    if known is None:
        msg_type = getattr(P, proc.pack_msg.__name__[len("pack_"):])
        known = _WRAPPED[proc.name] = msg_type._fields == ("callbackID", "msg")
    return known
