"""Virtual network XML (<network>): parse, fill in defaults, format, update sections.

The model is the definition's element tree put into libvirt's canonical
shape: only the elements libvirt knows, in the order its formatter writes
them (src/conf/network_conf.c virNetworkDefFormatBuf), attributes in its
order, with the defaults it fills in.  Drivers read the few fields they need
through `NetworkDef`'s properties; everything else round-trips unchanged, so
the real network driver can grow on the same model.
"""

from __future__ import annotations

import copy

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.names import check_name
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import (TreeDef, format_libvirt, format_uuid, fromstring, new_uuid,
                         parse_definition)

_FROM = P.VIR_FROM_NETWORK

# Children of <network> in the order libvirt writes them; others are dropped,
# as libvirt's parser ignores elements it does not know.
CHILD_ORDER = ("name", "uuid", "title", "description", "metadata", "forward", "bridge", "mtu",
               "mac", "domain", "dns", "vlan", "bandwidth", "ip", "route", "virtualport",
               "portgroup")

# Attribute order per element tag, where libvirt's differs from arbitrary input.
ATTR_ORDER = {
    "network": ("connections", "ipv6", "trustGuestRxFilters"),
    "forward": ("dev", "mode", "managed", "trustGuestRxFilters"),
    "bridge": ("name", "zone", "stp", "delay", "macTableManager"),
    "ip": ("family", "address", "netmask", "prefix", "localPtr"),
    "range": ("start", "end"),
    "host": ("mac", "id", "name", "ip"),
    "domain": ("name", "localOnly", "register"),
}
IP_CHILD_ORDER = ("tftp", "dhcp")
DHCP_CHILD_ORDER = ("range", "host", "bootp")

# Forward modes for which libvirt manages the bridge and so writes stp/delay.
_MANAGED_BRIDGE_MODES = (None, "nat", "route", "open", "none")

# virNetworkUpdateCommand (include/libvirt/libvirt-network.h)
CMD_MODIFY = P.NetworkUpdateCommand.VIR_NETWORK_UPDATE_COMMAND_MODIFY
CMD_DELETE = P.NetworkUpdateCommand.VIR_NETWORK_UPDATE_COMMAND_DELETE
CMD_ADD_LAST = P.NetworkUpdateCommand.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST
CMD_ADD_FIRST = P.NetworkUpdateCommand.VIR_NETWORK_UPDATE_COMMAND_ADD_FIRST
# virNetworkUpdateSection values, named as virsh and the error messages name them.
SECTIONS = {1: "bridge", 2: "domain", 3: "ip", 4: "ip-dhcp-host", 5: "ip-dhcp-range",
            6: "forward", 7: "forward-interface", 8: "forward-pf", 9: "portgroup",
            10: "dns-host", 11: "dns-txt", 12: "dns-srv"}
SECTION_IP_DHCP_HOST = P.NetworkUpdateSection.VIR_NETWORK_SECTION_IP_DHCP_HOST
SECTION_IP_DHCP_RANGE = P.NetworkUpdateSection.VIR_NETWORK_SECTION_IP_DHCP_RANGE
SECTION_DNS_HOST = P.NetworkUpdateSection.VIR_NETWORK_SECTION_DNS_HOST


class NetworkDef(TreeDef):
    """One network definition: its canonical element tree."""

    @property
    def uuid(self) -> bytes:
        return _uuid_bytes(self.tree.findtext("uuid"))

    @property
    def bridge(self) -> str | None:
        br = self.tree.find("bridge")
        return None if br is None else br.get("name")

    @property
    def forward_mode(self) -> str | None:
        fwd = self.tree.find("forward")
        return None if fwd is None else fwd.get("mode", "nat")


def parse(text: str, *, validate_schema: bool = False) -> NetworkDef:
    """Parse a client's <network> definition (VIR_ERR_XML_* / VIR_ERR_NO_NAME on error);
    ``validate_schema`` checks it against schemas/network.rng first."""
    root = parse_definition(text, "network", what="network_definition", domain=_FROM,
                            validate="network" if validate_schema else None)
    return from_element(root)


def from_element(root: etree._Element) -> NetworkDef:
    """Validate an already parsed <network>, fill in defaults, canonicalise."""
    name = (root.findtext("name") or "").strip()
    if not name:
        raise VirError(P.VIR_ERR_NO_NAME, "missing name information", domain=_FROM)
    check_name("network", name)
    uuid_text = root.findtext("uuid")
    if uuid_text is None:
        raw = new_uuid()
    else:
        raw = _uuid_bytes(uuid_text)
    tree = etree.Element("network")
    _copy_attrs(root, tree)
    for tag in CHILD_ORDER:
        if tag == "uuid":
            etree.SubElement(tree, "uuid").text = format_uuid(raw)
            continue
        for child in root.findall(tag):
            tree.append(_canonical(copy.deepcopy(child)))
            if tag in ("name", "uuid", "forward", "bridge", "mtu", "mac", "domain", "dns"):
                break
    tree.find("name").text = name
    _fill_defaults(tree)
    return NetworkDef(tree)


def format(netdef: NetworkDef) -> str:
    return format_libvirt(netdef.tree)


def _uuid_bytes(text: str) -> bytes:
    from pyvirtd.xml import parse_uuid
    try:
        return parse_uuid(text)
    except VirError:
        raise VirError(P.VIR_ERR_XML_ERROR, "malformed uuid element", domain=_FROM) from None


def _copy_attrs(src: etree._Element, dst: etree._Element) -> None:
    order = ATTR_ORDER.get(src.tag, ())
    items = dict(src.attrib)
    for key in order:
        if key in items:
            dst.set(key, items.pop(key))
    for key, value in items.items():
        dst.set(key, value)


def _reorder_attrs(elem: etree._Element) -> None:
    if elem.tag in ATTR_ORDER and len(elem.attrib) > 1:
        items = dict(elem.attrib)
        elem.attrib.clear()
        _copy_attrs_from(items, elem)


def _copy_attrs_from(items: dict, elem: etree._Element) -> None:
    for key in ATTR_ORDER.get(elem.tag, ()):
        if key in items:
            elem.set(key, items.pop(key))
    for key, value in items.items():
        elem.set(key, value)


def _sort_children(elem: etree._Element, order: tuple[str, ...]) -> None:
    kids = [c for c in elem if isinstance(c.tag, str)]
    rank = {tag: i for i, tag in enumerate(order)}
    kids.sort(key=lambda c: rank.get(c.tag, len(order)))
    for c in list(elem):
        elem.remove(c)
    for c in kids:
        elem.append(c)


def _canonical(elem: etree._Element) -> etree._Element:
    for e in elem.iter():
        if isinstance(e.tag, str):
            _reorder_attrs(e)
    if elem.tag == "ip":
        _sort_children(elem, IP_CHILD_ORDER)
        dhcp = elem.find("dhcp")
        if dhcp is not None:
            _sort_children(dhcp, DHCP_CHILD_ORDER)
    return elem


def _fill_defaults(tree: etree._Element) -> None:
    fwd = tree.find("forward")
    mode = None if fwd is None else fwd.get("mode", "nat")
    if fwd is not None and fwd.get("dev") and fwd.find("interface") is None:
        etree.SubElement(fwd, "interface", dev=fwd.get("dev"))
    if mode in _MANAGED_BRIDGE_MODES:
        br = tree.find("bridge")
        if br is None:
            br = etree.Element("bridge")
            anchor = fwd if fwd is not None else tree.find("uuid")
            anchor.addnext(br)
        attrs = dict(br.attrib)
        attrs.setdefault("stp", "on")
        attrs.setdefault("delay", "0")
        br.attrib.clear()
        _copy_attrs_from(attrs, br)


# --- virNetworkUpdate ---------------------------------------------------------

def update(netdef: NetworkDef, command: int, section: int, parent_index: int,
           xml: str) -> None:
    """Apply one net-update command to ``netdef`` in place."""
    name = netdef.name
    handler = _SECTION_HANDLERS.get(section)
    if handler is None:
        label = SECTIONS.get(section)
        if label is None:
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                           "can't update unrecognized section of network", domain=_FROM)
        raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                       f"can't update '{label}' section of network '{name}'", domain=_FROM)
    handler(netdef, command, parent_index, xml)


def _parse_update(netdef: NetworkDef, xml: str, tag: str) -> etree._Element:
    """The element a net-update command carries, which must be a <tag>."""
    try:
        root = parse_definition(xml, tag, what="network_update_xml", domain=_FROM)
    except VirError as err:
        if err.domain != P.VIR_FROM_XML:
            raise
        found = fromstring(xml).tag
        raise VirError(P.VIR_ERR_XML_ERROR,
                       f"unexpected element <{found}>, expecting <{tag}>, "
                       f"while updating network '{netdef.name}'", domain=_FROM) from None
    return _canonical(root)


def _dhcp_of(netdef: NetworkDef, parent_index: int, what: str) -> etree._Element:
    ips = netdef.tree.findall("ip")
    if parent_index >= 0:
        if parent_index >= len(ips):
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"couldn't update {what} entry - no <ip> element found at index "
                           f"{parent_index} in network '{netdef.name}'", domain=_FROM)
        ip = ips[parent_index]
    else:
        v4 = [ip for ip in ips if ip.get("family", "ipv4") == "ipv4"]
        if not v4:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"couldn't update {what} entry - no <ip> element found in "
                           f"network '{netdef.name}'", domain=_FROM)
        ip = next((i for i in v4 if i.find("dhcp") is not None), v4[0])
    dhcp = ip.find("dhcp")
    if dhcp is None:
        dhcp = etree.SubElement(ip, "dhcp")
    return dhcp


def _insert(parent: etree._Element, elem: etree._Element, command: int, tag: str) -> None:
    same = parent.findall(tag)
    if command == CMD_ADD_FIRST and same:
        same[0].addprevious(elem)
    elif same:
        same[-1].addnext(elem)
    else:
        parent.append(elem)
        _sort_children(parent, DHCP_CHILD_ORDER)


def _update_dhcp_host(netdef: NetworkDef, command: int, parent_index: int, xml: str) -> None:
    dhcp = _dhcp_of(netdef, parent_index, "dhcp host")
    host = _parse_update(netdef, xml, "host")
    mac, hname, ip = host.get("mac"), host.get("name"), host.get("ip")
    hosts = dhcp.findall("host")
    net = netdef.name

    def same_mac(h):
        return mac is not None and h.get("mac") is not None and h.get("mac").lower() == mac.lower()

    if command == CMD_DELETE:
        for h in hosts:
            if ((mac is None or h.get("mac") is None or same_mac(h))
                    and (hname is None or h.get("name") is None or h.get("name") == hname)
                    and (ip is None or h.get("ip") == ip)):
                dhcp.remove(h)
                return
        raise VirError(P.VIR_ERR_OPERATION_INVALID,
                       f"couldn't locate a matching dhcp host entry in network '{net}'",
                       domain=_FROM)
    if command == CMD_MODIFY:
        given = " ".join(f"\"{k}='{host.get(k)}'\"" for k in ("mac", "id", "name", "ip")
                         if host.get(k) is not None)
        for h in hosts:
            if same_mac(h) or (ip is not None and h.get("ip") == ip) or \
                    (hname is not None and h.get("name") == hname):
                h.addprevious(host)
                dhcp.remove(h)
                return
        raise VirError(P.VIR_ERR_OPERATION_INVALID,
                       f"couldn't locate an existing dhcp host entry with {given} "
                       f"in network '{net}'", domain=_FROM)
    if command in (CMD_ADD_LAST, CMD_ADD_FIRST):
        for h in hosts:
            if same_mac(h) or (hname is not None and h.get("name") == hname) or \
                    (ip is not None and h.get("ip") == ip):
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               f"there is an existing dhcp host entry in network '{net}' that "
                               f"matches \"<host mac='{mac}' name='{hname}' ip='{ip}'/>\"",
                               domain=_FROM)
        _insert(dhcp, host, command, "host")
        return
    raise _bad_command(command)


def _update_dhcp_range(netdef: NetworkDef, command: int, parent_index: int, xml: str) -> None:
    dhcp = _dhcp_of(netdef, parent_index, "dhcp range")
    rng = _parse_update(netdef, xml, "range")
    start, end = rng.get("start"), rng.get("end")
    net = netdef.name
    match = next((r for r in dhcp.findall("range")
                  if r.get("start") == start and r.get("end") == end), None)
    if command == CMD_MODIFY:
        raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                       "dhcp ranges cannot be modified, only added or deleted", domain=_FROM)
    if command == CMD_DELETE:
        if match is None:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"couldn't locate a matching dhcp range entry in network '{net}'",
                           domain=_FROM)
        dhcp.remove(match)
        return
    if command in (CMD_ADD_LAST, CMD_ADD_FIRST):
        if match is not None:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"there is an existing dhcp range entry in network '{net}' that "
                           f"matches \"<range start='{start}' end='{end}'/>\"", domain=_FROM)
        _insert(dhcp, rng, command, "range")
        return
    raise _bad_command(command)


def _update_dns_host(netdef: NetworkDef, command: int, parent_index: int, xml: str) -> None:
    host = _parse_update(netdef, xml, "host")
    tree = netdef.tree
    dns = tree.find("dns")
    net = netdef.name
    existing = [] if dns is None else dns.findall("host")
    names = {h.text for h in host.findall("hostname")}
    match = next((h for h in existing if h.get("ip") == host.get("ip")
                  or names & {n.text for n in h.findall("hostname")}), None)
    if command == CMD_DELETE:
        if match is None:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"couldn't locate a matching DNS HOST record in network '{net}'",
                           domain=_FROM)
        dns.remove(match)
        return
    if command in (CMD_ADD_LAST, CMD_ADD_FIRST):
        if match is not None:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"there is already at least one DNS HOST record with a matching "
                           f"field in network {net}", domain=_FROM)
        if dns is None:
            dns = etree.Element("dns")
            _place(tree, dns)
        if command == CMD_ADD_FIRST and existing:
            existing[0].addprevious(host)
        else:
            dns.append(host)
        return
    if command == CMD_MODIFY:
        raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                       "DNS HOST records cannot be modified, only added or deleted",
                       domain=_FROM)
    raise _bad_command(command)


def _place(tree: etree._Element, elem: etree._Element) -> None:
    """Insert a top-level child where CHILD_ORDER puts it."""
    rank = CHILD_ORDER.index(elem.tag)
    for child in tree:
        if child.tag in CHILD_ORDER and CHILD_ORDER.index(child.tag) > rank:
            child.addprevious(elem)
            return
    tree.append(elem)


def _bad_command(command: int) -> VirError:
    return VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                    f"unrecognized network update command code {command}", domain=_FROM)


_SECTION_HANDLERS = {
    SECTION_IP_DHCP_HOST: _update_dhcp_host,
    SECTION_IP_DHCP_RANGE: _update_dhcp_range,
    SECTION_DNS_HOST: _update_dns_host,
}
