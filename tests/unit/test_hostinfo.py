"""The host UUID: the host_uuid and host_uuid_source knobs, as libvirtd resolves them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvirtd.hostinfo import host_uuid

MACHINE_ID = "0123456789abcdef0123456789abcdef\n"      # systemd's format: 32 hex digits


def files(tmp_path: Path, dmi: str | None, machine_id: str | None) -> dict[str, Path]:
    paths = {"dmi": tmp_path / "product_uuid", "machine_id": tmp_path / "machine-id"}
    for key, text in (("dmi", dmi), ("machine_id", machine_id)):
        if text is not None:
            paths[key].write_text(text)
    return paths


def test_configured_uuid_wins_and_is_canonical(tmp_path: Path) -> None:
    f = files(tmp_path, "4c4c4544-0000-1111-2222-333344445555\n", MACHINE_ID)
    assert host_uuid("AABBCCDD-0011-2233-4455-66778899AABB", "smbios", **f) == \
        "aabbccdd-0011-2233-4455-66778899aabb"


def test_smbios_reads_the_firmware_uuid(tmp_path: Path) -> None:
    f = files(tmp_path, "4c4c4544-0000-1111-2222-333344445555\n", MACHINE_ID)
    assert host_uuid(None, "smbios", **f) == "4c4c4544-0000-1111-2222-333344445555"


@pytest.mark.parametrize("dmi", [None, "00000000-0000-0000-0000-000000000000\n", "garbage"])
def test_smbios_without_a_valid_firmware_uuid_uses_the_machine_id(tmp_path: Path, dmi) -> None:
    f = files(tmp_path, dmi, MACHINE_ID)
    assert host_uuid(None, "smbios", **f) == "01234567-89ab-cdef-0123-456789abcdef"


def test_smbios_with_nothing_readable_is_still_stable(tmp_path: Path) -> None:
    f = files(tmp_path, None, None)
    assert host_uuid(None, "smbios", **f) == host_uuid(None, "smbios", **f)


def test_machine_id_source(tmp_path: Path) -> None:
    f = files(tmp_path, "4c4c4544-0000-1111-2222-333344445555\n", MACHINE_ID)
    assert host_uuid(None, "machine-id", **f) == "01234567-89ab-cdef-0123-456789abcdef"


def test_machine_id_source_must_be_readable_and_valid(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"host_uuid_source 'machine-id': cannot read .*machine-id"):
        host_uuid(None, "machine-id", **files(tmp_path, None, None))
    with pytest.raises(ValueError, match="host_uuid_source 'machine-id': .*invalid host UUID"):
        host_uuid(None, "machine-id", **files(tmp_path, None, "1" * 32))
