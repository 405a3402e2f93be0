"""Node device XML (<device>): parse, format, and the capability queries drivers need.

The canonical tree keeps libvirt's element order (src/conf/node_device_conf.c
virNodeDeviceDefFormat): name, path, devnode, parent, driver, then the
capabilities.  Capability contents round-trip as given.
"""

from __future__ import annotations

import copy

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import TreeDef, format_libvirt, parse_definition

_FROM = P.VIR_FROM_NODEDEV

CHILD_ORDER = ("name", "path", "devnode", "parent", "driver", "capability")

# virConnectListAllNodeDeviceFlags bits by capability name (libvirt-nodedev.h);
# "fc_host" and "vports" are sub-capabilities of scsi_host.
CAP_FLAGS = {"system": 1 << 0, "pci": 1 << 1, "usb_device": 1 << 2, "usb": 1 << 3,
             "net": 1 << 4, "scsi_host": 1 << 5, "scsi_target": 1 << 6, "scsi": 1 << 7,
             "storage": 1 << 8, "fc_host": 1 << 9, "vports": 1 << 10,
             "scsi_generic": 1 << 11, "drm": 1 << 12, "mdev_types": 1 << 13, "mdev": 1 << 14,
             "ccw": 1 << 15, "css": 1 << 16, "vdpa": 1 << 17, "ap_card": 1 << 18,
             "ap_queue": 1 << 19, "ap_matrix": 1 << 20, "vpd": 1 << 21}


class NodeDeviceDef(TreeDef):
    @property
    def name(self) -> str:
        return self.tree.findtext("name")

    @name.setter
    def name(self, value: str) -> None:
        self.tree.find("name").text = value

    @property
    def parent(self) -> str | None:
        return self.tree.findtext("parent")

    @property
    def caps(self) -> list[str]:
        """Top-level capability types (what NODE_DEVICE_LIST_CAPS reports)."""
        return [c.get("type") for c in self.tree.findall("capability")]

    def has_cap(self, cap: str) -> bool:
        """Whether a listing filter for ``cap`` matches (sub-capabilities included)."""
        if cap in self.caps:
            return True
        scsi = self.tree.find("capability[@type='scsi_host']")
        if scsi is None:
            return False
        if cap == "fc_host":
            return scsi.find("capability[@type='fc_host']") is not None
        if cap == "vports":
            return scsi.find("capability[@type='vport_ops']") is not None
        return False

    def wwns(self) -> tuple[str, str] | None:
        """(wwnn, wwpn) of a fibre channel HBA, else None."""
        fc = self.tree.find("capability[@type='scsi_host']/capability[@type='fc_host']")
        if fc is None or not fc.findtext("wwnn") or not fc.findtext("wwpn"):
            return None
        return fc.findtext("wwnn").strip(), fc.findtext("wwpn").strip()

    def set_wwns(self, wwnn: str, wwpn: str) -> None:
        fc = self.tree.find("capability[@type='scsi_host']/capability[@type='fc_host']")
        fc.find("wwnn").text = wwnn
        fc.find("wwpn").text = wwpn


def parse(text: str, *, validate_schema: bool = False) -> NodeDeviceDef:
    """A client's <device> to create; ``validate_schema`` checks it against schemas/nodedev.rng."""
    root = parse_definition(text, "device", what="node_device_definition", domain=_FROM,
                            validate="nodedev" if validate_schema else None)
    return from_element(root, creating=True)


def from_element(root: etree._Element, creating: bool = False) -> NodeDeviceDef:
    tree = etree.Element("device")
    for tag in CHILD_ORDER:
        for child in root.findall(tag):
            tree.append(copy.deepcopy(child))
            if tag != "capability":
                break
    if tree.find("name") is None:
        if not creating:
            raise VirError(P.VIR_ERR_XML_ERROR, "missing name for device", domain=_FROM)
        etree.SubElement(tree, "name").text = "new device"
        tree.insert(0, tree[-1])
    if not tree.findall("capability"):
        raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                       f"no device capabilities for '{tree.findtext('name')}'", domain=_FROM)
    for cap in tree.findall("capability"):
        if cap.get("type") == "system" and cap.find("hardware/uuid") is None:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"no system UUID supplied for '{tree.findtext('name')}'",
                           domain=_FROM)
    return NodeDeviceDef(tree)


def format(devdef: NodeDeviceDef) -> str:
    return format_libvirt(devdef.tree)
