"""<audio>: a host audio backend that sound cards and displays play to (virDomainAudioDef)."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pyvirtd.xml.devices._base import (DeviceBase, enum_attr, int_attr, not_runnable, set_attrs,
                                       unsupported)

TYPES = ("none", "alsa", "coreaudio", "jack", "oss", "pulseaudio", "sdl", "spice", "file",
         "dbus", "pipewire")
# the backends QEMU 7.2 has on Linux (pipewire came with QEMU 8.1)
SUPPORTED = ("none", "spice", "file", "alsa", "oss", "pulseaudio", "sdl", "jack", "dbus")


@dataclass
class Audio(DeviceBase):
    id: int = 1
    type: str = "none"
    path: str | None = None            # type='file'

    @classmethod
    def parse(cls, elem: etree._Element) -> "Audio":
        a = cls(id=int_attr(elem, "id", minimum=1) or 0,
                type=enum_attr(elem, "type", TYPES, what="audio type", default="none"))
        a.path = elem.get("path")
        a._parse_common(elem, ())
        return a

    def validate(self) -> None:
        if self.id < 1:
            raise unsupported("audio backend id must be positive")
        if self.type not in SUPPORTED:
            raise not_runnable(f"audio type '{self.type}' is not supported")

    def to_element(self) -> etree._Element:
        e = set_attrs(etree.Element("audio"), ("id", self.id), ("type", self.type),
                      ("path", self.path))
        return self._format_common(e)
