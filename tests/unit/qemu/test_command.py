"""QEMU argv from domain XML: data-driven like libvirt's qemuxml2argvtest.

``tests/data/xml2argv/NAME.xml`` must give exactly ``NAME.args`` (an option
and its value per line).  Regenerate after an intended change with
``PYVIRTD_REGENERATE=1 pytest tests/unit/qemu/test_command.py``.  A second
test starts QEMU for real with the generated argv (paused, then killed) to
prove QEMU 7.2 accepts it, with disks on small qcow2/raw files and tap fds
opened from /dev/net/tun.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml
from pyvirtd.drivers.qemu.command import VolumeSource, build_command, quote
from tests.conftest import wait_for

DATA = Path(__file__).resolve().parents[2] / "data" / "xml2argv"
QEMU = "/usr/bin/qemu-system-x86_64"
CASES = sorted(p.stem for p in DATA.glob("*.xml"))
# Cases whose argv QEMU runs here; tcg-kernel needs a real kernel image.
RUNNABLE = ["kvm-minimal", "q35-full", "pc-ide-scsi", "ovmf", "pc-usb2-biosserial",
            "q35-spice-desktop", "disk-error-policy", "disk-fidelity"]
# Per-case tap fds given to build_command in the golden tests.
GOLDEN_TAP_FDS = {0: 40, 1: 41, 2: 42}


def _build(text: str, **kw) -> list[str]:
    d = domxml.parse(text)
    kw.setdefault("tap_fds", GOLDEN_TAP_FDS)
    kw.setdefault("channel_dir", "/run/pyvirtd/qemu/channel/target/domain-1")
    return build_command(d, binary=QEMU, monitor_path="/run/pyvirtd/qemu/domain-1/monitor.sock",
                         pid_path="/run/pyvirtd/qemu/domain-1.pid", **kw)


def _format_args(argv: list[str]) -> str:
    """One option and its value per line, like libvirt's .args files."""
    lines, i = [], 0
    while i < len(argv):
        if i + 1 < len(argv) and argv[i].startswith("-") and not argv[i + 1].startswith("-"):
            lines.append(f"{argv[i]} {argv[i + 1]}")
            i += 2
        else:
            lines.append(argv[i])
            i += 1
    return " \\\n".join(lines) + "\n"


@pytest.mark.parametrize("name", CASES)
def test_xml2argv(name: str) -> None:
    got = _format_args(_build((DATA / f"{name}.xml").read_text()))
    expected = DATA / f"{name}.args"
    if os.environ.get("PYVIRTD_REGENERATE") or not expected.exists():
        expected.write_text(got)
    assert got == expected.read_text()


def test_defn_is_not_modified() -> None:
    d = domxml.parse((DATA / "q35-full.xml").read_text())
    before = domxml.format(d)
    build_command(d, binary=QEMU, monitor_path="/m", tap_fds={0: 3}, channel_dir="/c")
    assert domxml.format(d) == before


def test_quote_doubles_commas() -> None:
    assert quote("a,b,,c") == "a,,b,,,,c"
    argv = _build((DATA / "q35-full.xml").read_text())
    assert "guest=q35,,full,debug-threads=on" in argv


def _minimal(devices: str = "", *, os_extra: str = "", top: str = "", vtype: str = "kvm") -> str:
    return (f"<domain type='{vtype}'><name>t</name><memory>65536</memory>{top}"
            f"<os><type arch='x86_64' machine='pc'>hvm</type>{os_extra}</os>"
            f"<devices>{devices}</devices></domain>")


@pytest.mark.parametrize("xml, code", [
    (_minimal("<interface type='network'><source network='default'/></interface>"),
     P.VIR_ERR_INTERNAL_ERROR),                                  # no tap fd given
    (_minimal("<disk type='network' device='disk'><target dev='vda'/></disk>"),
     P.VIR_ERR_CONFIG_UNSUPPORTED),
    (_minimal("<disk type='file'><source file='/x'/><target dev='vda' bus='floppy'/></disk>"),
     P.VIR_ERR_XML_ERROR),                                       # unknown bus
    (_minimal("<disk type='file'><source file='/x'/><target dev='vda'/><boot order='1'/></disk>",
              os_extra="<boot dev='hd'/>"), P.VIR_ERR_XML_ERROR),
    (_minimal(top="<cpu mode='host-passthrough'/>", vtype="qemu"), P.VIR_ERR_CONFIG_UNSUPPORTED),
    (_minimal("<hostdev mode='subsystem' type='pci'/>"), P.VIR_ERR_CONFIG_UNSUPPORTED),
    (_minimal("<disk type='file' device='cdrom'><source file='/x'/><target dev='vda'/></disk>"),
     P.VIR_ERR_CONFIG_UNSUPPORTED),                              # virtio cdrom
    (_minimal(top="<features><bogus/></features>"), P.VIR_ERR_XML_ERROR),
    (_minimal(top="<cpu><model>qemu64</model><topology sockets='2' cores='2' threads='1'/></cpu>"),
     P.VIR_ERR_XML_ERROR),                                       # 4 != 1 vcpu
])
def test_refused(xml: str, code: int) -> None:
    with pytest.raises(VirError) as info:
        build_command(domxml.parse(xml), binary=QEMU, monitor_path="/m", tap_fds={})
    assert info.value.code == code, info.value.message


def test_ethernet_without_fd_uses_ifname() -> None:
    argv = build_command(domxml.parse(_minimal(
        "<interface type='ethernet'><mac address='52:54:00:00:00:09'/>"
        "<target dev='tap9'/></interface>")), binary=QEMU, monitor_path="/m")
    assert "tap,ifname=tap9,script=no,downscript=no,id=hostnet0" in argv


# -- QEMU accepts the argv -------------------------------------------------------

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def _prepare(name: str, tmp: Path) -> tuple[str, dict[int, int]]:
    """The case's XML with its host paths moved under tmp (disk images created)."""
    text = (DATA / f"{name}.xml").read_text()
    text = text.replace("/var/lib/libvirt/images/", f"{tmp}/")
    text = text.replace("/var/lib/libvirt/qemu/nvram/", f"{tmp}/")
    for img in ("q35,full.qcow2", "scsi.qcow2"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp / img), "16M"],
                       check=True)
    for img in ("data.img", "ide.img", "boot.iso"):
        with open(tmp / img, "wb") as f:
            f.truncate(1 << 20)
    if "ovmf_VARS.fd" in text:
        shutil.copy("/usr/share/OVMF/OVMF_VARS_4M.fd", tmp / "ovmf_VARS.fd")
    text = text.replace("/var/log/guest,serial.log", f"{tmp}/guest,serial.log")
    fds = {}
    for i in range(text.count("<interface type='network'") + text.count("<interface type='bridge'")):
        fds[i] = _open_tap(f"pvcmd{os.getpid() % 1000}{i}")
    return text, fds


def _qmp(path: Path, command: str) -> dict:
    """Negotiate QMP on ``path`` and run ``command``: its reply, or {} if QEMU hung up."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        if not stream.readline():                       # the greeting
            return {}
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}).encode() + b"\n")
            stream.flush()
            while True:
                line = stream.readline()
                if not line:
                    return {}
                reply = json.loads(line)
                if "return" in reply or "error" in reply:
                    break                               # not an event
        return reply


@pytest.mark.skipif(not os.path.exists(QEMU) or not os.access("/dev/kvm", os.W_OK),
                    reason="needs qemu-system-x86_64 and /dev/kvm")
@pytest.mark.parametrize("name", RUNNABLE)
def test_qemu_accepts_argv(name: str, tmp_path: Path) -> None:
    text, fds = _prepare(name, tmp_path)
    # tap fds in the domain's interface order (user NICs need none)
    d = domxml.parse(text)
    order = [i for i, e in enumerate(d.devices_of("interface"))
             if e.get("type") in ("network", "bridge")]
    tap_fds = {idx: fds[n] for n, idx in enumerate(order)}
    mon = tmp_path / "mon.sock"
    argv = build_command(d, binary=QEMU, monitor_path=str(mon), pid_path=str(tmp_path / "pid"),
                         tap_fds=tap_fds, channel_dir=str(tmp_path), daemonize=False)
    proc = subprocess.Popen(argv, pass_fds=list(tap_fds.values()), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: mon.exists() or proc.poll() is not None, timeout=60)   # a loaded 2-core CI machine is slow to start QEMU
        assert proc.poll() is None, proc.communicate()[1]
        # QEMU answers a command only from its main loop, once every device exists
        status = _qmp(mon, "query-status")
        assert proc.poll() is None and "status" in status.get("return", {}), (
            status, proc.communicate()[1] if proc.poll() is not None else "")
    finally:
        proc.kill()
        proc.wait()
        for fd in fds.values():
            os.close(fd)


def test_volume_disk_resolved_by_caller() -> None:
    xml = _minimal("<disk type='volume'><source pool='default' volume='v.qcow2'/>"
                   "<target dev='vda'/></disk>")
    argv = build_command(domxml.parse(xml), binary=QEMU, monitor_path="/m",
                         resolve_volume=lambda pool, vol: VolumeSource(f"/pools/{pool}/{vol}",
                                                                      format="qcow2"))
    assert any('"driver":"file","filename":"/pools/default/v.qcow2"' in a for a in argv)
    assert any('"driver":"qcow2"' in a for a in argv)
    # a block volume (an LV, an iSCSI LUN) is a host device; no format means raw
    argv = build_command(domxml.parse(xml), binary=QEMU, monitor_path="/m",
                         resolve_volume=lambda pool, vol: VolumeSource("/dev/vg/lv", block=True))
    assert any('"driver":"host_device","filename":"/dev/vg/lv"' in a for a in argv)
    assert any('"driver":"raw"' in a for a in argv)
    with pytest.raises(VirError) as info:
        build_command(domxml.parse(xml), binary=QEMU, monitor_path="/m")
    assert info.value.code == P.VIR_ERR_CONFIG_UNSUPPORTED


def test_assign_aliases_match_the_argv() -> None:
    d = domxml.parse((DATA / "q35-full.xml").read_text())
    from pyvirtd.xml import devices as devmod
    from pyvirtd.drivers.qemu.command import assign_aliases
    from pyvirtd.drivers.qemu.defaults import DEVICE_DEFAULTS
    devmod.apply_defaults(d, DEVICE_DEFAULTS)
    assign_aliases(d)
    aliases = [e.find("alias").get("name") for e in d.devices if e.find("alias") is not None]
    for name in ("virtio-disk0", "sata0-0-0", "net0", "net1", "serial0", "channel0", "input0",
                 "video0", "watchdog0", "balloon0", "rng0", "usb", "pcie.0", "ide"):
        assert name in aliases
    console = d.devices_of("console")[0]
    assert console.find("alias").get("name") == "serial0"
    argv = _build(domxml.format(d))
    assert _format_args(argv) == (DATA / "q35-full.args").read_text()


def test_usb_disk_goes_on_the_usb_bus() -> None:
    argv = build_command(domxml.parse(_minimal(
        "<disk type='file'><source file='/x.img'/><target dev='sda' bus='usb'/></disk>")),
        binary=QEMU, monitor_path="/m")
    assert any(a.startswith("usb-storage,bus=usb.0,drive=libvirt-1-format,id=usb-disk0")
               for a in argv)


def test_confined_argv_takes_the_daemons_monitor_socket_and_the_sandbox():
    """A confined QEMU (confine.py) neither daemonizes nor writes a pidfile, gets its
    monitor as an inherited listening fd and runs under the seccomp filter."""
    from pyvirtd.drivers.qemu.confine import SANDBOX

    argv = _build((DATA / "kvm-minimal.xml").read_text(), daemonize=False, monitor_fd=7,
                  sandbox=SANDBOX)
    assert argv[argv.index("-chardev") + 1] == "socket,id=charmonitor,fd=7,server=on,wait=off"
    assert argv[argv.index("-sandbox") + 1] == (
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")
    assert "-daemonize" not in argv


def test_vsock_takes_the_vhost_fd_and_the_cid_chosen_at_start() -> None:
    from pyvirtd.xml.devices import Vsock

    d = domxml.parse(_minimal("<vsock model='virtio'><cid auto='yes'/></vsock>"))
    with pytest.raises(VirError):           # no fd: the driver did not open /dev/vhost-vsock
        build_command(d, binary=QEMU, monitor_path="/m", daemonize=False)
    for i, elem in enumerate(d.devices):
        if elem.tag == "vsock":
            v = Vsock.parse(elem)
            v.set_cid(7)
            d.devices[i] = v.to_element()
    argv = build_command(d, binary=QEMU, monitor_path="/m", daemonize=False, vsock_fd=33)
    dev = next(a for a in argv if a.startswith("vhost-vsock-pci"))
    assert dev.startswith("vhost-vsock-pci,id=vsock0,guest-cid=7,vhostfd=33,bus=")


def test_emulated_tpm_connects_to_the_swtpm_socket() -> None:
    d = domxml.parse(_minimal("<tpm model='tpm-crb'><backend type='emulator' version='2.0'/>"
                              "</tpm>"))
    with pytest.raises(VirError):           # swtpm was not started
        build_command(d, binary=QEMU, monitor_path="/m", daemonize=False)
    argv = build_command(d, binary=QEMU, monitor_path="/m", daemonize=False,
                         tpm_socket="/run/swtpm/g-swtpm.sock")
    i = argv.index("-tpmdev")
    assert argv[i - 2:i + 4] == ["-chardev", "socket,id=chrtpm,path=/run/swtpm/g-swtpm.sock",
                                 "-tpmdev", "emulator,id=tpm-tpm0,chardev=chrtpm",
                                 "-device", "tpm-crb,tpmdev=tpm-tpm0,id=tpm0"]


def test_external_tpm_uses_its_own_socket() -> None:
    d = domxml.parse(_minimal("<tpm model='tpm-tis'><backend type='external'><source "
                              "type='unix' mode='connect' path='/run/ext.sock'/></backend></tpm>"))
    argv = build_command(d, binary=QEMU, monitor_path="/m", daemonize=False)
    assert "socket,id=chrtpm,path=/run/ext.sock" in argv
    assert "tpm-tis,tpmdev=tpm-tpm0,id=tpm0" in argv
