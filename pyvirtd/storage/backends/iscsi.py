"""The ``iscsi`` backend: the LUNs of an iSCSI target (libvirt's storage_backend_iscsi.c
with open-iscsi's iscsiadm, as libvirt's virISCSI* helpers drive it).

    <source><host name='HOST' port='3260'/><device path='TARGET-IQN'/></source>
    <target><path>/dev/disk/by-path</path></target>

start logs in (``iscsiadm --mode node --portal HOST:PORT --targetname IQN
--login``; when no node record exists yet, a sendtargets discovery and
``--op new`` first) and rescans the session; stop logs out.  Refresh reads
the session's SCSI host in sysfs: each disk LUN is a volume named
``unit:BUS:TARGET:LUN`` whose path is its stable link under the pool's
target directory (/dev/disk/by-path, made by udev) and whose key is the
LUN's serial (scsi_id), as libvirt names them.  LUNs are made by the
target, so volumes can be neither created nor deleted here.
find-storage-pool-sources runs a sendtargets discovery.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from lxml import etree

from pyvirtd.driver import Services
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.storage import tools
from pyvirtd.storage.backends.base import VOL_BLOCK, Backend, PoolScan, Volume
from pyvirtd.xml import format_libvirt, parse_definition

if TYPE_CHECKING:
    from pyvirtd.storage.pool import Pool

_FROM = P.VIR_FROM_STORAGE
ISCSIADM = "iscsiadm"
DEFAULT_PORT = 3260
ISCSI_ERR_NO_OBJS_FOUND = 21        # iscsiadm's exit status: no records / no sessions
SCSI_ID = "/lib/udev/scsi_id"
_SESSION = re.compile(r"^\S+: \[(\d+)\] (\S+?),\S+ (\S+)")
_HCTL = re.compile(r"^(\d+):(\d+):(\d+):(\d+)$")


def _host_port(host: etree._Element | None, what: str) -> tuple[str, int]:
    name = host.get("name") if host is not None else None
    if not name:
        raise VirError(P.VIR_ERR_INVALID_ARG, f"hostname must be specified for {what}",
                       domain=_FROM)
    port = host.get("port")
    return name, int(port) if port else DEFAULT_PORT


def _portal(name: str, port: int) -> str:
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


async def sendtargets(portal: str) -> list[str]:
    """The target IQNs a portal offers (a discovery that records nothing)."""
    proc = await tools.run([ISCSIADM, "--mode", "discovery", "--type", "sendtargets",
                            "--portal", portal, "--op", "nonpersistent"])
    targets = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] not in targets:
            targets.append(fields[1])
    return targets


def _scan_luns(host: int) -> list[tuple[int, int, int, str]]:
    """(bus, target, lun, block device name) of the disk LUNs of a SCSI host."""
    found = []
    base = "/sys/bus/scsi/devices"
    try:
        names = os.listdir(base)
    except OSError:
        return found
    for name in names:
        m = _HCTL.match(name)
        if not m or int(m.group(1)) != host:
            continue
        dev = os.path.join(base, name)
        try:
            with open(os.path.join(dev, "type")) as f:
                kind = int(f.read().strip() or -1)
            blocks = os.listdir(os.path.join(dev, "block"))
        except (OSError, ValueError):
            continue
        if kind not in (0, 0xe) or not blocks:     # disks only, as libvirt
            continue
        found.append((int(m.group(2)), int(m.group(3)), int(m.group(4)), blocks[0]))
    return sorted(found)


def _stable_path(target_dir: str, devname: str) -> str:
    """virStorageBackendStablePath: the link in the pool's target dir to /dev/DEV."""
    dev = f"/dev/{devname}"
    if target_dir in ("/dev", "/dev/"):
        return dev
    try:
        for entry in sorted(os.listdir(target_dir)):
            path = os.path.join(target_dir, entry)
            if os.path.realpath(path) == dev:
                return path
    except OSError:
        pass
    return dev


def _block_size(devname: str) -> int:
    with open(f"/sys/block/{devname}/size") as f:
        return int(f.read().strip()) * 512


def chap_settings(tree: etree._Element, services: Services) -> list[tuple[str, str]]:
    """The node settings for a pool's ``<source><auth type='chap'>`` (none without one).

    As libvirt's virStorageBackendISCSISetAuth: the password is the value of
    the secret the ``<secret usage='...'/>`` (an iscsi usage) or
    ``<secret uuid='...'/>`` names, read by the daemon itself, private or not.
    ``services`` are the daemon's (the secret service is asked only for a pool
    with CHAP).
    iscsiadm takes settings only as arguments, so the password is briefly on
    its command line, as with libvirt.
    """
    auth = tree.find("source/auth")
    if auth is None:
        return []
    if auth.get("type") != "chap":
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, "iscsi pool only supports 'chap' auth type",
                       domain=_FROM)
    secret = auth.find("secret")
    if secret is None:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR, domain=_FROM, message=(
            "internal error: iscsi 'chap' authentication needs a secret"))
    secrets = services.secrets
    if secret.get("uuid"):
        value = secrets.value_of_uuid(secret.get("uuid"), "iscsi")
    else:
        value = secrets.value_of("iscsi", secret.get("usage") or "")
    return [("node.session.auth.authmethod", "CHAP"),
            ("node.session.auth.username", auth.get("username") or ""),
            ("node.session.auth.password", value.decode("utf-8", "surrogateescape"))]


class IscsiBackend(Backend):
    type = "iscsi"

    #: the daemon's services, for CHAP secrets (set by the storage subsystem)
    services: Services = Services()

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _target(pool: "Pool") -> tuple[str, str]:
        """(portal, target IQN) of a pool's source."""
        tree = pool.definition.tree
        name, port = _host_port(tree.find("source/host"), "iscsi sources")
        dev = tree.find("source/device")
        iqn = dev.get("path") if dev is not None else None
        if not iqn:
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=_FROM, message=(
                "iscsi pool requires a source device path (the target IQN)"))
        return _portal(name, port), iqn

    async def _session(self, pool: "Pool") -> str | None:
        """virISCSIGetSession: the id of the session logged in to the pool's target."""
        portal, iqn = self._target(pool)
        proc = await tools.run([ISCSIADM, "--mode", "session"], check=False)
        if proc.returncode not in (0, ISCSI_ERR_NO_OBJS_FOUND):
            raise tools.tool_error([ISCSIADM, "--mode", "session"], proc.returncode,
                                   proc.stderr)
        for line in proc.stdout.decode(errors="replace").splitlines():
            m = _SESSION.match(line.strip())
            if m and m.group(3) == iqn:
                return m.group(1)
        return None

    async def _node(self, portal: str, iqn: str, *args: str, check: bool = True):
        return await tools.run([ISCSIADM, "--mode", "node", "--portal", portal,
                                "--targetname", iqn, *args], check=check)

    # ------------------------------------------------------------ pool lifecycle
    async def check(self, pool: "Pool") -> bool:
        return await self._session(pool) is not None

    async def _record(self, portal: str, iqn: str) -> None:
        """No node record yet: discover the portal's targets, record ours."""
        if iqn not in await sendtargets(portal):
            raise VirError(P.VIR_ERR_OPERATION_FAILED, domain=_FROM, message=(
                f"operation failed: Failed to find target '{iqn}' at portal '{portal}'"))
        await self._node(portal, iqn, "--op", "new")

    async def _set_auth(self, portal: str, iqn: str, settings: list[tuple[str, str]]) -> None:
        """Write the CHAP settings into the node record (made first if missing)."""
        for i, (name, value) in enumerate(settings):
            update = await self._node(portal, iqn, "--op", "update", "--name", name,
                                      "--value", value, check=False)
            if i == 0 and update.returncode == ISCSI_ERR_NO_OBJS_FOUND:
                await self._record(portal, iqn)
                update = await self._node(portal, iqn, "--op", "update", "--name", name,
                                          "--value", value, check=False)
            if update.returncode != 0:      # the argv holds the password: name only the setting
                raise VirError(P.VIR_ERR_INTERNAL_ERROR, domain=_FROM, message=(
                    f"internal error: Failed to update '{name}' of node mode for target "
                    f"'{iqn}'"))

    async def start(self, pool: "Pool") -> None:
        portal, iqn = self._target(pool)
        settings = chap_settings(pool.definition.tree, self.services)
        if await self._session(pool) is None:
            if settings:
                await self._set_auth(portal, iqn, settings)
            login = await self._node(portal, iqn, "--login", check=False)
            if login.returncode == ISCSI_ERR_NO_OBJS_FOUND:
                await self._record(portal, iqn)
                login = await self._node(portal, iqn, "--login", check=False)
            if login.returncode != 0:
                raise tools.tool_error([ISCSIADM, "--mode", "node", "--portal", portal,
                                        "--targetname", iqn, "--login"],
                                       login.returncode, login.stderr)
        session = await self._session(pool)
        if session is not None:
            await tools.run([ISCSIADM, "--mode", "session", "-r", session, "-R"], check=False)

    async def refresh(self, pool: "Pool") -> PoolScan:
        await tools.run(["udevadm", "settle"], check=False)      # virWaitForDevices
        session = await self._session(pool)
        if session is None:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, domain=_FROM, message=(
                "internal error: cannot find iscsi session for target "
                f"'{self._target(pool)[1]}'"))
        host = await pool.io(self._scsi_host, session)
        volumes = []
        for bus, target, lun, devname in await pool.io(_scan_luns, host):
            volumes.append(await self._lun_volume(pool, bus, target, lun, devname))
        capacity = sum(v.capacity for v in volumes)
        return PoolScan(capacity, capacity, 0, volumes)

    @staticmethod
    def _scsi_host(session: str) -> int:
        real = os.path.realpath(f"/sys/class/iscsi_session/session{session}/device")
        for part in real.split("/"):
            if part.startswith("host") and part[4:].isdigit():
                return int(part[4:])
        raise VirError(P.VIR_ERR_INTERNAL_ERROR, domain=_FROM, message=(
            f"internal error: Failed to get host number for iSCSI session with path {real}"))

    async def _lun_volume(self, pool: "Pool", bus: int, target: int, lun: int,
                          devname: str) -> Volume:
        path = await pool.io(_stable_path, pool.target_path, devname)
        size = await pool.io(_block_size, devname)
        key = path
        if os.path.exists(SCSI_ID):
            sid = await tools.run([SCSI_ID, "--replace-whitespace", "--whitelisted",
                                   "--device", f"/dev/{devname}"], check=False)
            if sid.returncode == 0 and sid.stdout.strip():
                key = sid.stdout.decode().strip()
        return Volume(name=f"unit:{bus}:{target}:{lun}", path=path, key=key, type=VOL_BLOCK,
                      format="", capacity=size, allocation=size, physical=size)

    async def refresh_vol(self, pool: "Pool", vol: Volume) -> Volume:
        devname = os.path.basename(await pool.io(os.path.realpath, vol.path))
        try:
            size = await pool.io(_block_size, devname)
        except OSError:
            raise VirError(P.VIR_ERR_NO_STORAGE_VOL, domain=_FROM,
                           message=f"no storage vol with matching path '{vol.path}'") from None
        return Volume(name=vol.name, path=vol.path, key=vol.key, type=VOL_BLOCK, format="",
                      capacity=size, allocation=size, physical=size)

    async def stop(self, pool: "Pool") -> None:
        portal, iqn = self._target(pool)
        if await self._session(pool) is None:
            return
        await self._node(portal, iqn, "--logout")

    # ----------------------------------------------------------------- discovery
    async def find_sources(self, spec: str | None, flags: int) -> str:
        check_flags(flags, 0, "virStorageBackendISCSIFindPoolSources", _FROM)
        if not spec:
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=_FROM, message=(
                "hostname must be specified for iscsi sources"))
        root = parse_definition(spec, "source", what="source specification", domain=_FROM)
        host = root.find("host")
        name, port = _host_port(host, "iscsi sources")
        out = etree.Element("sources")
        for iqn in await sendtargets(_portal(name, port)):
            src = etree.SubElement(out, "source")
            attrs = {"name": name}
            if host.get("port"):
                attrs["port"] = host.get("port")
            etree.SubElement(src, "host", **attrs)
            etree.SubElement(src, "device", path=iqn)
        return format_libvirt(out)
