#!/usr/bin/env python3
"""govmomi's vSphere simulator (vcsim) as a command, built once and cached.

    python3 tests/vcsim/build.py [--force]     # prints the binary's path

or, from a test::

    from tests.vcsim.build import ensure_vcsim
    binary = ensure_vcsim()

No ESX host exists on a test machine; govmomi's simulator is the standard
stand-in.  Debian 12's ``golang-github-vmware-govmomi-dev`` ships its
``simulator`` package with every dependency but no ``vcsim`` command, so
``main.go`` beside this file wraps it and Debian's ``golang-go`` builds it
offline (GOPATH mode over /usr/share/gocode, no module proxy).  Both
packages come from the Makefile's DEB_PACKAGES.

The binary is cached under ``.cache/vcsim/`` in the checkout (git-ignored),
in a directory named after a hash of main.go and the installed govmomi and
Go versions, so a change to any of them builds a new one.  A lock file
serialises concurrent builders.  The first build takes about a minute here.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_CACHE = REPO / ".cache" / "vcsim"
GOPATH = Path("/usr/share/gocode")
SIMULATOR = GOPATH / "src/github.com/vmware/govmomi/simulator"
PACKAGES = ("golang-go", "golang-github-vmware-govmomi-dev")


class VcsimUnavailable(RuntimeError):
    """The simulator cannot be built here (a Debian package is missing)."""


def _versions() -> str:
    """The installed Go and govmomi package versions (part of the cache key)."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}=${Version}\n", *PACKAGES],
                         capture_output=True, text=True)
    return out.stdout


def ensure_vcsim(cache: Path = DEFAULT_CACHE, force: bool = False) -> Path:
    """The path of a built vcsim binary, building it first if the cache has none.

    Raises VcsimUnavailable when Go or govmomi's sources are not installed,
    and RuntimeError with the compiler's output when the build fails.
    """
    if shutil.which("go") is None or not SIMULATOR.is_dir():
        raise VcsimUnavailable(f"building vcsim needs the Debian packages {' '.join(PACKAGES)}"
                               " (make deps)")
    main = HERE / "main.go"
    key = hashlib.sha256(main.read_bytes() + _versions().encode()).hexdigest()[:16]
    target = cache / key / "vcsim"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists() and not force:
            return target
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            work = Path(tmp)
            shutil.copy(main, work / "main.go")
            env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOPATH), GOPROXY="off",
                       GOFLAGS="", GOCACHE=str(cache / "gocache"), CGO_ENABLED="0")
            done = subprocess.run(["go", "build", "-o", "vcsim", "main.go"], cwd=work, env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"go build of vcsim failed:\n{done.stdout}{done.stderr}")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work / "vcsim", target)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    print(ensure_vcsim(args.cache, args.force))


if __name__ == "__main__":
    main()
