"""The guest's current memory through the virtio balloon: DOMAIN_SET_MEMORY(_FLAGS) (virsh setmem).

Live, QEMU is asked for a balloon target (QMP ``balloon``); the guest's
balloon driver then gives memory back, and QEMU's BALLOON_CHANGE events
(guest_events.py) move <currentMemory> and reach clients as BALLOON_CHANGE,
as in libvirt's qemuDomainSetMemoryFlags + qemuProcessHandleBalloonChange.
In the config, <currentMemory> (or <memory> with VIR_DOMAIN_MEM_MAXIMUM)
changes directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P

from .hotplug import AFFECT_CONFIG, AFFECT_LIVE, commit_config, modification_impact

if TYPE_CHECKING:
    from .guest import QemuState

# virDomainMemoryModFlags
MEM_MAXIMUM = P.DomainMemoryModFlags.VIR_DOMAIN_MEM_MAXIMUM


def _err(code: int, message: str) -> VirError:
    return VirError(code, message, domain=P.VIR_FROM_QEMU)


class BalloonMixin:
    driver: "QemuState"

    async def domain_set_memory(self, ref: Dom, memory: int) -> None:
        await self.domain_set_memory_flags(ref, memory, AFFECT_LIVE)

    async def domain_set_max_memory(self, ref: Dom, memory: int) -> None:
        # --current, as qemuDomainSetMaxMemory: the config of a shut off guest
        await self.domain_set_memory_flags(ref, memory, MEM_MAXIMUM)

    async def domain_set_memory_flags(self, ref: Dom, memory: int, flags: int) -> None:
        """``memory`` in KiB; libvirt's checks and messages (qemuDomainSetMemoryFlags)."""
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | MEM_MAXIMUM, "qemuDomainSetMemoryFlags",
                    P.VIR_FROM_QEMU)
        dom = self._dom(ref)            # type: ignore[attr-defined]
        async with dom.lock:
            live, config = modification_impact(dom, flags & ~MEM_MAXIMUM)
            new_config = dom.persistent_def.copy() if config else None
            if flags & MEM_MAXIMUM:
                if live:
                    raise _err(P.VIR_ERR_OPERATION_INVALID,
                               "cannot resize the maximum memory on an active domain")
                new_config.memory = memory
                new_config.current_memory = min(new_config.current_memory, memory)
            else:
                if new_config is not None:
                    if memory > new_config.memory:
                        raise _err(P.VIR_ERR_INVALID_ARG,
                                   "cannot set memory higher than max memory")
                    new_config.current_memory = memory
                if live:
                    await self._balloon(dom, memory)
            if new_config is not None:
                await commit_config(self.driver, dom, new_config)

    async def _balloon(self, dom: Any, memory: int) -> None:
        if memory > dom.definition.memory:
            raise _err(P.VIR_ERR_INVALID_ARG, "cannot set memory higher than max memory")
        if not any(b.get("model") != "none" for b in dom.definition.devices_of("memballoon")):
            raise _err(P.VIR_ERR_OPERATION_INVALID,
                       "Unable to change memory of active domain without the balloon device "
                       "and guest OS balloon driver")
        await dom.monitor.balloon(memory * 1024)
