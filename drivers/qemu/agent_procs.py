"""QEMU driver connection: what the guest agent answers (agent.py is the wire).

After libvirt's qemu_driver.c and qemu_agent.c: each procedure finds the
guest's agent (`agent.available`: not running, not configured and not
connected are libvirt's three errors), sends one command with the guest's
response timeout and turns the reply into the RPC's return value.  No domain
lock is held: a hung agent holds only its own callers, each until its deadline.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pyvirtd.driver import interfaces
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P

from . import agent as ga
from .guest import QemuDomain, QemuState
from .passthrough import taint

_H = P.DomainGetHostnameFlags
HOSTNAME_LEASE, HOSTNAME_AGENT = _H.VIR_DOMAIN_GET_HOSTNAME_LEASE, _H.VIR_DOMAIN_GET_HOSTNAME_AGENT
TIME_SYNC = P.DomainSetTimeFlags.VIR_DOMAIN_TIME_SYNC
PASSWORD_ENCRYPTED = P.DomainSetUserPasswordFlags.VIR_DOMAIN_PASSWORD_ENCRYPTED
_G = P.DomainGuestInfoTypes
INFO_USERS, INFO_OS, INFO_TIMEZONE, INFO_HOSTNAME, INFO_FS = (
    _G.VIR_DOMAIN_GUEST_INFO_USERS, _G.VIR_DOMAIN_GUEST_INFO_OS, _G.VIR_DOMAIN_GUEST_INFO_TIMEZONE,
    _G.VIR_DOMAIN_GUEST_INFO_HOSTNAME, _G.VIR_DOMAIN_GUEST_INFO_FILESYSTEM)
INFO_ALL = sum(int(t) for t in _G)
SHUTDOWN_ACPI = P.DomainShutdownFlagValues.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
SHUTDOWN_AGENT = P.DomainShutdownFlagValues.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT
COMMAND_MIN = P.DomainQemuAgentCommandTimeoutValues.VIR_DOMAIN_QEMU_AGENT_COMMAND_MIN
TAINT_CUSTOM_GA = "custom-ga-command"   # virDomainTaintFlags' name
IP_TYPES = {"ipv4": P.IPAddrType.VIR_IP_ADDR_TYPE_IPV4, "ipv6": P.IPAddrType.VIR_IP_ADDR_TYPE_IPV6}
_STRING, _ULLONG, _INT, _UINT = (P.VIR_TYPED_PARAM_STRING, P.VIR_TYPED_PARAM_ULLONG,
                                 P.VIR_TYPED_PARAM_INT, P.VIR_TYPED_PARAM_UINT)
# guest-get-osinfo's keys -> GetGuestInfo's "os.*" names (qemuAgentGetOSInfo)
OS_KEYS = (("id", "id"), ("name", "name"), ("pretty-name", "pretty-name"),
           ("version", "version"), ("version-id", "version-id"), ("machine", "machine"),
           ("variant", "variant"), ("variant-id", "variant-id"),
           ("kernel-release", "kernel-release"), ("kernel-version", "kernel-version"))


def _err(code: int, detail: str) -> VirError:
    return VirError(code, detail, domain=P.VIR_FROM_QEMU)


def _param(name: str, kind: int, value: Any) -> Any:
    return P.remote_typed_param(name, P.remote_typed_param_value(kind, value))


def _cmd(name: str, **args: Any) -> dict:
    out: dict = {"execute": name}
    if args:
        out["arguments"] = args
    return out


def _malformed() -> VirError:
    return _err(P.VIR_ERR_INTERNAL_ERROR, "malformed return value")


class AgentMixin:
    """Guest agent procedures; listed before DomainMixin so that shutdown, reboot,
    domifaddr and domtime reach the agent here first."""
    driver: QemuState

    def _agent_dom(self, ref: Dom) -> tuple[QemuDomain, ga.Agent]:
        dom = self._dom(ref)                        # type: ignore[attr-defined]
        agent = ga.available(dom)
        assert agent is not None
        return dom, agent

    async def _agent_call(self, ref: Dom, name: str, **args: Any) -> Any:
        """One command with the guest's response timeout; its "return" value."""
        _, agent = self._agent_dom(ref)
        return (await agent.execute(_cmd(name, **args), agent.timeout))["return"]

    # -- the qemu program and the timeout -----------------------------------------
    async def qemu_domain_agent_command(self, ref: Dom, cmd: str, timeout: int,
                                        flags: int) -> str:
        """virsh qemu-agent-command: the JSON command as given, the reply as JSON text;
        the guest is tainted (custom-ga-command) as libvirt does."""
        check_flags(flags, 0, "qemuDomainQemuAgentCommand", P.VIR_FROM_QEMU)
        dom, agent = self._agent_dom(ref)
        taint(self.driver, dom, TAINT_CUSTOM_GA)
        if timeout < COMMAND_MIN:
            raise _err(P.VIR_ERR_INVALID_ARG, f"guest agent timeout '{timeout}' is less than "
                       f"the minimum '{COMMAND_MIN}'")
        try:
            parsed = json.loads(cmd)
        except ValueError:
            raise _err(P.VIR_ERR_INTERNAL_ERROR, f"cannot parse json {cmd}: "
                       "syntax error") from None
        if not isinstance(parsed, dict):
            raise _err(P.VIR_ERR_INTERNAL_ERROR, f"cannot parse json {cmd}: not an object")
        reply = await agent.execute(parsed, timeout)
        return json.dumps(reply, separators=(",", ":"))

    def domain_agent_set_response_timeout(self, ref: Dom, timeout: int, flags: int) -> int:
        check_flags(flags, 0, "qemuDomainAgentSetResponseTimeout", P.VIR_FROM_QEMU)
        if timeout < ga.TIMEOUT_BLOCK:
            raise _err(P.VIR_ERR_INVALID_ARG, f"guest agent timeout '{timeout}' is less than "
                       f"the minimum '{int(ga.TIMEOUT_BLOCK)}'")
        dom = self._dom(ref)                        # type: ignore[attr-defined]
        agent = getattr(dom, "agent", None)
        dom.agent_timeout = timeout
        if agent is not None:
            agent.timeout = timeout
        return 0

    # -- hostname, time, password --------------------------------------------------
    async def domain_get_hostname(self, ref: Dom, flags: int) -> str:
        check_flags(flags, HOSTNAME_LEASE | HOSTNAME_AGENT, "qemuDomainGetHostname",
                    P.VIR_FROM_QEMU)
        if flags & HOSTNAME_LEASE and flags & HOSTNAME_AGENT:
            raise VirError(P.VIR_ERR_INVALID_ARG, "Flags 'VIR_DOMAIN_GET_HOSTNAME_LEASE' and "
                           "'VIR_DOMAIN_GET_HOSTNAME_AGENT' are mutually exclusive",
                           domain=P.VIR_FROM_NONE)
        if flags & HOSTNAME_LEASE:
            raise _err(P.VIR_ERR_ARGUMENT_UNSUPPORTED, "hostname from DHCP leases is not "
                       "supported yet")
        ret = await self._agent_call(ref, "guest-get-host-name")
        if not isinstance(ret, dict) or not isinstance(ret.get("host-name"), str):
            raise _err(P.VIR_ERR_INTERNAL_ERROR,
                       "'host-name' missing in guest-get-host-name reply")
        return ret["host-name"]

    async def domain_get_time(self, ref: Dom, flags: int) -> tuple:
        check_flags(flags, 0, "qemuDomainGetTime", P.VIR_FROM_QEMU)
        ns = await self._agent_call(ref, "guest-get-time")
        if not isinstance(ns, int) or ns < 0:
            raise _malformed()
        return (ns // 1_000_000_000, ns % 1_000_000_000)

    async def domain_set_time(self, ref: Dom, seconds: int, nseconds: int, flags: int) -> None:
        """--sync: the agent reads the guest's RTC; else the time given, in ns."""
        check_flags(flags, TIME_SYNC, "qemuDomainSetTime", P.VIR_FROM_QEMU)
        if flags & TIME_SYNC:
            await self._agent_call(ref, "guest-set-time")
            return
        if seconds > (2 ** 63 - 1) // 1_000_000_000:
            raise _err(P.VIR_ERR_INVALID_ARG, f"Time '{seconds}' is too big for guest agent")
        await self._agent_call(ref, "guest-set-time", time=seconds * 1_000_000_000 + nseconds)

    async def domain_set_user_password(self, ref: Dom, user: str | None, password: str | None,
                                       flags: int) -> None:
        check_flags(flags, PASSWORD_ENCRYPTED, "qemuDomainSetUserPassword", P.VIR_FROM_QEMU)
        encoded = base64.b64encode((password or "").encode()).decode()
        await self._agent_call(ref, "guest-set-user-password", username=user or "",
                               password=encoded, crypted=bool(flags & PASSWORD_ENCRYPTED))

    # -- file systems ----------------------------------------------------------------
    async def domain_fsfreeze(self, ref: Dom, mountpoints: list[str], flags: int) -> int:
        check_flags(flags, 0, "qemuDomainFSFreeze", P.VIR_FROM_QEMU)
        if mountpoints:
            n = await self._agent_call(ref, "guest-fsfreeze-freeze-list",
                                       mountpoints=list(mountpoints))
        else:
            n = await self._agent_call(ref, "guest-fsfreeze-freeze")
        if not isinstance(n, int):
            raise _malformed()
        return n

    async def domain_fsthaw(self, ref: Dom, mountpoints: list[str], flags: int) -> int:
        check_flags(flags, 0, "qemuDomainFSThaw", P.VIR_FROM_QEMU)
        if mountpoints:
            raise _err(P.VIR_ERR_INVALID_ARG, "specifying mountpoints is not supported")
        n = await self._agent_call(ref, "guest-fsfreeze-thaw")
        if not isinstance(n, int):
            raise _malformed()
        return n

    async def domain_fstrim(self, ref: Dom, mount_point: str | None, minimum: int,
                            flags: int) -> None:
        check_flags(flags, 0, "qemuDomainFSTrim", P.VIR_FROM_QEMU)
        if mount_point:
            raise _err(P.VIR_ERR_ARGUMENT_UNSUPPORTED,
                       "Specifying mount point is not supported for now")
        await self._agent_call(ref, "guest-fstrim", minimum=minimum)

    async def domain_get_fsinfo(self, ref: Dom, flags: int) -> tuple:
        check_flags(flags, 0, "qemuDomainGetFSInfo", P.VIR_FROM_QEMU)
        dom, agent = self._agent_dom(ref)
        fss = (await agent.execute(_cmd("guest-get-fsinfo"), agent.timeout))["return"]
        if not isinstance(fss, list):
            raise _err(P.VIR_ERR_INTERNAL_ERROR, "guest-get-fsinfo reply was missing return data")
        out = []
        for fs in reversed(fss):    # libvirt lists them in mount order
            aliases = [a for a in (_disk_alias(dom, d) for d in fs.get("disk") or []) if a]
            out.append(P.remote_domain_fsinfo(fs.get("mountpoint", ""), fs.get("name", ""),
                                              fs.get("type", ""), aliases))
        return (out, len(out))

    # -- everything at once ----------------------------------------------------------
    async def domain_get_guest_info(self, ref: Dom, types: int, flags: int) -> list:
        """virsh guestinfo: what the agent tells of each type asked (all when none);
        commands the agent lacks are left out, as libvirt does."""
        check_flags(flags, 0, "qemuDomainGetGuestInfo", P.VIR_FROM_QEMU)
        if types & ~INFO_ALL:
            raise _err(P.VIR_ERR_INVALID_ARG, f"unsupported guest info types {types:#x}")
        dom, agent = self._agent_dom(ref)
        want = types or INFO_ALL
        params: list = []

        async def ask(name: str) -> Any:
            try:
                return (await agent.execute(_cmd(name), agent.timeout,
                                            report_unsupported=False))["return"]
            except ga.Unsupported:
                return None

        if want & INFO_USERS:
            users = await ask("guest-get-users")
            if isinstance(users, list):
                params.append(_param("user.count", _UINT, len(users)))
                for i, u in enumerate(users):
                    params.append(_param(f"user.{i}.name", _STRING, str(u.get("user", ""))))
                    if u.get("domain"):
                        params.append(_param(f"user.{i}.domain", _STRING, str(u["domain"])))
                    params.append(_param(f"user.{i}.login-time", _ULLONG,
                                         int(float(u.get("login-time", 0)) * 1000)))
        if want & INFO_OS:
            osinfo = await ask("guest-get-osinfo")
            if isinstance(osinfo, dict):
                for key, name in OS_KEYS:
                    if isinstance(osinfo.get(key), str):
                        params.append(_param(f"os.{name}", _STRING, osinfo[key]))
        if want & INFO_TIMEZONE:
            tz = await ask("guest-get-timezone")
            if isinstance(tz, dict):
                if isinstance(tz.get("zone"), str):
                    params.append(_param("timezone.name", _STRING, tz["zone"]))
                if isinstance(tz.get("offset"), int):
                    params.append(_param("timezone.offset", _INT, tz["offset"]))
        if want & INFO_HOSTNAME:
            host = await ask("guest-get-host-name")
            if isinstance(host, dict) and isinstance(host.get("host-name"), str):
                params.append(_param("hostname", _STRING, host["host-name"]))
        if want & INFO_FS:
            fss = await ask("guest-get-fsinfo")
            if isinstance(fss, list):
                params.append(_param("fs.count", _UINT, len(fss)))
                for i, fs in enumerate(fss):
                    pre = f"fs.{i}."
                    params.append(_param(pre + "mountpoint", _STRING, fs.get("mountpoint", "")))
                    params.append(_param(pre + "name", _STRING, fs.get("name", "")))
                    params.append(_param(pre + "fstype", _STRING, fs.get("type", "")))
                    if "total-bytes" in fs and "used-bytes" in fs:
                        params.append(_param(pre + "total-bytes", _ULLONG, fs["total-bytes"]))
                        params.append(_param(pre + "used-bytes", _ULLONG, fs["used-bytes"]))
                    disks = fs.get("disk") or []
                    params.append(_param(pre + "disk.count", _UINT, len(disks)))
                    for j, d in enumerate(disks):
                        alias = _disk_alias(dom, d)
                        if alias:
                            params.append(_param(f"{pre}disk.{j}.alias", _STRING, alias))
                        if d.get("serial"):
                            params.append(_param(f"{pre}disk.{j}.serial", _STRING, d["serial"]))
                        if d.get("dev"):
                            params.append(_param(f"{pre}disk.{j}.device", _STRING, d["dev"]))
        return params

    # -- addresses, shutdown, reboot -------------------------------------------------
    async def domain_interface_addresses(self, ref: Dom, source: int, flags: int) -> list:
        if source != interfaces.SRC_AGENT:
            return await super().domain_interface_addresses(ref, source, flags)  # type: ignore[misc]
        check_flags(flags, 0, "qemuDomainInterfaceAddresses", P.VIR_FROM_QEMU)
        ifaces = await self._agent_call(ref, "guest-network-get-interfaces")
        if not isinstance(ifaces, list):
            raise _err(P.VIR_ERR_INTERNAL_ERROR,
                       "qemu agent didn't return an array of interfaces")
        out = []
        for iface in ifaces:
            addrs = [P.remote_domain_ip_addr(IP_TYPES[a["ip-address-type"]], a["ip-address"],
                                             int(a.get("prefix", 0)))
                     for a in iface.get("ip-addresses") or []
                     if a.get("ip-address-type") in IP_TYPES and "ip-address" in a]
            out.append(P.remote_domain_interface(str(iface.get("name", "")),
                                                 iface.get("hardware-address"), addrs))
        return out

    async def domain_shutdown_flags(self, ref: Dom, flags: int) -> None:
        if not await self._agent_power(ref, flags, "powerdown", "qemuDomainShutdownFlags"):
            await super().domain_shutdown_flags(ref, flags & ~SHUTDOWN_AGENT)  # type: ignore[misc]

    async def domain_reboot(self, ref: Dom, flags: int) -> None:
        if not await self._agent_power(ref, flags, "reboot", "qemuDomainReboot"):
            await super().domain_reboot(ref, flags & ~SHUTDOWN_AGENT)  # type: ignore[misc]

    async def _agent_power(self, ref: Dom, flags: int, mode: str, function: str) -> bool:
        """guest-shutdown when the flags ask for the agent (or none, and it is there);
        True when done.  Without an explicit agent-only request a failure falls back to
        the ACPI button, as qemuDomainShutdownFlags does."""
        check_flags(flags, SHUTDOWN_ACPI | SHUTDOWN_AGENT, function, P.VIR_FROM_QEMU)
        if flags and not flags & SHUTDOWN_AGENT:
            return False
        forced = flags == SHUTDOWN_AGENT
        dom = self._dom(ref)                        # type: ignore[attr-defined]
        agent = ga.available(dom, forced=forced)
        if agent is None:
            return False
        try:
            await agent.execute(_cmd("guest-shutdown", mode=mode), ga.SHUTDOWN_WAIT,
                                until_gone=True)
        except VirError:
            if forced:
                raise
            return False
        return True


def _disk_alias(dom: QemuDomain, d: dict) -> str | None:
    """The target (``vda``) of the domain disk an agent's disk address names, which
    libvirt reports as the file system's device "alias": a virtio disk by its PCI
    address, any disk by serial, else by the guest's device node's name."""
    pci = d.get("pci-controller") or {}
    node = str(d.get("dev") or "").rsplit("/", 1)[-1]
    by_node = None
    for disk in dom.definition.devices_of("disk"):
        target = disk.find("target")
        dst = target.get("dev") if target is not None else None
        if not dst:
            continue
        addr = disk.find("address")
        serial = disk.findtext("serial")
        if d.get("serial") and serial and serial == d["serial"]:
            return dst
        if (d.get("bus-type") == "virtio" and addr is not None and addr.get("type") == "pci"
                and all(int(addr.get(k, "0"), 0) == int(pci.get(k, -1))
                        for k in ("domain", "bus", "slot", "function"))):
            return dst
        if node and node == dst:
            by_node = dst
    return by_node
