"""QEMU driver connection: changing a guest's vCPU count (virsh setvcpus), live and in its config.

Live, vCPUs come and go one CPU device at a time, as libvirt 9.0's
qemuDomainSetVcpusLive with QEMU's ``query-hotpluggable-cpus``: a new vCPU
is ``device_add`` of the type and topology properties of the lowest free
slot, with libvirt's alias ``vcpuN``; a removal is ``device_del`` of the
highest plugged one, then a wait for QEMU's DEVICE_DELETED, which comes once
the guest has offlined and ejected it (hotplug.REMOVE_WAIT, libvirt's 5 s).
The vCPUs QEMU started with (``-smp``) are not devices and cannot be
unplugged, as libvirt's are not (hotpluggable='no').  What is plugged is
always read back from QEMU, so a restarted daemon knows it too.

The live XML's ``<vcpu current=...>`` follows; the per-vCPU ``<vcpus>`` list
libvirt writes beside it is not kept (yet).  The guest agent's view
(VIR_DOMAIN_VCPU_GUEST) needs the agent, which pyvirtd does not drive yet.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from pyvirtd.driver import domains as ds
from pyvirtd.driver.api import Dom
from pyvirtd.driver.metadata import modification_impact
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P

from .guest import QemuDomain, QemuState
from .hotplug import REMOVE_WAIT, Unplug, commit_config

log = logging.getLogger(__name__)

AFFECT_LIVE = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_LIVE
AFFECT_CONFIG = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_CONFIG
VCPU_MAXIMUM = P.DomainVcpuFlags.VIR_DOMAIN_VCPU_MAXIMUM
VCPU_GUEST = P.DomainVcpuFlags.VIR_DOMAIN_VCPU_GUEST
VCPU_HOTPLUGGABLE = P.DomainVcpuFlags.VIR_DOMAIN_VCPU_HOTPLUGGABLE
# How often an unplug in progress asks QEMU whether the CPU is gone (see _unplug).
UNPLUG_POLL = 0.1
# where QEMU puts devices that were given an id (ours: vcpuN); -smp vCPUs live elsewhere
_PERIPHERAL = "/machine/peripheral/"


def _err(code: int, message: str, domain: int = P.VIR_FROM_QEMU) -> VirError:
    return VirError(code, message, domain=domain)


def _too_many(nvcpus: int, maximum: int) -> VirError:
    return _err(P.VIR_ERR_INVALID_ARG, "Requested number of virtual CPUs is greater than max "
                f"allowable number of virtual CPUs for the domain: {nvcpus} > {maximum}",
                P.VIR_FROM_DOMAIN)


def _slot_key(slot: dict) -> tuple[int, ...]:
    props = slot.get("props", {})
    return tuple(int(props.get(k, 0)) for k in ("node-id", "socket-id", "die-id", "core-id",
                                                "thread-id"))


async def cpu_slots(mon: Any) -> list[dict]:
    """QEMU's CPU slots in vCPU order (socket, die, core, thread), one per vCPU index."""
    return sorted(await mon.query_hotpluggable_cpus(), key=_slot_key)


def plugged_count(slots: list[dict]) -> int:
    return sum(int(s.get("vcpus-count", 1)) for s in slots if s.get("qom-path"))


async def set_live(dom: QemuDomain, nvcpus: int) -> int:
    """Plug or unplug CPU devices until ``nvcpus`` vCPUs run; the count reached.

    The caller holds ``dom.lock``.  Errors are libvirt's: a vCPU QEMU started
    with cannot go ("vcpu 'N' can't be unplugged"), a guest that does not
    release one in time leaves the request pending ("vcpu unplug request
    timed out ...").
    """
    mon = dom.monitor
    slots = await cpu_slots(mon)
    current = plugged_count(slots)
    if nvcpus > current:
        for index, slot in enumerate(slots):
            if current >= nvcpus:
                break
            if slot.get("qom-path"):
                continue
            await mon.device_add({"driver": slot["type"], "id": f"vcpu{index}",
                                  **slot.get("props", {})})
            current += int(slot.get("vcpus-count", 1))
        return current
    for index in range(len(slots) - 1, -1, -1):
        if current <= nvcpus:
            break
        slot = slots[index]
        path = slot.get("qom-path")
        if not path:
            continue
        if not path.startswith(_PERIPHERAL):
            raise _err(P.VIR_ERR_CONFIG_UNSUPPORTED, f"vcpu '{index}' can't be unplugged")
        await _unplug(dom, path[len(_PERIPHERAL):])
        current -= int(slot.get("vcpus-count", 1))
    return current


async def _unplug(dom: QemuDomain, alias: str) -> None:
    """device_del of one vCPU and the wait for the guest to give it back.

    QEMU 7.2 announces the end of an x86 CPU's removal only with a
    DEVICE_DELETED of its APIC (a path, no device id), so the wait also
    watches the CPU leave QEMU's slot list: that is what "removed" means.
    """
    mon = dom.monitor
    pending = dom.unplugging.setdefault(alias, Unplug())
    try:
        await mon.device_del(alias)
    except BaseException:
        dom.unplugging.pop(alias, None)
        raise
    path = _PERIPHERAL + alias
    gone = False
    with trio.move_on_after(REMOVE_WAIT):
        while not pending.done.is_set():
            if all(s.get("qom-path") != path for s in await mon.query_hotpluggable_cpus()):
                gone = True
                break
            with trio.move_on_after(UNPLUG_POLL):
                await pending.done.wait()
    if gone or pending.done.is_set():
        dom.unplugging.pop(alias, None)
    if pending.rejected:
        raise _err(P.VIR_ERR_OPERATION_FAILED, "unplug of device was rejected by the guest")
    if not gone and not pending.done.is_set():
        raise _err(P.VIR_ERR_OPERATION_FAILED, "vcpu unplug request timed out. Unplug result "
                   "must be manually inspected in the domain")


class VcpusMixin:
    driver: QemuState

    async def domain_set_vcpus(self, ref: Dom, nvcpus: int) -> None:
        await self.domain_set_vcpus_flags(ref, nvcpus, AFFECT_LIVE)

    def domain_get_max_vcpus(self, ref: Dom) -> int:
        """qemuDomainGetMaxVcpus: the running guest's maximum."""
        return self.domain_get_vcpus_flags(ref, AFFECT_LIVE | VCPU_MAXIMUM)  # type: ignore[attr-defined]

    async def domain_set_vcpus_flags(self, ref: Dom, nvcpus: int, flags: int) -> None:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | VCPU_MAXIMUM | VCPU_GUEST
                    | VCPU_HOTPLUGGABLE, "qemuDomainSetVcpusFlags", P.VIR_FROM_QEMU)
        dom = self._dom(ref)                # type: ignore[attr-defined]
        if flags & VCPU_GUEST:
            if not dom.active:
                raise ds.not_running()
            raise _err(P.VIR_ERR_ARGUMENT_UNSUPPORTED, "QEMU guest agent is not configured")
        async with dom.lock:
            live, config = modification_impact(dom, flags & (AFFECT_LIVE | AFFECT_CONFIG))
            if flags & VCPU_MAXIMUM and live:
                raise _err(P.VIR_ERR_INVALID_ARG,
                           "maximum vcpu count of a live domain can't be modified")
            new_config = None
            if config:
                new_config = dom.persistent_def.copy()
                if flags & VCPU_MAXIMUM:
                    new_config.vcpus = nvcpus
                    new_config.vcpus_current = min(new_config.vcpus_current, nvcpus)
                else:
                    if nvcpus > new_config.vcpus:
                        raise _too_many(nvcpus, new_config.vcpus)
                    new_config.vcpus_current = nvcpus
            if live:
                if dom.monitor is None:
                    raise ds.not_running()
                if nvcpus > dom.definition.vcpus:
                    raise _too_many(nvcpus, dom.definition.vcpus)
                try:
                    reached = await set_live(dom, nvcpus)
                finally:
                    # what QEMU really runs, whatever went wrong on the way
                    if dom.monitor is not None:
                        try:
                            dom.definition.vcpus_current = plugged_count(
                                await cpu_slots(dom.monitor))
                        except VirError as exc:
                            log.warning("%s: query-hotpluggable-cpus: %s", dom.name, exc)
                    await self.driver.save_status(dom)
                log.info("%s: %d vCPUs now", dom.name, reached)
            if new_config is not None:
                await commit_config(self.driver, dom, new_config)
