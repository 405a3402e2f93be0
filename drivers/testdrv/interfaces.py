"""Test driver: host interfaces, with libvirt's netcf-style change transactions.

A transaction (iface-begin) snapshots the definitions; rollback restores that
snapshot.  As in libvirt's test driver the snapshot keeps definitions only,
so every interface comes back inactive after a rollback.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import interface as ifxml
from .state import TEST_INTERFACE, TestState

LIST_ALL = TEST_INTERFACE.list_flags     # virConnectListAllInterfacesFlags
DEFINE_VALIDATE = P.InterfaceDefineFlags.VIR_INTERFACE_DEFINE_VALIDATE


@dataclass(eq=False)
class Interface:
    definition: ifxml.InterfaceDef
    active: bool = False

    @property
    def name(self) -> str:
        return self.definition.name

    def ref(self) -> P.remote_nonnull_interface:
        return P.remote_nonnull_interface(self.name, self.definition.mac)


def load_interfaces(state: TestState, elements: list[etree._Element]) -> None:
    """Interfaces of a node file start active."""
    for elem in elements:
        state.interfaces.add(Interface(ifxml.from_element(elem), active=True))


def _invalid() -> VirError:
    return VirError(P.VIR_ERR_OPERATION_INVALID, domain=P.VIR_FROM_TEST)


class InterfaceMixin:
    state: TestState

    def _iface(self, ref) -> Interface:
        return self.state.interfaces.by_ref(ref)      # by name: interfaces have no UUID

    # --- listing --------------------------------------------------------------

    def connect_num_of_interfaces(self) -> int:
        return self.state.interfaces.count(active=True)

    def connect_list_interfaces(self, maxnames: int) -> list[str]:
        return self.state.interfaces.list_names(True, maxnames)

    def connect_num_of_defined_interfaces(self) -> int:
        return self.state.interfaces.count(active=False)

    def connect_list_defined_interfaces(self, maxnames: int) -> list[str]:
        return self.state.interfaces.list_names(False, maxnames)

    def connect_list_all_interfaces(self, need_results: int, flags: int) -> tuple:
        check_flags(flags, LIST_ALL, "testConnectListAllInterfaces", P.VIR_FROM_TEST)
        ifaces = [i.ref() for i in self.state.interfaces.list_all(flags)]
        return (ifaces if need_results else [], len(ifaces))

    # --- lookup ---------------------------------------------------------------

    def interface_lookup_by_name(self, name: str) -> P.remote_nonnull_interface:
        return self.state.interfaces.by_name(name).ref()

    def interface_lookup_by_mac_string(self, mac: str) -> P.remote_nonnull_interface:
        matches = [i for i in self.state.interfaces
                   if i.definition.mac.lower() == mac.lower()]
        if not matches:
            raise VirError(P.VIR_ERR_NO_INTERFACE, f"no interface with matching mac '{mac}'",
                           domain=P.VIR_FROM_TEST)
        if len(matches) > 1:
            raise VirError(P.VIR_ERR_MULTIPLE_INTERFACES,
                           "multiple interfaces with matching MAC address",
                           domain=P.VIR_FROM_TEST)
        return matches[0].ref()

    # --- definition -----------------------------------------------------------

    def interface_get_xml_desc(self, ref, flags: int) -> str:
        check_flags(flags, 0, "testInterfaceGetXMLDesc", P.VIR_FROM_TEST)
        return ifxml.format(self._iface(ref).definition)

    def interface_define_xml(self, xml: str, flags: int) -> P.remote_nonnull_interface:
        check_flags(flags, DEFINE_VALIDATE, "testInterfaceDefineXML", P.VIR_FROM_TEST)
        ifdef = ifxml.parse(xml, validate_schema=bool(flags & DEFINE_VALIDATE))
        iface = self.state.interfaces.get(ifdef.name)
        if iface is None:
            iface = self.state.interfaces.add(Interface(ifdef))
        else:
            iface.definition = ifdef
        return iface.ref()

    def interface_undefine(self, ref) -> None:
        self.state.interfaces.remove(self._iface(ref))

    # --- lifecycle ------------------------------------------------------------

    def interface_create(self, ref, flags: int) -> None:
        check_flags(flags, 0, "testInterfaceCreate", P.VIR_FROM_TEST)
        iface = self._iface(ref)
        if iface.active:
            raise _invalid()
        iface.active = True

    def interface_destroy(self, ref, flags: int) -> None:
        check_flags(flags, 0, "testInterfaceDestroy", P.VIR_FROM_TEST)
        iface = self._iface(ref)
        if not iface.active:
            raise _invalid()
        iface.active = False

    def interface_is_active(self, ref) -> int:
        return int(self._iface(ref).active)

    # --- transactions ---------------------------------------------------------

    def interface_change_begin(self, flags: int) -> None:
        check_flags(flags, 0, "testInterfaceChangeBegin", P.VIR_FROM_TEST)
        if self.state.iface_backup is not None:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "there is another transaction running.",
                           domain=P.VIR_FROM_TEST)
        self.state.iface_backup = [i.definition.copy() for i in self.state.interfaces]

    def interface_change_commit(self, flags: int) -> None:
        check_flags(flags, 0, "testInterfaceChangeCommit", P.VIR_FROM_TEST)
        if self.state.iface_backup is None:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           "no transaction running, nothing to be committed.",
                           domain=P.VIR_FROM_TEST)
        self.state.iface_backup = None

    def interface_change_rollback(self, flags: int) -> None:
        check_flags(flags, 0, "testInterfaceChangeRollback", P.VIR_FROM_TEST)
        backup = self.state.iface_backup
        if backup is None:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           "no transaction running, nothing to rollback.",
                           domain=P.VIR_FROM_TEST)
        self.state.interfaces.clear()
        for ifdef in backup:
            self.state.interfaces.add(Interface(ifdef))
        self.state.iface_backup = None
