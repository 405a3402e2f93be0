"""Host interface XML (<interface> of the interface driver): parse, format.

The canonical tree keeps what libvirt's src/conf/interface_conf.c writes:
``<start>``, ``<mtu>``, the ``<protocol>`` elements in their given order, then
what the interface type carries (a MAC address for ethernet, the
``<bridge>``, ``<bond>`` or ``<vlan>`` element with its member interfaces).
"""

from __future__ import annotations

import copy

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import TreeDef, format_libvirt, invalid_attr, missing_attr, parse_definition

_FROM = P.VIR_FROM_INTERFACE

TYPES = ("ethernet", "bridge", "bond", "vlan")
# Children written after start/mtu/protocol, per interface type.
_TYPE_CHILDREN = {"ethernet": ("mac", "link"), "bridge": ("bridge",), "bond": ("bond",),
                  "vlan": ("vlan",)}
_ATTR_ORDER = {"interface": ("type", "name"), "bridge": ("stp", "delay"),
               "ip": ("address", "prefix"), "bond": ("mode",), "vlan": ("tag",)}


class InterfaceDef(TreeDef):
    @property
    def name(self) -> str:
        return self.tree.get("name")

    @property
    def mac(self) -> str:
        mac = self.tree.find("mac")
        return "" if mac is None else mac.get("address", "")


def parse(text: str, *, validate_schema: bool = False) -> InterfaceDef:
    """A client's <interface>; ``validate_schema`` checks it against schemas/interface.rng."""
    root = parse_definition(text, "interface", what="interface_definition", domain=_FROM,
                            validate="interface" if validate_schema else None)
    return from_element(root)


def from_element(root: etree._Element, member: bool = False) -> InterfaceDef:
    itype = root.get("type")
    if itype is None:
        if member:
            itype = None
        else:
            raise missing_attr("type", "interface")
    elif itype not in TYPES:
        raise invalid_attr("type", "interface", itype)
    if not member and not root.get("name"):
        raise VirError(P.VIR_ERR_XML_ERROR, "interface has no name", domain=_FROM)
    return InterfaceDef(_canonical(root, itype))


def _canonical(root: etree._Element, itype: str | None) -> etree._Element:
    tree = etree.Element("interface")
    _set_attrs(tree, root.attrib)
    order = ("start", "mtu", "protocol") + _TYPE_CHILDREN.get(itype, ("mac",))
    for tag in order:
        for child in root.findall(tag):
            child = copy.deepcopy(child)
            for e in child.iter():
                if isinstance(e.tag, str) and e.tag != "interface":
                    items = dict(e.attrib)
                    e.attrib.clear()
                    _set_attrs(e, items)
            if tag in ("bridge", "bond", "vlan"):
                for i, sub in enumerate(child.findall("interface")):
                    sub.addprevious(_canonical(sub, sub.get("type")))
                    child.remove(sub)
            tree.append(child)
            if tag != "protocol":
                break
    return tree


def _set_attrs(elem: etree._Element, attrs) -> None:
    items = dict(attrs)
    for key in _ATTR_ORDER.get(elem.tag, ()):
        if key in items:
            elem.set(key, items.pop(key))
    for key, value in items.items():
        elem.set(key, value)


def format(ifdef: InterfaceDef) -> str:
    return format_libvirt(ifdef.tree)
