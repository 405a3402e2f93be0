"""The files of a local driver's guests (pyvirtd/driver/store.py DomainStatusStore), as the
LXC, UML and QEMU drivers keep them: each driver's own status fields round-trip, the
layout and the autostart links are the same for all, a damaged record is dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyvirtd.drivers.lxc.status import RuntimeStatus as LxcStatus
from pyvirtd.drivers.lxc.status import StatusStore as LxcStore
from pyvirtd.drivers.qemu.dac import Label
from pyvirtd.drivers.qemu.status import RuntimeStatus as QemuStatus
from pyvirtd.drivers.qemu.status import StatusStore as QemuStore
from pyvirtd.drivers.uml.status import RuntimeStatus as UmlStatus
from pyvirtd.drivers.uml.status import StatusStore as UmlStore
from pyvirtd.paths import Paths
from pyvirtd.xml import domain as domxml

XML = "<domain type='{kind}'><name>{name}</name><memory>1024</memory>" \
      "<os><type>{os}</type></os></domain>"


def _def(name: str, kind: str = "lxc", os_type: str = "exe") -> domxml.DomainDef:
    return domxml.parse(XML.format(name=name, kind=kind, os=os_type))


def _statuses(name: str) -> list:
    return [
        (LxcStore, LxcStatus(name, 1, 1, True, _def(name), controller_pid=4242, init_pid=4243,
                             cgroup={"memory": "/sys/fs/cgroup/x"}, veths=["veth0"])),
        (UmlStore, UmlStatus(name, 3, 1, False, _def(name, "uml", "uml"), pid=77, dom_id=5)),
        (QemuStore, QemuStatus(name, 1, 1, True, _def(name, "kvm", "hvm"), pid=99, dom_id=7,
                               monitor="/run/x.monitor",
                               labels=[Label("/img/a b.qcow2", False, "0:0")])),
    ]


@pytest.mark.parametrize("store_class, status", _statuses("g1"),
                         ids=lambda v: getattr(v, "__module__", "").split(".")[-2])
def test_each_drivers_status_round_trips(tmp_path: Path, store_class: type, status) -> None:
    store = store_class(Paths.for_root(tmp_path))
    store.ensure_dirs()
    store.write_status(status.name, store.encode_status(status))
    [back] = store.load_statuses()
    assert type(back) is type(status)
    assert back.id == status.id
    assert domxml.format(back.definition) == domxml.format(status.definition)
    skip = {"definition"}
    assert {k: v for k, v in vars(back).items() if k not in skip} == \
        {k: v for k, v in vars(status).items() if k not in skip}
    store.delete_status(status.name)
    assert store.load_statuses() == []


def test_json_status_keeps_the_file_format_a_running_container_left(tmp_path: Path) -> None:
    """A daemon upgraded while containers run reads the records the old one wrote."""
    store = LxcStore(Paths.for_root(tmp_path))
    store.ensure_dirs()
    old = {"name": "c1", "state": 1, "reason": 1, "controller_pid": 10, "init_pid": 11,
           "persistent": True, "xml": domxml.format(_def("c1"), dom_id=10),
           "cgroup": {}, "veths": []}
    (store.run_dir / "c1.json").write_text(json.dumps(old))
    [st] = store.load_statuses()
    assert (st.name, st.id, st.init_pid, st.definition.name) == ("c1", 10, 11, "c1")
    assert json.loads(store.encode_status(st)) == old


def test_driver_files_beside_the_status_are_not_records(tmp_path: Path) -> None:
    store = LxcStore(Paths.for_root(tmp_path))
    store.ensure_dirs()
    st = _statuses("c2")[0][1]
    store.write_status("c2", store.encode_status(st))
    store.path("c2", ".spec.json").write_text("{}")          # the controller's spec
    store.path("c2", ".exit").write_text('{"reason": "shutdown"}')
    assert [s.name for s in store.load_statuses()] == ["c2"]
    assert store.read_exit("c2") == "shutdown"
    store.delete_status("c2")
    assert sorted(p.name for p in store.run_dir.iterdir()) == []


def test_a_damaged_status_is_dropped_and_the_others_load(tmp_path: Path) -> None:
    store = QemuStore(Paths.for_root(tmp_path))
    store.ensure_dirs()
    good = _statuses("ok")[2][1]
    store.write_status("ok", store.encode_status(good))
    broken = store.status_path("broken")
    broken.write_text("<domstatus state='1'")
    assert [s.name for s in store.load_statuses()] == ["ok"]
    assert not broken.exists()


def test_definitions_and_autostart_links(tmp_path: Path) -> None:
    store = UmlStore(Paths.for_root(tmp_path))
    store.ensure_dirs()
    store.save_config(_def("u1", "uml", "uml"))
    (store.config_dir / "junk.xml").write_text("<domain")
    store.set_autostart("u1", True)
    store.set_autostart("u1", True)                          # twice: still the one link
    link = store.autostart_dir / "u1.xml"
    assert link.is_symlink() and str(link.readlink()) == "../u1.xml"
    assert [d.name for d in store.load_configs()] == ["u1"]  # the unreadable one skipped
    assert store.is_autostart("u1")
    store.delete_config("u1")
    assert not link.is_symlink() and not store.is_autostart("u1")
    assert [p.name for p in store.config_dir.glob("*.xml")] == ["junk.xml"]
