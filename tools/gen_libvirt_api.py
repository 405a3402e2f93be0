#!/usr/bin/env python3
"""Extract libvirt's public enums and exported functions into tools/libvirt_api.json.

Usage: gen_libvirt_api.py OUTPUT_JSON [API_XML_DIR]

The source is the machine-readable form of libvirt's public headers that
libvirt-dev installs beside them (/usr/share/libvirt/api/libvirt*-api.xml,
written by libvirt's own header parser, so references such as
``VIR_DOMAIN_VCPU_CURRENT = VIR_DOMAIN_AFFECT_CURRENT`` and ``1 << 3`` are
already values).  The output keeps derived facts only, names and values:

    {"libvirt_version": "9.0.0",
     "enums": {"virDomainState": {"header": "libvirt-domain", "flags": false,
                                  "members": [["VIR_DOMAIN_NOSTATE", 0], ...]}, ...},
     "functions": {"virDomainGetXMLDesc": "libvirt-domain", ...}}

An enum counts as a set of flags when its typedef name says so (``...Flags``)
or a member is written as a bit shift in the header.  The JSON is committed so
that ``make gen`` gives the same module on every machine; rerun this (``make
libvirt-api``) when moving to a new libvirt.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

API_DIR = "/usr/share/libvirt/api"
# The public libraries whose headers the daemon's clients see.
API_FILES = ("libvirt-api.xml", "libvirt-qemu-api.xml", "libvirt-lxc-api.xml",
             "libvirt-admin-api.xml")


def _int(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def extract(api_dir: Path) -> dict:
    raw: dict[str, tuple[str, str, str, bool]] = {}   # member -> (type, header, value text, shift)
    functions: dict[str, str] = {}
    for name in API_FILES:
        root = ET.parse(api_dir / name).getroot()
        for e in root.iter("enum"):
            raw[e.get("name")] = (e.get("type"), e.get("file"), e.get("value"),
                                  e.get("value_bitshift") is not None)
        for f in root.iter("function"):
            functions[f.get("name")] = f.get("file")

    def value(member: str, depth: int = 0) -> int:
        text = raw[member][2]
        number = _int(text)
        if number is not None:
            return number
        if depth > 10 or text not in raw:
            raise ValueError(f"{member}: cannot resolve value {text!r}")
        return value(text, depth + 1)

    enums: dict[str, dict] = {}
    for member, (typ, header, _text, shift) in raw.items():
        e = enums.setdefault(typ, {"header": header, "flags": typ.endswith("Flags"),
                                   "members": []})
        e["flags"] = e["flags"] or shift
        e["members"].append([member, value(member)])
    for e in enums.values():
        e["members"].sort(key=lambda m: (m[1], m[0]))
    version = subprocess.run(["pkg-config", "--modversion", "libvirt"], capture_output=True,
                             text=True, check=True).stdout.strip()
    return {"libvirt_version": version,
            "enums": dict(sorted(enums.items())),
            "functions": dict(sorted(functions.items()))}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    facts = extract(Path(argv[2] if len(argv) == 3 else API_DIR))
    Path(argv[1]).write_text(json.dumps(facts, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
