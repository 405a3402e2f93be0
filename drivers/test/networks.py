"""Test driver: networks (placeholder, being written)."""

from __future__ import annotations


class NetworkMixin:
    pass


def load_networks(state, elements) -> None:
    pass
