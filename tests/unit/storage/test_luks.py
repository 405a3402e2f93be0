"""The passphrase file qemu-img reads (pyvirtd/storage/luks.py): private, and gone afterwards."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import trio

from pyvirtd.storage import luks


def test_secret_file_is_private_and_removed(tmp_path: Path) -> None:
    seen = {}

    async def main() -> None:
        async with luks.secret_args(tmp_path / "secrets", b"s3cret,pass", "encrypt0") as args:
            assert args[0] == "--object"
            path = args[1].split("file=", 1)[1]
            seen["mode"] = stat.S_IMODE(Path(path).stat().st_mode)
            seen["data"] = Path(path).read_bytes()
            seen["dir"] = stat.S_IMODE((tmp_path / "secrets").stat().st_mode)
            raise KeyError("qemu-img failed")

    with pytest.raises(KeyError):
        trio.run(main)
    assert seen == {"mode": 0o600, "data": b"s3cret,pass", "dir": 0o700}
    assert list((tmp_path / "secrets").iterdir()) == []


def test_no_value_no_file(tmp_path: Path) -> None:
    async def main() -> list[str]:
        async with luks.secret_args(tmp_path, None, "encrypt0") as args:
            return args

    assert trio.run(main) == []
    assert list(tmp_path.iterdir()) == []
