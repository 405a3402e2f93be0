"""The per-procedure facts that the generated table carries (one row per procedure).

Rows are written with keyword fields (tools/gen_protocol.py), so a new column
is added here and in the generator, never by position.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

Unpack = Callable[[Any, int], tuple[Any, int]]
Pack = Callable[[Any, bytearray], None]


class Procedure(NamedTuple):
    program: str            # 'remote', 'qemu', 'lxc', 'admin', 'keepalive'
    prog: int               # program number on the wire
    number: int             # procedure number
    name: str               # 'DOMAIN_GET_INFO'
    method: str             # 'domain_get_info': the handler/driver method name
    api_name: Optional[str]  # 'virDomainGetInfo': the libvirt function (None: events, auth)
    error_domain: int       # VIR_FROM_* of that function's source file (refusals carry it)
    kind: str               # 'call', 'event' or 'keepalive'
    unpack_args: Optional[Unpack]
    pack_args: Optional[Pack]
    pack_ret: Optional[Pack]
    unpack_ret: Optional[Unpack]
    ret_fields: int         # a handler returns a bare value when this is 1
    pack_msg: Optional[Pack]
    unpack_msg: Optional[Unpack]
    high_priority: bool     # `@priority: high`: never queued behind slow calls
    readonly_ok: bool       # allowed on a read-only connection
    acl: tuple[str, ...]
    aclfilter: tuple[str, ...]
    stream: Optional[str]   # 'read' (daemon -> client), 'write', or None
    fds_in: bool
    fds_out: bool
    readonly_deny_flags: int = 0   # read-only connections may not set these flags


class ArgLimit(NamedTuple):
    """A bound on sizes a client chooses and the daemon would allocate by.

    The product of ``fields`` (a list-valued field counts by its length) may
    not exceed ``limit``; every field must be zero or more.  ``code`` and
    ``message`` are libvirt's for the same refusal.
    """
    fields: tuple[str, ...]
    limit: int
    code: int
    message: str
