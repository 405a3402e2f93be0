"""What runs in front of a UML kernel: ``python -m pyvirtd.drivers.uml.launcher EXIT XSTATE KERNEL ARGS...``.

It ends as a small ``/bin/sh`` that waits for the kernel and writes its exit
status to EXIT, so that a daemon restarted in the meantime (not the kernel's
parent, unable to wait for it) still learns how the guest ended: 0 is a
poweroff or halt, anything else a crash (a kernel panic aborts UML).

XSTATE "1": the host's extended FPU state (AVX-512, AMX) is larger than the
one UML 6.1 writes back through ptrace, and the host refuses the short write
(EFAULT), so every guest process dies on its first context switch.  A seccomp
filter makes ptrace(PTRACE_GETREGSET, NT_X86_XSTATE) fail for the kernel's
processes; UML then falls back to the FXSAVE registers, which work.  The
filter is inherited by every process of the guest; guest system calls never
reach it (UML intercepts them).  Kept free of the daemon's imports.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
AUDIT_ARCH_X86_64 = 0xC000003E
NR_PTRACE = 101                     # x86_64
PTRACE_GETREGSET = 0x4204
NT_X86_XSTATE = 0x202
RET_ALLOW = 0x7FFF0000
RET_EIO = 0x00050000 | 5            # SECCOMP_RET_ERRNO | EIO
# BPF opcodes: load word at absolute offset of seccomp_data, jump if equal, return
LD_ABS, JEQ, RET = 0x20, 0x15, 0x06

WAIT_SCRIPT = 'trap "" HUP INT; "$@"; echo $? > "$0"'


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def block_xstate_regset() -> None:
    """Install the seccomp filter described in the module docstring."""
    prog = b"".join([
        _insn(LD_ABS, 4), _insn(JEQ, AUDIT_ARCH_X86_64, 1, 0), _insn(RET, RET_ALLOW),
        _insn(LD_ABS, 0), _insn(JEQ, NR_PTRACE, 1, 0), _insn(RET, RET_ALLOW),
        _insn(LD_ABS, 16), _insn(JEQ, PTRACE_GETREGSET, 1, 0), _insn(RET, RET_ALLOW),
        _insn(LD_ABS, 32), _insn(JEQ, NT_X86_XSTATE, 0, 1), _insn(RET, RET_EIO),
        _insn(RET, RET_ALLOW),
    ])
    buf = ctypes.create_string_buffer(prog)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot install the xstate seccomp filter: {os.strerror(err)}")


def main(argv: list[str]) -> None:
    exit_file, xstate, *kernel_argv = argv
    if xstate == "1":
        block_xstate_regset()
    os.execv("/bin/sh", ["/bin/sh", "-c", WAIT_SCRIPT, exit_file, *kernel_argv])


if __name__ == "__main__":
    main(sys.argv[1:])
