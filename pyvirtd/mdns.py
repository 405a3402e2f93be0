"""mDNS/DNS-SD advertisement of the daemon as ``_libvirt._tcp`` (``mdns_adv``).

As libvirtd's old mdns feature (daemon/libvirtd.c, virNetServerMDNS): one
service named ``mdns_name`` (default "Virtualization Host HOSTNAME") on the
plain TCP port when ``listen_tcp`` is on, else on the TLS port; nothing
without a network listener. python-zeroconf runs its own thread and event
loop; the blocking register/unregister calls (probing takes ~1.5 s) run in
trio worker threads, so the daemon is never held up by them.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import trio

log = logging.getLogger(__name__)

SERVICE_TYPE = "_libvirt._tcp.local."


def default_name() -> str:
    return f"Virtualization Host {socket.gethostname().split('.')[0]}"


def _addresses(listen_addr: str | None) -> list[str] | None:
    """The addresses to announce: the listen address when it is a specific one."""
    if listen_addr and listen_addr not in ("0.0.0.0", "::", "[::]"):
        return [listen_addr]
    return None        # zeroconf then announces every interface address


async def advertise(name: str, port: int, listen_addr: str | None = None, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Publish the service until cancelled, then withdraw it (goodbye packets).

    A failure to publish (no multicast-capable interface, no zeroconf) is
    logged and the daemon goes on without the advertisement.
    """
    try:
        from zeroconf import IPVersion, ServiceInfo, Zeroconf, get_all_addresses
    except ImportError:
        log.error("mdns_adv is on but the zeroconf package is missing")
        task_status.started()
        return
    addresses = _addresses(listen_addr) or get_all_addresses()
    info = ServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", port=port,
                       parsed_addresses=[a for a in addresses if not a.startswith("127.")]
                       or addresses,
                       server=f"{socket.gethostname().split('.')[0]}.local.")
    try:
        zc = await trio.to_thread.run_sync(lambda: Zeroconf(ip_version=IPVersion.V4Only))
        await trio.to_thread.run_sync(zc.register_service, info)
    except Exception as exc:      # OSError, zeroconf's NonUniqueNameException, ...
        log.error("mDNS: cannot advertise %r: %s", name, exc)
        task_status.started()
        return
    log.info("mDNS: advertising %r on port %d", name, port)
    task_status.started()
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await trio.to_thread.run_sync(_withdraw, zc, info)


def _withdraw(zc: Any, info: Any) -> None:
    try:
        zc.unregister_service(info)
    finally:
        zc.close()
