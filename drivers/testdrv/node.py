"""Load a node description (libvirt's test-driver <node> format) into a TestState.

Each object kind's module owns its part of the file: ``load_node`` hands the
<domain>, <network>, <interface>, <pool> and <device> children to the
``load_*`` functions of domains.py, networks.py, interfaces.py, storage.py
and nodedevs.py (secrets are never in node files).
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from pyvirtd.xml import fromstring, hardened_parser

from . import domains, interfaces, networks, nodedevs, storage
from .state import NodeInfo, TestState


def load_node(path: Path) -> TestState:
    """The state a trusted node file describes (the driver's own default.xml)."""
    return node_state(fromstring(path.read_bytes(), hardened_parser()))


def node_state(root: etree._Element) -> TestState:
    state = TestState()
    state.node = _node_info(root)
    domains.load_domains(state, root.findall("domain"))
    networks.load_networks(state, root.findall("network"))
    interfaces.load_interfaces(state, root.findall("interface"))
    storage.load_pools(state, root.findall("pool"))
    nodedevs.load_node_devices(state, root.findall("device"))
    return state


def _node_info(root: etree._Element) -> NodeInfo:
    node = NodeInfo()
    cpu = root.find("cpu")
    if cpu is not None:
        for tag, attr in (("mhz", "mhz"), ("nodes", "nodes"), ("sockets", "sockets"),
                          ("cores", "cores"), ("threads", "threads"), ("active", "cpus")):
            text = cpu.findtext(tag)
            if text:
                setattr(node, attr, int(text))
        node.model = cpu.findtext("model") or node.model
    mem = root.findtext("memory")
    if mem:
        node.memory = int(mem)
    return node
