"""Object names that would be paths: the attack of issue #11 (defect 2), against a real daemon.

The daemon (root) keeps one file per object named after it; a read-write
client that defines a guest named ``../network/victim`` must not overwrite
the network ``victim``'s definition, nor ``/ABS/x`` create ``/ABS/x.xml``.
Each name is refused with libvirt 9.0's error (compared with Debian's own
test driver where it refuses too), nothing appears outside the daemon's
directories, the victim's definition stays as it was and the daemon keeps
serving.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import libvirt
import pytest

from tests.conftest import virsh

pytestmark = pytest.mark.skipif(not shutil.which("virsh"), reason="virsh not installed")

QEMU_GUEST = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64'>hvm</type></os></domain>"""
LXC_GUEST = """<domain type='lxc'><name>{name}</name><memory unit='MiB'>64</memory>
<os><type>exe</type><init>/sbin/init</init></os>
<devices><filesystem type='mount'><source dir='/'/><target dir='/'/></filesystem></devices>
</domain>"""
VICTIM = "<network><name>victim</name><bridge name='pvtvictim0'/></network>"


def files_under(top: Path) -> set[Path]:
    return {Path(d) / f for d, _dirs, files in os.walk(top) for f in files}


def refused(call) -> libvirt.libvirtError:
    with pytest.raises(libvirt.libvirtError) as info:
        call()
    return info.value


def error(exc: libvirt.libvirtError) -> tuple[int, int, str]:
    return exc.get_error_code(), exc.get_error_domain(), exc.get_error_message()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the daemon's root that names must not reach."""
    d = tmp_path / "outside"
    d.mkdir()
    return d


def test_domain_names_that_are_paths_are_refused(daemon, outside: Path) -> None:
    conn = libvirt.open(daemon.uri("qemu:///session"))
    try:
        victim = conn.networkDefineXML(VICTIM)
        victim_xml = victim.XMLDesc(0)
        victim_file = daemon.root / "lib" / "network" / "victim.xml"
        victim_bytes = victim_file.read_bytes()
        before = files_under(daemon.root.parent)

        for name in ("../network/victim", f"{outside}/x"):
            exc = refused(lambda: conn.defineXML(QEMU_GUEST.format(name=name)))
            assert error(exc) == (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_DOMAIN,
                                  f"XML error: name {name} cannot contain '/'")
            exc = refused(lambda: conn.createXML(QEMU_GUEST.format(name=name), 0))
            assert exc.get_error_code() == libvirt.VIR_ERR_XML_ERROR
        exc = refused(lambda: conn.defineXML(QEMU_GUEST.format(name="a\nb")))
        assert error(exc) == (libvirt.VIR_ERR_XML_DETAIL, libvirt.VIR_FROM_XML,
                              "invalid char in name: \n")

        # nothing written or removed anywhere, the network is intact, and the
        # daemon goes on serving (a guest with an ordinary name still works)
        assert files_under(daemon.root.parent) == before
        assert victim_file.read_bytes() == victim_bytes
        assert conn.networkLookupByName("victim").XMLDesc(0) == victim_xml
        assert conn.listAllDomains(0) == []
        dom = conn.defineXML(QEMU_GUEST.format(name="fine"))
        dom.undefine()
    finally:
        conn.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the LXC driver needs root")
def test_container_names_that_are_paths_are_refused(daemon, outside: Path) -> None:
    conn = libvirt.open(daemon.uri("lxc:///system"))
    try:
        before = files_under(daemon.root.parent)
        for name in ("../network/victim", f"{outside}/x"):
            exc = refused(lambda: conn.defineXML(LXC_GUEST.format(name=name)))
            assert error(exc) == (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_DOMAIN,
                                  f"XML error: name {name} cannot contain '/'")
        assert files_under(daemon.root.parent) == before
        assert conn.listAllDomains(0) == []
    finally:
        conn.close()


def test_network_and_pool_names_that_are_paths_are_refused(daemon, outside: Path) -> None:
    conn = libvirt.open(daemon.uri("qemu:///session"))
    try:
        before = files_under(daemon.root.parent)
        net = f"<network><name>{outside}/n</name></network>"
        for call in (lambda: conn.networkDefineXML(net), lambda: conn.networkCreateXML(net)):
            assert error(refused(call)) == (libvirt.VIR_ERR_XML_DETAIL, libvirt.VIR_FROM_XML,
                                            "invalid char in name: /")
        # '..' would be a network's own status directory: refused although libvirt takes it
        exc = refused(lambda: conn.networkDefineXML("<network><name>..</name></network>"))
        assert exc.get_error_code() == libvirt.VIR_ERR_XML_ERROR

        pool = "<pool type='dir'><name>{}</name><target><path>{}</path></target></pool>"
        exc = refused(lambda: conn.storagePoolDefineXML(pool.format("../network/p", outside)))
        assert error(exc) == (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_STORAGE,
                              "XML error: name ../network/p cannot contain '/'")
        exc = refused(lambda: conn.storagePoolDefineXML(pool.format("a\nb", outside)))
        assert error(exc) == (libvirt.VIR_ERR_XML_DETAIL, libvirt.VIR_FROM_XML,
                              "invalid char in name: \n")
        assert files_under(daemon.root.parent) == before
        assert conn.listAllNetworks(0) == [] and conn.listAllStoragePools(0) == []
    finally:
        conn.close()


def test_volume_names_cannot_leave_their_dir_pool(daemon, tmp_path: Path) -> None:
    target = tmp_path / "pool"
    target.mkdir()
    uri = daemon.uri("qemu:///session")
    r = virsh(uri, f"pool-define-as p dir --target {target}; pool-start p")
    assert r.rc == 0, r.err
    before = files_under(tmp_path)
    r = virsh(uri, "vol-create-as p ../escape 1M")
    assert (r.rc, r.err) == (1, "error: Failed to create vol ../escape\n"
                                "error: Requested operation is not valid: "
                                "volume name '../escape' cannot contain '/'\n")
    r = virsh(uri, "vol-create-as p .. 1M")
    assert r.rc == 1 and f"volume target path '{target}/..' already exists" in r.err
    assert files_under(tmp_path) == before
    assert not (tmp_path / "escape").exists()
    r = virsh(uri, "vol-create-as p ok 1M; vol-list p")
    assert r.rc == 0 and str(target / "ok") in r.out


def test_test_driver_names_and_libvirt_wording(daemon) -> None:
    """The messages are libvirt's own: Debian's test driver prints the same ones."""
    ours, theirs = daemon.uri("test:///default"), "test:///default"
    dom = ("<domain type='test'><name>../x</name><memory>1024</memory>"
           "<os><type>hvm</type></os></domain>")
    net = "<network><name>a/b</name></network>"
    pool = "<pool type='dir'><name>a/b</name><target><path>/x</path></target></pool>"

    def errors(uri: str) -> list[tuple[int, int, str]]:
        conn = libvirt.open(uri)
        try:
            return [error(refused(lambda: conn.defineXML(dom))),
                    error(refused(lambda: conn.networkDefineXML(net))),
                    error(refused(lambda: conn.storagePoolDefineXML(pool)))]
        finally:
            conn.close()

    assert errors(ours) == errors(theirs)

    # a snapshot's name: libvirt 9.0 takes '/', pyvirtd refuses it (the QEMU
    # driver's snapshot metadata would be files named after it)
    conn = libvirt.open(ours)
    try:
        test = conn.lookupByName("test")
        exc = refused(lambda: test.snapshotCreateXML(
            "<domainsnapshot><name>../../x</name></domainsnapshot>", 0))
        assert error(exc) == (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_DOMAIN_SNAPSHOT,
                              "XML error: name ../../x cannot contain '/'")
        test.destroy()
        exc = refused(lambda: test.rename("a/b"))
        assert error(exc) == (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_TEST,
                              "XML error: name a/b cannot contain '/'")
        assert conn.getVersion() > 0 and test.name() == "test"
    finally:
        conn.close()
