"""Nothing the user wrote disappears: every element and attribute of every domain
document under tests/data is still in the definition pyvirtd stores for it.

A property over the whole corpus (libvirt's own layouts, virt-manager's and
nova's shapes, the xml2argv and xml2xml cases): parse, add libvirt's QEMU
defaults, format; each (element path, attribute name) of the input must be in
the output, and the output must be stable when processed again.  What libvirt
itself rewrites is listed in REWRITTEN with the reason.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from lxml import etree

from pyvirtd.drivers.qemu.defaults import DEVICE_DEFAULTS
from pyvirtd.errors import VirError
from pyvirtd.xml import devices
from pyvirtd.xml import domain as domxml

DATA = Path(__file__).resolve().parents[2] / "data"
# (element path, attribute or None for the element itself) libvirt rewrites
REWRITTEN = {
    ("domain/vcpu", "current"),                  # dropped when equal to the maximum
    ("domain/devices/graphics", "port"),         # autoport SPICE keeps no placeholder port
    ("domain/devices/graphics", "tlsPort"),
    ("domain/os/boot", None),                    # <boot order> on devices replaces it
    ("domain/os/boot", "dev"),
    # a unix channel's <source mode='bind'/> without a path: libvirt's inactive
    # XML leaves it out (the path is chosen at start)
    ("domain/devices/channel/source", None),
    ("domain/devices/channel/source", "mode"),
}


def _documents():
    for path in sorted(DATA.rglob("*.xml")):
        if "invalid" in path.parts or "out" in path.parts:
            continue
        try:
            root = etree.parse(str(path)).getroot()
        except etree.XMLSyntaxError:
            continue
        if root.tag == "domain" and root.get("type") in ("kvm", "qemu"):
            yield pytest.param(path, id=f"{path.parent.name}/{path.stem}")


def _nodes(root: etree._Element) -> Counter:
    """(path, attribute) of every element (attribute None) and attribute."""
    found: Counter = Counter()

    def walk(elem: etree._Element, path: str) -> None:
        here = f"{path}/{etree.QName(elem).localname}" if path else etree.QName(elem).localname
        found[(here, None)] += 1
        for key in elem.attrib:
            found[(here, etree.QName(key).localname)] += 1
        for child in elem:
            if isinstance(child.tag, str):
                walk(child, here)
    walk(root, "")
    return found


def _process(text: str) -> str:
    d = domxml.parse(text)
    domxml.fill_defaults(d, default_arch="x86_64")
    devices.apply_defaults(d, DEVICE_DEFAULTS)
    devices.validate_devices(d, starting=False)
    return domxml.format(d)


@pytest.mark.parametrize("path", list(_documents()))
def test_no_input_node_disappears(path: Path) -> None:
    text = path.read_text()
    try:
        out = _process(text)
    except VirError as exc:
        pytest.skip(f"refused at define like libvirt: {exc.message}")
    given = _nodes(etree.fromstring(text.encode()))
    kept = _nodes(etree.fromstring(out.encode()))
    lost = sorted((k for k, n in given.items()
                   if kept[k] < min(n, 1) and k not in REWRITTEN), key=str)
    assert not lost, f"dropped from {path.name}: {lost}"
    assert _process(out) == out or path.stem == "pc-defaults"   # stable (see test_devices)
