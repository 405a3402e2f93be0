"""Probing real QEMU binaries; capabilities XML against libvirt's RelaxNG schemas."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lxml import etree

from pyvirtd.drivers.qemu import caps as qcaps
from pyvirtd.drivers.qemu.caps_xml import capabilities_xml, domain_capabilities_xml
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

from qemu_helpers import QEMU, needs_qemu

pytestmark = needs_qemu

SCHEMAS = Path("/usr/share/libvirt/schemas")
needs_schemas = pytest.mark.skipif(not (SCHEMAS / "capability.rng").exists(),
                                   reason="libvirt's RelaxNG schemas not installed")


def validate(xml: str, schema: str) -> etree._Element:
    rng = etree.RelaxNG(etree.parse(str(SCHEMAS / schema)))
    doc = etree.fromstring(xml.encode())
    assert rng.validate(doc), f"{schema}: {rng.error_log}\n{xml}"
    return doc


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    import trio
    cache = tmp_path_factory.mktemp("capscache")
    caps = trio.run(qcaps.probe_all, str(cache), [QEMU])
    return caps, cache


def test_probe(probed):
    caps, _ = probed
    b = caps.binaries[QEMU]
    assert b.arch == "x86_64" and b.version >= (7, 0, 0)
    assert b.kvm == qcaps.kvm_usable()
    q35 = b.canonical_machine("q35")
    assert q35 and q35.name.startswith("pc-q35-") and q35.alias == "q35"
    assert b.canonical_machine(b.default_machine()).alias == "pc"
    tcg = {d.name: d for d in b.cpu_defs["tcg"]}
    assert tcg["qemu64"].usable and not tcg["Skylake-Server"].usable
    assert "query-status" in b.commands and "virtio-blk-pci" in b.types
    assert caps.binary_for("i686") is b


async def test_second_probe_reads_cache(probed, monkeypatch):
    caps, cache = probed
    assert list(cache.glob("*.json"))

    async def no_probe(path):
        raise AssertionError("probed again instead of reading the cache")
    monkeypatch.setattr(qcaps, "probe_binary", no_probe)
    again = await qcaps.probe_all(str(cache), [QEMU])
    assert again.binaries[QEMU] == caps.binaries[QEMU]


async def test_cache_invalidated_by_mtime(tmp_path, probed, monkeypatch):
    caps, cache = probed
    fake = tmp_path / "qemu-system-x86_64"
    fake.symlink_to(QEMU)               # not the same path: a cache miss -> probe
    calls = []

    async def fake_probe(path):
        calls.append(path)
        return caps.binaries[QEMU]
    monkeypatch.setattr(qcaps, "probe_binary", fake_probe)
    await qcaps.probe_all(str(cache), [QEMU])
    assert calls == []
    # same path, changed mtime: probed again
    real = tmp_path / "bin" / "qemu-system-x86_64"
    real.parent.mkdir()
    real.write_bytes(b"#!/bin/sh\n")
    real.chmod(0o755)
    await qcaps.probe_all(str(cache), [str(real)])
    await qcaps.probe_all(str(cache), [str(real)])
    assert calls == [str(real)]
    os.utime(real, (1, 1))
    await qcaps.probe_all(str(cache), [str(real)])
    assert calls == [str(real)] * 2


async def test_unprobeable_binary_is_left_out(tmp_path):
    bad = tmp_path / "qemu-system-x86_64"
    bad.write_text("#!/bin/sh\necho 'qemu: broken build' >&2\nexit 1\n")
    bad.chmod(0o755)
    caps = await qcaps.probe_all(str(tmp_path / "cache"), [str(bad)])
    assert caps.binaries == {}
    with pytest.raises(VirError, match="qemu: broken build"):
        await qcaps.probe_binary(str(bad))


@needs_schemas
def test_capabilities_xml(probed):
    caps, _ = probed
    doc = validate(capabilities_xml(caps), "capability.rng")
    assert doc.findtext("host/cpu/arch") == "x86_64"
    assert doc.findtext("host/uuid")
    assert [s.findtext("model") for s in doc.findall("host/secmodel")] == ["none", "dac"]
    cells = doc.find("host/topology/cells")
    assert int(cells.get("num")) >= 1
    assert int(cells.find("cell/cpus").get("num")) == os.cpu_count()
    guests = {g.find("arch").get("name"): g for g in doc.findall("guest")}
    assert set(guests) >= {"i686", "x86_64"}
    x86 = guests["x86_64"].find("arch")
    assert x86.findtext("emulator") == QEMU
    machines = {m.text: m.get("canonical") for m in x86.findall("machine")}
    assert machines["q35"].startswith("pc-q35-") and machines[machines["q35"]] is None
    domains = [d.get("type") for d in x86.findall("domain")]
    assert domains == (["qemu", "kvm"] if qcaps.kvm_usable() else ["qemu"])
    assert guests["i686"].find("features/pae") is not None


@needs_schemas
@pytest.mark.parametrize("virttype,machine", [("qemu", None), ("qemu", "q35"),
                                              pytest.param("kvm", "q35", marks=pytest.mark.skipif(
                                                  not qcaps.kvm_usable(), reason="no kvm"))])
def test_domain_capabilities_xml(probed, virttype, machine):
    caps, _ = probed
    doc = validate(domain_capabilities_xml(caps, None, "x86_64", machine, virttype), "domaincaps.rng")
    assert doc.findtext("path") == QEMU
    assert doc.findtext("domain") == virttype
    assert doc.findtext("machine").startswith("pc-q35-" if machine else "pc-i440fx-")
    models = {m.text: m.get("usable") for m in doc.findall("cpu/mode[@name='custom']/model")}
    if virttype == "qemu":
        assert models["qemu64"] == "yes" and models["Skylake-Server"] == "no"
    assert doc.find("cpu/mode[@name='host-passthrough']").get("supported") == (
        "yes" if virttype == "kvm" else "no")
    if os.path.exists("/usr/share/OVMF/OVMF_CODE_4M.fd"):
        assert "/usr/share/OVMF/OVMF_CODE_4M.fd" in [v.text for v in doc.findall("os/loader/value")]
    assert "vnc" in [v.text for v in doc.findall("devices/graphics/enum/value")]


def test_domain_capabilities_errors(probed):
    caps, _ = probed
    with pytest.raises(VirError) as ei:
        domain_capabilities_xml(caps, None, "x86_64", "no-such-machine", "qemu")
    assert ei.value.code == P.VIR_ERR_INVALID_ARG
    assert "the machine 'no-such-machine' is not supported" in ei.value.message
    with pytest.raises(VirError, match="unable to find any emulator to serve 'sparc64'"):
        domain_capabilities_xml(caps, None, "sparc64", None, "qemu")
    with pytest.raises(VirError, match="unknown virttype"):
        domain_capabilities_xml(caps, None, None, None, "xen")
