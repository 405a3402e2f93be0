"""The host secret driver through qemu:///session and lxc:///: virsh and python-libvirt.

Every secret procedure and list filter, events, persistence across a restart
(ephemeral secrets do not survive it), values encrypted at rest, private
values refused to clients, and bad input refused with libvirt's errors
leaving the secrets directory as it was.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from tests.conftest import REPO, RunningDaemon, start_daemon, stop_daemon, virsh
from tests.integration.qemu.daemon_helpers import EventCollector, needs_qemu, qemu_uri, wait_for
from tests.integration.test_protocol_robustness import RawClient, words

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

UUID_A = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
UUID_B = "1b92e6c3-9514-4c34-a9e7-32ddd3091e70"
UUID_C = "2ca3f7d4-a625-4d45-b0f8-43eee41a2f81"
# one secret per usage type libvirt knows, with the element naming the use
USAGES = {
    "volume": (libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, "volume", "/var/lib/images/enc.qcow2"),
    "ceph": (libvirt.VIR_SECRET_USAGE_TYPE_CEPH, "name", "client.admin secret"),
    "iscsi": (libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, "target", "libvirtiscsi"),
    "tls": (libvirt.VIR_SECRET_USAGE_TYPE_TLS, "name", "tls-client"),
    "vtpm": (libvirt.VIR_SECRET_USAGE_TYPE_VTPM, "name", "vtpm-state"),
}


def secret_xml(usage: str | None = None, uuid: str | None = None, *, ephemeral: bool = False,
               private: bool = False, usage_id: str | None = None) -> str:
    yn = lambda b: "yes" if b else "no"  # noqa: E731
    body = f"<uuid>{uuid}</uuid>" if uuid else ""
    if usage:
        _, child, default = USAGES[usage]
        body += f"<usage type='{usage}'><{child}>{usage_id or default}</{child}></usage>"
    return f"<secret ephemeral='{yn(ephemeral)}' private='{yn(private)}'>{body}</secret>"


def secrets_dir(d: RunningDaemon) -> Path:
    return d.root / "lib" / "secrets"


def snapshot(d: RunningDaemon) -> dict[str, bytes]:
    """Every file of the secrets directory with its content."""
    sd = secrets_dir(d)
    return {p.name: p.read_bytes() for p in sorted(sd.iterdir())} if sd.is_dir() else {}


@pytest.fixture
def daemon(tmp_path: Path):
    d = start_daemon(tmp_path / "pyvirtd")
    yield d
    stop_daemon(d)


def uris(d: RunningDaemon) -> list[str]:
    """The hypervisor URIs this daemon serves, both reaching the one secret driver."""
    found = [qemu_uri(d)]
    if os.geteuid() == 0:
        found.append(d.uri("lxc:///system"))
    return found


# ------------------------------------------------------------------ virsh

@needs_qemu
def test_virsh_every_secret_command(daemon: RunningDaemon, tmp_path: Path) -> None:
    uri = qemu_uri(daemon)
    xml = tmp_path / "s.xml"
    xml.write_text(secret_xml("ceph", UUID_A))
    value = tmp_path / "value"
    value.write_bytes(b"s3cr3t")
    r = virsh(uri, f"secret-list; secret-define {xml}; secret-list; secret-dumpxml {UUID_A}; "
                   f"secret-set-value {UUID_A} --file {value} --plain; "
                   f"secret-get-value {UUID_A}; secret-get-value {UUID_A} --plain; "
                   f"secret-undefine {UUID_A}; secret-list")
    assert r.rc == 0, r.err
    assert r.out == (
        " UUID   Usage\n---------------\n\n"
        f"Secret {UUID_A} created\n\n"
        " UUID                                   Usage\n"
        + "-" * 66 + "\n"
        f" {UUID_A}   ceph client.admin secret\n\n"
        "<secret ephemeral='no' private='no'>\n"
        f"  <uuid>{UUID_A}</uuid>\n"
        "  <usage type='ceph'>\n"
        "    <name>client.admin secret</name>\n"
        "  </usage>\n"
        "</secret>\n\n"
        "Secret value set\n\n"
        f"{base64.b64encode(b's3cr3t').decode()}\n"
        "s3cr3t\n"
        f"Secret {UUID_A} deleted\n\n"
        " UUID   Usage\n---------------\n\n")


@needs_qemu
def test_virsh_list_filters(daemon: RunningDaemon, tmp_path: Path) -> None:
    uri = qemu_uri(daemon)
    defs = {"e-p": secret_xml("tls", ephemeral=True, private=True, usage_id="ep"),
            "e-n": secret_xml("tls", ephemeral=True, usage_id="en"),
            "p-p": secret_xml("tls", private=True, usage_id="pp"),
            "p-n": secret_xml("tls", usage_id="pn")}
    for name, text in defs.items():
        (tmp_path / name).write_text(text)
        r = virsh(uri, f"secret-define {tmp_path / name}")
        assert r.rc == 0, r.err

    def listed(flags: str) -> set[str]:
        r = virsh(uri, f"secret-list {flags}")
        assert r.rc == 0, r.err
        return {line.split()[-1] for line in r.out.splitlines()[2:] if line.strip()}

    assert listed("") == {"ep", "en", "pp", "pn"}
    assert listed("--ephemeral") == {"ep", "en"}
    assert listed("--no-ephemeral") == {"pp", "pn"}
    assert listed("--private") == {"ep", "pp"}
    assert listed("--no-private") == {"en", "pn"}
    assert listed("--ephemeral --no-private") == {"en"}
    assert listed("--ephemeral --no-ephemeral --private") == {"ep", "pp"}


# ------------------------------------------------------------ python-libvirt

@pytest.mark.parametrize("scheme", ["qemu", "lxc"])
def test_python_every_call_and_filter(daemon: RunningDaemon, scheme: str) -> None:
    if scheme == "qemu" and not os.access("/usr/bin/qemu-system-x86_64", os.X_OK):
        pytest.skip("qemu-system-x86_64 not installed")
    if scheme == "lxc" and os.geteuid() != 0:
        pytest.skip("the LXC driver needs root")
    uri = qemu_uri(daemon) if scheme == "qemu" else daemon.uri("lxc:///system")
    conn = libvirt.open(uri)
    try:
        assert conn.numOfSecrets() == 0 and conn.listSecrets() == [] and \
            conn.listAllSecrets() == []
        made = {}
        for i, (usage, (number, _, usage_id)) in enumerate(USAGES.items()):
            with pytest.raises(libvirt.libvirtError) as exc:     # nova's start-up probe
                conn.secretLookupByUsage(number, usage_id)
            assert exc.value.get_error_code() == libvirt.VIR_ERR_NO_SECRET
            assert exc.value.get_error_message() == \
                f"Secret not found: no secret with matching usage '{usage_id}'"
            sec = conn.secretDefineXML(secret_xml(usage, ephemeral=i % 2 == 1,
                                                  private=i % 3 == 0))
            assert (sec.usageType(), sec.usageID()) == (number, usage_id)
            assert conn.secretLookupByUsage(number, usage_id).UUIDString() == sec.UUIDString()
            assert conn.secretLookupByUUIDString(sec.UUIDString()).usageID() == usage_id
            assert conn.secretLookupByUUID(sec.UUID()).UUIDString() == sec.UUIDString()
            made[usage] = sec
        # a usage id of another type is another usage
        with pytest.raises(libvirt.libvirtError) as exc:
            conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, "libvirtiscsi")
        assert exc.value.get_error_code() == libvirt.VIR_ERR_NO_SECRET

        assert conn.numOfSecrets() == 5
        assert sorted(conn.listSecrets()) == sorted(s.UUIDString() for s in made.values())
        by_flags = lambda f: {s.usageID() for s in conn.listAllSecrets(f)}  # noqa: E731
        ids = {u: USAGES[u][2] for u in USAGES}
        # ephemeral: ceph, tls (odd positions); private: volume, vtpm (positions 0, 3)
        assert by_flags(0) == set(ids.values())
        assert by_flags(libvirt.VIR_CONNECT_LIST_SECRETS_EPHEMERAL) == {ids["ceph"], ids["tls"]}
        assert by_flags(libvirt.VIR_CONNECT_LIST_SECRETS_NO_EPHEMERAL) == \
            {ids["volume"], ids["iscsi"], ids["vtpm"]}
        assert by_flags(libvirt.VIR_CONNECT_LIST_SECRETS_PRIVATE) == {ids["volume"], ids["tls"]}
        assert by_flags(libvirt.VIR_CONNECT_LIST_SECRETS_NO_PRIVATE) == \
            {ids["ceph"], ids["iscsi"], ids["vtpm"]}
        assert by_flags(libvirt.VIR_CONNECT_LIST_SECRETS_EPHEMERAL
                        | libvirt.VIR_CONNECT_LIST_SECRETS_PRIVATE) == {ids["tls"]}
        with pytest.raises(libvirt.libvirtError) as exc:
            conn.listAllSecrets(1 << 7)
        assert exc.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG

        public, private = made["iscsi"], made["volume"]
        with pytest.raises(libvirt.libvirtError) as exc:
            public.value()
        assert exc.value.get_error_code() == libvirt.VIR_ERR_NO_SECRET
        assert exc.value.get_error_message() == \
            f"Secret not found: secret '{public.UUIDString()}' does not have a value"
        public.setValue(b"\x00binary\xffvalue")
        assert public.value() == b"\x00binary\xffvalue"
        private.setValue(b"only the daemon may read this")
        with pytest.raises(libvirt.libvirtError) as exc:
            private.value()
        assert exc.value.get_error_code() == libvirt.VIR_ERR_INVALID_SECRET
        assert exc.value.get_error_message() == "Invalid secret: secret is private"
        assert "<usage type='volume'>" in private.XMLDesc()

        for sec in made.values():
            sec.undefine()
        assert conn.numOfSecrets() == 0
        with pytest.raises(libvirt.libvirtError) as exc:
            public.value()
        assert exc.value.get_error_code() == libvirt.VIR_ERR_NO_SECRET
    finally:
        conn.close()


@needs_qemu
def test_events_lifecycle_and_value_changed(daemon: RunningDaemon) -> None:
    EventCollector._start_loop()           # python-libvirt's event loop, once per process
    uri = qemu_uri(daemon)
    listener = libvirt.open(uri)
    seen: list[tuple] = []
    cb_life = listener.secretEventRegisterAny(
        None, libvirt.VIR_SECRET_EVENT_ID_LIFECYCLE,
        lambda c, s, event, detail, o: seen.append(("life", s.UUIDString(), event)), None)
    cb_value = listener.secretEventRegisterAny(
        None, libvirt.VIR_SECRET_EVENT_ID_VALUE_CHANGED,
        lambda c, s, o: seen.append(("value", s.UUIDString())), None)
    # lxc:// reaches the same driver, so its calls are seen by the qemu:// listener
    actor = libvirt.open(uris(daemon)[-1])
    try:
        sec = actor.secretDefineXML(secret_xml("ceph", UUID_A))
        sec.setValue(b"v")
        sec.undefine()
        expected = [("life", UUID_A, libvirt.VIR_SECRET_EVENT_DEFINED), ("value", UUID_A),
                    ("life", UUID_A, libvirt.VIR_SECRET_EVENT_UNDEFINED)]
        wait_for(lambda: len(seen) >= 3)
        assert seen == expected
        listener.secretEventDeregisterAny(cb_life)
        listener.secretEventDeregisterAny(cb_value)
    finally:
        actor.close()
        listener.close()


# ---------------------------------------------------------- on disk, restarts

def restart(d: RunningDaemon) -> None:
    stop_daemon(d)
    d.proc = start_daemon(d.root).proc


@needs_qemu
def test_restart_keeps_persistent_and_loses_ephemeral(daemon: RunningDaemon) -> None:
    uri = qemu_uri(daemon)
    value = b"correct horse battery staple"
    conn = libvirt.open(uri)
    conn.secretDefineXML(secret_xml("iscsi", UUID_A)).setValue(value)
    conn.secretDefineXML(secret_xml("vtpm", UUID_C, private=True)).setValue(b"private")
    conn.secretDefineXML(secret_xml("ceph", UUID_B, ephemeral=True)).setValue(b"ephemeral")
    conn.close()

    files = snapshot(daemon)
    assert sorted(files) == sorted(f"{u}.{ext}" for u in (UUID_A, UUID_C)
                                   for ext in ("aes256gcm", "xml"))   # nothing of UUID_B
    sd = secrets_dir(daemon)
    assert stat.S_IMODE(sd.stat().st_mode) == 0o700
    for name in files:
        assert stat.S_IMODE((sd / name).stat().st_mode) == 0o600
    key_file = daemon.root / "lib" / "secrets-encryption-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32
    for blob in files.values():
        assert value not in blob and base64.b64encode(value) not in blob
    # the format is what the store documents: nonce, then GCM with the UUID as data
    stored = files[f"{UUID_A}.aes256gcm"]
    assert AESGCM(key_file.read_bytes()).decrypt(stored[:12], stored[12:],
                                                 UUID_A.encode()) == value

    restart(daemon)
    conn = libvirt.open(uri)
    try:
        assert sorted(s.UUIDString() for s in conn.listAllSecrets()) == sorted([UUID_A, UUID_C])
        found = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, "libvirtiscsi")
        assert found.value() == value
        private = conn.secretLookupByUUIDString(UUID_C)
        assert "private='yes'" in private.XMLDesc()
        with pytest.raises(libvirt.libvirtError) as exc:
            private.value()
        assert exc.value.get_error_code() == libvirt.VIR_ERR_INVALID_SECRET
        with pytest.raises(libvirt.libvirtError) as exc:    # nor can it be made public
            conn.secretDefineXML(secret_xml("vtpm", UUID_C))
        assert exc.value.get_error_message() == \
            "internal error: cannot change private flag on existing secret"
        with pytest.raises(libvirt.libvirtError) as exc:
            conn.secretLookupByUUIDString(UUID_B)
        assert exc.value.get_error_code() == libvirt.VIR_ERR_NO_SECRET
    finally:
        conn.close()


@needs_qemu
def test_persistent_ephemeral_switch_moves_files(daemon: RunningDaemon) -> None:
    uri = qemu_uri(daemon)
    conn = libvirt.open(uri)
    try:
        sec = conn.secretDefineXML(secret_xml("tls", UUID_A, ephemeral=True))
        sec.setValue(b"v1")
        assert snapshot(daemon) == {}
        conn.secretDefineXML(secret_xml("tls", UUID_A))            # now persistent
        assert sorted(snapshot(daemon)) == [f"{UUID_A}.aes256gcm", f"{UUID_A}.xml"]
        conn.secretDefineXML(secret_xml("tls", UUID_A, ephemeral=True))   # memory only again
        assert snapshot(daemon) == {}
        assert sec.value() == b"v1"
    finally:
        conn.close()


@needs_qemu
def test_key_from_systemd_credential(tmp_path: Path, monkeypatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    key = os.urandom(32)
    (creds / "secrets-encryption-key").write_bytes(key)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    d = start_daemon(tmp_path / "pyvirtd")
    try:
        conn = libvirt.open(qemu_uri(d))
        conn.secretDefineXML(secret_xml("ceph", UUID_A)).setValue(b"rbd key")
        conn.close()
        assert not (d.root / "lib" / "secrets-encryption-key").exists()
        stored = (secrets_dir(d) / f"{UUID_A}.aes256gcm").read_bytes()
        assert AESGCM(key).decrypt(stored[:12], stored[12:], UUID_A.encode()) == b"rbd key"
        restart(d)
        conn = libvirt.open(qemu_uri(d))
        assert conn.secretLookupByUUIDString(UUID_A).value() == b"rbd key"
        conn.close()
    finally:
        stop_daemon(d)


def test_bad_key_stops_the_daemon(tmp_path: Path) -> None:
    root = tmp_path / "pyvirtd"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "secrets-encryption-key").write_bytes(b"short")
    p = subprocess.run([sys.executable, "-m", "pyvirtd.cli", "--root", str(root)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    if "no qemu-system" in p.stderr and os.geteuid() != 0:
        pytest.skip("no hypervisor driver uses the secret subsystem here")
    assert p.returncode == 1
    assert (f"pyvirtd: secret subsystem: the secrets encryption key "
            f"'{root / 'lib' / 'secrets-encryption-key'}' must be 32 bytes, not 5") in p.stderr


# ---------------------------------------------------------------- bad input

@needs_qemu
def test_bad_input_is_refused_and_nothing_is_written(daemon: RunningDaemon) -> None:
    conn = libvirt.open(qemu_uri(daemon))
    try:
        sec = conn.secretDefineXML(secret_xml("ceph", UUID_A))
        sec.setValue(b"first")
        before = snapshot(daemon)

        def refused(call, code: int, message: str) -> None:
            with pytest.raises(libvirt.libvirtError) as exc:
                call()
            assert (exc.value.get_error_code(), exc.value.get_error_message()) == (code, message)
            assert snapshot(daemon) == before
            assert [s.UUIDString() for s in conn.listAllSecrets()] == [UUID_A]

        internal = libvirt.VIR_ERR_INTERNAL_ERROR
        refused(lambda: conn.secretDefineXML(secret_xml("ceph", UUID_B)), internal,
                f"internal error: a secret with UUID {UUID_A} already defined for use with "
                "client.admin secret")
        refused(lambda: conn.secretDefineXML(secret_xml("ceph", UUID_A, usage_id="other")),
                internal, f"internal error: a secret with UUID {UUID_A} is already defined for "
                "use with client.admin secret")
        refused(lambda: conn.secretDefineXML("<secret><usage type='ceph'>"),
                libvirt.VIR_ERR_XML_DETAIL,
                "(secret_definition):1: Premature end of data in tag usage line 1\n"
                "<secret><usage type='ceph'>\n" + "-" * 27 + "^")
        refused(lambda: conn.secretDefineXML("<secret><usage type='cifs'><name>x</name>"
                                             "</usage></secret>"),
                libvirt.VIR_ERR_XML_ERROR, "XML error: unknown secret usage type cifs")
        for bad in ("../../../etc/passwd", f"{UUID_B}/..", "a/b"):
            refused(lambda: conn.secretDefineXML(f"<secret><uuid>{bad}</uuid></secret>"),
                    libvirt.VIR_ERR_XML_ERROR, "XML error: malformed uuid element")
        refused(lambda: conn.secretDefineXML(secret_xml("ceph", UUID_A), 1 << 4),
                libvirt.VIR_ERR_INVALID_ARG,
                "unsupported flags (0x10) in function secretDefineXML")

        # a value over REMOTE_SECRET_VALUE_MAX: python-libvirt will not even send it ...
        with pytest.raises(libvirt.libvirtError):
            sec.setValue(b"x" * (P.REMOTE_SECRET_VALUE_MAX + 1))
        # ... and a raw client that does is answered, its connection kept
        raw = RawClient(daemon.sock)
        raw.open(qemu_uri(daemon).split("?")[0].replace("+unix", ""))
        size = P.REMOTE_SECRET_VALUE_MAX + 1
        usage = b"client.admin secret"
        body = (bytes.fromhex(UUID_A.replace("-", "")) + words(libvirt.VIR_SECRET_USAGE_TYPE_CEPH)
                + words(len(usage)) + usage + b"\0" * (-len(usage) % 4)
                + words(size) + b"y" * size + b"\0" * (-size % 4) + words(0))
        number = next(p.number for p in P.PROCEDURES if p.name == "SECRET_SET_VALUE")
        raw.send(frame.build_raw(P.REMOTE_PROGRAM, 1, number, frame.CALL, 77, frame.OK, body))
        err = raw.error(raw.reply(77))
        assert (err.code, err.message) == (P.VIR_ERR_RPC, "Unable to decode message payload")
        assert raw.result("CONNECT_NUM_OF_SECRETS") == 1
        raw.close()
        assert snapshot(daemon) == before and sec.value() == b"first"
        # the largest value that fits is stored and read back whole
        sec.setValue(b"z" * P.REMOTE_SECRET_VALUE_MAX)
        assert sec.value() == b"z" * P.REMOTE_SECRET_VALUE_MAX
    finally:
        conn.close()
