"""The event bus (pyvirtd/events.py): registration, filtering, wire shapes, isolation."""

from __future__ import annotations

import pytest

from pyvirtd.errors import VirError
from pyvirtd.events import EVENT_SERIAL, EventBus
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from pyvirtd.rpc.xdr import decode

LIFECYCLE = P.VIR_DOMAIN_EVENT_ID_LIFECYCLE
REBOOT = P.VIR_DOMAIN_EVENT_ID_REBOOT
NET_LIFECYCLE = P.VIR_NETWORK_EVENT_ID_LIFECYCLE
PROCS = {p.number: p for p in P.PROCEDURES if p.program == "remote"}

DOM_A = P.remote_nonnull_domain("a", b"\x01" * 16, 1)
DOM_B = P.remote_nonnull_domain("b", b"\x02" * 16, 2)
NET = P.remote_nonnull_network("default", b"\x03" * 16)


class Sink:
    """A client's outbox: keeps every packet the bus queues for it."""

    def __init__(self) -> None:
        self.packets: list[frame.Packet] = []

    def send_event(self, data: bytes) -> None:
        reader = frame.FrameReader()
        reader.feed(bytes(data))
        self.packets += reader.packets()

    def messages(self) -> list[tuple[str, object]]:
        out = []
        for pkt in self.packets:
            proc = PROCS[pkt.header.proc]
            out.append((proc.name, decode(proc.unpack_msg, pkt.body)))
        return out


class Broken:
    def send_event(self, data: bytes) -> None:
        raise BrokenPipeError("client went away")


def test_callback_ids_count_per_object_kind() -> None:
    bus = EventBus()
    sink = Sink()
    assert bus.register(sink, "domain", LIFECYCLE) == 1
    assert bus.register(sink, "domain", REBOOT) == 2
    assert bus.register(sink, "network", NET_LIFECYCLE) == 1


def test_unknown_event_id_is_an_invalid_argument() -> None:
    with pytest.raises(VirError) as exc:
        EventBus().register(Sink(), "domain", 9999)
    assert exc.value.code == P.VIR_ERR_INVALID_ARG


def test_callback_message_carries_its_id_and_the_event() -> None:
    bus, sink = EventBus(), Sink()
    cb = bus.register(sink, "domain", LIFECYCLE)
    bus.emit("domain", LIFECYCLE, DOM_A, 2, 0)       # started, booted
    (pkt,) = sink.packets
    assert (pkt.header.type, pkt.header.serial, pkt.header.status) == (
        frame.MESSAGE, EVENT_SERIAL, frame.OK)
    ((name, msg),) = sink.messages()
    assert name == "DOMAIN_EVENT_CALLBACK_LIFECYCLE"
    assert msg.callbackID == cb
    assert (msg.msg.dom.name, msg.msg.event, msg.msg.detail) == ("a", 2, 0)


def test_legacy_registration_gets_the_legacy_message() -> None:
    bus, sink = EventBus(), Sink()
    bus.register(sink, "domain", LIFECYCLE, legacy=True)
    bus.emit("domain", LIFECYCLE, DOM_A, 5, 1)
    ((name, msg),) = sink.messages()
    assert name == "DOMAIN_EVENT_LIFECYCLE"
    assert (msg.dom.name, msg.event, msg.detail) == ("a", 5, 1)


def test_object_filter_and_event_id_filter() -> None:
    bus, only_b, every = EventBus(), Sink(), Sink()
    bus.register(only_b, "domain", LIFECYCLE, obj=DOM_B)
    bus.register(every, "domain", LIFECYCLE)
    bus.register(every, "network", NET_LIFECYCLE)
    bus.emit("domain", LIFECYCLE, DOM_A, 2, 0)
    bus.emit("domain", LIFECYCLE, DOM_B, 2, 0)
    bus.emit("domain", REBOOT, DOM_B)                # nobody asked for reboots
    bus.emit("network", NET_LIFECYCLE, NET, 2, 0)
    assert [m.msg.dom.name for _, m in only_b.messages()] == ["b"]
    names = [n for n, _ in every.messages()]
    assert names == ["DOMAIN_EVENT_CALLBACK_LIFECYCLE"] * 2 + ["NETWORK_EVENT_LIFECYCLE"]


def test_deregistration_and_a_vanished_client() -> None:
    bus, sink = EventBus(), Sink()
    cb = bus.register(sink, "domain", LIFECYCLE)
    bus.register(sink, "domain", REBOOT, legacy=True)
    assert bus.deregister(sink, "domain", cb)
    assert not bus.deregister(sink, "domain", cb)
    assert bus.deregister_legacy(sink, "domain", REBOOT)
    assert not bus.has_listeners("domain")
    bus.register(sink, "domain", LIFECYCLE)
    bus.register(sink, "network", NET_LIFECYCLE)
    bus.drop(sink)
    assert not bus.has_listeners("domain") and not bus.has_listeners("network")
    bus.emit("domain", LIFECYCLE, DOM_A, 2, 0)
    assert sink.packets == []


def test_a_broken_client_does_not_stop_delivery_to_the_others() -> None:
    bus, good = EventBus(), Sink()
    bus.register(Broken(), "domain", LIFECYCLE)
    bus.register(good, "domain", LIFECYCLE)
    bus.emit("domain", LIFECYCLE, DOM_A, 2, 0)
    assert len(good.packets) == 1
