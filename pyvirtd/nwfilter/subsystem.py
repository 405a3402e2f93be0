"""The network-filter subsystem: libvirt's nwfilter driver for hypervisor connections.

Created once per daemon (``pyvirtd.driver.shared_subsystems``); its methods
answer the 14 nwfilter procedures of every qemu:// and lxc:// connection.

Files: filter definitions ``state_dir/nwfilter/NAME.xml`` (the standard
filters of pyvirtd/nwfilter/standard are written there, with new UUIDs,
when that directory is first made, as a package installs libvirt's), and
bindings, which live as long as their port, ``run_dir/nwfilter-binding/
PORTDEV.xml``.  At daemon start the rules of every binding whose port still
exists are rebuilt (`start`); bindings of ports that vanished are dropped.

Every change that affects rules (a binding created or deleted, a filter in
use redefined or undefined) first expands all bindings with the new set of
filters; a failure refuses the change with libvirt's error and touches
nothing.  Then the nft table is replaced in one transaction, then the file
is written.

A binding whose filter needs ``$IP`` without a value gets restricted rules
and a learning task (learn.py, in trio's system nursery, cancelled with the
binding); each address learned is added to the binding's parameters.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio
from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.files import write_atomic
from pyvirtd.names import name_path
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_uuid

from . import learn, model, nft
from .model import BindingDef, FilterDef, FilterRef

log = logging.getLogger(__name__)

_FROM = P.VIR_FROM_NWFILTER
DEFINE_VALIDATE = BINDING_CREATE_VALIDATE = 1
STANDARD_DIR = Path(__file__).with_name("standard")


def _err(code: int, message: str) -> VirError:
    return VirError(code, message, domain=_FROM)


def _check_flags(flags: int, allowed: int, function: str) -> None:
    if flags & ~allowed:
        raise _err(P.VIR_ERR_INVALID_ARG,
                   f"unsupported flags (0x{flags & ~allowed:x}) in function {function}")


def standard_filters() -> list[str]:
    """The XML of the filters pyvirtd ships (libvirt's names and behaviour)."""
    return [p.read_text() for p in sorted(STANDARD_DIR.glob("*.xml"))]


def loops(filters: dict[str, FilterDef], fdef: FilterDef) -> bool:
    """Would ``fdef`` reach itself through filterrefs (virNWFilterDefLoopDetect)?"""
    seen: set[str] = set()
    todo = list(fdef.refs())
    while todo:
        name = todo.pop()
        if name == fdef.name:
            return True
        if name in seen or name not in filters:
            continue
        seen.add(name)
        todo += filters[name].refs()
    return False


async def link_exists(name: str) -> bool:
    """Through netlink: /sys/class/net shows the namespace sysfs was mounted in."""
    from pyvirtd.network import _netlink
    return await _netlink("link_exists", name)


class NWFilterSubsystem:
    """Daemon-wide network filters and their bindings to guest NICs."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.config_dir = Path(ctx.paths.state_dir) / "nwfilter"
        self.binding_dir = Path(ctx.paths.run_dir) / "nwfilter-binding"
        self.filters: dict[str, FilterDef] = {}
        self.bindings: dict[str, BindingDef] = {}
        self._lock = trio.Lock()
        self._loaded = False
        self._learners: dict[str, trio.CancelScope] = {}    # portdev -> its learning task
        self._rejecting: set[str] = set()     # ports told about their reject rules

    @property
    def privileged(self) -> bool:
        """Rules need root: libvirt refuses filter changes in session mode."""
        return self.ctx.privileged or os.geteuid() == 0

    # ------------------------------------------------------------ persistence
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        fresh = not self.config_dir.exists()
        if fresh:
            for text in standard_filters():
                fdef = model.parse(text)
                self.filters[fdef.name] = fdef
                self._save(fdef)
            return
        for path in sorted(self.config_dir.glob("*.xml")):
            try:
                fdef = model.parse(path.read_text())
            except (OSError, VirError) as exc:
                log.error("network filter definition %s ignored: %s", path, exc)
                continue
            if fdef.name != path.stem:
                log.error("network filter config filename '%s' does not match name '%s'",
                          path, fdef.name)
                continue
            self.filters[fdef.name] = fdef
        for path in sorted(self.binding_dir.glob("*.xml")) if self.binding_dir.is_dir() else ():
            try:
                binding = model.parse_binding(path.read_text())
            except (OSError, VirError) as exc:
                log.error("network filter binding %s ignored: %s", path, exc)
                continue
            self.bindings[binding.portdev] = binding

    def _save(self, fdef: FilterDef) -> None:
        write_atomic(name_path(self.config_dir, fdef.name, ".xml"), model.format(fdef))

    def _save_binding(self, b: BindingDef) -> None:
        write_atomic(name_path(self.binding_dir, b.portdev, ".xml"), model.format_binding(b), sync=False)

    # ------------------------------------------------------------ rules
    @staticmethod
    def _learning(binding: BindingDef, filters: dict[str, FilterDef]) -> bool:
        """Does ``binding`` wait for its IP to be learned (its filter needs $IP, it has
        none, and CTRL_IP_LEARNING allows learning)?  Raises VirError otherwise."""
        try:
            nft.instantiate(binding, filters)
            return False
        except nft.Unresolved as exc:
            how = learn.method(binding)
            if exc.names == ["IP"] and how not in learn.METHODS:
                raise _err(P.VIR_ERR_INVALID_ARG, f"learning value '{how}' invalid.") from None
            if exc.names != ["IP"] or how == "none":
                raise
            return True

    def _chains(self, binding: BindingDef, filters: dict[str, FilterDef]) -> nft.Chains:
        if self._learning(binding, filters):
            return nft.learning_chains(*learn.learning_rules(binding))
        return nft.instantiate(binding, filters)

    def _expand_all(self, filters: dict[str, FilterDef],
                    bindings: dict[str, BindingDef]) -> dict[str, nft.Chains]:
        return {dev: self._chains(b, filters) for dev, b in bindings.items()}

    # ------------------------------------------------------------ IP learning
    def _start_learners(self) -> None:
        """A learning task for every binding that waits for its address (and keeps one
        for dhcp snooping), in trio's system nursery: it lives as long as the port."""
        for dev, b in self.bindings.items():
            if dev in self._learners:
                continue
            try:
                wanted = self._learning(b, self.filters)
            except VirError:
                continue
            if wanted:
                self._learners[dev] = scope = trio.CancelScope()
                trio.lowlevel.spawn_system_task(self._learn, dev, scope,
                                                name=f"nwfilter-learn-{dev}")

    def _stop_learner(self, portdev: str) -> None:
        scope = self._learners.pop(portdev, None)
        if scope is not None:
            scope.cancel()

    async def _learn(self, portdev: str, scope: trio.CancelScope) -> None:
        try:
            with scope:
                binding = self.bindings.get(portdev)
                if binding is not None:
                    await learn.watch(binding, lambda ip: self._learned(portdev, ip))
        except Exception:
            log.exception("IP address learning on %s failed", portdev)
        finally:
            if self._learners.get(portdev) is scope:
                del self._learners[portdev]

    async def _learned(self, portdev: str, ip: str) -> bool:
        """Instantiate the filter of ``portdev`` with ``ip`` added to its IP values, as
        a parameter of the binding (libvirt adds learned addresses there too).
        True while the binding wants more addresses (dhcp snooping)."""
        async with self._lock:
            b = self.bindings.get(portdev)
            if b is None:
                return False
            if ("IP", ip) in b.params:
                return learn.method(b) == "dhcp"
            new_b = BindingDef(b.owner_name, b.owner_uuid, b.portdev, b.mac, b.filter,
                               [*b.params, ("IP", ip)], b.linkdev)
            new = {**self.bindings, portdev: new_b}
            try:
                await self._apply(self.filters, new)
            except VirError as exc:
                log.error("filter of %s not instantiated with learned IP %s: %s",
                          portdev, ip, exc.message)
                return True
            self.bindings = new
            await trio.to_thread.run_sync(self._save_binding, new_b)
            return learn.method(new_b) == "dhcp"

    async def _apply(self, filters: dict[str, FilterDef], bindings: dict[str, BindingDef]) -> None:
        """Expand every binding with ``filters`` (raises before touching anything), then
        replace the rules."""
        expanded = self._expand_all(filters, bindings)
        await nft.apply(nft.table_script(expanded))
        self._rejecting &= set(expanded)
        for dev, chains in sorted(expanded.items()):
            if chains.rejects and dev not in self._rejecting:
                self._rejecting.add(dev)
                log.warning("the filter of %s has %d reject rule(s): they drop the frames "
                            "(no nftables reject in the bridge family here)", dev, chains.rejects)

    def _in_use(self, name: str) -> bool:
        for b in self.bindings.values():
            seen: set[str] = set()
            todo = [b.filter]
            while todo:
                current = todo.pop()
                if current == name:
                    return True
                if current in seen or current not in self.filters:
                    continue
                seen.add(current)
                todo += self.filters[current].refs()
        return False

    # ------------------------------------------------------------ filters
    def _filter(self, ref) -> FilterDef:
        self._load()
        for fdef in self.filters.values():
            if fdef.uuid == bytes(ref.uuid):
                return fdef
        raise _err(P.VIR_ERR_NO_NWFILTER,
                   f"no nwfilter with matching uuid '{format_uuid(ref.uuid)}' ({ref.name})")

    @staticmethod
    def _ref(fdef: FilterDef) -> P.remote_nonnull_nwfilter:
        return P.remote_nonnull_nwfilter(fdef.name, fdef.uuid)

    def connect_num_of_nwfilters(self) -> int:
        self._load()
        return len(self.filters)

    def connect_list_nwfilters(self, maxnames: int) -> list[str]:
        self._load()
        return sorted(self.filters)[:maxnames]

    def connect_list_all_nwfilters(self, need_results: int, flags: int) -> tuple:
        _check_flags(flags, 0, "nwfilterConnectListAllNWFilters")
        self._load()
        out = [self._ref(f) for _n, f in sorted(self.filters.items())]
        return (out if need_results else [], len(out))

    def nwfilter_lookup_by_name(self, name: str) -> P.remote_nonnull_nwfilter:
        self._load()
        fdef = self.filters.get(name)
        if fdef is None:
            raise _err(P.VIR_ERR_NO_NWFILTER, f"no nwfilter with matching name '{name}'")
        return self._ref(fdef)

    def nwfilter_lookup_by_uuid(self, uuid: bytes) -> P.remote_nonnull_nwfilter:
        self._load()
        for fdef in self.filters.values():
            if fdef.uuid == bytes(uuid):
                return self._ref(fdef)
        raise _err(P.VIR_ERR_NO_NWFILTER, f"no nwfilter with matching uuid '{format_uuid(uuid)}'")

    def nwfilter_get_xml_desc(self, nwfilter, flags: int) -> str:
        _check_flags(flags, 0, "nwfilterGetXMLDesc")
        return model.format(self._filter(nwfilter))

    async def nwfilter_define_xml(self, xml: str) -> P.remote_nonnull_nwfilter:
        return await self.nwfilter_define_xml_flags(xml, 0)

    async def nwfilter_define_xml_flags(self, xml: str, flags: int) -> P.remote_nonnull_nwfilter:
        _check_flags(flags, DEFINE_VALIDATE, "nwfilterDefineXMLFlags")
        if not self.privileged:
            raise _err(P.VIR_ERR_OPERATION_INVALID, "Can't define NWFilters in session mode")
        fdef = model.parse(xml, validate_schema=bool(flags & DEFINE_VALIDATE))
        async with self._lock:
            self._load()
            same_uuid = next((f for f in self.filters.values() if f.uuid == fdef.uuid), None)
            if same_uuid is not None and same_uuid.name != fdef.name:
                raise _err(P.VIR_ERR_OPERATION_FAILED, f"filter with same UUID but different "
                                                       f"name ('{same_uuid.name}') already exists")
            old = self.filters.get(fdef.name)
            if same_uuid is None and old is not None:
                raise _err(P.VIR_ERR_OPERATION_FAILED, f"filter '{fdef.name}' already exists "
                                                       f"with uuid {format_uuid(old.uuid)}")
            if loops(self.filters, fdef):
                raise _err(P.VIR_ERR_OPERATION_FAILED, "filter would introduce a loop")
            new = {**self.filters, fdef.name: fdef}
            changed = old is not None and model.format(old) != model.format(fdef)
            if changed and self.bindings:
                await self._apply(new, self.bindings)    # refuses before any change
            try:
                await trio.to_thread.run_sync(self._save, fdef)
            except BaseException:
                if changed and self.bindings:
                    with trio.CancelScope(shield=True):
                        await self._apply(self.filters, self.bindings)
                raise
            self.filters = new
        return self._ref(fdef)

    async def nwfilter_undefine(self, nwfilter) -> None:
        if not self.privileged:
            raise _err(P.VIR_ERR_OPERATION_INVALID, "Can't undefine NWFilters in session mode")
        async with self._lock:
            fdef = self._filter(nwfilter)
            if self._in_use(fdef.name):
                raise _err(P.VIR_ERR_OPERATION_INVALID, "nwfilter is in use")
            try:
                name_path(self.config_dir, fdef.name, ".xml").unlink()
            except OSError:
                raise _err(P.VIR_ERR_INTERNAL_ERROR,
                           f"cannot remove config for {fdef.name}") from None
            del self.filters[fdef.name]

    # ------------------------------------------------------------ bindings
    def _binding(self, portdev: str) -> BindingDef:
        self._load()
        b = self.bindings.get(portdev)
        if b is None:
            raise _err(P.VIR_ERR_NO_NWFILTER_BINDING,
                       f"no nwfilter binding for port dev '{portdev}'")
        return b

    @staticmethod
    def _bref(b: BindingDef) -> P.remote_nonnull_nwfilter_binding:
        return P.remote_nonnull_nwfilter_binding(b.portdev, b.filter)

    def nwfilter_binding_lookup_by_port_dev(self, name: str) -> P.remote_nonnull_nwfilter_binding:
        return self._bref(self._binding(name))

    def connect_list_all_nwfilter_bindings(self, need_results: int, flags: int) -> tuple:
        _check_flags(flags, 0, "nwfilterConnectListAllNWFilterBindings")
        self._load()
        out = [self._bref(b) for _d, b in sorted(self.bindings.items())]
        return (out if need_results else [], len(out))

    def nwfilter_binding_get_xml_desc(self, nwfilter, flags: int) -> str:
        _check_flags(flags, 0, "nwfilterBindingGetXMLDesc")
        return model.format_binding(self._binding(nwfilter.portdev))

    async def nwfilter_binding_create_xml(self, xml: str, flags: int) -> P.remote_nonnull_nwfilter_binding:
        _check_flags(flags, BINDING_CREATE_VALIDATE, "nwfilterBindingCreateXML")
        if not self.privileged:
            raise _err(P.VIR_ERR_OPERATION_INVALID,
                       "Can't define NWFilter bindings in session mode")
        binding = model.parse_binding(xml, validate_schema=bool(flags & BINDING_CREATE_VALIDATE))
        await self.add_binding(binding)
        return self._bref(binding)

    async def nwfilter_binding_delete(self, nwfilter) -> None:
        await self.remove_binding(self._binding(nwfilter.portdev).portdev)

    # ------------------------------------------- for drivers (api.NWFilterService)
    async def bind_interface(self, owner_name: str, owner_uuid: bytes,
                             iface: etree._Element, portdev: str) -> None:
        """Instantiate the <filterref> of a guest ``iface`` on its host device ``portdev``."""
        ref = iface.find("filterref")
        if ref is None:
            return
        mac = iface.find("mac")
        await self.add_binding(BindingDef(
            owner_name=owner_name, owner_uuid=bytes(owner_uuid), portdev=portdev,
            mac=(mac.get("address") or "").lower() if mac is not None else "",
            filter=ref.get("filter", ""), params=model.parse_params(ref)))

    async def unbind_interface(self, portdev: str) -> None:
        """Remove the rules of ``portdev``, if it had any (a guest NIC went away)."""
        if not portdev:
            return
        try:
            await self.remove_binding(portdev)
        except Exception:
            log.exception("removing the network filter of %s", portdev)

    async def add_binding(self, binding: BindingDef) -> None:
        """Instantiate ``binding``'s filter on its port (guest NIC up; raises VirError)."""
        nft.check_portdev(binding.portdev)
        async with self._lock:
            self._load()
            if binding.portdev in self.bindings:
                raise _err(P.VIR_ERR_OPERATION_FAILED,
                           f"binding '{binding.portdev}' already exists")
            new = {**self.bindings, binding.portdev: binding}
            await self._apply(self.filters, new)
            try:
                await trio.to_thread.run_sync(self._save_binding, binding)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._apply(self.filters, self.bindings)
                raise
            self.bindings = new
            self._start_learners()

    async def remove_binding(self, portdev: str) -> bool:
        """Tear down a port's rules (guest NIC gone); False when it had none."""
        async with self._lock:
            self._load()
            if portdev not in self.bindings:
                return False
            self._stop_learner(portdev)
            rest = {d: b for d, b in self.bindings.items() if d != portdev}
            await self._apply(self.filters, rest)
            self.bindings = rest
            name_path(self.binding_dir, portdev, ".xml").unlink(missing_ok=True)
            return True

    # ------------------------------------------------------- daemon hooks
    async def start(self) -> None:
        """Daemon start: rebuild the rules of every binding whose port still exists."""
        async with self._lock:
            self._load()
            for dev in [d for d in self.bindings if not await link_exists(d)]:
                log.info("nwfilter binding of vanished port %s dropped", dev)
                del self.bindings[dev]
                name_path(self.binding_dir, dev, ".xml").unlink(missing_ok=True)
            good = {}
            for dev, b in self.bindings.items():
                try:
                    self._chains(b, self.filters)
                    good[dev] = b
                except VirError as exc:
                    log.error("nwfilter binding of %s not rebuilt: %s", dev, exc.message)
            if not good:
                return      # nothing to rebuild: leave the table of no one alone
            try:
                await self._apply(self.filters, good)
                log.info("nwfilter rules rebuilt for %s", ", ".join(sorted(good)))
                self._start_learners()
            except VirError as exc:
                log.warning("nwfilter rules not rebuilt: %s", exc.message)
