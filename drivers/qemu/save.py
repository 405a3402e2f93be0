"""Save and restore, managed save: a guest's memory and devices in a file, QEMU's own stream.

A save pauses the guest, writes an image header and the guest's XML into a
file the *daemon* opens, hands QEMU a copy of that fd (``getfd``) and lets it
migrate into it (QMP ``migrate`` to ``fd:NAME``); once the migration
completes the image is marked complete and QEMU is ended: the guest is shut
off (saved).  A restore opens the image, starts QEMU with ``-incoming
defer`` and feeds it the stream from another daemon-opened fd
(``migrate-incoming`` from ``fd:NAME``).  QEMU never opens the file itself,
so a confined QEMU (another user, no access to the path) saves and restores
anywhere the daemon may write; no shell and no helper process are involved.
Migration progress is polled with ``query-migrate`` from trio (no thread
waits on QEMU); the header's file I/O runs in worker threads.

Image layout (our own; libvirt's QEMU save image is the model for the facts,
not for the bytes).  Integers are little-endian:

    offset  size  field
    0       16    magic: b"pyvirtd-qemusave"; b"pyvirtd-qemupart" while the
                  image is being written (a save that died halfway, e.g. the
                  daemon killed, leaves that: restore refuses it, start
                  ignores such a managed image and boots afresh)
    16      4     version: 1
    20      4     flags: bit 0 = the guest was running (restore resumes it);
                  bits 8-15 = stream format, 0 = raw QEMU stream (the only
                  one today; room for compressed formats)
    24      4     xml_length: bytes of the domain XML (UTF-8, no NUL)
    28      4     xml_room: bytes reserved for it (>= xml_length, zero padded),
                  so that save-image-define can rewrite it in place
    32      8     stream_offset: where QEMU's migration stream starts
                  (= 64 + xml_room, a multiple of 4096)
    40      24    reserved, zero
    64      ...   the XML, then zeros up to stream_offset
    stream_offset ... QEMU's migration stream, to the end of the file

State transitions and events are libvirt 9.0's, as measured with its QEMU
driver (``virsh event --all``):

    save / managedsave   running -> paused (save)        suspended/paused
                         -> shut off (saved)              stopped/saved
    restore / start from a managed image:
                         -> paused (migrating)            started/restored
                         was running: running (restored)  resumed/from-snapshot
                         else: stays paused (migrating)   suspended/restored

Managed save images live in state_dir/qemu/save/NAME.save (libvirt's
/var/lib/libvirt/qemu/save); a guest "has" one when that file exists.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from pyvirtd.driver import domains as ds
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.names import name_path
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml
from pyvirtd.xml import format_uuid

from . import jobs
from .driver import QemuDriverState
from .guest import QemuDomain

if TYPE_CHECKING:
    from .monitor import Monitor

log = logging.getLogger(__name__)

MAGIC = b"pyvirtd-qemusave"
MAGIC_PARTIAL = b"pyvirtd-qemupart"
VERSION = 1
HEADER = struct.Struct("<16sIIIIQ24x")     # 64 bytes, see the module docstring
FLAG_RUNNING = 1
ALIGN = 4096
XML_SLACK = 4096            # spare room after the XML, for save-image-define
MAX_XML = 16 << 20          # an XML length beyond this is a broken header, not a guest

# virDomainSaveRestoreFlags, virDomainSaveImageXMLFlags, virDomainUndefineFlagsValues
SAVE_BYPASS_CACHE = P.DomainSaveRestoreFlags.VIR_DOMAIN_SAVE_BYPASS_CACHE
SAVE_RUNNING = P.DomainSaveRestoreFlags.VIR_DOMAIN_SAVE_RUNNING
SAVE_PAUSED = P.DomainSaveRestoreFlags.VIR_DOMAIN_SAVE_PAUSED
SAVE_RESET_NVRAM = P.DomainSaveRestoreFlags.VIR_DOMAIN_SAVE_RESET_NVRAM
IMAGE_XML_SECURE = P.DomainSaveImageXMLFlags.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE
UNDEFINE_MANAGED_SAVE = P.DomainUndefineFlagsValues.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE

# libvirt's QEMU_DOMAIN_MIG_BANDWIDTH_MAX in bytes/s: a save goes as fast as the disk
UNLIMITED_BANDWIDTH = ((1 << 63) - 1) // (1 << 20) * (1 << 20)
# query-migrate polling: first soon (small guests finish in a few ms), then calmer
POLL_FIRST, POLL_MAX = 0.01, 0.2
FD_NAME = "pyvirtd-save"


def _failed(detail: str) -> VirError:
    return VirError(P.VIR_ERR_OPERATION_FAILED, detail, domain=P.VIR_FROM_QEMU)


class IncompleteImage(VirError):
    """The image's save never finished (partial magic)."""


@dataclass
class ImageHeader:
    running: bool
    xml: str
    xml_room: int
    stream_offset: int

    def pack(self, magic: bytes = MAGIC) -> bytes:
        flags = FLAG_RUNNING if self.running else 0
        data = self.xml.encode()
        return (HEADER.pack(magic, VERSION, flags, len(data), self.xml_room, self.stream_offset)
                + data + bytes(self.xml_room - len(data)))


def _new_header(xml: str, running: bool) -> ImageHeader:
    room = -(-(HEADER.size + len(xml.encode()) + XML_SLACK) // ALIGN) * ALIGN - HEADER.size
    return ImageHeader(running, xml, room, HEADER.size + room)


# --------------------------------------------------------------- blocking file I/O
# (called through trio.to_thread.run_sync only)

def _open_error(path: str, exc: OSError) -> VirError:
    return VirError(P.VIR_ERR_SYSTEM_ERROR, domain=P.VIR_FROM_QEMU,
                    message=f"Failed to open file '{path}': {exc.strerror}")


def create_image(path: str, xml: str, running: bool) -> tuple[int, ImageHeader]:
    """Create ``path`` with a partial header and the XML; the fd is left at the stream offset."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _open_error(path, exc) from None
    head = _new_header(xml, running)
    try:
        data = head.pack(MAGIC_PARTIAL)     # ends at the stream offset: no seek needed
        while data:
            data = data[os.write(fd, data):]
    except OSError as exc:
        os.close(fd)
        _unlink(path)
        raise VirError(P.VIR_ERR_SYSTEM_ERROR, domain=P.VIR_FROM_QEMU,
                       message=f"failed to write header to domain save file '{path}': "
                       f"{exc.strerror}") from None
    return fd, head


def finish_image(fd: int, path: str, bypass_cache: bool) -> None:
    """QEMU's stream is in: flush it, then write the complete magic (and flush again)."""
    try:
        os.fsync(fd)
        os.pwrite(fd, MAGIC, 0)
        os.fsync(fd)
        if bypass_cache:   # the image should not stay in the host's page cache
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as exc:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR, domain=P.VIR_FROM_QEMU,
                       message=f"unable to close {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _read_header(fd: int) -> ImageHeader:
    raw = os.pread(fd, HEADER.size, 0)
    if len(raw) < HEADER.size:
        raise _failed("failed to read qemu header")
    magic, version, flags, xml_len, room, offset = HEADER.unpack(raw)
    if magic == MAGIC_PARTIAL:
        raise IncompleteImage(P.VIR_ERR_OPERATION_FAILED, "save image is incomplete",
                              domain=P.VIR_FROM_QEMU)
    if magic != MAGIC:
        raise _failed("image magic is incorrect")
    if version > VERSION:
        raise _failed(f"image version is not supported ({version} > {VERSION})")
    if (flags >> 8) & 0xFF:
        raise _failed(f"image format {(flags >> 8) & 0xFF} is not supported")
    if not 0 < xml_len <= room <= MAX_XML or offset != HEADER.size + room:
        raise _failed(f"invalid XML length: {xml_len}")
    data = os.pread(fd, xml_len, HEADER.size)
    if len(data) < xml_len:
        raise _failed("failed to read domain XML")
    return ImageHeader(bool(flags & FLAG_RUNNING), data.decode(errors="replace"), room, offset)


def open_image(path: str, *, write: bool = False) -> tuple[int, ImageHeader]:
    """Open an image, check its header; the fd is left at the stream offset."""
    try:
        fd = os.open(path, (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        head = _read_header(fd)
        os.lseek(fd, head.stream_offset, os.SEEK_SET)
    except OSError as exc:
        os.close(fd)
        raise _failed(f"failed to read qemu header: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd, head


def read_image(path: str) -> ImageHeader:
    fd, head = open_image(path)
    os.close(fd)
    return head


def rewrite_image(path: str, xml: str, running: bool | None) -> None:
    """Replace the XML (and maybe the running bit) of a complete image, in place."""
    fd, head = open_image(path, write=True)
    try:
        if len(xml.encode()) > head.xml_room:
            raise _failed("new xml too large to fit in file")
        head.xml = xml
        if running is not None:
            head.running = running
        os.pwrite(fd, head.pack(), 0)
        os.fsync(fd)
    except OSError as exc:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR, domain=P.VIR_FROM_QEMU,
                       message=f"failed to write header to domain save file '{path}': "
                       f"{exc.strerror}") from None
    finally:
        os.close(fd)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def managed_path(drv: QemuDriverState, name: str) -> Path:
    return name_path(drv.store.config_dir / "save", name, ".save")


def scan_managed(drv: QemuDriverState) -> None:
    """At daemon start: which persistent guests have a managed save image (blocking)."""
    for dom in list(drv.domains.values()):
        dom.managed_save = dom.persistent and managed_path(drv, dom.name).is_file()


# ------------------------------------------------------------------- QEMU's side

async def wait_migration(mon: "Monitor", job: str, djob: jobs.Job | None = None) -> None:
    """Poll query-migrate until QEMU's migration completed; libvirt's errors otherwise.
    With a domain job, its figures follow QEMU's and an abort ends the wait."""
    delay = POLL_FIRST
    while True:
        info = await mon.execute("query-migrate")
        status = info.get("status")
        if djob is not None:
            djob.migration = info
        if status == "completed":
            return
        if status == "cancelled" and djob is not None:
            djob.check_aborted()
        if status in ("failed", "cancelled"):
            why = info.get("error-desc") or status
            raise _failed(f"job '{job}' failed: {why}")
        await trio.sleep(delay)
        delay = min(delay * 2, POLL_MAX)


def _check_target_def(source: domxml.DomainDef, target: domxml.DomainDef) -> None:
    """The XML given to replace an image's must describe the same guest
    (the name and uuid part of virDomainDefCheckABIStability)."""
    if target.uuid != source.uuid:
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"Target domain uuid {format_uuid(target.uuid)} does not match source "
                       f"{format_uuid(source.uuid)}", domain=P.VIR_FROM_DOMAIN)
    if target.name != source.name:
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"Target domain name '{target.name}' does not match source "
                       f"'{source.name}'", domain=P.VIR_FROM_DOMAIN)


def _exclusive(flags: int) -> None:
    if flags & SAVE_RUNNING and flags & SAVE_PAUSED:
        raise VirError(P.VIR_ERR_INVALID_ARG, "Flags 'VIR_DOMAIN_SAVE_RUNNING' and "
                       "'VIR_DOMAIN_SAVE_PAUSED' are mutually exclusive", domain=P.VIR_FROM_QEMU)


def _running_flag(flags: int) -> bool | None:
    if flags & SAVE_RUNNING:
        return True
    if flags & SAVE_PAUSED:
        return False
    return None


async def save_domain(drv: QemuDriverState, dom: QemuDomain, path: str, dxml: str | None,
                      flags: int, owner: str = "remoteDispatchDomainSaveFlags") -> None:
    """Save a running guest into ``path`` and shut it off (qemuDomainSaveInternal),
    as a domain job (jobs.py) that GetJobInfo follows and AbortJob cancels."""
    async with jobs.async_job(drv, dom, jobs.OP.VIR_DOMAIN_JOB_OPERATION_SAVE, owner,
                              "domain save job", emit_completed=True) as job:
        if not dom.active or dom.monitor is None:
            raise ds.not_running()
        mon = dom.monitor

        async def cancel() -> None:
            try:
                await mon.execute("migrate_cancel")
            except VirError:
                pass
        job.abort = cancel
        xml_def = dom.definition
        if dxml is not None:
            xml_def = drv.new_definition(dxml)
            _check_target_def(dom.definition, xml_def)
        was_running = dom.state == ds.RUNNING
        running = _running_flag(flags)
        if running is None:
            running = was_running
        fd, _ = await trio.to_thread.run_sync(create_image, path, domxml.format(xml_def), running)
        done = False
        paused_here = False
        try:
            if dom.state == ds.RUNNING:
                await drv.run_vcpus(dom, mon, False, ds.PAUSED_SAVE, ds.EV_SUSPENDED,
                                    ds.SUSPENDED_PAUSED)
                paused_here = True
            await mon.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED_BANDWIDTH})
            job.check_aborted()
            await mon.getfd(fd, FD_NAME)
            await mon.execute("migrate", {"uri": f"fd:{FD_NAME}"})
            await wait_migration(mon, "save job", job)
            await trio.to_thread.run_sync(finish_image, fd, path, bool(flags & SAVE_BYPASS_CACHE))
            done = True
        finally:
            if not done:
                with trio.CancelScope(shield=True):
                    if fd >= 0:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                    await trio.to_thread.run_sync(_unlink, path)
                    if paused_here and dom.active and dom.monitor is mon:
                        await _resume_after_failure(drv, dom, mon)
        await drv.destroy_domain(dom, reason=ds.SHUTOFF_SAVED, detail=ds.STOPPED_SAVED)


async def _resume_after_failure(drv: QemuDriverState, dom: QemuDomain, mon: "Monitor") -> None:
    """The save failed: the guest runs again (running (save canceled))."""
    try:
        await mon.execute("migrate_cancel")
    except VirError:
        pass
    try:
        await drv.run_vcpus(dom, mon, True, ds.RUNNING_SAVE_CANCELED, ds.EV_RESUMED,
                            ds.RESUMED_UNPAUSED)
    except VirError as exc:
        log.warning("%s: cannot resume after a failed save: %s", dom.name, exc)


async def restore_into(drv: QemuDriverState, dom: QemuDomain, live: domxml.DomainDef, fd: int,
                       head: ImageHeader, flags: int) -> None:
    """Start ``dom`` from an open image (caller holds ``dom.lock``); qemuSaveImageStartVM."""

    async def incoming(mon: "Monitor") -> None:
        await mon.getfd(fd, FD_NAME)
        await mon.execute("migrate-incoming", {"uri": f"fd:{FD_NAME}"})
        await wait_migration(mon, "restore job")

    await drv.start_domain(dom, paused=True, live_def=live, incoming=incoming)
    running = _running_flag(flags)
    if running is None:
        running = head.running
    mon = dom.monitor
    if not running or mon is None:
        drv.emit(dom, ds.EV_SUSPENDED, ds.SUSPENDED_RESTORED)
        return
    await drv.run_vcpus(dom, mon, True, ds.RUNNING_RESTORED, ds.EV_RESUMED,
                        ds.RESUMED_FROM_SNAPSHOT)


async def start_managed(drv: QemuDriverState, dom: QemuDomain, paused: bool) -> bool:
    """``start`` of a guest with a managed image (caller holds ``dom.lock``): resume from
    it and remove it.  False when the image was incomplete (removed): boot afresh."""
    path = str(managed_path(drv, dom.name))
    try:
        fd, head = await trio.to_thread.run_sync(open_image, path)
    except IncompleteImage:
        log.warning("%s: ignoring incomplete managed save image %s", dom.name, path)
        await trio.to_thread.run_sync(_unlink, path)
        dom.managed_save = False
        return False
    try:
        live = _image_definition(drv, head)
        if live.uuid != dom.uuid or live.name != dom.name:
            raise VirError(P.VIR_ERR_OPERATION_FAILED,
                           f"cannot restore domain '{dom.name}' uuid {dom.definition.uuid_str} "
                           f"from a file which belongs to domain '{live.name}' uuid "
                           f"{live.uuid_str}", domain=P.VIR_FROM_QEMU)
        await restore_into(drv, dom, live, fd, head, SAVE_PAUSED if paused else 0)
    finally:
        os.close(fd)
    await trio.to_thread.run_sync(_unlink, path)
    dom.managed_save = False
    return True


def _image_definition(drv: QemuDriverState, head: ImageHeader,
                      dxml: str | None = None) -> domxml.DomainDef:
    saved = drv.new_definition(head.xml)
    if dxml is None:
        return saved
    new = drv.new_definition(dxml)
    _check_target_def(saved, new)
    return new


def _string_params(params: list, allowed: tuple[str, ...]) -> dict[str, str]:
    """Typed parameters of Save/RestoreParams (strings only) as a dict."""
    out = {}
    for p in params:
        if p.field not in allowed:
            raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED, f"parameter '{p.field}' not supported",
                           domain=P.VIR_FROM_NONE)
        if p.value.type != P.VIR_TYPED_PARAM_STRING:
            raise VirError(P.VIR_ERR_INVALID_ARG, f"invalid type for parameter '{p.field}', "
                           "expected 'string'", domain=P.VIR_FROM_NONE)
        out[p.field] = p.value.value
    return out


class SaveMixin:
    """The save, restore and managed save procedures of a qemu:// connection."""
    driver: QemuDriverState
    _dom: Any   # DomainLookups._dom, from the connection class

    # -- save / restore to a file the client names -----------------------
    async def domain_save(self, ref: Dom, to: str) -> None:
        await save_domain(self.driver, self._dom(ref), to, None, 0, "remoteDispatchDomainSave")

    async def domain_save_flags(self, ref: Dom, to: str, dxml: str | None, flags: int) -> None:
        check_flags(flags, SAVE_BYPASS_CACHE | SAVE_RUNNING | SAVE_PAUSED, "qemuDomainSaveFlags",
                    P.VIR_FROM_QEMU)
        _exclusive(flags)
        await save_domain(self.driver, self._dom(ref), to, dxml, flags)

    async def domain_save_params(self, ref: Dom, params: list, flags: int) -> None:
        check_flags(flags, SAVE_BYPASS_CACHE | SAVE_RUNNING | SAVE_PAUSED, "qemuDomainSaveParams",
                    P.VIR_FROM_QEMU)
        _exclusive(flags)
        values = _string_params(params, ("file", "dxml"))
        if "file" not in values:   # no file: libvirt makes it a managed save
            await self._managed_save(ref, values.get("dxml"), flags)
            return
        await save_domain(self.driver, self._dom(ref), values["file"], values.get("dxml"), flags)

    async def domain_restore(self, from_: str) -> None:
        await self.domain_restore_flags(from_, None, 0)

    async def domain_restore_flags(self, from_: str, dxml: str | None, flags: int) -> None:
        check_flags(flags, SAVE_BYPASS_CACHE | SAVE_RUNNING | SAVE_PAUSED | SAVE_RESET_NVRAM,
                    "qemuDomainRestoreFlags", P.VIR_FROM_QEMU)
        _exclusive(flags)
        drv = self.driver
        fd, head = await trio.to_thread.run_sync(open_image, from_)
        try:
            live = _image_definition(drv, head, dxml)
            existing = drv.domains.check_add(live, live=True)
            dom = existing or QemuDomain(live, persistent=False)
            if existing is None:
                drv.domains.add(dom)
            try:
                async with dom.lock:
                    if dom.active:
                        raise VirError(P.VIR_ERR_OPERATION_INVALID,
                                       f"domain '{live.name}' is already active",
                                       domain=P.VIR_FROM_DOMAIN)
                    await restore_into(drv, dom, live, fd, head, flags)
            except BaseException:
                if existing is None and not dom.active:
                    drv.domains.remove(dom)
                raise
        finally:
            os.close(fd)

    async def domain_restore_params(self, params: list, flags: int) -> None:
        values = _string_params(params, ("file", "dxml"))
        if "file" not in values:
            raise VirError(P.VIR_ERR_INVALID_ARG, "missing file parameter",
                           domain=P.VIR_FROM_QEMU)
        await self.domain_restore_flags(values["file"], values.get("dxml"), flags)

    async def domain_save_image_get_xml_desc(self, file: str, flags: int) -> str:
        check_flags(flags, IMAGE_XML_SECURE, "qemuDomainSaveImageGetXMLDesc", P.VIR_FROM_QEMU)
        head = await trio.to_thread.run_sync(read_image, file)
        return domxml.format(_image_definition(self.driver, head),
                             secure=bool(flags & IMAGE_XML_SECURE))

    async def domain_save_image_define_xml(self, file: str, dxml: str, flags: int) -> None:
        check_flags(flags, SAVE_RUNNING | SAVE_PAUSED, "qemuDomainSaveImageDefineXML",
                    P.VIR_FROM_QEMU)
        _exclusive(flags)
        head = await trio.to_thread.run_sync(read_image, file)
        new = _image_definition(self.driver, head, dxml)
        await trio.to_thread.run_sync(rewrite_image, file, domxml.format(new),
                                      _running_flag(flags))

    # -- managed save --------------------------------------------------------
    async def domain_managed_save(self, ref: Dom, flags: int) -> None:
        check_flags(flags, SAVE_BYPASS_CACHE | SAVE_RUNNING | SAVE_PAUSED,
                    "qemuDomainManagedSave", P.VIR_FROM_QEMU)
        _exclusive(flags)
        await self._managed_save(ref, None, flags)

    async def _managed_save(self, ref: Dom, dxml: str | None, flags: int) -> None:
        drv = self.driver
        dom = self._dom(ref)
        if not dom.active:
            raise ds.not_running()
        if not dom.persistent:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           "cannot do managed save for transient domain", domain=P.VIR_FROM_QEMU)
        path = managed_path(drv, dom.name)
        await trio.to_thread.run_sync(lambda: path.parent.mkdir(parents=True, exist_ok=True))
        await save_domain(drv, dom, str(path), dxml, flags, "remoteDispatchDomainManagedSave")
        dom.managed_save = True

    def domain_has_managed_save_image(self, ref: Dom, flags: int) -> int:
        check_flags(flags, 0, "qemuDomainHasManagedSaveImage", P.VIR_FROM_QEMU)
        return int(self._dom(ref).managed_save)

    async def domain_managed_save_remove(self, ref: Dom, flags: int) -> None:
        check_flags(flags, 0, "qemuDomainManagedSaveRemove", P.VIR_FROM_QEMU)
        dom = self._dom(ref)
        async with dom.lock:
            await remove_managed(self.driver, dom)

    def _managed_image(self, ref: Dom) -> tuple[QemuDomain, str]:
        dom = self._dom(ref)
        if not dom.managed_save:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           "domain does not have managed save image", domain=P.VIR_FROM_QEMU)
        return dom, str(managed_path(self.driver, dom.name))

    async def domain_managed_save_get_xml_desc(self, ref: Dom, flags: int) -> str:
        check_flags(flags, IMAGE_XML_SECURE, "qemuDomainManagedSaveGetXMLDesc", P.VIR_FROM_QEMU)
        _, path = self._managed_image(ref)
        return await self.domain_save_image_get_xml_desc(path, flags)

    async def domain_managed_save_define_xml(self, ref: Dom, dxml: str | None,
                                             flags: int) -> None:
        check_flags(flags, SAVE_RUNNING | SAVE_PAUSED, "qemuDomainManagedSaveDefineXML",
                    P.VIR_FROM_QEMU)
        dom, path = self._managed_image(ref)
        async with dom.lock:
            if dxml is None:   # only the running/paused choice changes
                head = await trio.to_thread.run_sync(read_image, path)
                dxml = head.xml
            await self.domain_save_image_define_xml(path, dxml, flags)


async def remove_managed(drv: QemuDriverState, dom: QemuDomain) -> None:
    """Delete ``dom``'s managed save image, if any (caller holds ``dom.lock``)."""
    path = str(managed_path(drv, dom.name))
    try:
        await trio.to_thread.run_sync(_unlink, path)
    except OSError as exc:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR, domain=P.VIR_FROM_QEMU,
                       message=f"Failed to remove managed save file '{path}': "
                       f"{os.strerror(exc.errno or errno.EIO)}") from None
    dom.managed_save = False
