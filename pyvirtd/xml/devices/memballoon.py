"""<memballoon>: virtio or none (virDomainMemballoonDef)."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pyvirtd.xml.devices._base import (DeviceBase, enum_attr, int_attr, set_attrs, sub,
                                       unsupported, yesno, yesno_attr)

MODELS = ("virtio", "xen", "none", "virtio-transitional", "virtio-non-transitional")


@dataclass
class Memballoon(DeviceBase):
    model: str = "virtio"
    autodeflate: bool | None = None
    stats_period: int | None = None

    @classmethod
    def parse(cls, elem: etree._Element) -> "Memballoon":
        b = cls(model=enum_attr(elem, "model", MODELS, what="memory balloon model",
                                missing="balloon memory model must be specified"))
        b.autodeflate = yesno_attr(elem, "autodeflate", onoff=True)
        stats = elem.find("stats")
        if stats is not None:
            b.stats_period = int_attr(stats, "period")
        b._parse_common(elem, ("stats",))
        return b

    def fill_defaults(self, ctx: dict | None = None) -> None:
        pass

    def validate(self) -> None:
        if self.model in ("xen",):
            raise unsupported(f"Memory balloon device type '{self.model}' is not supported "
                              "by this version of qemu")

    def to_element(self) -> etree._Element:
        e = set_attrs(etree.Element("memballoon"), ("model", self.model),
                      ("autodeflate", None if self.autodeflate is None
                       else yesno(self.autodeflate, onoff=True)))
        if self.stats_period is not None:
            sub(e, "stats", ("period", self.stats_period))
        return self._format_common(e)
