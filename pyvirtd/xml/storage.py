"""Storage pool (<pool>) and volume (<volume>) XML: parse, defaults, format.

As in network.py the model is a canonical element tree: the elements libvirt
knows, in the order src/conf/storage_conf.c writes them, with the defaults
its parser fills in (a pool type's default source format, a volume's
allocation defaulting to its capacity, sizes in bytes).  Sizes and the few
fields drivers need are exposed as properties; drivers set the runtime
numbers (capacity, allocation, available, a volume's key and path) through
`PoolDef.set_sizes` and `VolumeDef.place`.
"""

from __future__ import annotations

import copy

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.names import check_name
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import encryption
from pyvirtd.xml import (TreeDef, format_libvirt, format_uuid, invalid_attr, missing_attr,
                         new_uuid, parse_definition, parse_uuid)

_FROM = P.VIR_FROM_STORAGE

# virStoragePoolType names, in enum order (their index is the listing flag bit - 6).
POOL_TYPES = ("dir", "fs", "netfs", "logical", "disk", "iscsi", "scsi", "mpath", "rbd",
              "sheepdog", "gluster", "zfs", "vstorage", "iscsi-direct")
# The source format a pool type gets when its definition names none.
DEFAULT_SOURCE_FORMAT = {"fs": "auto", "netfs": "auto", "logical": "lvm2", "disk": "unknown"}
# Pool types that need no <target><path> (libvirt's poolOptions).
_NO_TARGET = ("rbd", "sheepdog", "gluster", "iscsi-direct")
# Pool types whose definition must name a source (<source><name>).
_NEED_SOURCE_NAME = ("rbd", "sheepdog", "gluster", "zfs")

POOL_CHILDREN = ("name", "uuid", "capacity", "allocation", "available", "source", "target")
SOURCE_CHILDREN = ("host", "device", "dir", "adapter", "name", "initiator", "format", "auth",
                   "protocol", "vendor", "product")
TARGET_CHILDREN = ("path", "permissions")
PERM_CHILDREN = ("mode", "owner", "group", "label")
VOLUME_CHILDREN = ("name", "key", "source", "capacity", "allocation", "physical", "target",
                   "backingStore")
VOL_TARGET_CHILDREN = ("path", "format", "permissions", "timestamps", "encryption", "compat",
                       "nocow", "features")

# Volume formats a file-backed pool accepts (virStorageFileFormat).
FILE_FORMATS = ("none", "raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat",
                "vhd", "ploop", "cow", "qcow", "qcow2", "qed", "vmdk")

# virScaleInteger's units: bare SI letters are binary, "xB" decimal.
_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1}
for _i, _p in enumerate("kmgtpe", start=1):
    _UNITS[_p] = _UNITS[f"{_p}ib"] = 1024 ** _i
    _UNITS[f"{_p}b"] = 1000 ** _i


def _sort(elem: etree._Element, order: tuple[str, ...], drop_unknown: bool = True) -> None:
    rank = {t: i for i, t in enumerate(order)}
    kids = [c for c in elem if isinstance(c.tag, str) and (c.tag in rank or not drop_unknown)]
    kids.sort(key=lambda c: rank.get(c.tag, len(order)))
    for c in list(elem):
        elem.remove(c)
    elem.extend(kids)
    elem.text = None


def parse_size(elem: etree._Element | None, what: str) -> int | None:
    """A <capacity unit='G'>2</capacity>-style size in bytes (None when absent).

    An empty element counts as absent, as libvirt reads these through an XPath
    string() that yields nothing for it."""
    if elem is None or not (elem.text or "").strip():
        return None
    unit = (elem.get("unit") or "").lower()
    text = (elem.text or "").strip()
    scale = _UNITS.get(unit)
    if scale is None:
        raise VirError(P.VIR_ERR_INVALID_ARG, f"unknown suffix '{elem.get('unit')}'",
                       domain=P.VIR_FROM_NONE)
    try:
        value = int(text)
    except ValueError:
        raise VirError(P.VIR_ERR_XML_ERROR, f"malformed {what} element",
                       domain=_FROM) from None
    return value * scale


def _set_size(tree: etree._Element, tag: str, value: int) -> None:
    elem = tree.find(tag)
    if elem is None:
        elem = etree.SubElement(tree, tag)
    elem.attrib.clear()
    elem.set("unit", "bytes")
    elem.text = str(value)


# --- pools --------------------------------------------------------------------

class PoolDef(TreeDef):
    @property
    def uuid(self) -> bytes:
        return parse_uuid(self.tree.findtext("uuid"))

    @property
    def type(self) -> str:
        return self.tree.get("type")

    @property
    def target_path(self) -> str | None:
        return self.tree.findtext("target/path")

    def set_sizes(self, capacity: int, allocation: int, available: int) -> None:
        for tag, value in (("capacity", capacity), ("allocation", allocation),
                           ("available", available)):
            _set_size(self.tree, tag, value)
        _sort(self.tree, POOL_CHILDREN)


def parse_pool(text: str, *, validate_schema: bool = False) -> PoolDef:
    """A client's <pool>; ``validate_schema`` checks it against schemas/storagepool.rng."""
    root = parse_definition(text, "pool", what="storage_pool_definition", domain=_FROM,
                            validate="storagepool" if validate_schema else None)
    return pool_from_element(root)


def pool_from_element(root: etree._Element) -> PoolDef:
    """Validate a parsed <pool>, fill in defaults, canonicalise (a new tree)."""
    ptype = root.get("type")
    if ptype is None:
        raise missing_attr("type", "pool")
    if ptype not in POOL_TYPES:
        raise invalid_attr("type", "pool", ptype)
    tree = copy.deepcopy(root)
    for child in list(tree):
        if not isinstance(child.tag, str):
            tree.remove(child)
    source = tree.find("source")
    if source is None:
        source = etree.SubElement(tree, "source")
    name = (tree.findtext("name") or "").strip()
    if not name:
        raise VirError(P.VIR_ERR_XML_ERROR, "missing pool source name element", domain=_FROM)
    check_name("pool", name)
    tree.find("name").text = name
    if ptype == "logical" and source.find("name") is None:
        etree.SubElement(source, "name").text = name
    if ptype in _NEED_SOURCE_NAME and not source.findtext("name"):
        raise VirError(P.VIR_ERR_XML_ERROR, "element 'name' is mandatory for storage pool",
                       domain=_FROM)
    if ptype in DEFAULT_SOURCE_FORMAT and source.find("format") is None:
        etree.SubElement(source, "format", type=DEFAULT_SOURCE_FORMAT[ptype])
    _sort(source, SOURCE_CHILDREN)
    target = tree.find("target")
    if ptype not in _NO_TARGET:
        if target is None or not (target.findtext("path") or "").strip():
            raise VirError(P.VIR_ERR_XML_ERROR, "missing storage pool target path",
                           domain=_FROM)
        path = target.find("path")
        path.text = _clean_path(path.text)
    if target is not None:
        _sort(target, TARGET_CHILDREN)
        perms = target.find("permissions")
        if perms is not None:
            _sort(perms, PERM_CHILDREN)
    uuid_text = tree.findtext("uuid")
    if uuid_text is None:
        etree.SubElement(tree, "uuid").text = format_uuid(new_uuid())
    else:
        try:
            raw = parse_uuid(uuid_text)
        except VirError:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, "malformed uuid element",
                           domain=_FROM) from None
        tree.find("uuid").text = format_uuid(raw)
    _sort(tree, POOL_CHILDREN)
    return PoolDef(tree)


def _clean_path(path: str) -> str:
    """virFileSanitizePath: collapse '//' and drop a trailing '/'."""
    path = path.strip()
    while "//" in path:
        path = path.replace("//", "/")
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def format_pool(pooldef: PoolDef) -> str:
    # libvirt writes an empty <source> as an open/close pair.
    return format_libvirt(pooldef.tree, open_empty=frozenset({"source"}))


# --- volumes ------------------------------------------------------------------

class VolumeDef(TreeDef):
    @property
    def key(self) -> str:
        return self.tree.findtext("key")

    @property
    def path(self) -> str:
        return self.tree.findtext("target/path")

    @property
    def capacity(self) -> int:
        return int(self.tree.findtext("capacity"))

    @property
    def encryption(self) -> "encryption.Encryption | None":
        elem = self.tree.find("target/encryption")
        return encryption.parse(elem) if elem is not None else None

    @property
    def allocation(self) -> int:
        return int(self.tree.findtext("allocation"))

    def place(self, path: str, key: str | None = None) -> None:
        """Give the volume its path and key inside a pool."""
        target = self.tree.find("target")
        p = target.find("path")
        if p is None:
            p = etree.SubElement(target, "path")
        p.text = path
        k = self.tree.find("key")
        if k is None:
            k = etree.SubElement(self.tree, "key")
        k.text = key or path
        _sort(target, VOL_TARGET_CHILDREN)
        _sort(self.tree, VOLUME_CHILDREN)


def parse_volume(text: str, pool_type: str, *, validate_schema: bool = False) -> VolumeDef:
    """A client's <volume>; ``validate_schema`` checks it against schemas/storagevol.rng."""
    root = parse_definition(text, "volume", what="storage_volume_definition", domain=_FROM,
                            validate="storagevol" if validate_schema else None)
    return volume_from_element(root, pool_type)


def volume_from_element(root: etree._Element, pool_type: str) -> VolumeDef:
    tree = copy.deepcopy(root)
    for child in list(tree):
        if not isinstance(child.tag, str):
            tree.remove(child)
    name = (tree.findtext("name") or "").strip()
    if not name:
        raise VirError(P.VIR_ERR_NO_NAME, "missing volume name element", domain=_FROM)
    tree.find("name").text = name
    tree.attrib.clear()
    tree.set("type", root.get("type", "file"))
    capacity = parse_size(tree.find("capacity"), "capacity")
    if capacity is None:
        raise VirError(P.VIR_ERR_XML_ERROR, "missing capacity element", domain=_FROM)
    allocation = parse_size(tree.find("allocation"), "allocation")
    _set_size(tree, "capacity", capacity)
    _set_size(tree, "allocation", capacity if allocation is None else allocation)
    target = tree.find("target")
    if target is None:
        target = etree.SubElement(tree, "target")
    fmt = target.find("format")
    if pool_type in ("dir", "fs", "netfs"):
        if fmt is None:
            fmt = etree.SubElement(target, "format", type="raw")
        if fmt.get("type") not in FILE_FORMATS:
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           f"unknown volume format type {fmt.get('type')}", domain=_FROM)
    perms = target.find("permissions")
    if perms is not None:
        _sort(perms, PERM_CHILDREN)
    enc = target.find("encryption")
    if enc is not None:
        encryption.parse(enc)          # libvirt's parse errors, at parse time
    _sort(target, VOL_TARGET_CHILDREN)
    _sort(tree, VOLUME_CHILDREN)
    return VolumeDef(tree)


def format_volume(voldef: VolumeDef) -> str:
    return format_libvirt(voldef.tree)
