"""<sound>: emulated sound cards and their HDA codecs (virDomainSoundDef)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.xml.devices._base import (DeviceBase, enum_attr, int_attr, set_attrs, sub,
                                       unsupported, xml_error)

MODELS = ("sb16", "es1370", "pcspk", "ac97", "ich6", "ich9", "usb", "ich7", "virtio")
CODECS = ("duplex", "micro", "output")
# the models QEMU has a device for (virtio sound needs QEMU 8.2; pcspk is a machine property)
SUPPORTED = ("sb16", "es1370", "ac97", "ich6", "ich7", "ich9", "usb")
HDA = ("ich6", "ich7", "ich9")


@dataclass
class Sound(DeviceBase):
    model: str = "ich6"
    codecs: list = field(default_factory=list)     # codec types, in order
    audio_id: int | None = None                    # <audio id=.../>: the backend it plays to

    @classmethod
    def parse(cls, elem: etree._Element) -> "Sound":
        s = cls(model=enum_attr(elem, "model", MODELS, what="sound model",
                                missing="missing sound model"))
        for codec in elem.findall("codec"):
            s.codecs.append(enum_attr(codec, "type", CODECS, what="sound codec type",
                                      missing="missing type for sound codec"))
        audio = elem.find("audio")
        if audio is not None:
            s.audio_id = int_attr(audio, "id", minimum=1)
        s._parse_common(elem, ("codec", "audio"))
        return s

    def validate(self) -> None:
        if self.model not in SUPPORTED:
            raise unsupported(f"sound card model '{self.model}' is not supported by qemu")
        if self.codecs and self.model not in HDA:
            raise xml_error(f"sound codecs are only supported by HDA sound models, not "
                            f"'{self.model}'")

    def to_element(self) -> etree._Element:
        e = set_attrs(etree.Element("sound"), ("model", self.model))
        for codec in self.codecs:
            sub(e, "codec", ("type", codec))
        if self.audio_id is not None:
            sub(e, "audio", ("id", self.audio_id))
        return self._format_common(e)
