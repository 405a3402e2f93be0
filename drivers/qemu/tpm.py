"""Emulated TPMs: one swtpm process per guest with a <tpm><backend type='emulator'>
(libvirt's qemu_tpm.c).

The TPM's state lives under the daemon's state directory, one directory per
guest UUID (``STATE/swtpm/UUID/tpm1.2`` or ``tpm2``, as libvirt's
/var/lib/libvirt/swtpm/UUID/), made once with ``swtpm_setup`` (endorsement key
and certificates, as libvirt asks for) and kept across starts.  Before QEMU
starts, ``start`` runs ``swtpm socket`` on a control socket in the run
directory; QEMU connects to it (``-tpmdev emulator``).

Where QEMU runs as an unprivileged user, swtpm runs as libvirt's default
swtpm_user, ``tss`` (whose certificate authority /var/lib/swtpm-localca
Debian's swtpm-tools makes), with no capabilities (confine.run_as); the
state belongs to that user and the control socket is handed to QEMU's user.
Otherwise swtpm runs as QEMU does; as root, with a certificate authority of
the daemon's own (root must not write into tss's).  ``--terminate`` makes
swtpm exit when QEMU closes the connection; ``stop`` kills what is left after
QEMU is gone.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml.devices import Tpm

from pyvirtd.names import name_path

from . import confine, process
from .devprops import opts, unsupported

if TYPE_CHECKING:
    from .guest import QemuState

SWTPM = "swtpm"
SWTPM_SETUP = "swtpm_setup"
# libvirt's qemu.conf swtpm_user/swtpm_group default
SWTPM_USER = "tss"


def emulated(live) -> Tpm | None:
    """The guest's emulated TPM, if it has one."""
    return next((d for d in devmod.parse_devices(live)
                 if isinstance(d, Tpm) and d.backend.get("type") == "emulator"), None)


def state_dir(state: "QemuState", uuid: str) -> Path:
    """Where a guest's TPM state is kept (its UUID: it survives a rename)."""
    return state.store.config_dir.parent / "swtpm" / uuid


def remove_state(state: "QemuState", defn) -> None:
    """At undefine (blocking: call in a thread): the guest's TPM state goes with
    its definition, as libvirt's does, unless its backend keeps persistent state."""
    tpm = emulated(defn)
    if tpm is None or tpm.backend.get("persistent_state") == "yes":
        return
    shutil.rmtree(state_dir(state, defn.uuid_str), ignore_errors=True)


def socket_path(state: "QemuState", name: str) -> Path:
    """Beside the guest's monitor socket, as short (a unix socket path is short)."""
    return name_path(state.store.run_dir, name, ".swtpm")


def _pid_path(state: "QemuState", name: str) -> Path:
    """In a directory of swtpm's user, which writes it."""
    return name_path(state.store.run_dir / "swtpm", name, ".pid")


def _log_path(state: "QemuState", name: str) -> Path:
    return name_path(state.store.log_dir, name, "-swtpm.log")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise unsupported(f"TPM emulator '{name}' is not installed (Debian's swtpm-tools)")
    return path


def _prepare_files(tpm_dir: Path, run: Path, log: Path, uid: int | None,
                   gid: int | None) -> bool:
    """Make the state and run directories and the log, owned by QEMU's user (the
    log directory is the daemon's); True when the state is new (swtpm_setup
    must create it)."""
    run.mkdir(parents=True, exist_ok=True)
    fresh = not tpm_dir.is_dir() or not any(tpm_dir.iterdir())
    tpm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log.touch(mode=0o600)
    if uid is not None:
        for path in (tpm_dir.parent, tpm_dir, *tpm_dir.iterdir(), run, log):
            os.chown(path, uid, gid if gid is not None else -1)
    return fresh


def _swtpm_confinement(conf: confine.Confinement) -> confine.Confinement:
    """Who swtpm runs as: tss where QEMU runs as an unprivileged user, else as QEMU."""
    if not conf.switches_user:
        return conf
    try:
        pw = pwd.getpwnam(SWTPM_USER)
    except KeyError:
        return conf
    return dataclasses.replace(conf, uid=pw.pw_uid, gid=pw.pw_gid, user=SWTPM_USER)


def _private_ca(top: Path) -> Path:
    """A swtpm_setup configuration whose certificate authority lives under ``top``:
    for swtpm run as root, which must not write into tss's /var/lib/swtpm-localca
    (blocking: call in a thread)."""
    ca = top / "localca"
    ca.mkdir(parents=True, exist_ok=True, mode=0o700)
    (top / "swtpm-localca.conf").write_text(
        f"statedir = {ca}\nsigningkey = {ca}/signkey.pem\n"
        f"issuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n")
    options = top / "swtpm-localca.options"
    options.write_text("--platform-manufacturer pyvirtd\n--platform-version 2.1\n"
                       "--platform-model QEMU\n")
    conf = top / "swtpm_setup.conf"
    conf.write_text(f"create_certs_tool = {shutil.which('swtpm_localca') or 'swtpm_localca'}\n"
                    f"create_certs_tool_config = {top}/swtpm-localca.conf\n"
                    f"create_certs_tool_options = {options}\nactive_pcr_banks = sha256\n")
    return conf


async def _run(argv: list[str], what: str, log: Path, pass_fds: tuple[int, ...] = ()) -> None:
    proc = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False,
                                  pass_fds=pass_fds)
    if proc.returncode != 0:
        detail = (proc.stderr or b"").decode(errors="replace").strip()
        raise VirError(P.VIR_ERR_OPERATION_FAILED,
                       f"{what}. exitstatus: {proc.returncode}; Check error log '{log}' for "
                       f"details.{' ' + detail if detail else ''}", domain=P.VIR_FROM_QEMU)


async def start(state: "QemuState", live) -> str | None:
    """Start the guest's swtpm (making its state first when new); the control
    socket QEMU connects to, or None when the guest has no emulated TPM."""
    tpm = emulated(live)
    if tpm is None:
        return None
    qemu = state.confinement
    conf = _swtpm_confinement(qemu)
    v2 = tpm.backend.get("version") == "2.0"
    tpm_dir = state_dir(state, live.uuid_str) / ("tpm2" if v2 else "tpm1.2")
    sock, pid, log = (socket_path(state, live.name), _pid_path(state, live.name),
                      _log_path(state, live.name))
    swtpm, setup = _tool(SWTPM), _tool(SWTPM_SETUP)
    fresh = await trio.to_thread.run_sync(_prepare_files, tpm_dir, pid.parent, log, conf.uid,
                                          conf.gid)
    if fresh:
        config: list[str] = []
        if not conf.switches_user and os.geteuid() == 0:
            top = state.store.config_dir.parent / "swtpm"
            config = ["--config", str(await trio.to_thread.run_sync(_private_ca, top))]
        await _run([*conf.run_as(), setup, *config, *(["--tpm2"] if v2 else []),
                    "--tpm-state", str(tpm_dir), "--vmid", f"{live.name}:{live.uuid_str}",
                    "--logfile", str(log), "--createek", "--create-ek-cert",
                    "--create-platform-cert", "--lock-nvram", "--not-overwrite"],
                   "Could not run 'swtpm_setup'", log)
    # the control socket: bound here for QEMU's user, handed to swtpm as an fd
    listener = await trio.to_thread.run_sync(process.bind_unix, str(sock), qemu.uid, qemu.gid)
    try:
        await _run([*conf.run_as(), swtpm, "socket", *(["--tpm2"] if v2 else []),
                    "--ctrl", f"type=unixio,fd={listener.fileno()}",
                    "--tpmstate", f"dir={tpm_dir},mode=0600", "--log", f"file={log}",
                    "--terminate", "--daemon", "--pid", f"file={pid}"],
                   "Could not start 'swtpm'", log, pass_fds=(listener.fileno(),))
    finally:
        listener.close()                    # swtpm holds it now
    return str(sock)


def stop(state: "QemuState", name: str) -> None:
    """Kill the guest's swtpm if still there (blocking: call in a thread)."""
    process.stop_helper(str(_pid_path(state, name)), "swtpm")
    socket_path(state, name).unlink(missing_ok=True)


def qemu_args(tpm: Tpm, alias: str, socket: str | None) -> list[str]:
    """-chardev/-tpmdev/-device of a TPM whose emulator listens on ``socket``
    (an external one names its own)."""
    path = tpm.external_path if tpm.backend.get("type") == "external" else socket
    if path is None:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR, "the TPM emulator was not started",
                       domain=P.VIR_FROM_QEMU)
    return ["-chardev", opts("socket", ("id", "chrtpm"), ("path", path)),
            "-tpmdev", opts("emulator", ("id", f"tpm-{alias}"), ("chardev", "chrtpm")),
            "-device", opts(tpm.model, ("tpmdev", f"tpm-{alias}"), ("id", alias))]
