"""QEMU driver connection: DOMAIN_SCREENSHOT (virsh screenshot), the display's picture as a stream.

As libvirt 9.0's qemuDomainScreenshot: QEMU's ``screendump`` writes the
picture into a file the daemon made, and the file's bytes are the stream.
The format is PNG when the guest's QEMU can write it (Debian's QEMU 7.2
can: libvirt 9.0 answers ``image/png`` here, checked side by side), else
PPM (``image/x-portable-pixmap``).  The file is made and unlinked at once
by the daemon and reaches QEMU as a descriptor (``add-fd``), so a QEMU
running as another user or in a private mount namespace writes it all the
same and nothing is left behind.

Screens are numbered across the video devices by their heads; screen 0 is
the primary display (no device named), as libvirt does.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import trio

from pyvirtd.driver import domains as ds
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.stream import Stream

from .guest import QemuDomain, QemuState

MIME_PNG = "image/png"
MIME_PPM = "image/x-portable-pixmap"
CHUNK = 256 * 1024


def _invalid(message: str) -> VirError:
    return VirError(P.VIR_ERR_OPERATION_INVALID, message, domain=P.VIR_FROM_QEMU)


def screen_device(dom: QemuDomain, screen: int) -> tuple[str | None, int | None]:
    """(video device alias, head) of ``screen``; (None, None) for screen 0."""
    videos = dom.definition.devices_of("video")
    if not videos:
        raise _invalid("no screens to take screenshot from")
    if screen == 0:
        return None, None
    for index, video in enumerate(videos):
        model = video.find("model")
        heads = int(model.get("heads", "1")) if model is not None else 1
        if screen < heads:
            alias = video.find("alias")
            name = alias.get("name") if alias is not None else None
            return name or f"video{index}", screen
        screen -= heads
    raise _invalid("no such screen ID")


def _temp_file(directory: str) -> tuple[int, int]:
    """(read fd, write-only fd) of a new, already unlinked file in ``directory``."""
    fd, path = tempfile.mkstemp(prefix="qemu.screendump.", dir=directory)
    try:
        wfd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.unlink(path)
    return fd, wfd


def _read(fd: int, pos: int) -> bytes:
    return os.pread(fd, CHUNK, pos)


class ScreenshotMixin:
    driver: QemuState

    async def domain_screenshot(self, stream: Stream, ref: Dom, screen: int, flags: int) -> str:
        check_flags(flags, 0, "qemuDomainScreenshot", P.VIR_FROM_QEMU)
        dom = self._dom(ref)                # type: ignore[attr-defined]
        async with dom.lock:
            if not dom.active or dom.monitor is None:
                raise ds.not_running()
            device, head = screen_device(dom, screen)
            run_dir = str(self.driver.store.run_dir)
            fd, wfd = await trio.to_thread.run_sync(_temp_file, run_dir)
            try:
                mime = await _screendump(dom.monitor, wfd, device, head)
            except BaseException:
                os.close(fd)
                raise
            finally:
                os.close(wfd)
        # a file object: should the stream never start, collecting it closes the fd
        stream.run(_send_file, stream, os.fdopen(fd, "rb", buffering=0))
        return mime


async def _screendump(mon: Any, wfd: int, device: str | None, head: int | None) -> str:
    """Have QEMU write the picture into ``wfd``; the MIME type of what it wrote."""
    fdset = await mon.add_fd(wfd)
    try:
        try:
            await mon.screendump(f"/dev/fdset/{fdset}", device, head, fmt="png")
            return MIME_PNG
        except VirError as exc:
            if "format" not in exc.detail:    # not a QEMU built without PNG: a real failure
                raise
        await mon.screendump(f"/dev/fdset/{fdset}", device, head)
        return MIME_PPM
    finally:
        with trio.CancelScope(shield=True):
            try:
                await mon.remove_fd(fdset)
            except VirError:
                pass     # QEMU went away: its copy went with it


async def _send_file(stream: Stream, picture: Any) -> None:
    try:
        pos = 0
        while not stream.closed:
            data = await trio.to_thread.run_sync(_read, picture.fileno(), pos)
            if not data:
                break
            stream.send(data)
            pos += len(data)
            await stream.drain()
        stream.finish()
    finally:
        picture.close()
