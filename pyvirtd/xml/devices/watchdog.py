"""<watchdog>: i6300esb, ib700, itco with an action (virDomainWatchdogDef)."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pyvirtd.xml.devices._base import DeviceBase, enum_attr, set_attrs, unsupported, xml_error

MODELS = ("i6300esb", "ib700", "diag288", "itco")
ACTIONS = ("reset", "shutdown", "poweroff", "pause", "dump", "none", "inject-nmi")
# libvirt's action -> QEMU's -watchdog-action (dump is done by libvirt after a pause).
QEMU_ACTIONS = {"reset": "reset", "shutdown": "shutdown", "poweroff": "poweroff",
                "pause": "pause", "dump": "pause", "none": "none", "inject-nmi": "inject-nmi"}


@dataclass
class Watchdog(DeviceBase):
    model: str = "i6300esb"
    action: str | None = None

    @classmethod
    def parse(cls, elem: etree._Element) -> "Watchdog":
        if elem.get("model") is None:
            raise xml_error("watchdog must contain model name")
        w = cls(model=enum_attr(elem, "model", MODELS, what="watchdog model"),
                action=enum_attr(elem, "action", ACTIONS, what="watchdog action"))
        w._parse_common(elem, ())
        return w

    def fill_defaults(self, ctx: dict | None = None) -> None:
        if self.action is None:
            self.action = "reset"

    def validate(self, ctx: dict | None = None) -> None:
        if self.model == "diag288":
            raise unsupported("watchdog model 'diag288' is not supported on this architecture")
        if self.model == "itco" and ctx is not None and not ctx.get("q35"):
            raise unsupported("the itco watchdog device needs a q35 machine")

    def to_element(self) -> etree._Element:
        e = set_attrs(etree.Element("watchdog"), ("model", self.model), ("action", self.action))
        return self._format_common(e)
