"""Test driver: node devices, including the mocked vHBA create/destroy.

libvirt's test driver creates a vHBA (NODE_DEVICE_CREATE_XML of a fibre
channel scsi_host) by copying the definition of ``scsi_host11`` under the
name ``scsi_host12`` with the requested WWNs; destroying an HBA removes it,
and destroying any other device succeeds without effect.  Define, undefine,
start, autostart, detach/reattach/reset and WWN lookup are not implemented
by the reference, so those methods are absent (VIR_ERR_NO_SUPPORT).
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import nodedev as ndxml
from .state import TestState

LIST_ALL_CAPS = (1 << 22) - 1
# virNodeDeviceEventLifecycleType.
EV_CREATED, EV_DELETED = 0, 1
CREATE_VALIDATE = 1     # VIR_NODE_DEVICE_CREATE_XML_VALIDATE
# What the mocked vHBA creation copies and calls the new device (test_driver.c).
VHBA_TEMPLATE, VHBA_NAME = "scsi_host11", "scsi_host12"


@dataclass(eq=False)
class NodeDevice:
    definition: ndxml.NodeDeviceDef

    @property
    def name(self) -> str:
        return self.definition.name

    def ref(self) -> P.remote_nonnull_node_device:
        return P.remote_nonnull_node_device(self.name)


def load_node_devices(state: TestState, elements: list[etree._Element]) -> None:
    for elem in elements:
        state.node_devices.add(NodeDevice(ndxml.from_element(elem)))


def _internal(detail: str) -> VirError:
    return VirError(P.VIR_ERR_INTERNAL_ERROR, detail, domain=P.VIR_FROM_NODEDEV)


class NodeDeviceMixin:
    state: TestState

    def _dev(self, name: str) -> NodeDevice:
        return self.state.node_devices.by_name(name)

    def _devices_with(self, cap: str | None) -> list[NodeDevice]:
        return [d for d in self.state.node_devices
                if cap is None or d.definition.has_cap(cap)]

    # --- listing --------------------------------------------------------------

    def node_num_of_devices(self, cap: str | None, flags: int) -> int:
        check_flags(flags, 0, "testNodeNumOfDevices", P.VIR_FROM_TEST)
        return len(self._devices_with(cap))

    def node_list_devices(self, cap: str | None, maxnames: int, flags: int) -> list[str]:
        check_flags(flags, 0, "testNodeListDevices", P.VIR_FROM_TEST)
        return [d.name for d in self._devices_with(cap)][:maxnames]

    def connect_list_all_node_devices(self, need_results: int, flags: int) -> tuple:
        check_flags(flags, LIST_ALL_CAPS, "testConnectListAllNodeDevices", P.VIR_FROM_TEST)
        devs = [d.ref() for d in self.state.node_devices.list_all(flags)]
        return (devs if need_results else [], len(devs))

    # --- one device -----------------------------------------------------------

    def node_device_lookup_by_name(self, name: str) -> P.remote_nonnull_node_device:
        return self._dev(name).ref()

    def node_device_get_xml_desc(self, name: str, flags: int) -> str:
        check_flags(flags, 0, "testNodeDeviceGetXMLDesc", P.VIR_FROM_TEST)
        return ndxml.format(self._dev(name).definition)

    def node_device_get_parent(self, name: str) -> str | None:
        return self._dev(name).definition.parent

    def node_device_num_of_caps(self, name: str) -> int:
        return len(self._dev(name).definition.caps)

    def node_device_list_caps(self, name: str, maxnames: int) -> list[str]:
        return self._dev(name).definition.caps[:maxnames]

    # --- vHBA create/destroy --------------------------------------------------

    def node_device_create_xml(self, xml: str, flags: int) -> P.remote_nonnull_node_device:
        check_flags(flags, CREATE_VALIDATE, "testNodeDeviceCreateXML", P.VIR_FROM_TEST)
        devdef = ndxml.parse(xml, validate_schema=bool(flags & CREATE_VALIDATE))
        wwns = devdef.wwns()
        if wwns is None:
            raise _internal("Device is not a fibre channel HBA")
        parent_name = devdef.parent
        if parent_name is not None:
            parent = self.state.node_devices.get(parent_name)
            if parent is None:
                raise _internal(f"Could not find parent device for '{devdef.name}'")
            if not parent.definition.has_cap("vports"):
                raise _internal(f"Parent device {parent_name} is not capable of vport operations")
        template = self.state.node_devices.get(VHBA_TEMPLATE)
        if template is None:
            raise _internal(f"Could not find parent device for '{devdef.name}'")
        newdef = template.definition.copy()
        newdef.name = VHBA_NAME
        newdef.set_wwns(*wwns)
        dev = self.state.node_devices.add(NodeDevice(newdef))
        self.state.events.emit("nodeDevice", P.VIR_NODE_DEVICE_EVENT_ID_LIFECYCLE, dev.ref(),
                               EV_CREATED, 0)
        return dev.ref()

    def node_device_destroy(self, name: str) -> None:
        dev = self._dev(name)
        if dev.definition.wwns() is None:
            return
        self.state.node_devices.remove(dev)
        self.state.events.emit("nodeDevice", P.VIR_NODE_DEVICE_EVENT_ID_LIFECYCLE, dev.ref(),
                               EV_DELETED, 0)
