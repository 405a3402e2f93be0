"""Test driver: storage (placeholder, being written)."""

from __future__ import annotations


class StorageMixin:
    pass


def load_pools(state, elements) -> None:
    pass
