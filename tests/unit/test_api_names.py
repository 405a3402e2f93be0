"""The generated procedure table names libvirt's real functions.

Each call procedure's ``api_name`` (the name a VIR_ERR_NO_SUPPORT or read-only
refusal carries) is checked against the symbols the installed libvirt
libraries export (``nm -D``), so a misspelt name (virConnectNumOfNwfilters)
cannot come back.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pyvirtd.rpc import _generated as P

LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
LIBRARIES = {"remote": "libvirt.so.0", "qemu": "libvirt-qemu.so.0", "lxc": "libvirt-lxc.so.0",
             "admin": "libvirt-admin.so.0"}


def _exports(library: str) -> dict[str, str]:
    """Exported function -> symbol version (LIBVIRT_9.0.0, LIBVIRT_PRIVATE_9.0.0, ...)."""
    path = LIBDIR / library
    if shutil.which("nm") is None or not path.exists():
        pytest.skip(f"nm or {path} is not installed (binutils, libvirt0)")
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True,
                         text=True, check=True).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "T":
            name, _, version = parts[2].partition("@")
            symbols[name] = version.lstrip("@")
    return symbols


@pytest.mark.parametrize("program", sorted(LIBRARIES))
def test_api_names_are_exported_symbols(program: str) -> None:
    exports = _exports(LIBRARIES[program])
    by_folded = {name.lower(): name for name in exports}
    prefix = "viradm" if program == "admin" else "vir"
    calls = [p for p in P.PROCEDURES if p.program == program and p.kind == "call"]
    assert calls
    for proc in calls:
        if proc.api_name is None:
            assert proc.name.startswith("AUTH_"), proc.name  # only the handshake has none
            continue
        assert proc.api_name in exports, f"{proc.name}: {proc.api_name} is not exported"
        # where the plain spelling is a symbol, the name is that symbol, capitals included
        folded = by_folded.get(prefix + proc.name.replace("_", "").lower())
        if folded is not None and "CALLBACK" not in proc.name:
            assert proc.api_name == folded, proc.name


def test_public_procedures_name_public_functions() -> None:
    """Only the daemon-to-daemon migration calls and the feature probe are private symbols."""
    exports = _exports("libvirt.so.0")
    private = sorted(p.name for p in P.PROCEDURES
                     if p.program == "remote" and p.api_name
                     and exports[p.api_name].startswith("LIBVIRT_PRIVATE"))
    assert private and all(n.startswith(("DOMAIN_MIGRATE_", "CONNECT_SUPPORTS_FEATURE"))
                           for n in private), private


def test_irregular_names_and_error_domains() -> None:
    procs = {(p.program, p.name): p for p in P.PROCEDURES}
    expected = {
        ("remote", "CONNECT_NUM_OF_NWFILTERS"): ("virConnectNumOfNWFilters", P.VIR_FROM_NWFILTER),
        ("remote", "DOMAIN_GET_XML_DESC"): ("virDomainGetXMLDesc", P.VIR_FROM_DOMAIN),
        ("remote", "DOMAIN_FSTRIM"): ("virDomainFSTrim", P.VIR_FROM_DOMAIN),
        ("remote", "NODE_GET_INFO"): ("virNodeGetInfo", P.VIR_FROM_DOMAIN),
        ("remote", "NODE_DEVICE_DETTACH"): ("virNodeDeviceDettach", P.VIR_FROM_NODEDEV),
        ("remote", "DOMAIN_SNAPSHOT_CURRENT"): ("virDomainSnapshotCurrent",
                                                P.VIR_FROM_DOMAIN_SNAPSHOT),
        ("remote", "CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY"):
            ("virConnectDomainEventRegisterAny", P.VIR_FROM_DOMAIN),
        ("remote", "STORAGE_VOL_GET_INFO"): ("virStorageVolGetInfo", P.VIR_FROM_STORAGE),
        ("remote", "SECRET_GET_VALUE"): ("virSecretGetValue", P.VIR_FROM_SECRET),
        ("qemu", "DOMAIN_MONITOR_COMMAND"): ("virDomainQemuMonitorCommand", P.VIR_FROM_DOMAIN),
        ("lxc", "DOMAIN_OPEN_NAMESPACE"): ("virDomainLxcOpenNamespace", P.VIR_FROM_DOMAIN),
        ("admin", "SERVER_GET_THREADPOOL_PARAMETERS"):
            ("virAdmServerGetThreadPoolParameters", P.VIR_FROM_ADMIN),
    }
    for key, (name, domain) in expected.items():
        assert (procs[key].api_name, procs[key].error_domain) == (name, domain), key
    assert all(p.api_name is None for p in P.PROCEDURES if p.kind != "call")
