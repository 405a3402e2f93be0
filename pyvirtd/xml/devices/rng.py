"""<rng>: virtio RNG backed by a host random device (virDomainRNGDef)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.xml.devices._base import (DeviceBase, enum_attr, int_attr, not_runnable, set_attrs,
                                       sub, unsupported, xml_error)

MODELS = ("virtio", "virtio-transitional", "virtio-non-transitional")
BACKENDS = ("random", "egd", "builtin")
DEFAULT_SOURCE = "/dev/random"      # libvirt 9.0's default for backend random


@dataclass
class Rng(DeviceBase):
    model: str = "virtio"
    backend: str = "random"
    source: str | None = None             # random: host device path
    rate_bytes: int | None = None
    rate_period: int | None = None
    egd_type: str | None = None           # egd: the chardev type of its daemon (tcp, unix, ...)
    egd_sources: list = field(default_factory=list)   # egd: attribute dicts of each <source>

    @classmethod
    def parse(cls, elem: etree._Element) -> "Rng":
        r = cls(model=enum_attr(elem, "model", MODELS, what="RNG model",
                                missing="missing RNG device model"))
        be = elem.find("backend")
        if be is None:
            raise xml_error("missing RNG device backend")
        r.backend = enum_attr(be, "model", BACKENDS, what="RNG backend model",
                              missing="missing RNG device backend model")
        if r.backend == "random":
            r.source = (be.text or "").strip() or None
        elif r.backend == "egd":
            if be.get("type") is None:
                raise xml_error("missing EGD backend type")
            r.egd_type = be.get("type")
            r.egd_sources = [dict(src.attrib) for src in be.findall("source")]
        rate = elem.find("rate")
        if rate is not None:
            r.rate_bytes = int_attr(rate, "bytes")
            r.rate_period = int_attr(rate, "period")
        r._parse_common(elem, ("backend", "rate"))
        return r

    def fill_defaults(self, ctx: dict | None = None) -> None:
        if self.backend == "random" and self.source is None:
            self.source = DEFAULT_SOURCE

    def validate(self) -> None:
        if self.backend == "egd" and self.egd_type not in ("tcp", "unix", "udp"):
            raise not_runnable(f"RNG egd backend type '{self.egd_type}' is not supported")
        if self.backend == "random" and self.source not in ("/dev/random", "/dev/urandom",
                                                            "/dev/hwrng"):
            raise unsupported(f"file '{self.source}' is not a supported random source")

    def to_element(self) -> etree._Element:
        e = set_attrs(etree.Element("rng"), ("model", self.model))
        if self.rate_bytes is not None:
            sub(e, "rate", ("bytes", self.rate_bytes), ("period", self.rate_period))
        be = sub(e, "backend", ("model", self.backend), ("type", self.egd_type),
                 text=self.source)
        for source in self.egd_sources:
            sub(be, "source", *source.items())
        return self._format_common(e)
