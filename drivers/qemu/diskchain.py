"""The disks of a running QEMU guest as libvirt's live XML shows them, and QEMU's block nodes.

Disks are attached with ``-blockdev`` (command.py): the top image of disk N
is the format node ``libvirt-N-format`` over ``libvirt-N-storage``; images
below it (a qcow2's backing files) are opened by QEMU itself from the image
headers.  Block jobs (blockjobs.py) and external snapshots (extsnap.py) move
disks from image to image; this module keeps the live XML in step, as
libvirt prints it for a running guest: ``index`` on the source and the
``<backingStore>`` chain, refreshed from QEMU's ``query-block`` when a guest
starts and whenever a job or snapshot changes a chain.  Images QEMU opened
itself get indexes after the highest ``libvirt-N`` node, remembered by file
name so they stay put across refreshes.  A persistent guest's next boot
follows a pivot (``rewrite_config``).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

if TYPE_CHECKING:
    from .guest import QemuDomain
    from .monitor import Monitor

log = logging.getLogger(__name__)

NODE_RX = re.compile(r"^libvirt-(\d+)-format$")
# an image named by its index in the chain: vda[2]
INDEXED = re.compile(r"^(?P<dev>[a-z]+)\[(?P<index>\d+)\]$")


def _err(code: int, message: str) -> VirError:
    return VirError(code, message, domain=P.VIR_FROM_QEMU)


# ------------------------------------------------------------------ disks in the live XML
def disk_elements(dom: QemuDomain) -> list[Any]:
    return list(dom.definition.devices_of("disk"))


def source_of(el: Any) -> Any:
    return el.find("source")


def path_of(dom: QemuDomain, el: Any) -> str:
    """The top image's host path ('' when the disk has none)."""
    src = source_of(el)
    if src is None:
        return ""
    path = src.get("file") or src.get("dev")
    if path is None and el.get("type") == "volume":
        tgt = el.find("target")
        path = dom.volume_paths.get(tgt.get("dev") if tgt is not None else "")
    return path or ""


def target_of(el: Any) -> str:
    tgt = el.find("target")
    return tgt.get("dev") if tgt is not None else ""


def format_of(el: Any) -> str:
    drv = el.find("driver")
    return (drv.get("type") if drv is not None else None) or "raw"


def alias_of(el: Any) -> str | None:
    a = el.find("alias")
    return a.get("name") if a is not None else None


def find_disk(dom: QemuDomain, name: str, *, missing: str = "disk '{}' not found in domain") -> Any:
    """The live disk element named by target ('vda') or source path."""
    for el in disk_elements(dom):
        if name in (target_of(el), path_of(dom, el)) and target_of(el):
            return el
    m = INDEXED.match(name)
    if m:
        for el in disk_elements(dom):
            if target_of(el) == m["dev"]:
                return el
    raise _err(P.VIR_ERR_INVALID_ARG, missing.format(name))


# ------------------------------------------------------------------ QEMU's view of the chain
async def block_entry(mon: Monitor, alias: str | None) -> dict:
    """query-block's entry of the device ``alias`` (as snapshots.py finds it)."""
    for entry in await mon.query_block():
        qdev = entry.get("qdev") or ""
        if alias and (qdev == alias or qdev.endswith(f"/{alias}") or f"/{alias}/" in qdev):
            return entry
    raise _err(P.VIR_ERR_INTERNAL_ERROR, f"cannot find block device '{alias}'")


def chain_of(entry: dict) -> list[dict]:
    """The images of a device, top first: {filename, format}."""
    out = []
    image = (entry.get("inserted") or {}).get("image")
    while image:
        out.append({"filename": image.get("filename", ""), "format": image.get("format", "raw")})
        image = image.get("backing-image")
    return out


async def top_node(mon: Monitor, el: Any) -> str:
    node = (await block_entry(mon, alias_of(el))).get("inserted", {}).get("node-name")
    if not node:
        raise _err(P.VIR_ERR_OPERATION_INVALID, f"disk '{target_of(el)}' has no media")
    return node


async def node_of_file(mon: Monitor, filename: str, depth: int | None = None) -> str | None:
    """The format node QEMU opened ``filename`` as (preferring the given chain depth)."""
    found = []
    for n in await mon.execute("query-named-block-nodes", {"flat": True}):
        if n.get("file") == filename and n.get("drv") not in ("file", "host_device"):
            found.append(n)
    for n in found:
        if depth is None or n.get("backing_file_depth") == depth:
            return n["node-name"]
    return found[0]["node-name"] if found else None


async def next_index(dom: QemuDomain, mon: Monitor) -> int:
    """A fresh image index (and libvirt-N node number) for this run."""
    slots = dom.job_slots
    if "next_index" not in slots:
        top = 0
        for n in await mon.execute("query-named-block-nodes", {"flat": True}):
            m = re.match(r"^libvirt-(\d+)-", n.get("node-name", ""))
            if m:
                top = max(top, int(m.group(1)))
        slots["next_index"] = max(top, len(disk_elements(dom))) + 1
    index = slots["next_index"]
    slots["next_index"] = index + 1
    return index


async def _index_of(dom: QemuDomain, mon: Monitor, filename: str, node: str | None) -> int:
    indexes = dom.job_slots.setdefault("indexes", {})
    m = NODE_RX.match(node or "")
    if m:
        indexes[filename] = int(m.group(1))
    if filename not in indexes:
        indexes[filename] = await next_index(dom, mon)
    return indexes[filename]


def source_element(kind: str, path: str, index: int | None) -> Any:
    src = etree.Element("source")
    src.set("dev" if kind == "block" else "file", path)
    if index is not None:
        src.set("index", str(index))
    return src


async def refresh_chain(dom: QemuDomain, el: Any, mon: Monitor | None = None) -> None:
    """Write the disk's live chain as libvirt prints it: source index, <backingStore>s."""
    mon = mon or dom.monitor
    src = source_of(el)
    if mon is None or src is None or not alias_of(el):
        return
    try:
        entry = await block_entry(mon, alias_of(el))
    except VirError:
        return
    images = chain_of(entry)
    if not images:
        return
    for old in el.findall("backingStore"):
        el.remove(old)
    node = (entry.get("inserted") or {}).get("node-name")
    src.set("index", str(await _index_of(dom, mon, images[0]["filename"], node)))
    outer = etree.Element("backingStore")
    holder = outer
    for image in images[1:]:
        holder.set("type", "file")
        holder.set("index", str(await _index_of(dom, mon, image["filename"], None)))
        etree.SubElement(holder, "format").set("type", image["format"])
        holder.append(source_element("file", image["filename"], None))
        inner = etree.SubElement(holder, "backingStore")
        holder = inner
    src.addnext(outer)


async def refresh_all(dom: QemuDomain) -> None:
    """Every disk's chain (after an external snapshot)."""
    for el in disk_elements(dom):
        if el.get("device", "disk") == "disk":
            await refresh_chain(dom, el)


async def describe_run(dom: QemuDomain, mon: Monitor, live: Any) -> None:
    """A new run (driver.launch): forget the last run's jobs and indexes, and write
    the chains of ``live``'s disks (not yet ``dom.definition``)."""
    for key in ("block", "indexes", "next_index"):
        dom.job_slots.pop(key, None)
    for el in live.devices_of("disk"):
        if el.get("device", "disk") == "disk":
            try:
                await refresh_chain(dom, el, mon)
            except Exception as exc:    # the guest runs all the same (a missing chain)
                log.warning("%s: cannot describe the chain of %s: %s", dom.name,
                            target_of(el), exc)


def drop_mirror(el: Any) -> None:
    for old in el.findall("mirror"):
        el.remove(old)


def switch_source(el: Any, kind: str, path: str, fmt: str) -> None:
    """Point a disk element at another image (after a pivot)."""
    old = source_of(el)
    el.set("type", kind)
    new = source_element(kind, path, None)
    if old is not None:
        old.addprevious(new)
        el.remove(old)
    else:
        el.append(new)
    drv = el.find("driver")
    if drv is None:
        drv = etree.Element("driver", name="qemu")
        el.insert(0, drv)
    drv.set("type", fmt)


def own_nodes(node: str) -> list[str]:
    """The libvirt-N format and storage nodes behind a top node (ours to delete)."""
    m = NODE_RX.match(node)
    if not m:
        return []
    return [node, f"libvirt-{m.group(1)}-storage"]


async def delete_nodes(mon: Monitor | None, nodes: list[str]) -> None:
    for node in nodes:
        if mon is None:
            return
        try:
            await mon.blockdev_del(node)
        except VirError as exc:
            log.debug("blockdev-del %s: %s", node, exc)


def rewrite_config(dom: QemuDomain, target: str, kind: str, path: str, fmt: str) -> None:
    """A persistent guest's next boot uses the image the disk pivoted to, as libvirt's."""
    if dom.new_def is None:
        return
    for el in dom.new_def.devices_of("disk"):
        if target_of(el) == target:
            switch_source(el, kind, path, fmt)
            for extra in el.findall("backingStore"):
                el.remove(extra)
