"""Host side of the lab: build (or reuse) the image, prepare wheels, boot the VM
once, collect the inside tests' results.

    image      tools/lab/build.py, cached in .cache/lab/ (rebuilt when the
               script changes; its log in .cache/lab/build.log)
    wheels     pyvirtd's dependencies (`pip download`, cached in
               .cache/lab/wheels-KEY/ by the dependency list) and the
               project itself (`pip wheel`, built fresh each run from a copy
               of the sources) in the share's wheels/
    the VM     QEMU under TCG (this host's nested KVM cannot boot a Linux
               kernel), the image with snapshot=on, two blank disks for
               LVM, the checkout shared read-only as "src" and a temporary
               directory as "lab"; its init runs tests/lab/guest_job.sh
    results    junit.xml (one <testcase> per inside test), pytest.log,
               job.log, console.log, phases, in the share

Everything temporary (the share, the disks, QEMU) is removed or killed when
`run_lab` returns, whatever happened.  Usable without pytest:

    python tests/lab/runner.py [PYTEST-ARGS...]     # e.g. tests/lab/inside -k logical
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "lab"
BUILD = REPO / "tools" / "lab" / "build.py"
INSIDE = Path(__file__).resolve().parent / "inside"
JOB = Path(__file__).resolve().parent / "guest_job.sh"
QEMU = "qemu-system-x86_64"
BUILD_TIMEOUT = 900          # the first build: ~3.5 min here
VM_TIMEOUT = 420             # boot + services + venv + the inside tests
DISK_SIZE = 256 * 1024 * 1024
# not installed from wheels in the guest: Debian's python3-libvirt is used there
SKIP_REQUIREMENTS = ("libvirt-python", "hypothesis")


class LabUnavailable(Exception):
    """The lab cannot run here (no image and no way to build it): a skip reason."""


@dataclass
class LabResult:
    rc: int | None                                   # the job's exit status (None: no status)
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)   # id -> (outcome, text)
    pytest_log: str = ""
    job_log: str = ""
    console: str = ""
    phases: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"job rc={self.rc}, {self.seconds:.0f} s\n--- phases\n{self.phases}"
                f"--- job.log (tail)\n{_tail(self.job_log, 40)}\n"
                f"--- pytest.log (tail)\n{_tail(self.pytest_log, 60)}\n"
                f"--- console (tail)\n{_tail(self.console, 30)}")


def _tail(text: str, n: int) -> str:
    return "\n".join(text.splitlines()[-n:])


# ----------------------------------------------------------------------- tests
def inside_test_ids() -> list[str]:
    """The inside tests, by static reading (module::function), for parametrizing the
    host-side test at collection time without importing guest-only code."""
    ids = []
    for path in sorted(INSIDE.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.name.startswith("test_"):
                ids.append(f"{path.stem}::{node.name}")
    return ids


# how bad an outcome is, when the variants of a parametrized inside test differ
_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def parse_junit(path: Path) -> dict[str, tuple[str, str]]:
    """{module::name: (passed|failed|skipped|error, message)} from a junit file.

    The variants of a parametrized test (name[param]) count as one: the worst
    outcome, with the message of the variant that had it.
    """
    out: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return out
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = case.get("name", "")
        key = f"{module}::{name.split('[', 1)[0]}"
        outcome, text = "passed", ""
        for tag in ("failure", "error", "skipped"):
            elem = case.find(tag)
            if elem is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                text = f"{name}: " + (elem.get("message") or "") + "\n" + (elem.text or "")
                break
        if key not in out or _RANK[outcome] > _RANK[out[key][0]]:
            out[key] = (outcome, text)
    return out


# ----------------------------------------------------------------------- image
def ensure_image(log=print) -> dict[str, Path]:
    """The image's files; builds them when missing or stale.

    :raises LabUnavailable: no QEMU, not root, or the build failed (the reason
        names the build log's last lines, e.g. an unreachable mirror).
    """
    if shutil.which(QEMU) is None:
        raise LabUnavailable(f"{QEMU} is not installed (make deps)")
    files = {name: CACHE / name for name in ("vmlinuz", "initrd.img", "rootfs.ext4")}
    current = subprocess.run([sys.executable, str(BUILD), "--check"]).returncode == 0
    if current:
        return files
    if os.geteuid() != 0:
        raise LabUnavailable("the lab image is not built and building it needs root")
    if shutil.which("debootstrap") is None and not os.path.exists("/usr/sbin/debootstrap"):
        raise LabUnavailable("the lab image is not built and debootstrap is not installed "
                             "(make deps)")
    CACHE.mkdir(parents=True, exist_ok=True)
    logpath = CACHE / "build.log"
    log(f"building the lab image (first time: ~3-4 min), log in {logpath}")
    t0 = time.monotonic()
    with open(logpath, "wb") as logf:
        try:
            proc = subprocess.run([sys.executable, str(BUILD)], stdout=logf,
                                  stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0:
        text = logpath.read_text(errors="replace")
        # debootstrap's own errors ("E: Failed getting release file ...") say it best
        errors = [line for line in text.splitlines() if line.startswith(("E:", "W:"))]
        tail = "\n".join(errors[-4:]) if errors else _tail(text, 6)
        raise LabUnavailable(f"the lab image could not be built (exit {rc}; {logpath}):\n{tail}")
    log(f"lab image built in {time.monotonic() - t0:.0f} s")
    return files


# ---------------------------------------------------------------------- wheels
def _requirements() -> list[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(meta.get("dependencies", []))
    reqs += meta.get("optional-dependencies", {}).get("test", [])
    return [r for r in reqs if not r.startswith(SKIP_REQUIREMENTS)]


def prepare_wheels(dest: Path) -> None:
    """Fill ``dest`` with every wheel the guest installs (no network there)."""
    reqs = _requirements()
    key = hashlib.sha256("\n".join(sorted(reqs)).encode()).hexdigest()[:12]
    cached = CACHE / f"wheels-{key}"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    if not (cached / ".complete").exists():
        tmp = Path(tempfile.mkdtemp(prefix="wheels-", dir=CACHE))
        try:
            # The host's Python is Debian 12's 3.11 on x86_64 like the guest's, so its
            # wheels fit; `pip wheel` downloads binary wheels and builds the rest.
            # A requirement that cannot be had (e.g. a C module without its headers
            # here) is left out: the guest installs with --no-deps, and pyvirtd
            # imports such optional modules (gssapi, ...) only when used.
            try:
                _run([*pip, "wheel", "-q", "-w", str(tmp), *reqs], "pip wheel")
            except LabUnavailable:
                missing = []
                for req in reqs:
                    try:
                        _run([*pip, "wheel", "-q", "-w", str(tmp), req], f"pip wheel {req}")
                    except LabUnavailable:
                        missing.append(req)
                (tmp / "MISSING").write_text("\n".join(missing) + "\n")
            (tmp / ".complete").touch()
            shutil.rmtree(cached, ignore_errors=True)
            os.replace(tmp, cached)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for whl in cached.glob("*.whl"):
        shutil.copy(whl, dest)
    # the project, from a copy of its sources (no build/ or egg-info in the checkout)
    with tempfile.TemporaryDirectory(prefix="src-") as src:
        for name in ("pyproject.toml", "setup.py", "README.md"):
            if (REPO / name).exists():
                shutil.copy(REPO / name, src)
        for name in ("pyvirtd", "drivers", "schemas"):
            shutil.copytree(REPO / name, Path(src) / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # the project's own wheel failing is a bug here, not a lab the machine lacks
        _run([*pip, "wheel", "-q", "--no-deps", "-w", str(dest), src], "pip wheel of pyvirtd",
             error=RuntimeError)


def _run(argv: list[str], what: str, error: type[Exception] | None = None) -> None:
    """Run a build step; its failure raises ``error`` (LabUnavailable: the tests skip)."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise (error or LabUnavailable)(f"{what} failed (exit {proc.returncode}):\n"
                                        f"{_tail(proc.stderr, 8)}")


# -------------------------------------------------------------------------- VM
def qemu_argv(files: dict[str, Path], share: Path, disks: list[Path]) -> list[str]:
    argv = [QEMU, "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "2", "-m", "2048",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(files["vmlinuz"]), "-initrd", str(files["initrd.img"]),
            "-append", "console=ttyS0 root=/dev/vda rw init=/lab-init panic=-1 quiet",
            "-serial", f"file:{share / 'console.log'}",
            "-drive", f"file={files['rootfs.ext4']},format=raw,if=virtio,snapshot=on",
            "-virtfs", f"local,path={REPO},mount_tag=src,security_model=none,readonly=on",
            "-virtfs", f"local,path={share},mount_tag=lab,security_model=none",
            "-nic", "none"]
    for disk in disks:
        argv += ["-drive", f"file={disk},format=raw,if=virtio,cache=unsafe"]
    return argv


def run_lab(pytest_args: list[str] | None = None, *, timeout: float = VM_TIMEOUT,
            log=print) -> LabResult:
    """Boot the lab once, run the inside tests, return their results.

    :raises LabUnavailable: the image or the wheels cannot be had.
    """
    files = ensure_image(log)
    share = Path(tempfile.mkdtemp(prefix="pyvirtd-lab-"))
    proc: subprocess.Popen | None = None
    t0 = time.monotonic()
    try:
        prepare_wheels(share / "wheels")
        shutil.copy(JOB, share / "job.sh")
        (share / "args").write_text(" ".join(pytest_args or ["tests/lab/inside"]))
        disks = []
        for name in ("lvm1.img", "lvm2.img"):
            with open(share / name, "wb") as f:
                f.truncate(DISK_SIZE)
            disks.append(share / name)
        log(f"booting the lab VM (share {share})")
        proc = subprocess.Popen(qemu_argv(files, share, disks), stdin=subprocess.DEVNULL,
                                stdout=open(share / "qemu.log", "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"the lab VM did not finish within {timeout:.0f} s; killed")
        rc_file = share / "job.rc"
        result = LabResult(rc=int(rc_file.read_text().strip()) if rc_file.exists() else None)
        result.outcomes = parse_junit(share / "junit.xml")
        for attr, name in (("pytest_log", "pytest.log"), ("job_log", "job.log"),
                           ("console", "console.log"), ("phases", "phases")):
            path = share / name
            if path.exists():
                setattr(result, attr, path.read_text(errors="replace"))
        qlog = share / "qemu.log"
        if qlog.exists() and qlog.stat().st_size:
            result.console += "\n--- qemu\n" + qlog.read_text(errors="replace")
        result.seconds = time.monotonic() - t0
        keep = os.environ.get("LAB_KEEP_LOGS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for name in ("junit.xml", "pytest.log", "job.log", "console.log", "phases"):
                if (share / name).exists():
                    shutil.copy(share / name, Path(keep) / name)
        return result
    finally:
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        shutil.rmtree(share, ignore_errors=True)


if __name__ == "__main__":
    try:
        res = run_lab(sys.argv[1:] or None)
    except LabUnavailable as exc:
        sys.exit(f"lab unavailable: {exc}")
    print(res.summary())
    for key, (outcome, _) in sorted(res.outcomes.items()):
        print(f"{outcome:8} {key}")
    sys.exit(0 if res.rc == 0 else 1)
