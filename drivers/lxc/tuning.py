"""LXC driver connection: a container's memory size and block I/O tuning (virsh setmem,
setmaxmem, blkiotune), in its cgroup while it runs and in its definitions.

A container has no balloon: its "current memory" is the cgroup's memory
limit, so a live setmem moves that limit (lxcDomainSetMemoryFlags), and the
maximum (<memory>) changes only in the persistent definition.  blkiotune
follows lxcDomainGet/SetBlkioParameters: a weight (the v1 ``blkio.bfq.weight``
or ``blkio.weight``, which exist only under the bfq or cfq I/O schedulers)
and per-device weights and throttles (``blkio.throttle.*``), each device a
block device named by its path.  Codes and wording are libvirt's.
"""

from __future__ import annotations

import os
import stat
import trio
from lxml import etree

from pyvirtd.driver import metadata as md
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

from . import cgroup
from .domains import error, param
from .driver import LxcDomain, LxcDriverState

_FROM = P.VIR_FROM_LXC
AFFECT_LIVE = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_LIVE
AFFECT_CONFIG = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_CONFIG
MEM_MAXIMUM = P.DomainMemoryModFlags.VIR_DOMAIN_MEM_MAXIMUM
STRING_OKAY = P.TypedParameterFlags.VIR_TYPED_PARAM_STRING_OKAY

# typed parameter -> the <blkiotune><device> child it lives in
DEVICE_PARAMS = {"device_weight": "weight", "device_read_iops_sec": "read_iops_sec",
                 "device_write_iops_sec": "write_iops_sec",
                 "device_read_bytes_sec": "read_bytes_sec",
                 "device_write_bytes_sec": "write_bytes_sec"}
# the cgroup v1 file each device value is written to
DEVICE_FILES = {"weight": "blkio.weight_device", "read_iops_sec": "blkio.throttle.read_iops_device",
                "write_iops_sec": "blkio.throttle.write_iops_device",
                "read_bytes_sec": "blkio.throttle.read_bps_device",
                "write_bytes_sec": "blkio.throttle.write_bps_device"}
WEIGHT_FILES = ("blkio.bfq.weight", "blkio.weight")


class TuningMixin:
    driver: LxcDriverState

    # -- memory
    async def domain_set_memory(self, ref: Dom, memory: int) -> None:
        await self.domain_set_memory_flags(ref, memory, AFFECT_LIVE)

    async def domain_set_max_memory(self, ref: Dom, memory: int) -> None:
        # --current: the config of a shut off container, refused for a running one
        await self.domain_set_memory_flags(ref, memory, MEM_MAXIMUM)

    async def domain_set_memory_flags(self, ref: Dom, memory: int, flags: int) -> None:
        """``memory`` in KiB: the cgroup limit live, <currentMemory> (or <memory>
        with VIR_DOMAIN_MEM_MAXIMUM) in the config (lxcDomainSetMemoryFlags)."""
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | MEM_MAXIMUM, "lxcDomainSetMemoryFlags",
                    _FROM)
        dom: LxcDomain = self._dom(ref)  # type: ignore[attr-defined]
        async with dom.lock:
            live, config = md.modification_impact(dom, flags & ~MEM_MAXIMUM)
            if flags & MEM_MAXIMUM:
                if live:
                    raise error(P.VIR_ERR_OPERATION_INVALID,
                               "Cannot resize the max memory on an active domain")
                new = dom.persistent_def.copy()
                new.memory = memory
                new.current_memory = min(new.current_memory, memory)
                await self.driver.save_config(new)
                dom.persistent_def.memory = new.memory
                dom.persistent_def.current_memory = new.current_memory
                return
            limits = []
            if live:
                limits.append(dom.definition.memory)
            if config:
                limits.append(dom.persistent_def.memory)
            if memory > min(limits):
                raise error(P.VIR_ERR_INVALID_ARG, "Cannot set memory higher than max memory")
            if live:
                try:
                    await trio.to_thread.run_sync(cgroup.set_memory_limit, dom.cgroup, memory)
                except OSError:
                    raise error(P.VIR_ERR_OPERATION_FAILED,
                               "Failed to set memory for domain") from None
                dom.definition.current_memory = memory
                await self.driver.save_status(dom)
            if config:
                new = dom.persistent_def.copy()
                new.current_memory = memory
                await self.driver.save_config(new)
                dom.persistent_def.current_memory = memory

    # -- block I/O
    def domain_get_blkio_parameters(self, ref: Dom, nparams: int, flags: int) -> tuple:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | STRING_OKAY,
                    "lxcDomainGetBlkioParameters", _FROM)
        if nparams == 0:
            return ([], 1 + len(DEVICE_PARAMS))
        dom: LxcDomain = self._dom(ref)  # type: ignore[attr-defined]
        live, _config = md.modification_impact(dom, flags & ~STRING_OKAY)
        d = dom.definition if live else dom.persistent_def
        if live:
            _check_blkio(dom)
            weight = _read_weight(dom.cgroup)
        else:
            weight = blkio_weight(d)
        params = [param("weight", P.VIR_TYPED_PARAM_UINT, weight)]
        devices = blkio_devices(d)
        for name, key in DEVICE_PARAMS.items():
            value = ",".join(f"{path},{vals[key]}" for path, vals in devices.items()
                             if vals.get(key))
            params.append(param(name, P.VIR_TYPED_PARAM_STRING, value))
        return (params[:nparams], len(params[:nparams]))

    async def domain_set_blkio_parameters(self, ref: Dom, params: list, flags: int) -> None:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG, "lxcDomainSetBlkioParameters", _FROM)
        weight, changes = _parse_blkio_params(params)
        dom: LxcDomain = self._dom(ref)  # type: ignore[attr-defined]
        async with dom.lock:
            live, config = md.modification_impact(dom, flags)
            if live:
                _check_blkio(dom)
                numbers = await trio.to_thread.run_sync(_device_numbers, changes)
                await trio.to_thread.run_sync(_write_blkio, dom.cgroup, weight, changes, numbers)
                _edit_blkio(dom.definition, weight, changes)
                await self.driver.save_status(dom)
            if config:
                new = dom.persistent_def.copy()
                _edit_blkio(new, weight, changes)
                await self.driver.save_config(new)
                _edit_blkio(dom.persistent_def, weight, changes)


def _check_blkio(dom: LxcDomain) -> None:
    if "blkio" not in dom.cgroup:
        raise error(P.VIR_ERR_OPERATION_INVALID, "blkio cgroup isn't mounted")


def _read_weight(paths: dict[str, str]) -> int:
    for name in WEIGHT_FILES:
        raw = cgroup.read(paths, "blkio", name)
        if raw is not None:
            # bfq prints "default 100" (and per-device lines after it)
            return int(raw.split()[-1] if raw.startswith("default") else raw.split()[0])
    raise error(P.VIR_ERR_OPERATION_INVALID, "blkio weight is valid only for bfq or cfq scheduler")


def blkio_weight(d: domxml.DomainDef) -> int:
    tune = d.raw.get("blkiotune")
    elem = tune.find("weight") if tune is not None else None
    return int(elem.text) if elem is not None and elem.text else 0


def blkio_devices(d: domxml.DomainDef) -> dict[str, dict[str, int]]:
    """path -> {weight, read_iops_sec, ...} of <blkiotune><device>, in order."""
    tune = d.raw.get("blkiotune")
    out: dict[str, dict[str, int]] = {}
    for dev in tune.findall("device") if tune is not None else ():
        path = dev.findtext("path")
        if path:
            out[path] = {c.tag: int(c.text) for c in dev if c.tag != "path" and c.text}
    return out


def _parse_blkio_params(params: list) -> tuple[int | None, dict[str, dict[str, int]]]:
    """(weight or None, path -> {key: value}) from virsh blkiotune's typed parameters."""
    weight = None
    changes: dict[str, dict[str, int]] = {}
    for p in params:
        if p.field == "weight":
            if p.value.type != P.VIR_TYPED_PARAM_UINT:
                raise VirError(P.VIR_ERR_INVALID_ARG, "invalid type for parameter 'weight', "
                               "expected 'uint'", domain=P.VIR_FROM_NONE)
            weight = p.value.value
            continue
        key = DEVICE_PARAMS.get(p.field)
        if key is None:
            raise VirError(P.VIR_ERR_INVALID_ARG, f"parameter '{p.field}' not supported",
                           domain=P.VIR_FROM_NONE)
        items = str(p.value.value).split(",") if p.value.value else []
        if len(items) % 2:
            raise VirError(P.VIR_ERR_INVALID_ARG,
                           f"unable to parse blkio device '{p.field}' '{p.value.value}'",
                           domain=_FROM)
        for path, value in zip(items[::2], items[1::2]):
            if not value.isdigit():
                raise VirError(P.VIR_ERR_INVALID_ARG,
                               f"unable to parse blkio device '{p.field}' '{p.value.value}'",
                               domain=_FROM)
            changes.setdefault(path, {})[key] = int(value)
    return weight, changes


def _device_numbers(changes: dict[str, dict[str, int]]) -> dict[str, str]:
    """path -> "major:minor" of each block device named (blocking: stat)."""
    out = {}
    for path in changes:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, f"Couldn't stat device {path}: "
                           f"{exc.strerror}", domain=_FROM) from None
        if not stat.S_ISBLK(st.st_mode):
            raise VirError(P.VIR_ERR_INVALID_ARG, f"Path '{path}' must be a block device",
                           domain=_FROM)
        out[path] = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return out


def _write_blkio(paths: dict[str, str], weight: int | None,
                 changes: dict[str, dict[str, int]], numbers: dict[str, str]) -> None:
    """Apply to the v1 blkio cgroup (blocking); the kernel's refusal is libvirt's system error."""
    base = paths["blkio"]
    if weight is not None:
        name = next((n for n in WEIGHT_FILES if os.path.exists(os.path.join(base, n))), None)
        if name is None:
            raise error(P.VIR_ERR_OPERATION_INVALID,
                       "blkio weight is valid only for bfq or cfq scheduler")
        _write_cgroup(os.path.join(base, name), str(weight))
    for path, values in changes.items():
        for key, value in values.items():
            target = os.path.join(base, DEVICE_FILES[key])
            if key == "weight" and not os.path.exists(target):
                raise error(P.VIR_ERR_OPERATION_INVALID,
                           "blkio device weight is valid only for bfq or cfq scheduler")
            _write_cgroup(target, f"{numbers[path]} {value}")


def _write_cgroup(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR, f"Unable to write to '{path}': {exc.strerror}",
                       domain=P.VIR_FROM_CGROUP) from None


def _edit_blkio(d: domxml.DomainDef, weight: int | None,
                changes: dict[str, dict[str, int]]) -> None:
    """Merge into <blkiotune>: a device whose values are all 0 goes away, as libvirt prints."""
    tune = d.raw.get("blkiotune")
    if tune is None:
        tune = d.raw["blkiotune"] = etree.Element("blkiotune")
    if weight is not None:
        elem = tune.find("weight")
        if elem is None:
            elem = etree.Element("weight")
            tune.insert(0, elem)
        elem.text = str(weight)
    devices = blkio_devices(d)
    for path, values in changes.items():
        devices.setdefault(path, {}).update(values)
    for old in tune.findall("device"):
        tune.remove(old)
    for path, values in devices.items():
        kept = [(k, values[k]) for k in DEVICE_FILES if values.get(k)]
        if not kept:
            continue
        dev = etree.SubElement(tune, "device")
        etree.SubElement(dev, "path").text = path
        for key, value in kept:
            etree.SubElement(dev, key).text = str(value)
    if not len(tune):
        del d.raw["blkiotune"]
