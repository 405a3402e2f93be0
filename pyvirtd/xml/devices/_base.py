"""Shared pieces of the typed device models: attribute readers, errors, <address>/<alias>.

Every device module follows libvirt's phases (src/conf/domain_conf.c,
domain_postparse.c, domain_validate.c): ``X.parse(elem)`` reads one element
and refuses values libvirt refuses, ``x.fill_defaults(ctx)`` adds what libvirt
adds after parsing, ``x.validate()`` checks combinations, ``x.to_element()``
writes libvirt's layout (attribute and child order as libvirt prints them).
Children a model does not know are kept verbatim in ``extra`` and written back
after the modelled ones, so ``parse(format(x)) == x`` holds for any input.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Self

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P


def xml_error(detail: str) -> VirError:
    return VirError(P.VIR_ERR_XML_ERROR, detail, domain=P.VIR_FROM_DOMAIN)


def unsupported(detail: str) -> VirError:
    return VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, detail, domain=P.VIR_FROM_DOMAIN)


class NotRunnable(VirError):
    """A configuration libvirt's schema allows but pyvirtd's QEMU driver cannot
    run yet: the definition is accepted and kept, starting the guest fails."""


def not_runnable(detail: str) -> NotRunnable:
    return NotRunnable(P.VIR_ERR_CONFIG_UNSUPPORTED, detail, domain=P.VIR_FROM_DOMAIN)


def enum_attr(elem: etree._Element, name: str, values: Iterable[str], *,
              what: str, default: str | None = None, missing: str | None = None) -> str | None:
    """An attribute restricted to ``values``; libvirt's "unknown X 'v'" otherwise.

    ``what`` is libvirt's noun for the value (e.g. "disk bus type"); ``missing``,
    for a required attribute, libvirt's error when it is absent."""
    value = elem.get(name)
    if value is None:
        if missing is not None:
            raise xml_error(missing)
        return default
    if value not in values:
        raise xml_error(f"unknown {what} '{value}'")
    return value


def int_attr(elem: etree._Element, name: str, *, minimum: int = 0,
             default: int | None = None) -> int | None:
    """A non-negative (or >= minimum) integer attribute, decimal or 0x-hex as libvirt reads them."""
    value = elem.get(name)
    if value is None:
        return default
    try:
        number = int(value, 16) if value.lower().startswith("0x") else int(value, 10)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise xml_error(f"Invalid value for attribute '{name}' in element '{elem.tag}': '{value}'.")
    return number


def yesno_attr(elem: etree._Element, name: str, *, onoff: bool = False) -> bool | None:
    """A yes/no (or on/off) attribute -> bool, None when absent."""
    value = elem.get(name)
    if value is None:
        return None
    yes, no = ("on", "off") if onoff else ("yes", "no")
    if value == yes:
        return True
    if value == no:
        return False
    raise xml_error(f"Invalid value for attribute '{name}' in element '{elem.tag}': '{value}'.")


def yesno(value: bool, *, onoff: bool = False) -> str:
    if onoff:
        return "on" if value else "off"
    return "yes" if value else "no"


def set_attrs(elem: etree._Element, *pairs: tuple[str, object]) -> etree._Element:
    """Set attributes in the given order, skipping None values."""
    for key, value in pairs:
        if value is not None:
            elem.set(key, str(value))
    return elem


def sub(parent: etree._Element, tag: str, *pairs: tuple[str, object],
        text: str | None = None) -> etree._Element:
    child = set_attrs(etree.SubElement(parent, tag), *pairs)
    if text is not None:
        child.text = text
    return child


ADDRESS_TYPES = ("pci", "drive", "virtio-serial", "ccid", "usb", "spapr-vio", "virtio-s390",
                 "ccw", "virtio-mmio", "isa", "dimm", "unassigned")


@dataclass
class Address:
    """A device's <address>: its type plus the attributes, kept in input order."""
    type: str
    attrs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, elem: etree._Element) -> "Address":
        kind = elem.get("type")
        if kind is None:
            raise xml_error("No type specified for device address")
        if kind not in ADDRESS_TYPES:
            raise xml_error(f"unknown address type '{kind}'")
        attrs = {k: v for k, v in elem.attrib.items() if k != "type"}
        for key in ("domain", "bus", "slot", "function", "controller", "target", "unit", "port"):
            if key in attrs and kind != "usb":
                int_attr(elem, key)
        if kind == "pci" and "multifunction" in attrs:
            enum_attr(elem, "multifunction", ("on", "off"), what="pci address multifunction setting")
        return cls(kind, attrs)

    def int(self, key: str, default: int = 0) -> int:
        value = self.attrs.get(key)
        if value is None:
            return default
        return int(value, 16) if value.lower().startswith("0x") else int(value)

    def to_element(self) -> etree._Element:
        if self.type == "pci":       # libvirt's full form: every part, in hex
            width = {"domain": 4, "bus": 2, "slot": 2, "function": 1}
            attrs = {k: f"0x{self.int(k):0{w}x}" for k, w in width.items()}
            attrs.update((k, v) for k, v in self.attrs.items() if k not in width)
            return set_attrs(etree.Element("address"), ("type", self.type), *attrs.items())
        return set_attrs(etree.Element("address"), ("type", self.type), *self.attrs.items())


@dataclass
class DeviceBase:
    """What every device has: an optional <alias>, <address> and <boot order>, and
    the children this model does not interpret (kept verbatim)."""
    alias: str | None = field(default=None, kw_only=True)
    address: Address | None = field(default=None, kw_only=True)
    extra: list = field(default_factory=list, kw_only=True)
    # the element as parsed: what the model does not read is put back from it
    parsed: etree._Element | None = field(default=None, kw_only=True, compare=False,
                                          repr=False)

    # Children handled by DeviceBase itself.
    _COMMON = ("alias", "address")
    # Attributes the model may drop on purpose (libvirt's defaults remove them):
    # (child tag, or "" for the device element, attribute name)
    _OWNED: ClassVar[frozenset] = frozenset()

    def fill_defaults(self, ctx: dict | None = None) -> None:
        """libvirt's post-parse defaults for this device; most kinds have none."""

    def _parse_common(self, elem: etree._Element, modelled: Iterable[str]) -> None:
        known = set(modelled) | set(self._COMMON)
        self.parsed = copy.deepcopy(elem)
        for child in elem:
            if not isinstance(child.tag, str):
                continue
            if child.tag == "alias":
                self.alias = child.get("name")
            elif child.tag == "address":
                self.address = Address.parse(child)
            elif child.tag not in known:
                self.extra.append(copy.deepcopy(child))

    def _format_common(self, elem: etree._Element) -> etree._Element:
        """Append extras, alias and address after the modelled children (libvirt
        prints <alias> then <address> last)."""
        for child in self.extra:
            elem.append(copy.deepcopy(child))
        if self.alias is not None:
            sub(elem, "alias", ("name", self.alias))
        if self.address is not None:
            elem.append(self.address.to_element())
        if self.parsed is not None:
            keep_unread(elem, self.parsed, top=True, owned=self._OWNED)
        return elem


@dataclass
class AttributeDevice(DeviceBase):
    """A device its element's attributes describe alone (<input>, <watchdog>):
    parsed and written from ``ATTRS``, each attribute (a field of the same
    name) with its allowed values, libvirt's noun for it and, when required,
    libvirt's error for its absence."""
    TAG: ClassVar[str]
    ATTRS: ClassVar[tuple[tuple[str, tuple[str, ...], str, str | None], ...]]

    @classmethod
    def parse(cls, elem: etree._Element) -> Self:
        dev = cls(**{name: enum_attr(elem, name, values, what=what, missing=missing)
                     for name, values, what, missing in cls.ATTRS})
        dev._parse_common(elem, ())
        return dev

    def to_element(self) -> etree._Element:
        pairs = ((name, getattr(self, name)) for name, *_ in self.ATTRS)
        return self._format_common(set_attrs(etree.Element(self.TAG), *pairs))


def keep_unread(new: etree._Element, parsed: etree._Element, *, top: bool = False,
                owned: frozenset = frozenset(), path: str = "") -> None:
    """Put back into ``new`` what ``parsed`` had and the model did not write:
    attributes it lacks, and below the device element, children it lacks
    (matched by tag and rank), so that no attribute or element the user wrote
    disappears.  The device's own children are the model's business (unknown
    ones are kept in ``extra``)."""
    for key, value in parsed.attrib.items():
        if key not in new.attrib and (path, key) not in owned:
            new.set(key, value)
    seen: dict[str, int] = {}
    for child in parsed:
        if not isinstance(child.tag, str):
            continue
        rank = seen[child.tag] = seen.get(child.tag, -1) + 1
        mates = [c for c in new if c.tag == child.tag]
        if rank < len(mates):
            keep_unread(mates[rank], child, owned=owned, path=child.tag if top else path)
        elif not top:
            new.append(copy.deepcopy(child))
    if not top and not len(new) and (new.text or "").strip() == "" and (parsed.text or "").strip():
        new.text = parsed.text


def boot_order(elem: etree._Element) -> int | None:
    boot = elem.find("boot")
    if boot is None:
        return None
    if boot.get("order") is None:
        raise xml_error("missing boot order attribute")
    order = int_attr(boot, "order", minimum=1)
    return order
