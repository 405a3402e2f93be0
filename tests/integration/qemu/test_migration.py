"""Live migration between two pyvirtd daemons on this machine (drivers/qemu/migration.py).

Two daemons with their own --root stand in for two hosts; each runs its own
QEMU processes, and QEMU's migration stream goes over TCP on the loopback
between them.  Stock clients drive it: ``virsh migrate --live`` (managed
direct migration, the client library running Begin3/Prepare3/Perform3/
Finish3/Confirm3 with Params) and python-libvirt's ``migrate`` (the same
steps without Params) and ``migrate3``.

The proof that the guest moved rather than booted again: the shell session
on the tiny TCG guest's console keeps its variable and tmpfs file, and a
background counter the shell started before the migration is still counting
on the destination.  Events and states are libvirt 9.0's: source
suspended/migrated then stopped/migrated, shut off (migrated); destination
started/migrated then resumed/migrated, running (migrated).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon_helpers import (guest_pids, guest_xml, kill_guests, needs_qemu, ok, qemu_uri,
                            start_daemon, stop_daemon, virsh, wait_for)
from guest_helpers import PROMPT, Console, Events, tiny_guest, tiny_xml

pytestmark = needs_qemu

# virDomainEventType and details, as libvirt numbers them
DEFINED, UNDEFINED, STARTED, SUSPENDED, RESUMED, STOPPED = 0, 1, 2, 3, 4, 5
DEFINED_ADDED, DEFINED_UPDATED, UNDEFINED_REMOVED = 0, 1, 0
STARTED_MIGRATED, SUSPENDED_MIGRATED, RESUMED_MIGRATED, STOPPED_MIGRATED = 1, 1, 1, 3
STOPPED_FAILED = 5
SUSPENDED_PAUSED = 0
BOOT_TIMEOUT = 60
# virDomainMigrateFlags
LIVE, PERSIST_DEST, UNDEFINE_SOURCE, PAUSED = 1, 8, 16, 32


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """Two daemons, "host a" and "host b"."""
    base = tmp_path_factory.mktemp("migration")
    started = []
    try:
        for name in ("a", "b"):
            started.append(start_daemon(base / name / "pyvirtd"))
        yield tuple(started)
    finally:
        for d in started:
            stop_daemon(d)
            kill_guests(d.root)


@pytest.fixture(scope="module")
def uris(hosts):
    return tuple(qemu_uri(d) for d in hosts)


@pytest.fixture(scope="module")
def events(uris):
    evs = [Events(u) for u in uris]
    try:
        yield evs
    finally:
        for ev in evs:
            ev.close()


def lifecycle(ev: Events, n: int, name: str) -> list[tuple[int, int]]:
    return [e[1:] for e in ev.since(n) if e[0] == name and e[1] != "reboot"]


def reason(uri: str, name: str) -> str:
    return ok(uri, f"domstate {name} --reason").strip()


def err(uri: str, commands: str) -> str:
    r = virsh(uri, commands, timeout=120)
    assert r.rc != 0, f"virsh {commands!r} succeeded"
    return r.err


def persistent(uri: str, name: str) -> str:
    return re.search(r"Persistent:\s+(\w+)", ok(uri, f"dominfo {name}")).group(1)


def shell(uri: str, name: str) -> Console:
    con = Console(uri, name)
    con.send("\n")
    con.wait(re.escape(PROMPT))
    return con


def counter(con: Console) -> int:
    return int(con.run("cat /tmp/count", r"\n(\d+)\r?\n").group(1))


def check_session(uri: str, name: str, marker: str, counted: int) -> None:
    """The shell that set MARK is the one answering on ``uri``, and its counter goes on."""
    con = shell(uri, name)
    try:
        con.run('echo "var=$MARK"; cat /tmp/marker', rf"var={marker}\r?\n{marker}-file")
        first = counter(con)
        assert first >= counted
        wait_for(lambda: counter(con) > first, timeout=30)
    finally:
        con.close()


@pytest.fixture(scope="module")
def guest(uris, tmp_path_factory):
    """mig1: the tiny Linux guest, persistent on host a, booted to its shell, with a
    background counter writing /tmp/count."""
    ua, ub = uris
    path = tmp_path_factory.mktemp("mig") / "mig1.xml"
    path.write_text(tiny_xml("mig1", tiny_guest()))
    ok(ua, f"define {path}")
    ok(ua, "start mig1 --paused")
    con = Console(ua, "mig1")
    try:
        ok(ua, "resume mig1")
        con.wait("GUEST READY", timeout=BOOT_TIMEOUT)
        con.wait(re.escape(PROMPT))
        # written aside and renamed: a reader never sees the file empty
        con.run("(i=0; while true; do i=$((i+1)); echo $i > /tmp/c.new; "
                "mv /tmp/c.new /tmp/count; sleep 1; done) & echo started-counter",
                r"started-counter\r?\n")
    finally:
        con.close()
    yield "mig1"
    for u in uris:
        virsh(u, "destroy mig1; undefine mig1")


def test_virsh_migrate_live_moves_the_running_session(hosts, uris, events, guest):
    ua, ub = uris
    con = shell(ua, guest)
    con.run("MARK=mg-$((40+2)); echo mg-42-file > /tmp/marker; echo set-$MARK", r"set-mg-42")
    wait_for(lambda: counter(con) > 1, timeout=30)
    counted = counter(con)
    con.close()
    na, nb = len(events[0].events), len(events[1].events)

    r = virsh(ua, f"migrate --live {guest} '{ub}'", timeout=180)
    assert r.rc == 0, r.err

    # source: stopped (migrated), definition kept; no QEMU left there
    assert reason(ua, guest) == "shut off (migrated)"
    assert persistent(ua, guest) == "yes"
    assert guest_pids(hosts[0].root) == []
    wait_for(lambda: (STOPPED, STOPPED_MIGRATED) in lifecycle(events[0], na, guest))
    assert lifecycle(events[0], na, guest) == [(SUSPENDED, SUSPENDED_MIGRATED),
                                               (STOPPED, STOPPED_MIGRATED)]
    # destination: running (migrated), transient, the same shell session
    assert reason(ub, guest) == "running (migrated)"
    assert persistent(ub, guest) == "no"
    assert len(guest_pids(hosts[1].root)) == 1
    wait_for(lambda: (RESUMED, RESUMED_MIGRATED) in lifecycle(events[1], nb, guest))
    assert lifecycle(events[1], nb, guest) == [(STARTED, STARTED_MIGRATED),
                                               (RESUMED, RESUMED_MIGRATED)]
    check_session(ub, guest, "mg-42", counted)
    # the source's last job is the outgoing migration, completed
    stats = ok(ua, f"domjobinfo {guest} --completed")
    assert re.search(r"Job type:\s+Completed", stats), stats
    assert re.search(r"Operation:\s+Outgoing migration", stats), stats


def test_python_migrate_back_persistent(hosts, uris, events, guest):
    """python-libvirt virDomainMigrate (the steps without Params), back to host a,
    where the guest is defined: --persistent updates that definition."""
    import libvirt

    ua, ub = uris
    na, nb = len(events[0].events), len(events[1].events)
    src, dst = libvirt.open(ub), libvirt.open(ua)
    try:
        moved = src.lookupByName(guest).migrate(dst, LIVE | PERSIST_DEST | UNDEFINE_SOURCE,
                                                None, None, 0)
        assert moved.name() == guest and moved.isActive() == 1
    finally:
        src.close()
        dst.close()
    assert reason(ua, guest) == "running (migrated)"
    assert persistent(ua, guest) == "yes"
    assert "mig1" not in ok(ub, "list --all --name")     # transient there: gone
    assert guest_pids(hosts[1].root) == []
    wait_for(lambda: (RESUMED, RESUMED_MIGRATED) in lifecycle(events[0], na, guest))
    assert lifecycle(events[0], na, guest) == [(STARTED, STARTED_MIGRATED),
                                               (DEFINED, DEFINED_UPDATED),
                                               (RESUMED, RESUMED_MIGRATED)]
    wait_for(lambda: (STOPPED, STOPPED_MIGRATED) in lifecycle(events[1], nb, guest))
    check_session(ua, guest, "mg-42", 1)


def test_python_migrate3_persistent_undefine_source(hosts, uris, events, guest):
    """migrate3 (Params) with --persistent --undefinesource: the definition moves too."""
    import libvirt

    ua, ub = uris
    na, nb = len(events[0].events), len(events[1].events)
    src, dst = libvirt.open(ua), libvirt.open(ub)
    try:
        moved = src.lookupByName(guest).migrate3(
            dst, {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 1024},
            LIVE | PERSIST_DEST | UNDEFINE_SOURCE)
        assert moved.name() == guest
    finally:
        src.close()
        dst.close()
    assert "mig1" not in ok(ua, "list --all --name")
    assert reason(ub, guest) == "running (migrated)"
    assert persistent(ub, guest) == "yes"
    assert "<name>mig1</name>" in ok(ub, f"dumpxml --inactive {guest}")
    wait_for(lambda: (UNDEFINED, UNDEFINED_REMOVED) in lifecycle(events[0], na, guest))
    assert lifecycle(events[0], na, guest) == [(SUSPENDED, SUSPENDED_MIGRATED),
                                               (STOPPED, STOPPED_MIGRATED),
                                               (UNDEFINED, UNDEFINED_REMOVED)]
    wait_for(lambda: (RESUMED, RESUMED_MIGRATED) in lifecycle(events[1], nb, guest))
    assert lifecycle(events[1], nb, guest) == [(STARTED, STARTED_MIGRATED),
                                               (DEFINED, DEFINED_ADDED),
                                               (RESUMED, RESUMED_MIGRATED)]
    check_session(ub, guest, "mg-42", 1)


# -- errors: the guest stays where it was ---------------------------------------------

@pytest.fixture
def firmware_guest(uris, tmp_path):
    """mig2: a firmware-only guest defined on host a (cheap to start)."""
    ua, _ = uris
    path = tmp_path / "mig2.xml"
    path.write_text(guest_xml("mig2"))
    ok(ua, f"define {path}")
    yield path
    for u in uris:
        virsh(u, "destroy mig2; undefine mig2")


def test_migrate_shut_off_guest_is_refused(uris, firmware_guest):
    ua, ub = uris
    e = err(ua, f"migrate --live mig2 '{ub}'")
    assert "Requested operation is not valid: domain is not running" in e
    assert "mig2" not in ok(ub, "list --all --name")


def test_migrate_onto_a_running_namesake_is_refused(hosts, uris, firmware_guest):
    ua, ub = uris
    ok(ua, "start mig2")
    ok(ub, f"define {firmware_guest}")      # the same name, another uuid, on host b
    uuid_a = ok(ua, "domuuid mig2").strip()
    e = err(ua, f"migrate --live mig2 '{ub}'")
    assert f"operation failed: domain 'mig2' already exists with uuid " in e
    assert uuid_a not in e
    # the same guest (name and uuid) already running on host b
    ok(ub, "undefine mig2")
    same = firmware_guest.with_name("same.xml")
    same.write_text(firmware_guest.read_text().replace(
        "<name>mig2</name>", f"<name>mig2</name><uuid>{uuid_a}</uuid>"))
    ok(ub, f"define {same}; start mig2")
    e = err(ua, f"migrate --live mig2 '{ub}'")
    assert "Requested operation is not valid: domain 'mig2' is already active" in e
    assert reason(ua, "mig2") == "running (booted)"
    assert reason(ub, "mig2") == "running (booted)"


def test_paused_guest_arrives_paused_and_tunnelled_is_refused(uris, events, firmware_guest):
    ua, ub = uris
    ok(ua, "start mig2 --paused")
    e = err(ua, f"migrate --live --p2p --tunnelled mig2 '{ub}'")
    assert "tunnelled migration is not supported by pyvirtd yet" in e
    assert reason(ua, "mig2") == "paused (user)"
    nb = len(events[1].events)
    ok(ua, f"migrate --live mig2 '{ub}'")
    assert reason(ub, "mig2") == "paused (user)"
    wait_for(lambda: (SUSPENDED, SUSPENDED_PAUSED) in lifecycle(events[1], nb, "mig2"))
    assert lifecycle(events[1], nb, "mig2") == [(STARTED, STARTED_MIGRATED),
                                                (SUSPENDED, SUSPENDED_PAUSED)]
    assert reason(ua, "mig2") == "shut off (migrated)"


def test_p2p_virsh_and_migrate_to_uri3(hosts, uris, events, firmware_guest):
    """--p2p: the source daemon calls the destination daemon itself (virsh, then
    python-libvirt's migrateToURI3 with nova's persistence flags, and back)."""
    import libvirt

    ua, ub = uris
    ok(ua, "start mig2")
    na, nb = len(events[0].events), len(events[1].events)
    ok(ua, f"migrate --live --p2p mig2 '{ub}'")
    assert reason(ua, "mig2") == "shut off (migrated)"
    assert reason(ub, "mig2") == "running (migrated)"
    wait_for(lambda: (RESUMED, RESUMED_MIGRATED) in lifecycle(events[1], nb, "mig2"))
    assert lifecycle(events[1], nb, "mig2") == [(STARTED, STARTED_MIGRATED),
                                                (RESUMED, RESUMED_MIGRATED)]
    wait_for(lambda: (STOPPED, STOPPED_MIGRATED) in lifecycle(events[0], na, "mig2"))
    assert lifecycle(events[0], na, "mig2") == [(SUSPENDED, SUSPENDED_MIGRATED),
                                               (STOPPED, STOPPED_MIGRATED)]

    # back to host a with migrateToURI3, as nova calls it
    conn = libvirt.open(ub)
    try:
        conn.lookupByName("mig2").migrateToURI3(
            ua, {libvirt.VIR_MIGRATE_PARAM_DEST_NAME: "mig2"},
            LIVE | libvirt.VIR_MIGRATE_PEER2PEER | PERSIST_DEST | UNDEFINE_SOURCE)
    finally:
        conn.close()
    assert reason(ua, "mig2") == "running (migrated)"
    assert persistent(ua, "mig2") == "yes"
    assert "mig2" not in ok(ub, "list --all --name")

    # a refusal by the destination reaches the client in the destination's words
    ok(ub, f"define {firmware_guest}")
    e = err(ua, f"migrate --live --p2p mig2 '{ub}'")
    assert "operation failed: domain 'mig2' already exists with uuid" in e
    assert reason(ua, "mig2") == "running (migrated)"


def test_domjobabort_cancels_and_the_guest_stays(hosts, uris, events, guest):
    """A migration slowed to 1 MiB/s shows as the guest's job on the source;
    domjobabort ends it, the guest runs on where it was and nothing is left
    on the destination."""
    import subprocess

    dst, src = uris     # the guest is on host b after the tests above
    assert reason(src, guest) == "running (migrated)"
    proc = subprocess.Popen(["virsh", "-c", src, "migrate", "--live", "--bandwidth", "1",
                             guest, dst], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    try:
        wait_for(lambda: "Unbounded" in virsh(src, f"domjobinfo {guest}").out, timeout=60)
        assert re.search(r"Operation:\s+Outgoing migration", ok(src, f"domjobinfo {guest}"))
        ok(src, f"domjobabort {guest}")
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "operation aborted" in stderr, stderr
    assert ok(src, f"domstate {guest}").strip() == "running"
    wait_for(lambda: guest not in ok(dst, "list --all --name"))
    assert guest_pids(hosts[0].root) == []   # host a: the destination
    check_session(src, guest, "mg-42", 1)


def test_prepared_migration_abandoned_by_its_client(hosts, uris, events, firmware_guest):
    """A client that prepared an incoming migration and went away before Finish
    (here pyvirtd's own RPC client, which can call Prepare alone): the waiting
    QEMU is killed, shut off (failed), and the transient guest is gone."""
    import trio

    from pyvirtd.rpc import _generated as P
    from pyvirtd.rpc.peer import PeerConnection

    ua, ub = uris
    xml = firmware_guest.read_text().replace("<name>mig2</name>", "<name>mig3</name>")
    nb = len(events[1].events)

    async def prepare_and_leave() -> str:
        async with await PeerConnection.open(ub) as peer:
            param = P.remote_typed_param("destination_xml",
                                         P.remote_typed_param_value(P.VIR_TYPED_PARAM_STRING, xml))
            reply = await peer.call("DOMAIN_MIGRATE_PREPARE3_PARAMS", [param], b"", LIVE)
            assert reason(ub, "mig3") == "paused (migrating)"
            return reply.uri_out

    uri_out = trio.run(prepare_and_leave)
    assert re.fullmatch(r"tcp://[^:]+:(\d+)", uri_out)
    assert 49152 <= int(uri_out.rsplit(":", 1)[1]) <= 49215
    wait_for(lambda: "mig3" not in ok(ub, "list --all --name"))
    wait_for(lambda: (STOPPED, STOPPED_FAILED) in lifecycle(events[1], nb, "mig3"))
    assert lifecycle(events[1], nb, "mig3") == [(STARTED, STARTED_MIGRATED),
                                                (STOPPED, STOPPED_FAILED)]
    assert not [pid for pid in guest_pids(hosts[1].root)
                if b"mig3" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_offline_migration_moves_the_definition(uris, events, firmware_guest):
    """--offline: a shut-off guest's definition moves (with --persistent, which
    libvirt requires), nothing runs on either side."""
    ua, ub = uris
    e = err(ua, f"migrate --offline mig2 '{ub}'")
    assert ("Requested operation is not valid: offline migration must be specified with "
            "the persistent flag set") in e
    na, nb = len(events[0].events), len(events[1].events)
    ok(ua, f"migrate --offline --persistent --undefinesource mig2 '{ub}'")
    assert "mig2" not in ok(ua, "list --all --name")
    assert reason(ub, "mig2") == "shut off (unknown)"
    assert persistent(ub, "mig2") == "yes"
    wait_for(lambda: (DEFINED, DEFINED_ADDED) in lifecycle(events[1], nb, "mig2"))
    assert lifecycle(events[1], nb, "mig2") == [(DEFINED, DEFINED_ADDED)]
    wait_for(lambda: (UNDEFINED, UNDEFINED_REMOVED) in lifecycle(events[0], na, "mig2"))
    assert lifecycle(events[0], na, "mig2") == [(UNDEFINED, UNDEFINED_REMOVED)]
    # and back with p2p, the source keeping its definition this time
    ok(ub, f"migrate --offline --persistent --p2p mig2 '{ua}'")
    assert persistent(ua, "mig2") == "yes" and persistent(ub, "mig2") == "yes"


def test_performed_but_never_confirmed(hosts, uris, firmware_guest):
    """A client that ran Prepare and Perform and vanished before Finish/Confirm:
    the source guest stays paused (migrating), as libvirt leaves it, and can be
    resumed and migrated again; the destination's waiting QEMU is killed."""
    import trio

    from pyvirtd.rpc import _generated as P
    from pyvirtd.rpc.peer import PeerConnection

    ua, ub = uris
    ok(ua, "start mig2")
    ref = P.remote_nonnull_domain("mig2", bytes.fromhex(ok(ua, "domuuid mig2").strip()
                                                        .replace("-", "")),
                                  int(ok(ua, "domid mig2").strip()))

    def param(name: str, value: str):
        return P.remote_typed_param(name, P.remote_typed_param_value(P.VIR_TYPED_PARAM_STRING,
                                                                     value))

    async def migrate_and_leave() -> None:
        async with await PeerConnection.open(ua) as src, \
                await PeerConnection.open(ub) as dst:
            begun = await src.call("DOMAIN_MIGRATE_BEGIN3_PARAMS", ref, [], LIVE)
            prepared = await dst.call("DOMAIN_MIGRATE_PREPARE3_PARAMS",
                                      [param("destination_xml", begun.xml)],
                                      begun.cookie_out, LIVE)
            await src.call("DOMAIN_MIGRATE_PERFORM3_PARAMS", ref, None,
                           [param("migrate_uri", prepared.uri_out)], prepared.cookie_out, LIVE)

    trio.run(migrate_and_leave)
    assert reason(ua, "mig2") == "paused (migrating)"
    wait_for(lambda: "mig2" not in ok(ub, "list --all --name"))
    ok(ua, "resume mig2")
    ok(ua, f"migrate --live mig2 '{ub}'")
    assert reason(ub, "mig2") == "running (migrated)"


def test_speed_and_downtime(uris, firmware_guest):
    """migrate-setspeed is kept per guest, and set in QEMU when changed while it runs;
    migrate-setmaxdowntime goes to QEMU and needs a running guest."""
    ua, ub = uris
    assert ok(ua, "migrate-getspeed mig2").strip() == "8796093022207"
    e = err(ua, "migrate-setmaxdowntime mig2 500")
    assert "Requested operation is not valid: domain is not running" in e
    ok(ua, "migrate-setspeed mig2 64")
    ok(ua, "start mig2")
    assert ok(ua, "migrate-getspeed mig2").strip() == "64"
    ok(ua, "migrate-setspeed mig2 32")
    qmp = ok(ua, "qemu-monitor-command mig2 '{\"execute\":\"query-migrate-parameters\"}'")
    assert f'"max-bandwidth":{32 << 20}' in qmp.replace(" ", ""), qmp
    ok(ua, "migrate-setmaxdowntime mig2 500")
    assert ok(ua, "migrate-getmaxdowntime mig2").strip() == "500"     # ms
    e = err(ua, "migrate-setspeed mig2 8796093022208")
    assert "bandwidth must be less than 8796093022208" in e
    ok(ua, "migrate-setspeed mig2 0")
    assert ok(ua, "migrate-getspeed mig2").strip() == "8796093022207"
