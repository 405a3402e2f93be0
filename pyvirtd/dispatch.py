"""Route one call packet to its handler and turn the outcome into a reply.

The order of checks mirrors libvirtd (src/rpc/virnetserverprogram.c): program,
procedure, authentication, read-only, decoding, then the handler.  A handler
is looked up by the procedure's snake_case name, first on the program object
(procedures the daemon answers itself) and then on the client's driver
connection; a driver that lacks the method answers VIR_ERR_NO_SUPPORT here,
in this one place, naming the libvirt function and its error domain (the
generated table's ``api_name`` and ``error_domain`` columns).  Handlers may be
plain functions (run inline: the fast path) or coroutines (run as tasks, so
slow calls overlap).
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Sequence

import trio

from pyvirtd.errors import VirError, internal_error, rpc_error
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from pyvirtd.rpc.procedure import ArgLimit, Procedure
from pyvirtd.rpc.xdr import XdrError, XdrStringError, decode
from pyvirtd.stream import Stream

if TYPE_CHECKING:
    from pyvirtd.client import Client

log = logging.getLogger(__name__)

_CALL_TYPES = (frame.CALL, frame.CALL_WITH_FDS)
_STREAM_TYPES = (frame.STREAM, frame.STREAM_HOLE)

class ReplyFds:
    """What a handler returns to pass file descriptors back (LXC_PROC_DOMAIN_OPEN_NAMESPACE).

    ``value`` is the reply as usual (None when the reply has no body); the
    fds follow the REPLY_WITH_FDS packet on the socket and are closed here
    once sent (or when the reply fails), so the handler hands them over.
    """

    def __init__(self, fds: list[int], value: Any = None) -> None:
        self.fds = fds
        self.value = value


def check_arg_limits(args: Any, limits: tuple[ArgLimit, ...]) -> None:
    """Refuse client-chosen sizes before any handler allocates by them.

    A negative count or one whose product with its partner exceeds libvirt's
    REMOTE_*_MAX would make a handler build a reply of gigabytes in the event
    loop; libvirt refuses these calls in its dispatcher, and so do we.
    """
    for limit in limits:
        total = 1
        for name in limit.fields:
            value = getattr(args, name)
            if isinstance(value, list):
                value = len(value)
            if value < 0:
                raise VirError(P.VIR_ERR_INVALID_ARG, f"{name} must not be negative",
                               domain=P.VIR_FROM_RPC)
            total *= value
        if total > limit.limit:
            raise VirError(limit.code, limit.message, domain=P.VIR_FROM_RPC)


def _pack_error(value: Any, out: bytearray) -> None:
    P.pack_remote_error(value, out)


class Program:
    """One RPC program served on a socket: its procedure table and handlers.

    ``handlers`` is an object whose methods, named after procedures, take the
    client first.  The qemu and lxc programs' method names carry their program
    as a prefix (``qemu_domain_monitor_command``) so one driver class can serve
    all three programs.
    """

    def __init__(self, name: str, handlers: Any, *,
                 pre_auth: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.prog, self.vers = P.PROGRAMS[name]
        self.procedures = {p.number: p for p in P.PROCEDURES if p.program == name}
        self.arg_limits = {number: limits for (program, number), limits in P.ARG_LIMITS.items()
                           if program == name}
        self.handlers = handlers
        self.pre_auth = pre_auth
        self._own: dict[str, tuple[Callable, bool]] = {}
        for proc in self.procedures.values():
            fn = getattr(handlers, proc.method, None)
            if fn is not None:
                self._own[proc.method] = (fn, inspect.iscoroutinefunction(fn))
        self._driver_cache: dict[tuple[type, str], tuple[Callable | None, bool, int]] = {}

    def resolve(self, client: "Client", proc: Procedure) -> tuple[Callable, bool, Any]:
        """Find the handler: (function, is_coroutine, the object it is called on).

        Daemon-level handlers are called on the client.  Otherwise the driver
        connection answers, or one of its ``subsystems`` (objects shared by
        hypervisor drivers, such as the storage and network subsystems), the
        first that has the method.
        """
        own = self._own.get(proc.method)
        if own is not None:
            return own[0], own[1], client
        conn = client.conn
        if conn is None:
            raise internal_error("connection not open")
        key = (type(conn), proc.method)
        found = self._driver_cache.get(key)
        if found is None:
            found = self._driver_cache[key] = self._lookup(conn, proc.method)
        fn, is_async, index = found
        if fn is None:
            raise VirError(P.VIR_ERR_NO_SUPPORT, proc.api_name, domain=proc.error_domain)
        return fn, is_async, conn if index < 0 else conn.subsystems[index]

    @staticmethod
    def _lookup(conn: Any, method: str) -> tuple[Callable | None, bool, int]:
        return lookup_method(type(conn), [type(s) for s in getattr(conn, "subsystems", ())],
                             method)

    def answered_by(self, proc: Procedure, conn_type: type,
                    subsystem_types: Sequence[type]) -> str | None:
        """Who answers ``proc`` for connections of ``conn_type``: 'daemon', 'driver' or None.

        The same lookup as `resolve`, on types, so that the support matrix
        (tools/support_matrix.py) says what a client really gets.
        """
        if proc.method in self._own:
            return "daemon"
        fn, _is_async, _index = lookup_method(conn_type, subsystem_types, proc.method)
        return None if fn is None else "driver"


def lookup_method(conn_type: type, subsystem_types: Sequence[type],
                  method: str) -> tuple[Callable | None, bool, int]:
    """A driver handler: (function, is_coroutine, subsystem index or -1 for the connection).

    The connection's class answers first, then its subsystems' classes in order.
    """
    fn = getattr(conn_type, method, None)
    if fn is not None:
        return fn, inspect.iscoroutinefunction(fn), -1
    for index, sub_type in enumerate(subsystem_types):
        fn = getattr(sub_type, method, None)
        if fn is not None:
            return fn, inspect.iscoroutinefunction(fn), index
    return None, False, -1


class Dispatcher:
    """Dispatches the packets of every client of one server (libvirtd or admin)."""

    def __init__(self, programs: list[Program], max_workers: int) -> None:
        self.programs = {(p.prog, p.vers): p for p in programs}
        # libvirtd runs low-priority calls on max_workers threads; high-priority
        # ones may always proceed so that they never queue behind slow calls.
        self.workers = trio.CapacityLimiter(max_workers)
        # the access control driver (pyvirtd/auth/polkit.py), when configured
        self.access: Any = None

    async def dispatch(self, client: "Client", packet: frame.Packet) -> None:
        h = packet.header
        program = self.programs.get((h.prog, h.vers))
        if program is None:
            if h.type in _CALL_TYPES:
                self._reply_error(client, h, rpc_error(
                    f"Cannot find program {h.prog} version {h.vers}"))
            return
        if h.type not in _CALL_TYPES:
            stream = client.program_state.get("streams", {}).get(h.serial)
            # data for a stream that has ended is dropped, and so is anything
            # but STREAM / STREAM_HOLE of the stream's own call (daemonStreamFilter)
            if stream is not None and h.type in _STREAM_TYPES and stream.matches(h):
                stream.packet(packet)
                await stream.wait_consumed()
            return
        proc = program.procedures.get(h.proc)
        if proc is None or proc.kind != "call":
            self._reply_error(client, h, rpc_error(f"unknown procedure: {h.proc}"))
            return
        stream = None   # set before anything can fail: the error reply takes it
        try:
            if not client.authenticated and proc.method not in program.pre_auth:
                raise rpc_error("authentication required")
            if client.readonly and not proc.readonly_ok:
                raise VirError(P.VIR_ERR_OPERATION_DENIED,
                               f"read only access prevents {proc.api_name}",
                               domain=P.VIR_FROM_NONE)
            if proc.unpack_args is not None:
                try:
                    args = decode(proc.unpack_args, packet.body)
                except XdrStringError:
                    raise VirError(P.VIR_ERR_INVALID_ARG, "string is not valid UTF-8",
                                   domain=P.VIR_FROM_RPC) from None
                except XdrError as exc:
                    log.info("client %d: %s: bad payload: %s", client.id, proc.name, exc)
                    raise rpc_error("Unable to decode message payload") from None
            else:
                args = ()
            limits = program.arg_limits.get(h.proc)
            if limits is not None:
                check_arg_limits(args, limits)
            if client.readonly and getattr(args, "flags", 0) & proc.readonly_deny_flags:
                raise VirError(P.VIR_ERR_OPERATION_DENIED,
                               f"read only access prevents {proc.api_name}",
                               domain=P.VIR_FROM_NONE)
            if proc.stream is not None:
                stream = Stream(client, h, proc.stream)
                client.program_state.setdefault("streams", {})[h.serial] = stream
                args = (stream, *args)
            fn, is_async, target = program.resolve(client, proc)
            if self.access is not None and self.access.applies(proc):  # access_drivers: [polkit]
                fn, is_async = self.access.guard(client, proc, fn, is_async, args, program), True
            if not is_async:
                result = fn(target, *args)
                if isinstance(result, ReplyFds):
                    await self._reply_fds(client, h, proc, result)
                    return
                self._reply(client, h, proc, result, stream)
                return
        except VirError as err:
            self._reply_error(client, h, err, stream)
            return
        except Exception as exc:  # a handler bug: answer it, keep serving
            log.exception("%s failed", proc.name)
            self._reply_error(client, h, internal_error(f"{proc.name}: {exc}"), stream)
            return
        await client.start_call(proc.high_priority, self._call_async, client, h, proc, fn, target,
                                args, stream)

    async def _call_async(self, client: "Client", h: frame.Header, proc: Procedure,
                          fn: Callable, target: Any, args: tuple, stream: Stream | None) -> None:
        try:
            if proc.high_priority:
                result = await fn(target, *args)
            else:
                async with self.workers:
                    result = await fn(target, *args)
        except VirError as err:
            self._reply_error(client, h, err, stream)
            return
        except Exception as exc:
            log.exception("%s failed", proc.name)
            self._reply_error(client, h, internal_error(f"{proc.name}: {exc}"), stream)
            return
        if isinstance(result, ReplyFds):
            await self._reply_fds(client, h, proc, result)
            return
        self._reply(client, h, proc, result, stream)

    @staticmethod
    async def _reply_fds(client: "Client", h: frame.Header, proc: Procedure,
                         result: ReplyFds) -> None:
        """A REPLY_WITH_FDS: the fd count after the header, the body, then the fds themselves."""
        try:
            if client.sock.family != socket.AF_UNIX:
                Dispatcher._reply_error(client, h, VirError(
                    P.VIR_ERR_OPERATION_INVALID, "file descriptor passing needs a unix socket",
                    domain=P.VIR_FROM_RPC))
                return
            value = (result.value,) if proc.ret_fields == 1 else result.value
            data = frame.build(h.prog, h.vers, h.proc, frame.REPLY_WITH_FDS, h.serial, frame.OK,
                               proc.pack_ret, value, nfds=len(result.fds))
            await client.send_fds(data, result.fds)
        finally:
            for fd in result.fds:
                os.close(fd)

    @staticmethod
    def _reply(client: "Client", h: frame.Header, proc: Procedure, result: Any,
               stream: Stream | None = None) -> None:
        if proc.pack_ret is None:
            data = frame.build(h.prog, h.vers, h.proc, frame.REPLY, h.serial, frame.OK)
        else:
            value = (result,) if proc.ret_fields == 1 else result
            try:
                data = frame.build(h.prog, h.vers, h.proc, frame.REPLY, h.serial, frame.OK,
                                   proc.pack_ret, value)
            except Exception as exc:  # a handler returned the wrong shape
                log.exception("%s: cannot encode reply %r", proc.name, result)
                Dispatcher._reply_error(client, h, internal_error(
                    f"{proc.name}: cannot encode reply: {exc}"), stream)
                return
            if len(data) > frame.LENGTH_SIZE + frame.MESSAGE_MAX:
                # the peer would drop the connection on it; libvirt's encoder refuses it too
                log.warning("%s: reply of %d bytes exceeds the message limit", proc.name, len(data))
                Dispatcher._reply_error(client, h, rpc_error("Unable to encode message payload"),
                                        stream)
                return
        client.send(data)
        if stream is not None:
            stream.start()   # its data must follow the reply, never precede it

    @staticmethod
    def _reply_error(client: "Client", h: frame.Header, err: VirError,
                     stream: Stream | None = None) -> None:
        if stream is not None:
            stream.discard()
        client.send(frame.build(h.prog, h.vers, h.proc, frame.REPLY, h.serial, frame.ERROR,
                                _pack_error, err.remote_error()))
