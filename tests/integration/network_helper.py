"""Drive pyvirtd's NetworkSubsystem from inside a network namespace.

Until the QEMU driver serves network procedures over RPC, the network tests
run this script with ``ip netns exec NS python network_helper.py ROOT CMD
[ARG]``: each run is a short-lived "daemon" (the subsystem's ``start()``
reconciliation, the call, ``stop()``), so every command is also a daemon
restart.  It prints the result as JSON; a VirError exits 3 with
``{"code", "domain", "message"}`` on stdout.

Commands: define FILE | create-xml FILE | start NAME | destroy NAME |
undefine NAME | list | xml NAME | leases NAME | autostart NAME |
update-dhcp-host NAME HOSTXML | startup (reconcile only) | plug NAME MAC.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import trio

from pyvirtd.config import Config
from pyvirtd.driver import DriverContext
from pyvirtd.errors import VirError
from pyvirtd.network import NetworkSubsystem, dnsmasq
from pyvirtd.paths import Paths


async def main(root: str, cmd: str, args: list[str]) -> object:
    ctx = DriverContext(config=Config(), paths=Paths.for_root(Path(root)),
                        privileged="--system" in args)
    args = [a for a in args if a != "--system"]
    if os.environ.get("NETWORK_HELPER_DNSMASQ"):   # a missing-binary test
        dnsmasq.BINARY = os.environ["NETWORK_HELPER_DNSMASQ"]
    sub = NetworkSubsystem(ctx)
    await sub.start()
    try:
        if cmd == "startup":
            return sorted(sub.connect_list_networks(100))
        if cmd == "define":
            return (await sub.network_define_xml(Path(args[0]).read_text())).name
        if cmd == "create-xml":
            return (await sub.network_create_xml(Path(args[0]).read_text())).name
        if cmd == "list":
            refs, _ = sub.connect_list_all_networks(1, 0)
            return [{"name": r.name, "active": sub.network_is_active(r),
                     "persistent": sub.network_is_persistent(r),
                     "autostart": sub.network_get_autostart(r)} for r in refs]
        ref = sub.network_lookup_by_name(args[0])
        if cmd == "start":
            return await sub.network_create(ref)
        if cmd == "destroy":
            return await sub.network_destroy(ref)
        if cmd == "undefine":
            return await sub.network_undefine(ref)
        if cmd == "autostart":
            return await sub.network_set_autostart(ref, 1)
        if cmd == "xml":
            return sub.network_get_xml_desc(ref, 0)
        if cmd == "leases":
            leases, n = sub.network_get_dhcp_leases(ref, None, 1, 0)
            return [lease._asdict() for lease in leases]
        if cmd == "update-dhcp-host":
            return await sub.network_update(ref, 3, 4, -1, args[1], 0)
        if cmd == "plug":
            tap, fd = await sub.plug_interface(args[0], args[1])
            master = Path(f"/sys/class/net/{tap}/master").resolve().name
            mac = Path(f"/sys/class/net/{tap}/address").read_text().strip()
            os.close(fd)   # the tap goes with its last fd, as when QEMU exits
            with trio.move_on_after(10):     # "gone" stays false if it never goes
                while Path(f"/sys/class/net/{tap}").exists():
                    await trio.sleep(0.01)
            return {"tap": tap, "master": master, "mac": mac,
                    "gone": not Path(f"/sys/class/net/{tap}").exists()}
        raise SystemExit(f"unknown command {cmd}")
    finally:
        await sub.stop()


if __name__ == "__main__":
    try:
        result = trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3:])
    except VirError as err:
        print(json.dumps({"code": err.code, "domain": err.domain, "message": err.message}))
        sys.exit(3)
    print(json.dumps(result))
