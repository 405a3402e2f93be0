"""Definitions on a full disk (issue #11, defect 4): a failed write changes nothing.

pyvirtd runs in a test-made network namespace (`test_network_netns.Lab`)
with its whole --root on a small tmpfs the test then fills, so every write
of a definition or status file really fails with ENOSPC.  A network define
that cannot be written must not be listed; an update (--config, or --live
--config on a running network) that cannot be written leaves both XMLs as
they were; a pool whose status cannot be recorded does not stay active; and
after the disk is freed and the daemon restarted, the state is exactly the
one from before the failures.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from test_network_netns import Lab, _qemu_driver, _start_daemon, lab, nat_xml  # noqa: F401
from test_network_netns import pytestmark as netns_marks

pytestmark = [*netns_marks, pytest.mark.skipif(not _qemu_driver(), reason="no QEMU driver")]

HOST_XML = "<host mac='52:54:00:00:00:42' name='late' ip='{subnet}.42'/>"
SUBNETS = {"nat1": "10.77.0", "quiet": "10.78.0"}


@pytest.fixture
def small_disk(lab: Lab):
    """The daemon's root on a 4 MiB tmpfs; unmounted once the lab's processes are gone."""
    lab.root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(lab.root)],
                   check=True)
    try:
        yield lab.root
    finally:
        lab.close()     # the daemon and dnsmasq hold files there
        if subprocess.run(["umount", str(lab.root)]).returncode:
            subprocess.run(["umount", "-l", str(lab.root)])


def fill(root: Path) -> Path:
    """Fill the file system until it refuses another byte."""
    filler = root / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 1):         # big steps, then the last partial page
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


class Virsh:
    def __init__(self, lab: Lab) -> None:
        self.uri = f"qemu+unix:///session?socket={lab.root / 'run' / 'libvirt-sock'}"

    def __call__(self, *args: object) -> subprocess.CompletedProcess:
        return subprocess.run(["virsh", "-c", self.uri, *map(str, args)], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "LC_ALL": "C"})

    def ok(self, *args: object) -> str:
        res = self(*args)
        assert res.returncode == 0, f"{args}: {res.stderr}"
        return res.stdout

    def fails(self, *args: object) -> str:
        res = self(*args)
        assert res.returncode != 0, f"{args} succeeded: {res.stdout}"
        return res.stderr


def state(virsh: Virsh) -> dict:
    """Everything a client sees of the networks and pools."""
    out = {"networks": virsh.ok("net-list", "--all"), "pools": virsh.ok("pool-list", "--all")}
    for name in ("nat1", "quiet"):
        out[name] = (virsh.ok("net-dumpxml", name), virsh.ok("net-dumpxml", name, "--inactive"))
    return out


def networks(listing: str) -> dict[str, tuple[str, ...]]:
    """net-list --all as {name: (state, autostart, persistent)}."""
    rows = [line.split() for line in listing.splitlines()[2:] if line.strip()]
    return {row[0]: tuple(row[1:]) for row in rows}


def test_failed_writes_change_nothing_and_survive_a_restart(lab: Lab, small_disk: Path) -> None:
    daemon = _start_daemon(lab)
    virsh = Virsh(lab)
    for name, subnet in SUBNETS.items():
        f = lab.tmp / f"{name}.xml"
        f.write_text(nat_xml(name, subnet=subnet))
        virsh.ok("net-define", f)
    virsh.ok("net-start", "nat1")
    pool_dir = lab.tmp / "pool"
    pool_dir.mkdir()
    virsh.ok("pool-define-as", "p1", "dir", "--target", pool_dir)
    before = state(virsh)

    filler = fill(small_disk)
    new = lab.tmp / "new.xml"
    new.write_text(nat_xml("newnet", subnet="10.79.0"))
    err = virsh.fails("net-define", new)
    virsh.fails("net-info", "newnet")
    assert "newnet" not in virsh.ok("net-list", "--all")
    assert "error: cannot write data to file" in err and "No space left on device" in err, err

    for target, flags in (("nat1", ("--live",)), ("nat1", ("--live", "--config")),
                          ("nat1", ("--config",)),
                          ("quiet", ("--config",))):
        err = virsh.fails("net-update", target, "add", "ip-dhcp-host",
                          HOST_XML.format(subnet=SUBNETS[target]), *flags)
        assert "No space left on device" in err, err

    err = virsh.fails("pool-start", "p1")
    assert "No space left on device" in err, err
    assert "inactive" in virsh.ok("pool-info", "p1")
    assert state(virsh) == before
    # autostart: a symlink, which a full tmpfs may still hold (in its inode);
    # either way the daemon reports what is on disk
    autostart = virsh("net-autostart", "quiet").returncode == 0

    # a restart on a freed disk finds the same state (quiet autostarted if it took)
    filler.unlink()
    daemon.terminate()
    daemon.wait(timeout=10)
    _start_daemon(lab)
    after = state(virsh)
    assert networks(after.pop("networks")) == {
        "nat1": ("active", "no", "yes"),
        "quiet": ("active", "yes", "yes") if autostart else ("inactive", "no", "yes")}
    before.pop("networks")
    assert after == before
    # and the operations that failed now work
    virsh.ok("net-define", new)
    virsh.ok("net-update", "nat1", "add", "ip-dhcp-host", HOST_XML.format(subnet="10.77.0"),
             "--live", "--config")
    assert "10.77.0.42" in virsh.ok("net-dumpxml", "nat1")
    assert "10.77.0.42" in virsh.ok("net-dumpxml", "nat1", "--inactive")
