"""The QEMU guest agent on pyvirtd: Debian's qemu-ga in the tiny TCG guest.

The guest (tests/guest/build.py, ``ensure_agent_guest``) carries qemu-ga and
the libraries it needs; ``start-agent`` typed on its console starts it on
/dev/virtio-ports/org.qemu.guest_agent.0.  pyvirtd follows the channel's state
(live XML, AGENT_LIFECYCLE events), answers virsh's agent commands through it,
keeps answering everything else while the agent is stopped (SIGSTOP) and its
calls time out with libvirt's error, reconnects after a kill -9 of the daemon,
and shuts the guest down through it.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

from daemon_helpers import (kill_guests, needs_qemu, ok, qemu_uri, start_daemon, stop_daemon,
                            virsh, wait_for)
from guest_helpers import Console, EventLog, tiny_xml

pytestmark = needs_qemu

NAME = "gagent"
CHANNEL = """<channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>"""
# python-libvirt's AGENT_LIFECYCLE values
CONNECTED, DISCONNECTED = 1, 2
REASON_STARTED, REASON_CHANNEL = 1, 2
NOT_AVAILABLE = "Guest agent is not responding: Guest agent not available for now"
NOT_CONNECTED = "Guest agent is not responding: QEMU guest agent is not connected"


class Env:
    """The module's daemon (replaced by the restart test), guest console and events."""
    daemon = None
    uri = ""
    console: Console | None = None
    events: EventLog | None = None
    agent_pid = 0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import libvirt
    from tests.guest.build import ensure_agent_guest, make_root_image

    try:
        guest = ensure_agent_guest()
    except Exception as exc:     # no qemu-guest-agent on the host, no kernel, ...
        pytest.skip(f"cannot build the agent guest: {exc}")
    base = tmp_path_factory.mktemp("gagent")
    root = base / "pyvirtd"
    e = Env()
    e.daemon = start_daemon(root)
    e.uri = qemu_uri(e.daemon)
    data = base / "data.img"
    make_root_image(data, {"hello": b"hi\n"})       # an ext4 disk to mount: domfsinfo, freeze
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{data}'/><target dev='vda' bus='virtio'/></disk>")
    xml = base / "gagent.xml"
    xml.write_text(tiny_xml(NAME, guest, disks=disk).replace(
        "<serial type='pty'/>", CHANNEL + "\n    <serial type='pty'/>"))
    e.events = EventLog(e.uri, {"agent": libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE})
    try:
        ok(e.uri, f"define {xml}; start {NAME} --paused")
        e.console = Console(e.uri, NAME)
        ok(e.uri, f"resume {NAME}")
        e.console.wait("GUEST READY", timeout=120)
        e.console.run("while read -r m; do insmod /lib/modules/$m.ko; done < /etc/modules-root;"
                      " mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && echo MOUNT-$((1+1))",
                      "MOUNT-2")
        yield e
    finally:
        if e.console is not None:
            e.console.close()
        e.events.close()
        virsh(e.uri, f"destroy {NAME}; undefine {NAME}")
        stop_daemon(e.daemon)
        kill_guests(root)


def _channel_state(uri: str) -> str | None:
    m = re.search(r"<target type='virtio' name='org.qemu.guest_agent.0'(?: state='(\w+)')?",
                  ok(uri, f"dumpxml {NAME}"))
    return m.group(1) if m else None


def _start_agent(e: Env) -> None:
    e.agent_pid = int(e.console.run("start-agent", r"AGENT STARTED (\d+)").group(1))


def test_1_channel_state_follows_the_agent(env):
    # at start: the port is closed (domain-started), as libvirt reports it
    env.events.wait((NAME, "agent", DISCONNECTED, REASON_STARTED))
    assert _channel_state(env.uri) == "disconnected"
    r = virsh(env.uri, f"domtime {NAME}")
    assert r.rc != 0 and NOT_CONNECTED in r.err
    _start_agent(env)
    env.events.wait((NAME, "agent", CONNECTED, REASON_CHANNEL))
    wait_for(lambda: _channel_state(env.uri) == "connected")
    # the inactive definition has no runtime state
    assert "state=" not in re.search(r"<channel.*?</channel>",
                                     ok(env.uri, f"dumpxml {NAME} --inactive"), re.S).group(0)


def test_2_hostname_time_and_passthrough(env):
    assert ok(env.uri, f"domhostname {NAME} --source agent").strip() == "tinyguest"
    secs = int(re.search(r"Time: (\d+)", ok(env.uri, f"domtime {NAME}")).group(1))
    assert abs(secs - time.time()) < 3600     # the guest's clock comes from the host's RTC
    # --time sets the guest's clock (qemu-ga writes it to the RTC too)
    ok(env.uri, f"domtime {NAME} --time 2000000000")
    secs = int(re.search(r"Time: (\d+)", ok(env.uri, f"domtime {NAME}")).group(1))
    assert 2000000000 <= secs < 2000000000 + 600
    # --sync: the guest's clock from its RTC again, after the guest moved it away
    env.console.run("date -s @1500000000 >/dev/null; echo MOVED-$((1+1))", "MOVED-2")
    assert int(re.search(r"Time: (\d+)", ok(env.uri, f"domtime {NAME}")).group(1)) < 1600000000
    ok(env.uri, f"domtime {NAME} --sync")
    secs = int(re.search(r"Time: (\d+)", ok(env.uri, f"domtime {NAME}")).group(1))
    assert 2000000000 <= secs < 2000000000 + 600
    ok(env.uri, f"domtime {NAME} --now")
    secs = int(re.search(r"Time: (\d+)", ok(env.uri, f"domtime {NAME}")).group(1))
    assert abs(secs - time.time()) < 600
    out = ok(env.uri, f"""qemu-agent-command {NAME} '{{"execute":"guest-info"}}'""")
    assert re.search(r'"return":\{"version":"7\.2', out)
    # an agent error is passed through as libvirt words it
    r = virsh(env.uri, f"""qemu-agent-command {NAME} '{{"execute":"no-such"}}'""")
    assert r.rc != 0 and "unable to execute QEMU agent command 'no-such':" in r.err
    assert re.search(r"Messages:\s+tainted: custom-ga-command", ok(env.uri, f"dominfo {NAME}"))


def test_3_guestinfo_fsinfo_addresses(env):
    info = ok(env.uri, f"guestinfo {NAME}")
    assert re.search(r"^hostname\s+: tinyguest$", info, re.M)
    assert re.search(r"^fs\.count\s+: \d+$", info, re.M)
    assert re.search(r"^fs\.\d+\.mountpoint\s+: /mnt$", info, re.M)
    assert "tinyguest" in ok(env.uri, f"guestinfo {NAME} --hostname")
    fsinfo = ok(env.uri, f"domfsinfo {NAME}")
    assert re.search(r"^\s*/mnt\s+vda\s+ext4\s+vda\s*$", fsinfo, re.M), fsinfo
    addrs = ok(env.uri, f"domifaddr {NAME} --source agent")
    assert re.search(r"^\s*lo\s+00:00:00:00:00:00\s+ipv4\s+127\.0\.0\.1/8", addrs, re.M), addrs


def test_4_freeze_thaw_trim(env):
    assert "Froze 1 filesystem(s)" in ok(env.uri, f"domfsfreeze {NAME}")
    # frozen: a write in the guest waits until the thaw
    at = env.console.mark()
    env.console.send("echo x > /mnt/x && echo WROTE-$((2+2))\n")
    assert "Thawed 1 filesystem(s)" in ok(env.uri, f"domfsthaw {NAME}")
    env.console.wait("WROTE-4", since=at)
    ok(env.uri, f"domfstrim {NAME} --minimum 0")
    r = virsh(env.uri, f"domfstrim {NAME} --mountpoint /mnt")
    assert r.rc != 0 and "Specifying mount point is not supported for now" in r.err


def test_5_set_user_password(env):
    # busybox has no chpasswd: the agent's error reaches the client as libvirt words it
    r = virsh(env.uri, f"set-user-password {NAME} root s3cret")
    assert r.rc != 0
    assert ("error: internal error: unable to execute QEMU agent command "
            "'guest-set-user-password': cannot find 'passwd' program in PATH") in r.err


def test_6_stopped_agent_times_out_others_go_on(env):
    env.console.run(f"kill -STOP {env.agent_pid}; echo STOPPED-$((3+3))", "STOPPED-6")
    done = threading.Event()
    result = {}

    def slow() -> None:
        result["r"] = virsh(env.uri, f"domhostname {NAME} --source agent")
        done.set()

    t = threading.Thread(target=slow)
    t.start()
    try:
        # while that call waits for the agent, other calls on the guest are answered
        others = 0
        while not done.is_set():
            assert "running" in ok(env.uri, f"dominfo {NAME}")
            assert "state.state=1" in ok(env.uri, f"domstats {NAME} --state")
            others += 1
        assert others >= 1
    finally:
        t.join()
    assert result["r"].rc != 0 and NOT_AVAILABLE in result["r"].err
    env.console.run(f"kill -CONT {env.agent_pid}; echo CONT-$((4+4))", "CONT-8")
    # the late reply is dropped by the next sync: the next call gets its own answer
    assert ok(env.uri, f"domhostname {NAME} --source agent").strip() == "tinyguest"


def test_7_response_timeout(env):
    import libvirt

    conn = libvirt.open(env.uri)
    try:
        dom = conn.lookupByName(NAME)
        with pytest.raises(libvirt.libvirtError) as exc:
            dom.agentSetResponseTimeout(-3)
        assert "guest agent timeout '-3' is less than the minimum '-2'" in str(exc.value)
        assert dom.agentSetResponseTimeout(10) == 0
        assert dom.hostname(libvirt.VIR_DOMAIN_GET_HOSTNAME_AGENT) == "tinyguest"
    finally:
        conn.close()


def test_8_daemon_restart_reconnects(env, tmp_path):
    os.kill(env.daemon.proc.pid, signal.SIGKILL)
    env.daemon.proc.wait()
    env.console.close()
    env.events.close()
    env.daemon = start_daemon(env.daemon.root)
    assert qemu_uri(env.daemon) == env.uri
    wait_for(lambda: virsh(env.uri, f"domstate {NAME}").out.strip() == "running")
    assert _channel_state(env.uri) == "connected"
    assert ok(env.uri, f"domhostname {NAME} --source agent").strip() == "tinyguest"
    env.console = Console(env.uri, NAME)


def test_9_reboot_and_shutdown_through_the_agent(env):
    import libvirt

    env.events = EventLog(env.uri, {"agent": libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE,
                                    "reboot": libvirt.VIR_DOMAIN_EVENT_ID_REBOOT})
    at = env.console.mark()
    ok(env.uri, f"reboot {NAME} --mode agent")
    env.console.wait("GUEST READY", since=at, timeout=120)
    env.events.wait((NAME, "reboot"))
    env.events.wait((NAME, "agent", DISCONNECTED, REASON_CHANNEL))
    r = virsh(env.uri, f"shutdown {NAME} --mode agent")
    assert r.rc != 0 and NOT_CONNECTED in r.err
    _start_agent(env)
    env.events.wait((NAME, "agent", CONNECTED, REASON_CHANNEL))
    ok(env.uri, f"shutdown {NAME} --mode agent")
    wait_for(lambda: virsh(env.uri, f"domstate {NAME}").out.strip() == "shut off", timeout=60)
    r = virsh(env.uri, f"domtime {NAME}")
    assert r.rc != 0 and "domain is not running" in r.err
