"""Helpers of the storage subsystem tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvirtd.config import Config
from pyvirtd.driver import DriverContext
from pyvirtd.errors import VirError
from pyvirtd.paths import Paths
from pyvirtd.rpc import _generated as P
from pyvirtd.storage import StorageSubsystem

MiB = 1024 * 1024


def make(root: Path) -> StorageSubsystem:
    return StorageSubsystem(DriverContext(Config(), Paths.for_root(root / "daemon"),
                                          privileged=False))


def pool_xml(name: str, path: Path, extra: str = "") -> str:
    return f"<pool type='dir'><name>{name}</name><target><path>{path}</path>{extra}</target></pool>"


def vol_xml(name: str, capacity: str, fmt: str = "raw", extra: str = "") -> str:
    return (f"<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>"
            f"<target><format type='{fmt}'/></target>{extra}</volume>")


async def raises(code: int, message: str, coro) -> None:
    with pytest.raises(VirError) as info:
        await coro
    assert (info.value.code, info.value.message) == (code, message)
