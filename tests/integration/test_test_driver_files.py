"""Files the test driver reads and writes for a client (issue #11, defect 3), against a real daemon.

``CONNECT_OPEN "test:///PATH"`` makes the daemon (root) read PATH.  A FIFO
there used to freeze the event loop, and with it every client, until someone
wrote to it.  Now the file is read off the loop and only when it is a regular
file, read-only clients may not make the daemon read files at all, and no
error ever quotes a line of the file (libvirtd 9.0 prints the first line of
any root-readable file it cannot parse).
"""

from __future__ import annotations

import os
import queue
import stat
import threading
from pathlib import Path

import libvirt
import pytest

SECRET = "root:$6$pyvirtdTestSecretHash$abcdef:19000:0:99999:7:::"
DEADLINE = 30      # only a guard against a hung daemon: every wait ends on its condition


def in_thread(fn) -> "queue.Queue[tuple[str, object]]":
    """Run ``fn`` on its own thread; its result or libvirtError arrives in the queue."""
    out: "queue.Queue[tuple[str, object]]" = queue.Queue()

    def run() -> None:
        try:
            out.put(("ok", fn()))
        except libvirt.libvirtError as exc:
            out.put(("error", exc))

    threading.Thread(target=run, daemon=True).start()
    return out


def answer(q: "queue.Queue[tuple[str, object]]") -> tuple[str, object]:
    try:
        return q.get(timeout=DEADLINE)
    except queue.Empty:
        raise AssertionError("the daemon did not answer") from None


def open_error(uri: str, *, readonly: bool = False) -> libvirt.libvirtError:
    kind, value = answer(in_thread(
        lambda: (libvirt.openReadOnly if readonly else libvirt.open)(uri)))
    assert kind == "error", f"{uri} opened"
    return value


def unblock_reader(fifo: Path) -> None:
    """Give a reader still blocked on ``fifo`` its end of file (a regression's cleanup)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass    # nobody is reading it: nothing to unblock


def test_fifo_neither_stalls_the_daemon_nor_opens(daemon, tmp_path: Path) -> None:
    fifo = tmp_path / "node.fifo"
    os.mkfifo(fifo)
    try:
        first = in_thread(lambda: libvirt.open(daemon.uri(f"test://{fifo}")))
        # a second client is served meanwhile; nobody ever writes to the FIFO
        second = in_thread(lambda: libvirt.open(daemon.uri()).getVersion())
        assert answer(second)[0] == "ok"
        kind, exc = answer(first)
        assert kind == "error"
        assert (exc.get_error_code(), exc.get_error_domain(), exc.get_error_message()) == (
            libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_TEST,
            f"XML error: failed to parse xml document '{fifo}'")
    finally:
        unblock_reader(fifo)


def test_paths_that_are_not_regular_files_are_refused(daemon, tmp_path: Path) -> None:
    for path in (tmp_path, Path("/dev/zero"), Path("/proc/self/status"),
                 tmp_path / "missing.xml"):
        exc = open_error(daemon.uri(f"test://{path}"))
        assert (exc.get_error_code(), exc.get_error_message()) == (
            libvirt.VIR_ERR_XML_ERROR, f"XML error: failed to parse xml document '{path}'")
    conn = libvirt.open(daemon.uri())
    assert conn.lookupByName("test").name() == "test"
    conn.close()


def test_file_content_never_reaches_a_client(daemon, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.write_text(SECRET + "\n")
    shadow.chmod(0o600)
    broken = tmp_path / "broken.xml"      # XML whose own error would quote it
    broken.write_text(f"<node><cpu><mhz>{SECRET}</mhz></cpu></node>\n")
    broken.chmod(0o600)
    for path in (shadow, broken, Path("/etc/shadow")):
        # read-only clients may not make root read a file for them
        exc = open_error(daemon.uri(f"test://{path}", readonly=True), readonly=True)
        assert (exc.get_error_code(), exc.get_error_domain()) == (
            libvirt.VIR_ERR_OPERATION_DENIED, libvirt.VIR_FROM_TEST)
        assert SECRET not in exc.get_error_message()
        # read-write ones get the path and nothing of what is inside
        exc = open_error(daemon.uri(f"test://{path}"))
        assert exc.get_error_message() == f"XML error: failed to parse xml document '{path}'"
    assert SECRET not in daemon.log()
    # test:///default stays open to read-only clients
    kind, value = answer(in_thread(
        lambda: libvirt.openReadOnly(daemon.uri(readonly=True)).getHostname()))
    assert kind == "ok"


def test_save_to_a_fifo_does_not_stall_other_clients(daemon, tmp_path: Path) -> None:
    fifo = tmp_path / "save.fifo"
    os.mkfifo(fifo)
    conn = libvirt.open(daemon.uri())
    try:
        dom = conn.lookupByName("test")
        saving = in_thread(lambda: dom.save(str(fifo)))
        # the daemon is blocked in open(fifo, "wb") for that call, on a thread
        assert answer(in_thread(lambda: libvirt.open(daemon.uri()).getVersion()))[0] == "ok"
        with open(fifo, "rb") as reader:
            image = reader.read()
        assert answer(saving)[0] == "ok"
        assert image.startswith(b"pyvirtdTestGuestMagic")
        assert dom.info()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        image_file = tmp_path / "saved"
        image_file.write_bytes(image)
        assert stat.S_ISREG(image_file.stat().st_mode)
        conn.restore(str(image_file))
        assert dom.info()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        conn.close()
