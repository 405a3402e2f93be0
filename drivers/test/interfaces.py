"""Test driver: interfaces (placeholder, being written)."""

from __future__ import annotations


class InterfaceMixin:
    pass


def load_interfaces(state, elements) -> None:
    pass
