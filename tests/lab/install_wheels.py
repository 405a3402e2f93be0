"""Install wheels into the running interpreter's environment by unpacking them
(the lab guest's installer; run as `VENV/bin/python install_wheels.py WHEEL...`).

pip takes about a minute under TCG for pyvirtd and its dependencies, almost
all of it pip's own work; a wheel's installation is an unpack (PEP 427):
the archive into site-packages, ``NAME.data/{purelib,platlib}`` there too,
``NAME.data/scripts`` into bin/, console scripts from entry_points.txt, and
an INSTALLER file.  No bytecode is compiled here: Python writes it on first
import, only for the modules used.
"""

from __future__ import annotations

import configparser
import os
import shutil
import sys
import sysconfig
import zipfile
from pathlib import Path

SCRIPT = """#!{python}
import sys
from {module} import {attr}
if __name__ == "__main__":
    sys.exit({call}())
"""


def install(wheel: Path, site: Path, bindir: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names
                         if n.split("/")[0].endswith(".dist-info"))
        data_dir = dist_info[:-len(".dist-info")] + ".data"
        for name in names:
            if name.endswith("/"):
                continue
            top, _, rest = name.partition("/")
            if top == data_dir:
                kind, _, rel = rest.partition("/")
                if kind in ("purelib", "platlib"):
                    dest = site / rel
                elif kind == "scripts":
                    dest = bindir / rel
                else:           # headers, data: nothing the lab needs
                    continue
            else:
                dest = site / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            if kind_is_script(top, data_dir, rest):
                dest.chmod(0o755)
    (site / dist_info / "INSTALLER").write_text("pyvirtd-lab\n")
    entry_points = site / dist_info / "entry_points.txt"
    if entry_points.exists():
        cp = configparser.ConfigParser(delimiters=("=",))
        cp.optionxform = str
        cp.read(entry_points)
        if cp.has_section("console_scripts"):
            for script, target in cp.items("console_scripts"):
                module, _, attr = target.strip().partition(":")
                path = bindir / script
                path.write_text(SCRIPT.format(python=sys.executable, module=module,
                                              attr=attr.split(".")[0], call=attr))
                path.chmod(0o755)
    return dist_info


def kind_is_script(top: str, data_dir: str, rest: str) -> bool:
    return top == data_dir and rest.startswith("scripts/")


def main() -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    bindir = Path(sysconfig.get_paths()["scripts"])
    for arg in sys.argv[1:]:
        print("installed", install(Path(arg), site, bindir), flush=True)


if __name__ == "__main__":
    os.umask(0o022)
    main()
