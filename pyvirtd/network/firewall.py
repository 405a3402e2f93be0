"""Firewall rules of virtual networks, in pyvirtd's own nftables table.

Everything lives in ``table inet pyvirtd``; no other table is ever read for
changes or written.  Each running network owns four base chains named after
its bridge (``n_<bridge>_in``, ``_out``, ``_fwd``, ``_nat``; see `chain_base`), so adding
a network is "add chains, flush them, add rules" (idempotent: reapplying
never duplicates a rule) and removing one is "delete its chains".  The rules
follow libvirt's nftables backend:

- input/output: accept DHCP and DNS on the bridge;
- forward, per mode: nat and route accept traffic from the network's subnets
  out and (nat: only established/related, route: any) back in; isolated
  networks (no <forward>) accept only bridge-local traffic; every managed
  mode except ``open`` then rejects the bridge's other traffic;
- nat: masquerade what leaves the network's IPv4 subnets (ports remapped to
  1024-65535), except multicast and broadcast.
"""

from __future__ import annotations

import ipaddress
import json
import re

import trio

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

TABLE_FAMILY, TABLE = "inet", "pyvirtd"
SUFFIXES = ("_in", "_out", "_fwd", "_nat")


async def _nft(script: str | None = None, *args: str) -> str:
    argv = ["nft", *args] if script is None else ["nft", "-f", "-"]
    try:
        res = await trio.run_process(argv, stdin=script.encode() if script else b"",
                                     capture_stdout=True, capture_stderr=True, check=False)
    except FileNotFoundError:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR, "Cannot find 'nft' in path: No such file or directory",
                       domain=P.VIR_FROM_FIREWALL) from None
    if res.returncode:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                       f"Failed to apply firewall rules {' '.join(argv)}: "
                       f"{res.stderr.decode(errors='replace').strip()}",
                       domain=P.VIR_FROM_FIREWALL)
    return res.stdout.decode()


def chain_base(bridge: str) -> str:
    """The prefix of a bridge's chain names (nft identifiers: letters, digits, _)."""
    return "n_" + re.sub(r"[^A-Za-z0-9]", lambda m: f"_{ord(m.group()):02x}", bridge)


def chain_names(bridge: str) -> set[str]:
    return {chain_base(bridge) + s for s in SUFFIXES}


def _family(net) -> str:
    return "ip" if net.version == 4 else "ip6"


def rules(bridge: str, mode: str | None, subnets: list[ipaddress._BaseNetwork],
          dhcp: bool, dns: bool) -> str:
    """The nft script that (re)creates one network's chains."""
    t = f"{TABLE_FAMILY} {TABLE}"
    base = chain_base(bridge)
    lines = [f"add table {t}"]
    chains = {
        "_in": "type filter hook input priority 0; policy accept;",
        "_out": "type filter hook output priority 0; policy accept;",
        "_fwd": "type filter hook forward priority 0; policy accept;",
        "_nat": "type nat hook postrouting priority 100; policy accept;",
    }
    for suffix, spec in chains.items():
        lines.append(f"add chain {t} {base}{suffix} {{ {spec} }}")
        lines.append(f"flush chain {t} {base}{suffix}")

    def rule(suffix: str, text: str) -> None:
        lines.append(f"add rule {t} {base}{suffix} {text}")

    if dhcp:
        rule("_in", f'iifname "{bridge}" udp dport 67 accept')
        rule("_in", f'iifname "{bridge}" udp dport 547 accept')
        rule("_out", f'oifname "{bridge}" udp dport 68 accept')
        rule("_out", f'oifname "{bridge}" udp dport 546 accept')
    if dns:
        rule("_in", f'iifname "{bridge}" udp dport 53 accept')
        rule("_in", f'iifname "{bridge}" tcp dport 53 accept')
        rule("_out", f'oifname "{bridge}" udp dport 53 accept')
        rule("_out", f'oifname "{bridge}" tcp dport 53 accept')
    if mode == "open":
        return "\n".join(lines) + "\n"
    for net in subnets if mode in ("nat", "route") else ():
        fam = _family(net)
        if mode == "nat" and net.version == 4:
            rule("_fwd", f'{fam} daddr {net} oifname "{bridge}" ct state related,established accept')
        else:
            rule("_fwd", f'{fam} daddr {net} oifname "{bridge}" accept')
        rule("_fwd", f'{fam} saddr {net} iifname "{bridge}" accept')
    rule("_fwd", f'iifname "{bridge}" oifname "{bridge}" accept')
    rule("_fwd", f'iifname "{bridge}" counter reject')
    rule("_fwd", f'oifname "{bridge}" counter reject')
    if mode == "nat":
        for net in subnets:
            if net.version != 4:
                continue
            rule("_nat", f"ip saddr {net} ip daddr 224.0.0.0/24 return")
            rule("_nat", f"ip saddr {net} ip daddr 255.255.255.255 return")
            rule("_nat", f"meta l4proto {{ tcp, udp }} ip saddr {net} ip daddr != {net} "
                         f"masquerade to :1024-65535")
            rule("_nat", f"ip saddr {net} ip daddr != {net} masquerade")
    return "\n".join(lines) + "\n"


async def apply(bridge: str, mode: str | None, subnets, dhcp: bool, dns: bool) -> None:
    await _nft(rules(bridge, mode, subnets, dhcp, dns))


async def chains() -> set[str]:
    """Names of the chains in pyvirtd's table (empty when it does not exist)."""
    try:
        out = await _nft(None, "-j", "list", "table", TABLE_FAMILY, TABLE)
    except VirError as err:
        if "No such file or directory" in err.message:
            return set()
        raise
    found = set()
    for item in json.loads(out).get("nftables", []):
        chain = item.get("chain")
        if chain:
            found.add(chain["name"])
    return found


async def remove(bridge: str, existing: set[str] | None = None) -> None:
    """Delete one network's chains; a chain already gone is no error."""
    await remove_chains(chain_names(bridge), existing)


async def remove_chains(names: set[str], existing: set[str] | None = None) -> None:
    if existing is None:
        existing = await chains()
    names = sorted(n for n in names if n in existing)
    script = "".join(f"delete chain {TABLE_FAMILY} {TABLE} {n}\n" for n in names)
    if existing and not existing - set(names):   # the last network: the table goes too
        script += f"delete table {TABLE_FAMILY} {TABLE}\n"
    if script:
        await _nft(script)
