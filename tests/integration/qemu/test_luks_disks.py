"""LUKS-encrypted volumes and guest disks: secrets that never show (pyvirtd/storage/luks.py,
drivers/qemu/disksecrets.py).

With real parts only: virsh and python-libvirt create a secret and encrypted
volumes in a dir pool (qemu-img does the encryption), `qemu-img info` says
they are encrypted; the tiny TCG guest runs with an encrypted volume as its
second disk (and a hotplugged third), writes a marker to the block devices,
and after it stops the host reads the marker back with `qemu-io`, given the
passphrase as a secret object, while the raw files do not contain it in
clear.  The passphrase is in no QEMU command line, guest log or XML.  Error
messages and codes are libvirtd 9.0's for the same calls (tried on Debian's
libvirtd with the same XML).

Opening a LUKS image costs one key derivation (about 2 s of CPU, QEMU's
default iter-time), so the slow calls go through python-libvirt, which has
no timeout, rather than the virsh helper's.
"""

from __future__ import annotations

import base64
import re
import secrets as pysecrets
import subprocess
from pathlib import Path

import pytest

from daemon_helpers import guest_pid, guest_pids, module_daemon, module_uri, needs_qemu, ok, virsh
from guest_helpers import PROMPT, Console, tiny_guest, tiny_xml

pytestmark = [needs_qemu]

BOOT_TIMEOUT = 90
MiB = 1024 * 1024
PASSPHRASE = b"luks-test-" + pysecrets.token_hex(6).encode()
SECRET_UUID = "1c0a5e5e-1111-4d1c-a2e5-000000000001"
NOVALUE_UUID = "1c0a5e5e-1111-4d1c-a2e5-000000000002"
ISCSI_UUID = "1c0a5e5e-1111-4d1c-a2e5-000000000003"
UNKNOWN_UUID = "1c0a5e5e-1111-4d1c-a2e5-0000000000ff"

daemon = module_daemon("luks")
uri = module_uri


def secret_xml(uuid: str, usage: str, kind: str = "volume") -> str:
    tag = {"volume": "volume", "iscsi": "target"}[kind]
    return (f"<secret ephemeral='no' private='yes'><uuid>{uuid}</uuid>"
            f"<usage type='{kind}'><{tag}>{usage}</{tag}></usage></secret>")


def encryption(uuid: str = SECRET_UUID, fmt: str = "luks", stype: str = "passphrase") -> str:
    return (f"<encryption format='{fmt}'><secret type='{stype}' uuid='{uuid}'/></encryption>")


def volume_xml(name: str, fmt: str = "raw", enc: str | None = None, mib: int = 16) -> str:
    return (f"<volume><name>{name}</name><capacity unit='M'>{mib}</capacity>"
            f"<target><format type='{fmt}'/>{encryption() if enc is None else enc}</target>"
            "</volume>")


@pytest.fixture(scope="module")
def conn(uri):
    import libvirt

    c = libvirt.open(uri)
    yield c
    c.close()


@pytest.fixture(scope="module")
def pool(uri, conn, tmp_path_factory):
    """Pool 'lukspool' (dir) with the secrets every test uses."""
    target = tmp_path_factory.mktemp("lukspool")
    ok(uri, f"pool-define-as lukspool dir --target {target}; pool-start lukspool")
    conn.secretDefineXML(secret_xml(SECRET_UUID, "/luks/main")).setValue(PASSPHRASE)
    conn.secretDefineXML(secret_xml(NOVALUE_UUID, "/luks/novalue"))
    conn.secretDefineXML(secret_xml(ISCSI_UUID, "iqn.2026-12.luks:t", "iscsi")).setValue(b"x")
    return target


def qemu_io_read(path: Path, fmt: str, offset: int, length: int, tmp_path: Path) -> bytes:
    """``length`` bytes of the decrypted image at ``offset``, read on the host by
    qemu-io with the passphrase in a private file (never in its argv)."""
    key = tmp_path / "qemu-io.key"
    key.write_bytes(PASSPHRASE)
    key.chmod(0o600)
    opts = (f"driver=luks,key-secret=k,file.filename={path}" if fmt == "raw" else
            f"driver=qcow2,encrypt.format=luks,encrypt.key-secret=k,file.filename={path}")
    out = subprocess.run(["qemu-io", "--object", f"secret,id=k,file={key}", "--image-opts",
                          opts, "-c", f"read -v {offset} {length}"],
                         capture_output=True, text=True, timeout=120)
    key.unlink()
    assert out.returncode == 0, out.stderr
    data = bytearray()
    for line in out.stdout.splitlines():
        m = re.match(r"^[0-9a-f]{8}:\s+((?:[0-9a-f]{2}\s)+)", line)
        if m:
            data += bytes.fromhex(m.group(1).replace(" ", ""))
    return bytes(data)


def img_info(path: Path) -> str:
    return subprocess.run(["qemu-img", "info", "-U", str(path)], capture_output=True, text=True,
                          check=True).stdout


# -- volumes -----------------------------------------------------------------------------------

def test_encrypted_volumes_are_created_with_qemu_img(uri, conn, pool, daemon):
    sp = conn.storagePoolLookupByName("lukspool")
    sp.createXML(volume_xml("enc.raw"))
    sp.createXML(volume_xml("enc.qcow2", "qcow2"))
    raw_info, qcow_info = img_info(pool / "enc.raw"), img_info(pool / "enc.qcow2")
    assert "file format: luks" in raw_info and "encrypted: yes" in raw_info
    assert "file format: qcow2" in qcow_info and "encrypted: yes" in qcow_info
    assert re.search(r"encrypt:\n(\s+.*\n)*?\s+format: luks", qcow_info)
    # as libvirtd: a raw volume (the LUKS payload is its capacity), its secret named
    xml = ok(uri, "vol-dumpxml --pool lukspool enc.raw")
    assert "<format type='raw'/>" in xml
    assert "<capacity unit='bytes'>16777216</capacity>" in xml
    assert re.search(r"<physical unit='bytes'>(\d+)</physical>", xml).group(1) == \
        str((pool / "enc.raw").stat().st_size)
    assert ("<encryption format='luks'>\n      <secret type='passphrase' "
            f"uuid='{SECRET_UUID}'/>\n    </encryption>") in xml
    assert f"uuid='{SECRET_UUID}'" in ok(uri, "vol-dumpxml --pool lukspool enc.qcow2")
    assert re.search(r"Capacity:\s+16\.00 MiB", ok(uri, "vol-info --pool lukspool enc.raw"))
    # qemu-img read the passphrase from a private file that is gone now
    secret_dir = daemon.root / "run" / "storage" / "secrets"
    assert secret_dir.stat().st_mode & 0o777 == 0o700
    assert list(secret_dir.iterdir()) == []
    # the image opens with the passphrase (a fresh LUKS payload reads as noise, not zeroes)
    assert len(qemu_io_read(pool / "enc.raw", "raw", 0, 16, pool)) == 16
    # as libvirtd: a refresh forgets the secret unless a secret's usage names the path
    ok(uri, "pool-refresh lukspool")
    assert "<encryption format='luks'/>" in ok(uri, "vol-dumpxml --pool lukspool enc.raw")
    usage_uuid = "1c0a5e5e-1111-4d1c-a2e5-000000000004"
    secret = conn.secretDefineXML(secret_xml(usage_uuid, str(pool / "enc.qcow2")))
    try:
        assert (f"<encryption format='luks'>\n      <secret type='passphrase' "
                f"uuid='{usage_uuid}'/>") in ok(uri, "vol-dumpxml --pool lukspool enc.qcow2")
    finally:
        secret.undefine()


@pytest.mark.parametrize("name, enc, fmt, message, code, domain", [
    ("novalue.raw", encryption(NOVALUE_UUID), "raw",
     f"Secret not found: secret '{NOVALUE_UUID}' does not have a value",
     "VIR_ERR_NO_SECRET", "VIR_FROM_SECRET"),
    ("unknown.raw", encryption(UNKNOWN_UUID), "raw",
     f"Secret not found: no secret with matching uuid '{UNKNOWN_UUID}'",
     "VIR_ERR_NO_SECRET", "VIR_FROM_SECRET"),
    ("iscsi.raw", encryption(ISCSI_UUID), "raw",
     f"invalid argument: secret with uuid {ISCSI_UUID} is of type 'iscsi' not expected "
     "'volume' type", "VIR_ERR_INVALID_ARG", None),
    ("nosecret.raw", "<encryption format='luks'/>", "raw",
     "invalid argument: A single <secret type='passphrase'...> element is expected in "
     "encryption description", "VIR_ERR_INVALID_ARG", "VIR_FROM_STORAGE"),
    ("qcow.qcow2", encryption(fmt="qcow"), "qcow2",
     "unsupported configuration: creation of qcow2 encrypted image is not supported",
     "VIR_ERR_CONFIG_UNSUPPORTED", "VIR_FROM_STORAGE"),
    ("vmdk.vmdk", encryption(), "vmdk",
     "unsupported configuration: volume encryption unsupported with format vmdk",
     "VIR_ERR_CONFIG_UNSUPPORTED", "VIR_FROM_STORAGE"),
    ("noformat.raw", "<encryption/>", "raw", "XML error: unknown volume encryption format",
     "VIR_ERR_XML_ERROR", "VIR_FROM_STORAGE"),
    ("bogus.raw", encryption(fmt="bogus"), "raw",
     "unsupported configuration: unknown volume encryption format type bogus",
     "VIR_ERR_CONFIG_UNSUPPORTED", "VIR_FROM_STORAGE"),
    ("stype.raw", encryption(stype="volume"), "raw",
     "unsupported configuration: unknown volume encryption secret type volume",
     "VIR_ERR_CONFIG_UNSUPPORTED", "VIR_FROM_STORAGE"),
])
def test_encrypted_volume_errors(uri, conn, pool, tmp_path, name, enc, fmt, message, code,
                                 domain):
    import libvirt

    xml = tmp_path / "vol.xml"
    xml.write_text(volume_xml(name, fmt, enc))
    r = virsh(uri, f"vol-create lukspool {xml}")
    assert (r.rc, r.err) == (1, f"error: Failed to create vol from {xml}\nerror: {message}\n")
    with pytest.raises(libvirt.libvirtError) as info:
        conn.storagePoolLookupByName("lukspool").createXML(xml.read_text())
    assert info.value.get_error_code() == getattr(libvirt, code)
    if domain is not None:
        assert info.value.get_error_domain() == getattr(libvirt, domain)
    assert not (pool / name).exists()       # nothing half-made


def test_clones_of_an_encrypted_volume(uri, conn, pool, tmp_path):
    """vol-clone keeps the source's encryption; a plain target decrypts (as libvirtd 9.0)."""
    import libvirt

    sp = conn.storagePoolLookupByName("lukspool")
    src = sp.createXML(volume_xml("src.raw", mib=4))
    head = qemu_io_read(pool / "src.raw", "raw", 0, 64, tmp_path)
    # what vol-clone does: the source's XML, renamed (its <encryption> and secret too)
    clone_xml = src.XMLDesc().replace("<name>src.raw</name>", "<name>clone.raw</name>")
    sp.createXMLFrom(clone_xml, src)
    assert "file format: luks" in img_info(pool / "clone.raw")
    assert qemu_io_read(pool / "clone.raw", "raw", 0, 64, tmp_path) == head
    # a resize grows the payload through qemu-img (the LUKS header stays in front)
    sp.storageVolLookupByName("clone.raw").resize(6 * MiB)
    assert "virtual size: 6 MiB" in img_info(pool / "clone.raw")
    assert re.search(r"Capacity:\s+6\.00 MiB", ok(uri, "vol-info --pool lukspool clone.raw"))
    plain = sp.createXMLFrom("<volume><name>plain.raw</name><capacity unit='M'>4</capacity>"
                             "<target><format type='raw'/></target></volume>", src)
    assert (pool / "plain.raw").read_bytes()[:64] == head
    assert "<encryption" not in plain.XMLDesc()
    # after a refresh no secret is known for it (no usage names its path): refused
    ok(uri, "pool-refresh lukspool")
    with pytest.raises(libvirt.libvirtError) as info:
        sp.createXMLFrom(clone_xml.replace("clone.raw", "clone2.raw"),
                         sp.storageVolLookupByName("src.raw"))
    assert info.value.get_error_message() == (
        "invalid argument: A single <secret type='passphrase'...> element is expected in "
        "encryption description")
    assert not (pool / "clone2.raw").exists()


# -- guests ------------------------------------------------------------------------------------

def disk(volume: str, target: str, fmt: str = "raw", in_source: bool = False,
         uuid: str = SECRET_UUID) -> str:
    enc = encryption(uuid)
    src = (f"<source pool='lukspool' volume='{volume}'>{enc}</source>" if in_source
           else f"<source pool='lukspool' volume='{volume}'/>")
    return (f"<disk type='volume' device='disk'><driver name='qemu' type='{fmt}'/>{src}"
            f"<target dev='{target}' bus='virtio'/>{'' if in_source else enc}</disk>")


def test_guest_writes_through_an_encrypted_disk(uri, conn, pool, daemon, tmp_path):
    guest = tiny_guest()
    sp = conn.storagePoolLookupByName("lukspool")
    ok(uri, "vol-create-as lukspool gplain.raw 1M")
    sp.createXML(volume_xml("gdisk.raw", mib=8))
    sp.createXML(volume_xml("ghot.qcow2", "qcow2", mib=8))
    token = pysecrets.token_hex(8)
    marker, hot_marker = f"LUKSMARK-{token}", f"HOTMARK-{token}"
    xml = tmp_path / "luksguest.xml"
    xml.write_text(tiny_xml("luksguest", guest,
                            disks=disk("gplain.raw", "vda").replace(encryption(), "")
                            + disk("gdisk.raw", "vdb")))
    ok(uri, f"define {xml}")
    conn.lookupByName("luksguest").createWithFlags(1)      # paused: the console first
    console = Console(uri, "luksguest")
    try:
        ok(uri, "resume luksguest")
        console.wait(re.escape(PROMPT), timeout=BOOT_TIMEOUT)
        console.run(f"echo {marker} > /dev/vdb; sync; head -c 25 /dev/vdb; echo; echo wrote",
                    rf"{marker}\s*\r?\nwrote")
        # hotplug: the qcow2 one, its <encryption> inside <source>
        (tmp_path / "hot.xml").write_text(disk("ghot.qcow2", "vdc", "qcow2", in_source=True))
        conn.lookupByName("luksguest").attachDevice((tmp_path / "hot.xml").read_text())
        console.run("while [ ! -b /dev/vdc ]; do sleep 0.2; done; echo seen-vdc", r"seen-vdc")
        console.run(f"echo {hot_marker} > /dev/vdc; sync; head -c 24 /dev/vdc; echo; echo ok",
                    rf"{hot_marker}\s*\r?\nok")

        # the passphrase is in none of: QEMU's argv, its log, the live XML
        pid = guest_pid(daemon.root, "luksguest")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        forms = (PASSPHRASE, base64.b64encode(PASSPHRASE))
        assert not any(f in argv for f in forms)
        assert b'"id":"masterKey0","format":"raw","file":' in argv
        assert b'"key-secret":"libvirt-2-format-encryption-secret0"' in argv
        assert b'"keyid":"masterKey0"' in argv
        log = (daemon.root / "log" / "qemu" / "luksguest.log").read_bytes()
        assert b"libvirt-2-format-encryption-secret0" in log     # the argv is logged ...
        assert not any(f in log for f in forms)                  # ... without the passphrase
        live = ok(uri, "dumpxml luksguest")
        assert PASSPHRASE.decode() not in live
        assert f"<encryption format='luks' engine='qemu'>\n        <secret type='passphrase' " \
               f"uuid='{SECRET_UUID}'/>" in live
        key = daemon.root / "run" / "qemu" / "luksguest.master-key.aes"
        assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_size == 32
    finally:
        console.close()
    ok(uri, "destroy luksguest")
    assert not key.exists()          # the master key goes with the run
    # the host reads what the guest wrote, with the passphrase; in clear it is nowhere
    assert qemu_io_read(pool / "gdisk.raw", "raw", 0, len(marker), tmp_path) == marker.encode()
    assert qemu_io_read(pool / "ghot.qcow2", "qcow2", 0, len(hot_marker),
                        tmp_path) == hot_marker.encode()
    for name, mark in (("gdisk.raw", marker), ("ghot.qcow2", hot_marker)):
        assert mark.encode() not in (pool / name).read_bytes()
    ok(uri, "undefine luksguest")


@pytest.mark.parametrize("uuid, message, code", [
    (UNKNOWN_UUID, f"Secret not found: no secret with matching uuid '{UNKNOWN_UUID}'",
     "VIR_ERR_NO_SECRET"),
    (NOVALUE_UUID, f"Secret not found: secret '{NOVALUE_UUID}' does not have a value",
     "VIR_ERR_NO_SECRET"),
    (ISCSI_UUID, f"invalid argument: secret with uuid {ISCSI_UUID} is of type 'iscsi' not "
     "expected 'volume' type", "VIR_ERR_INVALID_ARG"),
])
def test_start_without_the_secret_fails(uri, conn, pool, daemon, tmp_path, uuid, message, code):
    import libvirt

    if not (pool / "errdisk.raw").exists():
        conn.storagePoolLookupByName("lukspool").createXML(volume_xml("errdisk.raw", mib=1))
    xml = tmp_path / "lukserr.xml"
    xml.write_text("<domain type='qemu'><name>lukserr</name><memory unit='MiB'>64</memory>"
                   "<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>"
                   f"{disk('errdisk.raw', 'vda', uuid=uuid)}</devices></domain>")
    ok(uri, f"define {xml}")
    r = virsh(uri, "start lukserr")
    assert (r.rc, r.err) == (1, f"error: Failed to start domain 'lukserr'\nerror: {message}\n")
    with pytest.raises(libvirt.libvirtError) as info:
        conn.lookupByName("lukserr").create()
    assert info.value.get_error_code() == getattr(libvirt, code)
    assert "shut off" in ok(uri, "domstate lukserr")
    assert not [p for p in guest_pids(daemon.root)
                if b"lukserr" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert not (daemon.root / "run" / "qemu" / "lukserr.master-key.aes").exists()
    ok(uri, "undefine lukserr")


def test_old_qcow_encryption_is_refused_at_define(uri, pool, tmp_path):
    xml = tmp_path / "luksqcow.xml"
    xml.write_text("<domain type='qemu'><name>luksqcow</name><memory unit='MiB'>64</memory>"
                   "<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>"
                   f"{disk('x.qcow2', 'vda', 'qcow2').replace(encryption(), encryption(fmt='qcow'))}"
                   "</devices></domain>")
    r = virsh(uri, f"define {xml}")
    assert (r.rc, r.err) == (1, f"error: Failed to define domain from {xml}\n"
                                "error: unsupported configuration: old qcow/qcow2 encryption "
                                "is not supported\n")
