"""Fixtures of the storage subsystem tests: a subsystem on a temporary root, an active dir pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage_helpers import make, pool_xml
from pyvirtd.storage import StorageSubsystem


@pytest.fixture
async def sub(tmp_path: Path) -> StorageSubsystem:
    s = make(tmp_path)
    await s.start()
    return s


@pytest.fixture
async def active(sub: StorageSubsystem, tmp_path: Path):
    ref = await sub.storage_pool_define_xml(pool_xml("p", tmp_path / "pool"), 0)
    await sub.storage_pool_build(ref, 0)
    await sub.storage_pool_create(ref, 0)
    return sub, ref, tmp_path / "pool"
