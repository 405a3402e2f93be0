"""The config/status/autostart files of defined objects (pyvirtd/driver/store.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvirtd.driver.store import ObjectStore
from pyvirtd.errors import VirError
from pyvirtd.names import UnsafeName
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import network as netxml

UUID = "5e0a4b3c-1d2e-4f50-8a9b-0c1d2e3f4a5b"


def netdef(name: str, uuid: str = UUID) -> netxml.NetworkDef:
    return netxml.parse(f"<network><name>{name}</name><uuid>{uuid}</uuid></network>")


def store(tmp_path: Path) -> ObjectStore:
    return ObjectStore(tmp_path / "lib" / "network", tmp_path / "run" / "network",
                       parse=netxml.parse, format=netxml.format, what="network",
                       error_domain=P.VIR_FROM_NETWORK)


async def test_config_status_and_autostart_files_as_libvirt_keeps_them(tmp_path: Path) -> None:
    st = store(tmp_path)
    await st.write_config(netdef("net1"))
    await st.write_status(netdef("net1"))
    await st.set_autostart("net1", True)
    config = tmp_path / "lib" / "network" / "net1.xml"
    link = tmp_path / "lib" / "network" / "autostart" / "net1.xml"
    assert netxml.parse(config.read_text()).name == "net1"
    assert (tmp_path / "run" / "network" / "net1.xml").is_file()
    assert link.is_symlink() and link.resolve() == config.resolve()
    await st.set_autostart("net1", True)           # twice: still the one link
    found = await st.load()
    assert [(d.name, auto) for d, auto in found.configs] == [("net1", True)]
    assert [d.name for d in found.statuses] == ["net1"]
    await st.set_autostart("net1", False)
    assert not link.exists()
    await st.set_autostart("net1", True)
    await st.delete_config("net1")                 # the link goes with the definition
    await st.delete_status("net1")
    assert not config.exists() and not link.is_symlink()
    assert (await st.load()).configs == [] and (await st.load()).statuses == []


async def test_files_that_do_not_parse_or_name_another_object_are_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    st = store(tmp_path)
    await st.write_config(netdef("good"))
    st.config_dir.joinpath("broken.xml").write_text("<network><name>")
    st.config_dir.joinpath("copy.xml").write_text(netxml.format(netdef("good")))
    found = st.load_sync()
    assert [d.name for d, _ in found.configs] == ["good"]
    assert "broken.xml ignored" in caplog.text and "it defines 'good'" in caplog.text


async def test_a_failed_write_is_libvirts_system_error_and_leaves_the_old_file(
        tmp_path: Path) -> None:
    st = store(tmp_path)
    await st.write_config(netdef("n"))
    before = st.config_path("n").read_text()
    # a directory where the temporary must go fails the write (modes would not stop root)
    (st.config_dir / ".n.xml.tmp").mkdir()
    with pytest.raises(VirError) as info:
        await st.write_config(netdef("n", "5e0a4b3c-1d2e-4f50-8a9b-0c1d2e3f4a5c"))
    err = info.value
    assert err.code == P.VIR_ERR_SYSTEM_ERROR and err.domain == P.VIR_FROM_NETWORK
    assert err.message.startswith(f"cannot write data to file '{st.config_path('n')}': ")
    assert st.config_path("n").read_text() == before


async def test_autostart_link_failure_names_the_link(tmp_path: Path) -> None:
    st = store(tmp_path)
    st.config_dir.mkdir(parents=True)
    st.autostart_dir.write_text("not a directory")
    with pytest.raises(VirError) as info:
        await st.set_autostart("n", True)
    assert info.value.code == P.VIR_ERR_SYSTEM_ERROR
    assert info.value.message.startswith(f"Failed to create symlink '{st.autostart_path('n')}'")


def test_no_path_leaves_its_directory(tmp_path: Path) -> None:
    st = store(tmp_path)
    for bad in ("../x", "", "a/b", "x\0"):
        with pytest.raises(UnsafeName):
            st.config_path(bad)
        with pytest.raises(UnsafeName):
            st.autostart_path(bad)
        with pytest.raises(UnsafeName):
            st.status_path(bad)
