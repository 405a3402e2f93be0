"""polkit with a real polkitd on a private system bus that the test starts.

polkitd runs in its own mount namespace with the test's rules over
/etc/polkit-1/rules.d and pyvirtd's action definitions (`policy_xml()`) over
/usr/share/polkit-1/actions (test-environment.md, "Auth peers"). The rules
let ``nobody`` in, keep ``daemon`` out, and hide the domain named ``hidden``
from ``nobody``; root is let in without asking, as libvirtd does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from auth_helpers import need_commands, need_module, run
from tests.conftest import start_daemon, stop_daemon

ALLOWED, DENIED = "nobody", "daemon"
POLKITD = "/usr/lib/polkit-1/polkitd"

RULES = """
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.libvirt.") != 0)
        return polkit.Result.NOT_HANDLED;
    if (subject.user == "root")
        return polkit.Result.YES;
    if (subject.user == "%s") {
        if (action.id.indexOf("org.libvirt.api.domain.") == 0 &&
            action.lookup("domain_name") == "hidden")
            return polkit.Result.NO;
        return polkit.Result.YES;
    }
    return polkit.Result.NO;
});
""" % ALLOWED

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


class Polkit:
    """dbus-daemon + polkitd, both stopped by stop()."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(mode=0o755)
        for sub in ("rules", "actions"):
            (base / sub).mkdir(mode=0o755)
        (base / "rules" / "50-pyvirtd-test.rules").write_text(RULES)
        policy = run([sys.executable, "-m", "pyvirtd.cli", "polkit-policy"])
        assert policy.returncode == 0, policy.stderr
        (base / "actions" / "org.pyvirtd.policy").write_text(policy.stdout)
        for f in (base / "rules").iterdir():
            f.chmod(0o644)
        (base / "actions" / "org.pyvirtd.policy").chmod(0o644)
        sock = base / "system_bus_socket"
        (base / "bus.conf").write_text(BUS_CONFIG % sock)
        self.address = f"unix:path={sock}"
        self.bus = subprocess.Popen(["dbus-daemon", f"--config-file={base / 'bus.conf'}",
                                     "--nofork", "--nopidfile"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        script = (f"mount --bind {base / 'rules'} /etc/polkit-1/rules.d && "
                  f"mount --bind {base / 'actions'} /usr/share/polkit-1/actions && "
                  f"exec {POLKITD} --no-debug")
        self.polkitd = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.address),
            stdout=open(base / "polkitd.log", "wb"), stderr=subprocess.STDOUT)
        try:
            self._wait_for_name()
        except BaseException:
            self.stop()          # leave no bus or polkitd behind
            raise

    def _wait_for_name(self) -> None:
        env = {"DBUS_SYSTEM_BUS_ADDRESS": self.address}
        for _ in range(100):
            r = run(["dbus-send", "--system", "--print-reply", "--dest=org.freedesktop.DBus",
                     "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner",
                     "string:org.freedesktop.PolicyKit1"], env=env)
            if "true" in r.stdout:
                return
            time.sleep(0.1)
        raise RuntimeError("polkitd did not start: " + (self.base / "polkitd.log").read_text())

    def stop(self) -> None:
        for p in (self.polkitd, self.bus):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def world():
    """A directory every test user can traverse (pytest's tmp is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="pyvirtd-polkit-"))
    d.chmod(0o755)
    home = d / "home"
    home.mkdir()
    home.chmod(0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def polkit(world):
    if os.geteuid() != 0:
        pytest.skip("needs root (a private mount namespace for polkitd)")
    need_commands(POLKITD, package="polkitd")
    need_commands("dbus-daemon", "dbus-send", package="dbus-daemon, dbus-bin")
    need_module("jeepney", "jeepney")
    p = Polkit(world / "polkit")
    yield p
    p.stop()


def start(world: Path, polkit: Polkit, name: str, config: str):
    saved = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = polkit.address
    try:
        return start_daemon(world / name, config="unix_sock_rw_perms: '0777'\n" + config)
    finally:
        if saved is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS")
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = saved


def virsh_as(user: str | None, world: Path, uri: str, commands: str):
    import pwd
    own = world / "home" / (user or "root")
    env = {"HOME": str(world / "home"), "XDG_CACHE_HOME": str(own / "cache"),
           "XDG_CONFIG_HOME": str(own / "config")}
    uid = pwd.getpwnam(user).pw_uid if user else None
    return run(["virsh", "-c", uri, commands], env=env, user=uid)


@pytest.fixture(scope="module")
def socket_daemon(world, polkit):
    d = start(world, polkit, "sock", "auth_unix_rw: polkit\n")
    yield d
    stop_daemon(d)


def test_allowed_user_connects(socket_daemon, world) -> None:
    r = virsh_as(ALLOWED, world, socket_daemon.uri(), "list --name")
    assert r.returncode == 0, r.stderr + socket_daemon.log()
    assert r.stdout.split() == ["test"]


def test_denied_user_refused(socket_daemon, world) -> None:
    r = virsh_as(DENIED, world, socket_daemon.uri(), "list --name")
    assert r.returncode != 0
    assert "org.libvirt.unix.manage" in r.stderr


def test_root_needs_no_polkit(socket_daemon, world) -> None:
    r = virsh_as(None, world, socket_daemon.uri(), "list --name")
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def acl_daemon(world, polkit):
    d = start(world, polkit, "acl", "auth_unix_rw: polkit\naccess_drivers: [polkit]\n")
    xml = world / "hidden.xml"
    xml.write_text("<domain type='test'><name>hidden</name><memory>8192</memory>"
                   "<os><type>hvm</type></os></domain>")
    xml.chmod(0o644)
    r = virsh_as(None, world, d.uri(), f"define {xml}")
    assert r.returncode == 0, r.stderr + d.log()
    yield d
    stop_daemon(d)


def test_acl_filters_list(acl_daemon, world) -> None:
    r = virsh_as(None, world, acl_daemon.uri(), "list --all --name")
    assert sorted(r.stdout.split()) == ["hidden", "test"], r.stderr
    r = virsh_as(ALLOWED, world, acl_daemon.uri(), "list --all --name")
    assert r.returncode == 0, r.stderr + acl_daemon.log()
    assert r.stdout.split() == ["test"]


def test_acl_denies_object(acl_daemon, world) -> None:
    r = virsh_as(ALLOWED, world, acl_daemon.uri(), "dominfo test")
    assert r.returncode == 0, r.stderr
    r = virsh_as(ALLOWED, world, acl_daemon.uri(), "dominfo hidden")
    assert r.returncode != 0      # virsh words it "failed to get domain" after its lookups
    assert "hidden" in r.stderr


def _counts(uri: str, user: str | None) -> list:
    """numOfDomains, listDomainsID, numOfDefinedDomains, listDefinedDomains as USER sees them.

    Asked from a forked child that drops to USER first (polkit judges the
    connecting process); the venv's interpreter may not be executable by USER.
    """
    import json
    import pwd
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                              # the child: never returns
        code = 1
        try:
            os.close(r)
            if user:
                pw = pwd.getpwnam(user)
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
            import libvirt
            c = libvirt.open(uri)
            out = [c.numOfDomains(), c.listDomainsID(), c.numOfDefinedDomains(),
                   c.listDefinedDomains()]
            os.write(w, json.dumps(out).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and data, f"child failed ({status})"
    return json.loads(data)


def test_acl_filters_counts_and_ids(acl_daemon, world) -> None:
    """The older calls (domain ids, NUM_OF_* counts) hide what the list calls hide."""
    uri = acl_daemon.uri()
    test_id = virsh_as(None, world, uri, "domid test").stdout.strip()
    test_id = int(test_id)
    # hidden defined, not running: only root counts it among the defined ones
    assert _counts(uri, None) == [1, [test_id], 1, ["hidden"]]
    assert _counts(uri, ALLOWED) == [1, [test_id], 0, []]
    r = virsh_as(None, world, uri, "start hidden")
    assert r.returncode == 0, r.stderr
    try:
        hidden_id = int(virsh_as(None, world, uri, "domid hidden").stdout)
        assert _counts(uri, None) == [2, sorted([test_id, hidden_id]), 0, []]
        assert _counts(uri, ALLOWED) == [1, [test_id], 0, []]
    finally:
        virsh_as(None, world, uri, "destroy hidden")
