"""<video>: vga, cirrus, qxl, virtio, none (virDomainVideoDef)."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pyvirtd.xml.devices._base import (DeviceBase, int_attr, sub, unsupported,
                                       xml_error, yesno, yesno_attr)

MODELS = ("default", "vga", "cirrus", "vmvga", "xen", "vbox", "qxl", "parallels", "virtio",
          "gop", "none", "bochs", "ramfb")
# QEMU devices for the primary (VGA-compatible) and secondary heads.
PRIMARY = {"vga": "VGA", "cirrus": "cirrus-vga", "qxl": "qxl-vga", "virtio": "virtio-vga",
           "bochs": "bochs-display", "vmvga": "vmware-svga", "ramfb": "ramfb"}
SECONDARY = {"qxl": "qxl", "virtio": "virtio-gpu-pci", "bochs": "bochs-display"}
# Default video RAM in KiB per model (virDomainVideoDefaultRAM).
DEFAULT_VRAM = {"vga": 16384, "cirrus": 16384, "vmvga": 16384, "qxl": 65536, "bochs": 16384}


@dataclass
class Video(DeviceBase):
    model: str = "default"
    vram: int | None = None
    ram: int | None = None                # qxl
    vgamem: int | None = None             # qxl
    heads: int | None = None
    primary: bool | None = None

    @classmethod
    def parse(cls, elem: etree._Element) -> "Video":
        v = cls()
        m = elem.find("model")
        if m is not None:
            kind = m.get("type")
            if kind is None:
                raise xml_error("missing video model type")
            if kind not in MODELS:
                raise xml_error(f"unknown video model '{kind}'")
            v.model = kind
            v.vram = int_attr(m, "vram")
            v.ram = int_attr(m, "ram")
            v.vgamem = int_attr(m, "vgamem")
            v.heads = int_attr(m, "heads", minimum=1)
            v.primary = yesno_attr(m, "primary")
        v._parse_common(elem, ("model",))
        return v

    def fill_defaults(self, ctx: dict | None = None) -> None:
        if self.model == "default":
            self.model = "cirrus"          # x86 QEMU with cirrus-vga, as libvirt picks
        if self.model == "none":
            return
        if self.vram is None and self.model in DEFAULT_VRAM:
            self.vram = DEFAULT_VRAM[self.model]
        if self.model == "qxl":
            self.ram = self.ram or 65536
            self.vgamem = self.vgamem or 16384
        if self.heads is None:
            self.heads = 1

    def validate(self) -> None:
        if self.model not in PRIMARY and self.model not in ("none", "default"):
            raise unsupported(f"video type '{self.model}' is not supported")

    def to_element(self) -> etree._Element:
        e = etree.Element("video")
        sub(e, "model", ("type", self.model), ("ram", self.ram), ("vram", self.vram),
            ("vgamem", self.vgamem), ("heads", self.heads),
            ("primary", None if self.primary is None else yesno(self.primary)))
        return self._format_common(e)
