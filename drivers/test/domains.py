"""Test driver: domains (placeholder, being written)."""

from __future__ import annotations


class DomainMixin:
    pass


def load_domains(state, elements) -> None:
    pass
