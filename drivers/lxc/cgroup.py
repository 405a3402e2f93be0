"""A container's cgroup: where it lives, its limits, its counters, its removal.

libvirt's layout without systemd (src/util/vircgroup.c): each container gets
``machine/NAME.libvirt-lxc`` below the daemon's own placement, in every v1
controller (or once in the v2 hierarchy).  The name matters beyond tidiness:
``virDomainLxcEnterCGroup`` (virsh lxc-enter-namespace) finds the group of
the domain's id (the controller's pid) and accepts it only if its last
component is ``NAME.libvirt-lxc``, so the controller joins the group too.

Everything here is plain blocking file I/O on cgroupfs: the controller uses
it directly, the daemon through a thread.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")
PARTITION = "machine"

# virLXCCgroupSetupDeviceACL (src/lxc/lxc_cgroup.c): the nodes /dev gets, plus
# every devpts pty (major 136) and the console (5:1).
DEVICE_ALLOW = ("c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm")


def is_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def own_placement(pid: int | str = "self") -> dict[str, str]:
    """Controller (or "" for v2) -> path of ``pid`` in that hierarchy (/proc/PID/cgroup)."""
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
            out[c] = path
    return out


def machine_paths(name: str, driver: str = "lxc") -> dict[str, str]:
    """Where the machine ``name`` of ``driver`` goes: controller -> directory ("unified" on v2).

    The QEMU driver puts its guests here too (drivers/qemu/devacl.py)."""
    # imported here: the controller imports this module, and pyvirtd.names brings
    # the generated protocol (errors), which a container's controller never needs
    from pyvirtd.names import name_path

    placement = own_placement()
    leaf = name_path(PARTITION, name, f".libvirt-{driver}")
    if is_v2():
        return {"unified": str(CGROUP_ROOT / placement.get("", "/").lstrip("/") / leaf)}
    out = {}
    for ctrl in V1_CONTROLLERS:
        base = CGROUP_ROOT / ctrl
        if not base.is_dir():
            continue
        out[ctrl] = str(base / placement.get(ctrl, "/").lstrip("/") / leaf)
    return out


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def create(paths: dict[str, str]) -> None:
    for ctrl, d in paths.items():
        path = Path(d)
        for p in (path.parent, path):
            p.mkdir(exist_ok=True)
            if ctrl == "cpuset":
                # a new cpuset has no cpus or mems until given its parent's
                for key in ("cpuset.cpus", "cpuset.mems"):
                    if not (p / key).read_text().strip():
                        _write(p / key, (p.parent / key).read_text().strip())
        if ctrl == "unified":
            try:
                _write(path.parent / "cgroup.subtree_control", "+memory +cpu +pids")
            except OSError:
                pass


def add_process(paths: dict[str, str], pid: int) -> None:
    for ctrl, d in paths.items():
        _write(Path(d) / ("cgroup.procs"), str(pid))


def apply_limits(paths: dict[str, str], limits: dict) -> None:
    """memory (KiB), hard/soft/swap_hard limits (KiB), cpu shares/period/quota, devices."""
    mem = limits.get("hard_limit") or limits.get("memory")
    if "unified" in paths:
        d = Path(paths["unified"])
        if mem:
            _write(d / "memory.max", str(mem * 1024))
        if limits.get("soft_limit"):
            _write(d / "memory.high", str(limits["soft_limit"] * 1024))
        if limits.get("shares"):
            # cgroup v2 weight from v1 shares, as libvirt's virCgroupV2SetCpuShares
            _write(d / "cpu.weight", str(max(1, min(10000, limits["shares"] * 100 // 1024))))
        if limits.get("quota"):
            _write(d / "cpu.max", f"{limits['quota']} {limits.get('period') or 100000}")
        return
    if "memory" in paths:
        d = Path(paths["memory"])
        if mem:
            _write(d / "memory.limit_in_bytes", str(mem * 1024))
        if limits.get("soft_limit"):
            _write(d / "memory.soft_limit_in_bytes", str(limits["soft_limit"] * 1024))
        if limits.get("swap_hard_limit") and (d / "memory.memsw.limit_in_bytes").exists():
            _write(d / "memory.memsw.limit_in_bytes", str(limits["swap_hard_limit"] * 1024))
    if "cpu" in paths:
        d = Path(paths["cpu"])
        if limits.get("shares"):
            _write(d / "cpu.shares", str(limits["shares"]))
        if limits.get("period"):
            _write(d / "cpu.cfs_period_us", str(limits["period"]))
        if limits.get("quota"):
            _write(d / "cpu.cfs_quota_us", str(limits["quota"]))
    if "devices" in paths:
        d = Path(paths["devices"])
        _write(d / "devices.deny", "a")
        for rule in DEVICE_ALLOW:
            _write(d / "devices.allow", rule)


def set_memory_limit(paths: dict[str, str], kib: int) -> None:
    """The container's memory limit (virsh setmem on a running container)."""
    if "unified" in paths:
        _write(Path(paths["unified"]) / "memory.max", str(kib * 1024))
    else:
        _write(Path(paths["memory"]) / "memory.limit_in_bytes", str(kib * 1024))


def read(paths: dict[str, str], ctrl: str, key: str) -> str | None:
    d = paths.get(ctrl) or paths.get("unified")
    if d is None:
        return None
    try:
        return (Path(d) / key).read_text().strip()
    except OSError:
        return None


def counters(paths: dict[str, str]) -> dict[str, int]:
    """cpu_time (ns), cpu_user/cpu_system (ns), memory_usage (bytes), memory_limit (bytes)."""
    out: dict[str, int] = {}
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    if "unified" in paths:
        stat = dict(line.split() for line in (read(paths, "cpu", "cpu.stat") or "").splitlines())
        out["cpu_time"] = int(stat.get("usage_usec", 0)) * 1000
        out["cpu_user"] = int(stat.get("user_usec", 0)) * 1000
        out["cpu_system"] = int(stat.get("system_usec", 0)) * 1000
        out["memory_usage"] = int(read(paths, "memory", "memory.current") or 0)
        limit = read(paths, "memory", "memory.max") or "max"
        out["memory_limit"] = int(limit) if limit.isdigit() else 0
        return out
    out["cpu_time"] = int(read(paths, "cpuacct", "cpuacct.usage") or 0)
    stat = dict(line.split() for line in (read(paths, "cpuacct", "cpuacct.stat") or "").splitlines())
    out["cpu_user"] = int(stat.get("user", 0)) * tick
    out["cpu_system"] = int(stat.get("system", 0)) * tick
    out["memory_usage"] = int(read(paths, "memory", "memory.usage_in_bytes") or 0)
    out["memory_limit"] = int(read(paths, "memory", "memory.limit_in_bytes") or 0)
    return out


def set_frozen(paths: dict[str, str], frozen: bool, timeout: float = 5.0) -> bool:
    """Freeze or thaw every process of the group; whether it got there in time.

    v1 writes ``freezer.state`` (FROZEN/THAWED) and reads it back, since a
    group reports FREEZING until its last task stops; v2 writes ``cgroup.freeze``
    and reads the ``frozen`` line of ``cgroup.events``.
    """
    if "unified" in paths:
        d = Path(paths["unified"])
        _write(d / "cgroup.freeze", "1" if frozen else "0")
        want = f"frozen {int(frozen)}"
        done = lambda: want in (d / "cgroup.events").read_text().splitlines()  # noqa: E731
    else:
        state = Path(paths["freezer"]) / "freezer.state"
        want = "FROZEN" if frozen else "THAWED"
        _write(state, want)
        done = lambda: state.read_text().strip() == want  # noqa: E731
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def is_frozen(paths: dict[str, str]) -> bool:
    if "unified" in paths:
        return "frozen 1" in (read(paths, "unified", "cgroup.events") or "").splitlines()
    return read(paths, "freezer", "freezer.state") == "FROZEN"


def kill_all(paths: dict[str, str], sig: int = 9) -> None:
    """Signal every process left in the group (a controller that died uncleanly)."""
    for d in paths.values():
        try:
            pids = Path(d, "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in pids:
            if int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), sig)
            except (ProcessLookupError, ValueError):
                pass
    if paths.get("freezer") and is_frozen(paths):
        # a frozen v1 group holds even SIGKILL back until it thaws
        set_frozen(paths, False)


def remove(paths: dict[str, str], timeout: float = 5.0) -> None:
    """rmdir the groups once empty (processes take a moment to leave after dying)."""
    deadline = time.monotonic() + timeout
    for d in paths.values():
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
