"""QEMU section of `make bench`: pyvirtd's qemu:///session beside libvirtd's.

Both daemons serve qemu:///session (pyvirtd as the bench's user, libvirtd in
session mode as the unprivileged pyvirtd-bench user, see daemons.py), each with
its own temp dir; the client is python-libvirt.  Measured:

  lifecycle    define + start + destroy of a firmware-only guest (<domain type='kvm'>,
               64 MiB, no disk, machine 'pc', no <cpu>), N times in chunks that
               alternate between the daemons; the start (virDomainCreate) alone is
               reported too.  Undefine is outside the timing.
  20 guests    20 running guests per daemon (one daemon at a time), then
                 CONNECT_GET_ALL_DOMAIN_STATS (getAllDomainStats(), every group), N calls;
                 kill -9 of the daemon, start again, time until listAllDomains(ACTIVE)
                 answers with all 20 running (the guests keep running meanwhile).
  stuck guest  one of the 20 QEMUs frozen (SIGSTOP): listAllDomains and
                 getAllDomainStats(NOWAIT) medians against the same calls with none
                 frozen (reported as frozen / normal, per daemon); a daemon whose
                 call is still blocked after STUCK_WAIT s is reported "blocked" (the
                 guest is then continued so that the call ends).

The 20 parked guests run a 64 KiB firmware of `cli; hlt` (<loader type='rom'>) instead of
SeaBIOS: on this nested-KVM host each SeaBIOS guest burns about 6 CPU-seconds before it
settles, which for 2 x 20 guests would saturate two cores for over a minute and drown the
figures.  The lifecycle loop uses the default SeaBIOS (each guest lives ~1 s there).

libvirtd's QEMU runs as pyvirtd-bench, which cannot open /dev/kvm (root:root 0600 here):
for the section's duration /dev/kvm gets that user's group with g+rw, restored afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path

from daemons import Daemon, kill_marked, start_libvirtd, start_pyvirtd
from report import row

QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
N_PARKED = 20
START_TARGET = 0.5        # pyvirtd's start at most half of libvirtd's
READY_TARGET = 1.0        # ready after restart with 20 guests, seconds
STUCK_TARGET = 1.2        # calls with one QEMU frozen, at most this many times their normal time
STUCK_WAIT = 15.0         # a call blocked longer than this behind a frozen QEMU is "blocked"

GUEST_XML = """<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{loader}</os>
  <on_poweroff>destroy</on_poweroff>
</domain>
"""


def guest_xml(name: str, rom: Path | None = None) -> str:
    loader = f"<loader type='rom'>{rom}</loader>" if rom else ""
    return GUEST_XML.format(name=name, loader=loader)


def write_hlt_rom(path: Path) -> Path:
    """A 64 KiB BIOS image whose reset vector (offset 0xfff0) is `cli; hlt; jmp $-2`."""
    rom = bytearray(65536)
    rom[0xFFF0:0xFFF4] = bytes([0xFA, 0xF4, 0xEB, 0xFD])
    path.write_bytes(bytes(rom))
    path.chmod(0o644)
    return path


@contextmanager
def kvm_for_group(gid: int | None):
    """Let group ``gid`` open /dev/kvm for the duration (root only); restore owner and mode after."""
    st = os.stat("/dev/kvm")
    changed = False
    if gid is not None and os.geteuid() == 0 and not (st.st_gid == gid and st.st_mode & 0o060 == 0o060):
        os.chown("/dev/kvm", -1, gid)
        os.chmod("/dev/kvm", (st.st_mode & 0o7777) | 0o060)
        changed = True
    try:
        yield changed
    finally:
        if changed:
            os.chown("/dev/kvm", -1, st.st_gid)
            os.chmod("/dev/kvm", st.st_mode & 0o7777)


def _libvirt():
    import libvirt
    libvirt.registerErrorHandler(lambda *_: None, None)
    return libvirt


def lifecycle_once(conn, xml: str) -> tuple[float, float]:
    """(define+start+destroy, start) in seconds; undefines afterwards, untimed."""
    clock = time.perf_counter
    t0 = clock()
    dom = conn.defineXML(xml)
    t1 = clock()
    dom.create()
    t2 = clock()
    dom.destroy()
    t3 = clock()
    dom.undefine()
    return t3 - t0, t2 - t1


def wait_ready(d: Daemon, n: int, timeout: float = 60.0) -> float:
    """Seconds from now until listAllDomains(ACTIVE) on ``d`` shows ``n`` running guests."""
    libvirt = _libvirt()
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    conn = None
    try:
        while time.monotonic() < deadline:
            if not d.alive():
                raise RuntimeError(f"{d.name} exited with {d.proc.returncode} after restart:\n{d.log()[-2000:]}")
            try:
                if conn is None:
                    conn = libvirt.open(d.session_uri)
                doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                if len(doms) >= n and all(x.state()[0] == libvirt.VIR_DOMAIN_RUNNING for x in doms):
                    return time.perf_counter() - t0
            except libvirt.libvirtError:
                if conn is not None:
                    try:
                        conn.close()
                    except libvirt.libvirtError:
                        pass
                    conn = None
            time.sleep(0.005)
    finally:
        if conn is not None:
            conn.close()
    raise RuntimeError(f"{d.name}: {n} running guests not listed within {timeout:g}s")


def parked_guests(d: Daemon, rom: Path, n_stats: int, n_restarts: int, log) -> dict:
    """Start N_PARKED guests on ``d``; stats calls; kill -9 + restart timings; destroy them all."""
    libvirt = _libvirt()
    out: dict = {}
    conn = libvirt.open(d.session_uri)
    doms = []
    try:
        t = time.perf_counter()
        for i in range(N_PARKED):
            dom = conn.defineXML(guest_xml(f"parked-{i:02d}", rom))
            dom.create()
            doms.append(dom)
        out["start_all_s"] = time.perf_counter() - t
        conn.getAllDomainStats()        # warm-up
        samples = []
        for _ in range(n_stats):
            t = time.perf_counter()
            recs = conn.getAllDomainStats()
            samples.append(time.perf_counter() - t)
            if len(recs) != N_PARKED:
                raise RuntimeError(f"getAllDomainStats returned {len(recs)} records, not {N_PARKED}")
        out["stats_ms"] = statistics.median(samples) * 1000
        out["stats_runs_ms"] = [round(s * 1000, 1) for s in samples]
        out.update(stuck_guest(d, conn, n_stats, log))
        conn.close()
        conn = None
        ready = []
        for _ in range(n_restarts):
            d.kill9()
            d.respawn()
            ready.append(wait_ready(d, N_PARKED))
        out["ready_s"] = statistics.median(ready)
        out["ready_runs_s"] = [round(r, 3) for r in ready]
        log(f"  {d.name:<8} 20 guests started in {out['start_all_s']:.2f} s; getAllDomainStats "
            f"p50 {out['stats_ms']:.1f} ms; ready after kill -9 + restart {out['ready_runs_s']} s")
    finally:
        if conn is not None:
            conn.close()
        destroy_all(d)
    return out


def _qemu_pid(d: Daemon, name: str) -> int:
    """The pid of ``d``'s QEMU for guest ``name`` (its temp dir in the command line or
    the environment, as kill_marked finds them)."""
    mark, needle = str(d.root).encode(), f"guest={name},".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"qemu-system" not in cmdline or needle not in cmdline.replace(b"\0", b","):
                continue
            if mark in cmdline or mark in Path(f"/proc/{entry}/environ").read_bytes():
                return int(entry)
        except OSError:
            continue
    raise RuntimeError(f"{d.name}: no QEMU found for {name}")


def stuck_guest(d: Daemon, conn, n_calls: int, log) -> dict:
    """listAllDomains and getAllDomainStats(NOWAIT) with one QEMU frozen, against normal."""
    libvirt = _libvirt()
    nowait = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT

    def p50_ms(fn, n: int) -> float:
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return statistics.median(samples) * 1000

    # (call, how many: a listing takes ~0.3 ms, so many more of them for a stable median)
    calls = {"list": (lambda: conn.listAllDomains(0), n_calls * 10),
             "stats": (lambda: conn.getAllDomainStats(0, nowait), n_calls)}
    normal = {k: p50_ms(fn, n) for k, (fn, n) in calls.items()}
    pid = _qemu_pid(d, "parked-07")
    out: dict = {}
    pool = ThreadPoolExecutor(1)
    os.kill(pid, signal.SIGSTOP)
    try:
        for k, (fn, n) in calls.items():
            fut = pool.submit(p50_ms, fn, n)
            try:
                frozen = fut.result(timeout=STUCK_WAIT)
            except FutureTimeout:
                out[f"stuck_{k}_x"] = f"blocked > {STUCK_WAIT:g} s"
                break       # this connection is stuck until the guest is continued
            out[f"stuck_{k}_x"] = frozen / normal[k]
            out[f"stuck_{k}_ms"] = (round(frozen, 2), round(normal[k], 2))
    finally:
        os.kill(pid, signal.SIGCONT)
        pool.shutdown(wait=True)
    log(f"  {d.name:<8} one QEMU frozen, p50 ms (frozen, normal): listAllDomains "
        f"{out.get('stuck_list_ms', out.get('stuck_list_x'))}, getAllDomainStats(NOWAIT) "
        f"{out.get('stuck_stats_ms', out.get('stuck_stats_x', '-'))}")
    return out


def destroy_all(d: Daemon) -> None:
    """Destroy and undefine every guest of ``d``, 20 at a time (libvirtd takes ~1.5 s a destroy)."""
    from concurrent.futures import ThreadPoolExecutor
    libvirt = _libvirt()

    def one(dom):
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass
    try:
        c = libvirt.open(d.session_uri)
    except libvirt.libvirtError:
        return
    try:
        with ThreadPoolExecutor(N_PARKED) as ex:
            list(ex.map(one, c.listAllDomains()))
    finally:
        c.close()


def run(tmp: Path, quick: bool, with_libvirtd: bool, log=print) -> dict:
    """The QEMU section; returns {"rows": [...], "skipped": {...}, "data": {...}}."""
    res: dict = {"rows": [], "skipped": {}, "data": {}}
    if not os.access(QEMU, os.X_OK):
        res["skipped"]["qemu"] = f"{QEMU} is not installed"
        return res
    if not os.path.exists("/dev/kvm"):
        res["skipped"]["qemu"] = "no /dev/kvm"
        return res
    libvirt = _libvirt()
    n_life = 3 if quick else 8
    n_stats = 5 if quick else 20
    n_restarts = 1 if quick else 3
    base = tmp / "qemu"
    base.mkdir()
    os.chmod(base, 0o755)
    rom = write_hlt_rom(base / "hlt.rom")
    daemons: list[Daemon] = []
    data = res["data"]
    bench_gid = None
    if with_libvirtd and os.geteuid() == 0:
        from daemons import _ensure_user
        ids = _ensure_user()
        bench_gid = None if isinstance(ids, str) else ids[1]
    try:
        with kvm_for_group(bench_gid) as changed:
            if changed:
                log("  /dev/kvm: group pyvirtd-bench, g+rw for this section (restored after)")
            daemons.append(start_pyvirtd(base / "pyvirtd"))
            if with_libvirtd:
                lv = start_libvirtd(base / "libvirtd")
                if isinstance(lv, str):
                    res["skipped"]["libvirtd (qemu)"] = lv
                else:
                    daemons.append(lv)
            conns = {d.name: libvirt.open(d.session_uri) for d in daemons}
            # warm-up: libvirtd probes QEMU's capabilities on first use (a few seconds)
            for d in daemons:
                try:
                    lifecycle_once(conns[d.name], guest_xml("warmup"))
                except libvirt.libvirtError as exc:
                    data[d.name] = {"error": str(exc)}
                    log(f"  {d.name}: cannot run a KVM guest: {exc}")
            runnable = [d for d in daemons if "error" not in data.get(d.name, {})]
            total: dict = {d.name: [] for d in runnable}
            start: dict = {d.name: [] for d in runnable}
            for i in range(n_life):
                for d in (runnable if i % 2 == 0 else runnable[::-1]):
                    a, b = lifecycle_once(conns[d.name], guest_xml("bench-life"))
                    total[d.name].append(a)
                    start[d.name].append(b)
            for d in runnable:
                data[d.name] = {"lifecycle_ms": statistics.median(total[d.name]) * 1000,
                                "start_ms": statistics.median(start[d.name]) * 1000,
                                "lifecycle_runs_ms": [round(x * 1000) for x in total[d.name]],
                                "start_runs_ms": [round(x * 1000) for x in start[d.name]]}
                log(f"  {d.name:<8} define+start+destroy p50 {data[d.name]['lifecycle_ms']:.0f} ms, "
                    f"start p50 {data[d.name]['start_ms']:.0f} ms (n={n_life})")
            for c in conns.values():
                c.close()
            for d in runnable:
                try:
                    data[d.name].update(parked_guests(d, rom, n_stats, n_restarts, log))
                except Exception as exc:        # report the other daemon's figures anyway
                    data[d.name]["parked_error"] = f"{type(exc).__name__}: {exc}"
                    log(f"  {d.name}: 20-guest part failed: {exc}")
    finally:
        for d in daemons:
            d.stop()
        killed = kill_marked(str(base), b"qemu-system")
        if killed:
            log(f"  killed {len(killed)} leftover QEMU processes")
        kill_marked(str(base), b"virtlogd", environ=True)   # libvirtd's, as pyvirtd-bench

    def val(name, key, scale=1.0):
        r = data.get(name)
        if r is None:
            return "not run" if name == "libvirtd" else None
        if key not in r:
            return "error" if ("error" in r or "parked_error" in r) else None
        return r[key] * scale

    rows = res["rows"]
    rows.append(row("define+start+destroy, ms (median)", val("pyvirtd", "lifecycle_ms"),
                    val("libvirtd", "lifecycle_ms")))
    rows.append(row("  of which start, ms (median)", val("pyvirtd", "start_ms"), val("libvirtd", "start_ms"),
                    max_ratio=START_TARGET))
    rows.append(row(f"start {N_PARKED} guests one by one, s", val("pyvirtd", "start_all_s"),
                    val("libvirtd", "start_all_s")))
    rows.append(row(f"getAllDomainStats, {N_PARKED} guests, ms (p50)", val("pyvirtd", "stats_ms"),
                    val("libvirtd", "stats_ms")))
    rows.append(row(f"kill -9, restart, list {N_PARKED} running, s", val("pyvirtd", "ready_s"),
                    val("libvirtd", "ready_s"), max_abs=READY_TARGET, abs_unit=" s"))

    def stuck(key):     # frozen / normal of each daemon; a "blocked" text stays as it is
        return tuple(data[n][key] if key in data.get(n, {}) else val(n, key)
                     for n in ("pyvirtd", "libvirtd"))
    rows.append(row(f"1 of {N_PARKED} frozen: listAllDomains, x normal", *stuck("stuck_list_x"),
                    max_abs=STUCK_TARGET, abs_unit="x"))
    rows.append(row(f"1 of {N_PARKED} frozen: getAllDomainStats NOWAIT, x normal",
                    *stuck("stuck_stats_x"), max_abs=STUCK_TARGET, abs_unit="x"))
    return res
