"""LXC driver connection: a container's CPU, interface and block I/O counters
(virsh cpu-stats, domifstat, domblkstat), from its cgroup and its veths.

As libvirt's LXC driver (lxcDomainGetCPUStats, lxcDomainInterfaceStats,
lxcDomainBlockStats[Flags]): CPU time in total and per host CPU from the
cpuacct controller; a NIC's counters from its host-side veth; block I/O for
the whole container from the blkio controller's throttle counters (a
container has no disks of its own to name).
"""

from __future__ import annotations

import trio

from pyvirtd import hostinfo
from pyvirtd.driver import interfaces
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P

from . import cgroup
from .domains import error, param
from .driver import LxcDomain, LxcDriverState

_FROM = P.VIR_FROM_LXC
STRING_OKAY = P.TypedParameterFlags.VIR_TYPED_PARAM_STRING_OKAY
# virDomainBlockStatsFlags' names for what the blkio counters give
BLOCK_PARAMS = (("rd_bytes", "rd_bytes"), ("wr_bytes", "wr_bytes"),
                ("rd_operations", "rd_req"), ("wr_operations", "wr_req"))


class StatsMixin:
    driver: LxcDriverState

    # -- CPU
    async def domain_get_cpu_stats(self, ref: Dom, nparams: int, start_cpu: int, ncpus: int,
                                   flags: int) -> tuple:
        """(params, params per CPU): the totals with ``start_cpu`` -1, else ``cpu_time``
        of host CPUs start_cpu.. (virCgroupGetDomainTotalCpuStats / GetPercpuStats)."""
        check_flags(flags, STRING_OKAY, "lxcDomainGetCPUStats", _FROM)
        dom: LxcDomain = self._active(ref)  # type: ignore[attr-defined]
        if "cpuacct" not in dom.cgroup and "unified" not in dom.cgroup:
            raise error(P.VIR_ERR_OPERATION_INVALID, "cgroup CPUACCT controller is not mounted")
        if start_cpu == -1:
            if nparams == 0:
                return ([], 3)
            c = await trio.to_thread.run_sync(cgroup.counters, dom.cgroup)
            params = [param("cpu_time", P.VIR_TYPED_PARAM_ULLONG, c.get("cpu_time", 0)),
                      param("user_time", P.VIR_TYPED_PARAM_ULLONG, c.get("cpu_user", 0)),
                      param("system_time", P.VIR_TYPED_PARAM_ULLONG, c.get("cpu_system", 0))]
            return (params[:nparams], min(nparams, 3))
        if nparams == 0 and ncpus != 0:
            return ([], 1)
        total = hostinfo.node_info()[2]
        if ncpus == 0:
            return ([], total)
        if start_cpu >= total:
            raise VirError(P.VIR_ERR_INVALID_ARG,
                           f"start_cpu {start_cpu} larger than maximum of {total - 1}",
                           domain=P.VIR_FROM_CGROUP)
        if "unified" in dom.cgroup:
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                           "operation 'getCpuacctPercpuUsage' not supported for backend "
                           "'cgroup V2'", domain=P.VIR_FROM_CGROUP)
        raw = await trio.to_thread.run_sync(cgroup.read, dom.cgroup, "cpuacct",
                                            "cpuacct.usage_percpu")
        usage = [int(v) for v in (raw or "").split()]
        params = [param("cpu_time", P.VIR_TYPED_PARAM_ULLONG, usage[i] if i < len(usage) else 0)
                  for i in range(start_cpu, min(total, start_cpu + ncpus))]
        return (params, 1)

    # -- interfaces
    async def domain_interface_stats(self, ref: Dom, device: str) -> tuple:
        """A NIC's counters, named by its host-side veth or its MAC, from netlink."""
        from pyvirtd.network import netlink_call

        dom: LxcDomain = self._active(ref)  # type: ignore[attr-defined]
        for iface in dom.definition.devices_of("interface"):
            target = iface.find("target")
            name = target.get("dev") if target is not None else None
            mac = iface.find("mac").get("address")
            if device and device in (name, mac):
                counters = await netlink_call("link_counters", name) if name else None
                if counters is None:
                    break
                return interfaces.guest_view(counters, iface.get("type"))
        raise VirError(P.VIR_ERR_INVALID_ARG, f"'{device}' is not a known interface",
                       domain=P.VIR_FROM_DOMAIN)

    # -- block I/O
    async def domain_block_stats(self, ref: Dom, path: str) -> tuple:
        v = await self._block_values(ref, path)
        return (v["rd_req"], v["rd_bytes"], v["wr_req"], v["wr_bytes"], -1)

    async def domain_block_stats_flags(self, ref: Dom, path: str, nparams: int,
                                       flags: int) -> tuple:
        check_flags(flags, STRING_OKAY, "lxcDomainBlockStatsFlags", _FROM)
        if nparams == 0:
            self._active(ref)  # type: ignore[attr-defined]
            return ([], len(BLOCK_PARAMS))
        v = await self._block_values(ref, path)
        params = [param(name, P.VIR_TYPED_PARAM_LLONG, v[key]) for name, key in BLOCK_PARAMS]
        return (params[:nparams], len(params[:nparams]))

    async def _block_values(self, ref: Dom, path: str) -> dict[str, int]:
        dom: LxcDomain = self._active(ref)  # type: ignore[attr-defined]
        if "blkio" not in dom.cgroup:
            raise error(P.VIR_ERR_OPERATION_INVALID, "blkio cgroup isn't mounted")
        if path:
            # a container's <disk>s are host block devices libvirt does not count
            raise error(P.VIR_ERR_INVALID_ARG, f"invalid path: {path}")
        return await trio.to_thread.run_sync(_blkio_serviced, dom.cgroup)


def _blkio_serviced(paths: dict[str, str]) -> dict[str, int]:
    """Bytes and requests read and written by the whole group, every device summed
    (virCgroupGetBlkioIoServiced, v1 throttle counters)."""
    out = {"rd_bytes": 0, "wr_bytes": 0, "rd_req": 0, "wr_req": 0}
    for name, read_key, write_key in (("blkio.throttle.io_service_bytes", "rd_bytes", "wr_bytes"),
                                      ("blkio.throttle.io_serviced", "rd_req", "wr_req")):
        for line in (cgroup.read(paths, "blkio", name) or "").splitlines():
            fields = line.split()
            if len(fields) != 3:
                continue        # the "Total N" line
            if fields[1] == "Read":
                out[read_key] += int(fields[2])
            elif fields[1] == "Write":
                out[write_key] += int(fields[2])
    return out
