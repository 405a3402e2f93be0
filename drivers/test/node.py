"""Load a node description (libvirt's test-driver <node> format) into a TestState."""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from .state import NodeInfo, TestState


def load_node(path: Path) -> TestState:
    tree = etree.parse(str(path))
    root = tree.getroot()
    state = TestState()
    cpu = root.find("cpu")
    node = NodeInfo()
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
    state.node = node
    return state
