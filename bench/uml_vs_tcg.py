"""Define + start to the guest's shell: a UML guest beside the tiny TCG guest.

Run as root from the checkout (`.venv/bin/python bench/uml_vs_tcg.py [ROUNDS]`):
one pyvirtd under a temporary --root serves both drivers; each round defines
a guest, starts it and waits on its console (python-libvirt stream) for the
answer of a shell command, then destroys and undefines it.  Prints the
median and the spread.  A measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests/integration/qemu"), str(REPO / "tests/integration/uml")]

from tests.conftest import start_daemon, stop_daemon  # noqa: E402
from tests.guest.build import ensure_guest  # noqa: E402


def _uml_round(d, tmp: Path, i: int) -> float:
    import libvirt
    from test_uml import console_expect, guest_xml, make_root

    root = tmp / f"uml-root-{i}"
    if not root.exists():
        make_root(root)
    conn = libvirt.open(d.uri("uml:///system"))
    try:
        t0 = time.monotonic()
        dom = conn.defineXML(guest_xml(f"bench-uml-{i}", root))
        dom.create()
        out = console_expect(conn, dom, b"echo ready-$((6*7))\n", b"ready-42", timeout=120)
        took = time.monotonic() - t0
        assert b"ready-42" in out, out
        dom.destroy()
        dom.undefine()
        return took
    finally:
        conn.close()


def _tcg_round(d, guest, i: int) -> float:
    import libvirt
    from guest_helpers import Console, tiny_xml

    uri = d.uri("qemu:///session")
    conn = libvirt.open(uri)
    try:
        name = f"bench-tcg-{i}"
        t0 = time.monotonic()
        dom = conn.defineXML(tiny_xml(name, guest))
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        console = Console(uri, name)
        dom.resume()
        console.wait("GUEST READY", timeout=120)
        took = time.monotonic() - t0
        console.close()
        dom.destroy()
        dom.undefine()
        return took
    finally:
        conn.close()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    guest = ensure_guest()
    with tempfile.TemporaryDirectory(prefix="bench-uml-") as tmp:
        d = start_daemon(Path(tmp) / "pyvirtd")
        try:
            for label, fn in (("UML (hostfs busybox root)", lambda i: _uml_round(d, Path(tmp), i)),
                              ("QEMU TCG (tiny guest)", lambda i: _tcg_round(d, guest, i))):
                times = [fn(i) for i in range(rounds)]
                print(f"{label:28s} define+start to shell: median {statistics.median(times):.2f} s"
                      f" (min {min(times):.2f}, max {max(times):.2f}, n={rounds})")
        finally:
            stop_daemon(d)


if __name__ == "__main__":
    main()
