"""Test driver: secrets (placeholder, being written)."""

from __future__ import annotations


class SecretMixin:
    pass
