"""Test driver: nodedevs (placeholder, being written)."""

from __future__ import annotations


class NodeDeviceMixin:
    pass


def load_node_devices(state, elements) -> None:
    pass
