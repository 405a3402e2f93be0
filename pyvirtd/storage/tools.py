"""Running storage tools (qemu-img, mkfs, mount, umount, blkid) without blocking the loop.

Failures are reported as libvirt's virCommandRun reports them, so a user sees
the tool's own words: VIR_ERR_INTERNAL_ERROR "Child process (ARGV) unexpected
exit status N: STDERR".
"""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Any

import trio

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

QEMU_IMG = "qemu-img"


def tool_error(argv: list[str], rc: int, stderr: bytes) -> VirError:
    text = stderr.decode(errors="replace").strip()
    detail = f"Child process ({shlex.join(argv)}) unexpected exit status {rc}"
    if text:
        detail += f": {text}"
    return VirError(P.VIR_ERR_INTERNAL_ERROR, detail, domain=P.VIR_FROM_STORAGE)


async def run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    """Run a tool to completion; stdout and stderr captured.

    :raises VirError: the tool is missing, or (``check``) exited non-zero.
    """
    try:
        proc = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                      check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"Cannot find '{argv[0]}' in path: "
                       "No such file or directory", domain=P.VIR_FROM_STORAGE) from None
    if check and proc.returncode != 0:
        raise tool_error(argv, proc.returncode, proc.stderr)
    return proc


async def qemu_img_info(path: str) -> dict[str, Any]:
    """``qemu-img info --output=json`` of an image (probing its format; -U: a running
    guest's lock does not stop us from reading its header)."""
    proc = await run([QEMU_IMG, "info", "-U", "--output=json", path])
    return json.loads(proc.stdout)
