"""Profile pyvirtd's hot path under a bench workload with py-spy (sampling).

    .venv/bin/pip install py-spy        # ad hoc; not a project dependency
    .venv/bin/python bench/profile.py rt  [--seconds 8] [--out DIR]
    .venv/bin/python bench/profile.py c64 [--seconds 8] [--out DIR]
    .venv/bin/python bench/profile.py xml [--seconds 8] [--out DIR]

rt:  one client calling getVersion() in a loop (the round-trip case)
c64: 64 client processes calling getVersion() (the throughput case)
xml: one client calling XMLDesc() of domain 'test'

Writes DIR/MODE.collapsed (flamegraph.pl / speedscope input) and prints the
daemon's CPU per call, then where the samples fall: by function (self and
inclusive) and by pyvirtd module.  Idle samples (the loop waiting in epoll)
are kept, so "idle" shows how much headroom the daemon had.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemons import cpu_seconds, start_pyvirtd  # noqa: E402


def py_spy() -> str:
    exe = Path(sys.executable).with_name("py-spy")
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if not found:
        sys.exit("py-spy is missing: .venv/bin/pip install py-spy")
    return found


def frame_key(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (path/to/file.py)"
    name, _, loc = frame.partition(" (")
    return f"{name} ({loc.rsplit(':', 1)[0]})"


def module_of(frame: str) -> str:
    loc = frame.partition(" (")[2].rsplit(":", 1)[0]
    if loc.startswith(("pyvirtd/", "drivers/")):
        return loc
    top = loc.split("/")[0]
    if top in ("trio", "outcome", "sniffio"):
        return f"{top} (all)"
    if top.endswith(".py") or loc.startswith("<"):
        return "stdlib"
    return f"{top} (all)"


def analyze(collapsed: Path, top: int = 25) -> str:
    self_c: collections.Counter = collections.Counter()
    incl_c: collections.Counter = collections.Counter()
    mod_self: collections.Counter = collections.Counter()
    total = idle = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        n = int(n)
        frames = stack.split(";")
        total += n
        leaf = frames[-1]
        if "get_events" in leaf:
            idle += n
        self_c[frame_key(leaf)] += n
        mod_self[module_of(leaf)] += n
        for k in {frame_key(f) for f in frames}:
            incl_c[k] += n
    if not total:
        return "no samples"
    pct = lambda n: f"{100 * n / total:5.1f}%"  # noqa: E731
    out = [f"{total} samples; waiting in epoll (idle): {pct(idle)}", "", "self time by function:"]
    out += [f"  {pct(n)}  {k}" for k, n in self_c.most_common(top)]
    out += ["", "inclusive time, pyvirtd + trio frames:"]
    out += [f"  {pct(n)}  {k}" for k, n in incl_c.most_common(200)
            if n / total > 0.01 and "<frozen" not in k and "cli.py" not in k][:top]
    out += ["", "self time by module:"]
    out += [f"  {pct(n)}  {k}" for k, n in mod_self.most_common(15)]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description="profile pyvirtd under a bench workload")
    p.add_argument("mode", choices=("rt", "c64", "xml"))
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "pyvirtd-profile")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    spy = py_spy()

    import libvirt
    libvirt.registerErrorHandler(lambda *_: None, None)
    tmp = Path(tempfile.mkdtemp(prefix="pyvirtd-prof-"))
    d = start_pyvirtd(tmp / "pyvirtd")
    pool = None
    try:
        if args.mode == "c64":
            from workers import Pool
            pool = Pool(64)
        collapsed = args.out / f"{args.mode}.collapsed"
        rec = subprocess.Popen([spy, "record", "--pid", str(d.pid), "--idle", "--nonblocking",
                                "--rate", str(args.rate), "--format", "raw",
                                "--duration", str(int(args.seconds) + 1), "-o", str(collapsed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        c0 = cpu_seconds(d.pid, split=True)
        if args.mode == "c64":
            calls = pool.run(d.uri, 64, args.seconds, lead=1.5)["calls"]
        else:
            conn = libvirt.open(d.uri)
            fn = conn.getVersion if args.mode == "rt" else conn.lookupByName("test").XMLDesc
            calls = 0
            t1 = time.monotonic() + args.seconds
            while time.monotonic() < t1:
                fn()
                calls += 1
            conn.close()
        c1 = cpu_seconds(d.pid, split=True)
        rec.wait(30)
        user, system = c1[0] - c0[0], c1[1] - c0[1]
        per = 1e6 / max(calls, 1)
        print(f"{args.mode}: {calls} calls in {args.seconds:g} s = {calls / args.seconds:,.0f}/s; "
              f"daemon CPU {user + system:.2f} s = {per * (user + system):.1f} µs per call "
              f"(user {per * user:.1f} + system {per * system:.1f}; py-spy's sampling included)")
        if collapsed.exists():
            print(analyze(collapsed))
            print(f"\ncollapsed stacks: {collapsed}")
        else:
            print("py-spy failed:", rec.stderr.read().decode(errors="replace"))
    finally:
        if pool is not None:
            pool.close()
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
