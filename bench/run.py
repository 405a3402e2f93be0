"""`make bench`: pyvirtd side by side with Debian's libvirtd (test:///default).

Both daemons run at once, each in its own temp dir; every measurement is
taken on one and then the other with the same client (python-libvirt), so
the ratios compare daemons, not runs.  libvirtd is skipped, with the reason
printed, when /usr/sbin/libvirtd is missing or cannot be started.

    .venv/bin/python bench/run.py [--quick] [--json FILE] [--duration S]
                                  [--no-libvirtd] [--keep] [--only test,qemu,storage,network]
                                  [--skip SECTIONS]

Sections (all by default): test (below), qemu (bench/section_qemu.py), storage
(bench/storage.py), network (bench/network.py); each module's docstring says what
it measures and what libvirtd cannot do here.

Figures of the test section:
  connect+close        libvirt.open(uri) + close(), per op
  getVersion           CONNECT_GET_VERSION round trip, one client
  listAllDomains(200)  CONNECT_LIST_ALL_DOMAINS with 200 extra domains defined
  XMLDesc('test')      DOMAIN_GET_XML_DESC
  calls/s @ N clients  N client processes calling getVersion() for a fixed time
  RSS                  VmRSS of the daemon process, idle after start and after the run
Ratios are pyvirtd/libvirtd: below 1 is better for times, above 1 for calls/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemons import Daemon, cpu_seconds, rss_kib, start_libvirtd, start_pyvirtd  # noqa: E402
from report import render_table  # noqa: E402

SECTIONS = ("test", "qemu", "storage", "network")

N_DOMAINS = 200
CLIENT_COUNTS = (1, 8, 64)
# targets from /work/shared/DESIGN.md "How fast it can be"
RT_TARGET = 1.5          # getVersion round trip <= 1.5x libvirtd's
TPUT_TARGET = 1.0        # 64-client throughput >= libvirtd's

DOMAIN_XML = ("<domain type='test'><name>bench-{i:03d}</name><memory>8192</memory>"
              "<vcpu>1</vcpu><os><type>hvm</type></os></domain>")


class Unsupported(Exception):
    pass


def _libvirt():
    import libvirt
    libvirt.registerErrorHandler(lambda *_: None, None)
    return libvirt


def _classify(exc: Exception) -> Exception:
    libvirt = _libvirt()
    if isinstance(exc, libvirt.libvirtError) and exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
        return Unsupported(str(exc))
    return exc


def summarize(samples_ns: list[int]) -> dict:
    us = sorted(s / 1000 for s in samples_ns)
    n = len(us)
    return {"n": n, "p50": statistics.median(us), "mean": statistics.fmean(us),
            "p99": us[min(n - 1, int(n * 0.99))], "min": us[0]}


def time_calls(fn, n: int, warmup: int) -> list[int]:
    """Per-call wall times in ns."""
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    samples = []
    append = samples.append
    for _ in range(n):
        t = clock()
        fn()
        append(clock() - t)
    return samples


class Latency:
    """One latency measurement on one daemon, run in interleaved chunks.

    ``setup()`` returns the callable to time (or raises); ``chunk()`` times
    one share of the calls; ``result()`` pools every chunk's samples and
    keeps each chunk's median to show the spread.
    """

    def __init__(self, setup, n: int, teardown=None) -> None:
        self._setup, self.n, self._teardown = setup, n, teardown
        self.fn = None
        self.samples: list[int] = []
        self.chunk_p50: list[float] = []
        self.failed: dict | None = None

    def start(self) -> None:
        try:
            self.fn = self._setup()
        except Exception as exc:
            self.failed = _failure(exc)

    def chunk(self, n: int, warmup: int) -> None:
        if self.failed:
            return
        try:
            s = time_calls(self.fn, n, warmup)
        except Exception as exc:
            self.failed = _failure(exc)
            return
        self.samples += s
        self.chunk_p50.append(statistics.median(s) / 1000)

    def finish(self) -> dict:
        if self._teardown:
            try:
                self._teardown()
            except Exception:
                pass
        if self.failed:
            return self.failed
        res = summarize(self.samples)
        res["chunk_p50"] = [round(x, 1) for x in self.chunk_p50]
        return res


def connect_setup(uri: str):
    libvirt = _libvirt()

    def once():
        libvirt.open(uri).close()
    return lambda: once


def xmldesc_setup(conn):
    def setup():
        dom = conn.lookupByName("test")
        dom.XMLDesc()
        return dom.XMLDesc
    return setup


class ListAll:
    """Define N_DOMAINS domains for listAllDomains(); undefine them afterwards."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.defined: list = []
        self.got = 0

    def setup(self):
        for i in range(N_DOMAINS):
            self.defined.append(self.conn.defineXML(DOMAIN_XML.format(i=i)))
        self.got = len(self.conn.listAllDomains())
        if self.got < N_DOMAINS:
            raise RuntimeError(f"listAllDomains returned {self.got} domains after "
                               f"defining {N_DOMAINS}")
        return self.conn.listAllDomains

    def teardown(self) -> None:
        for dom in self.defined:
            try:
                dom.undefine()
            except Exception:
                pass


def _failure(exc: Exception) -> dict:
    exc = _classify(exc)
    if isinstance(exc, Unsupported):
        return {"na": "n/a (unsupported)", "detail": str(exc)}
    return {"na": f"error: {type(exc).__name__}", "detail": str(exc)}


# ----------------------------------------------------------------- reporting
def _fmt_num(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


def _cell(res: dict | None, key: str) -> tuple[str, float | None]:
    if res is None:
        return "-", None
    if "na" in res:
        return res["na"], None
    v = res.get(key)
    if v is None:
        return "-", None
    return _fmt_num(v), v


def build_rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    py = results["daemons"].get("pyvirtd", {})
    lv = results["daemons"].get("libvirtd", {})
    rows = []

    def add(label, key, sub, target=None, higher_better=False):
        a_txt, a = _cell(py.get(key), sub)
        b_txt, b = _cell(lv.get(key), sub)
        ratio = f"{a / b:.2f}x" if a is not None and b else "-"
        tgt = ""
        if target is not None:
            if a is None or not b:
                tgt = f"{'>=' if higher_better else '<='} {target}x: -"
            else:
                ok = a / b >= target if higher_better else a / b <= target
                tgt = f"{'>=' if higher_better else '<='} {target}x: {'PASS' if ok else 'FAIL'}"
        rows.append((label, a_txt, b_txt, ratio, tgt))

    add("connect+close, µs/op (median)", "connect", "p50")
    add("connect+close, µs/op (mean)", "connect", "mean")
    add("getVersion round trip, µs (p50)", "get_version", "p50", RT_TARGET)
    add("getVersion round trip, µs (mean)", "get_version", "mean")
    add("getVersion round trip, µs (p99)", "get_version", "p99")
    add(f"listAllDomains ({N_DOMAINS} doms), µs (p50)", "list_all", "p50")
    add(f"listAllDomains ({N_DOMAINS} doms), µs (mean)", "list_all", "mean")
    add("XMLDesc('test'), µs (p50)", "xml_desc", "p50")
    add("XMLDesc('test'), µs (mean)", "xml_desc", "mean")
    for n in results["client_counts"]:
        add(f"calls/s, {n} client process{'es' if n > 1 else ''}", f"tput_{n}", "calls_per_s",
            TPUT_TARGET if n == max(results["client_counts"]) else None, higher_better=True)
    add("RSS idle after start, MiB", "rss_start", "mib")
    add("RSS after the run, MiB", "rss_end", "mib")
    return rows


def render(results: dict) -> str:
    return render_table(build_rows(results))


def machine_info() -> dict:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libvirt = _libvirt()
    v = libvirt.getVersion()
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(), "libvirt_client": f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}",
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


# ---------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run (fewer calls, 1 s per throughput run)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--duration", type=float, help="seconds per throughput run (default 2, 3 runs; quick 1, 1 run)")
    p.add_argument("--clients", type=str, help="comma-separated client counts (default 1,8,64)")
    p.add_argument("--no-libvirtd", action="store_true", help="measure pyvirtd only")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (daemon logs)")
    p.add_argument("--only", type=str, metavar="SECTIONS",
                   help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    p.add_argument("--skip", type=str, metavar="SECTIONS", help="comma-separated sections to leave out")
    args = p.parse_args(argv)
    only = args.only.split(",") if args.only else list(SECTIONS)
    skip = args.skip.split(",") if args.skip else []
    bad = [x for x in only + skip if x not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {','.join(bad)}; sections are {','.join(SECTIONS)}")
    args.sections = [x for x in SECTIONS if x in only and x not in skip]
    return args


def test_section(args, results: dict, tmp: Path) -> None:
    """The test:///default figures (pyvirtd and libvirtd at once, interleaved)."""
    quick = args.quick
    duration = args.duration or (1.0 if quick else 2.0)
    counts = results["client_counts"]
    n_connect = 50 if quick else 300
    n_rt = 2000 if quick else 20000
    n_list = 50 if quick else 300
    n_xml = 500 if quick else 5000
    reps = 2 if quick else 6
    tput_reps = 1 if quick else 3

    from workers import Pool

    daemons: list[Daemon] = []
    pool = None
    conns: dict = {}
    try:
        print("starting pyvirtd ...", flush=True)
        daemons.append(start_pyvirtd(tmp / "pyvirtd"))
        if args.no_libvirtd:
            results["skipped"]["libvirtd"] = "--no-libvirtd"
        else:
            print("starting libvirtd ...", flush=True)
            lv = start_libvirtd(tmp / "libvirtd")
            if isinstance(lv, str):
                print(f"libvirtd skipped: {lv.splitlines()[0] if lv else lv}", flush=True)
                results["skipped"]["libvirtd"] = lv
            else:
                daemons.append(lv)
        print(f"spawning {max(counts)} client processes ...", flush=True)
        pool = Pool(max(counts))
        time.sleep(0.5)
        libvirt = _libvirt()
        for d in daemons:
            r = results["daemons"][d.name] = {"uri": d.uri, "pid": d.pid}
            r["rss_start"] = {"mib": rss_kib(d.pid) / 1024}

        def order(rep):
            # alternate which daemon goes first, so neither always follows the other
            return daemons if rep % 2 == 0 else daemons[::-1]

        def show(label, name, res):
            print(f"  {label:<12} {name:<8}", end=" ")
            if "na" in res:
                print(res["na"], res.get("detail", "")[:100])
            elif "p50" in res:
                print(f"p50 {res['p50']:.1f} µs  mean {res['mean']:.1f} µs  (n={res['n']}, "
                      f"chunk p50s {res['chunk_p50']})")
            else:
                print(f"{res['calls_per_s']:,.0f} calls/s (runs: "
                      + ", ".join(f"{x:,.0f}" for x in res["runs"])
                      + f")  daemon CPU {res['daemon_cpu_pct']:.0f}%"
                      + (f"  ({res['n_errors']} errors: {res['errors'][0]})" if res["n_errors"] else "")
                      + (f"  ({res['late_workers']} late)" if res["late_workers"] else ""), flush=True)

        def latency(label, make, n):
            per = {d.name: make(d) for d in daemons}
            for m in per.values():
                m.start()
            chunk = max(1, n // reps)
            for rep in range(reps):
                for d in order(rep):
                    per[d.name].chunk(chunk, warmup=max(3, chunk // 20))
            for d in daemons:
                res = results["daemons"][d.name][label] = per[d.name].finish()
                show(label, d.name, res)

        print(f"single client ({reps} interleaved chunks each):", flush=True)
        latency("connect", lambda d: Latency(connect_setup(d.uri), n_connect), n_connect)
        for d in daemons:
            conns[d.name] = libvirt.open(d.uri)
        latency("get_version", lambda d: Latency(lambda c=conns[d.name]: c.getVersion, n_rt), n_rt)
        latency("xml_desc", lambda d: Latency(xmldesc_setup(conns[d.name]), n_xml), n_xml)
        lists = {d.name: ListAll(conns[d.name]) for d in daemons}
        latency("list_all", lambda d: Latency(lists[d.name].setup, n_list, lists[d.name].teardown), n_list)
        for d in daemons:
            if "na" not in results["daemons"][d.name]["list_all"]:
                results["daemons"][d.name]["list_all"]["domains"] = lists[d.name].got

        print(f"throughput ({tput_reps} runs of {duration:g} s, median):", flush=True)
        runs: dict = {}
        for rep in range(tput_reps):
            for n in counts:
                for d in order(rep):
                    lead = 0.3 + 0.02 * n
                    c0 = cpu_seconds(d.pid)
                    res = pool.run(d.uri, n, duration, lead)
                    c1 = cpu_seconds(d.pid)
                    # CPU over connect + window + close; the window dominates
                    res["daemon_cpu_pct"] = (100 * (c1 - c0) / duration
                                             if c0 is not None and c1 is not None else None)
                    runs.setdefault((d.name, n), []).append(res)
        for n in counts:
            for d in daemons:
                rr = runs[(d.name, n)]
                med = sorted(rr, key=lambda r: r["calls_per_s"])[len(rr) // 2]
                res = dict(med)
                res["runs"] = [r["calls_per_s"] for r in rr]
                res["n_errors"] = sum(r["n_errors"] for r in rr)
                res["late_workers"] = sum(r["late_workers"] for r in rr)
                results["daemons"][d.name][f"tput_{n}"] = res
                show(f"tput_{n}", d.name, res)

        for c in conns.values():
            c.close()
        conns.clear()
        time.sleep(0.5)
        for d in daemons:
            results["daemons"][d.name]["rss_end"] = {"mib": rss_kib(d.pid) / 1024}
    finally:
        for c in conns.values():
            try:
                c.close()
            except Exception:
                pass
        if pool is not None:
            pool.close()
        for d in daemons:
            d.stop()


def main(argv=None) -> int:
    args = parse_args(argv)
    duration = args.duration or (1.0 if args.quick else 2.0)
    counts = tuple(int(x) for x in args.clients.split(",")) if args.clients else CLIENT_COUNTS
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="pyvirtd-bench-"))
    os.chmod(tmp, 0o755)
    results: dict = {"machine": machine_info(), "loadavg_start": os.getloadavg()[0], "quick": args.quick,
                     "duration_s": duration, "client_counts": list(counts), "sections_run": args.sections,
                     "daemons": {}, "skipped": {}, "sections": {}}
    try:
        if "test" in args.sections:
            print("== test driver (test:///default)", flush=True)
            test_section(args, results, tmp)
        for name in args.sections:
            if name == "test":
                continue
            print(f"== {name}", flush=True)
            # section modules carry a prefix: a bench/section_qemu.py would shadow the
            # qemu.qmp package for anything run from this folder
            module = __import__(f"section_{name}")
            t = time.monotonic()
            try:
                sec = module.run(tmp, args.quick, not args.no_libvirtd)
            except Exception as exc:   # one section failing must not hide the others
                import traceback
                traceback.print_exc()
                sec = {"rows": [], "skipped": {name: f"error: {type(exc).__name__}: {exc}"}, "data": {}}
            sec["elapsed_s"] = round(time.monotonic() - t, 1)
            results["sections"][name] = sec
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["loadavg_end"] = os.getloadavg()[0]
    m = results["machine"]
    print()
    print(f"pyvirtd vs libvirtd, python-libvirt {m['libvirt_client']} client; "
          f"{m['nproc']} x {m['cpu']}, Python {m['python']}, {m['date']}")
    if "test" in args.sections:
        print("\ntest:///default")
        print(render(results))
    titles = {"qemu": "QEMU (qemu:///session, KVM)", "storage": "storage (dir pools, qemu:///session)",
              "network": "network (in a network namespace)"}
    for name, sec in results["sections"].items():
        print(f"\n{titles.get(name, name)} ({sec['elapsed_s']} s)")
        if sec["rows"]:
            print(render_table(sec["rows"]))
        for k, v in sec["skipped"].items():
            results["skipped"][k] = v
    print("\nratio = pyvirtd / libvirtd (times: lower is better; calls/s, MiB/s: higher is better)")
    if results["skipped"]:
        for k, v in results["skipped"].items():
            print(f"{k} skipped: {v.splitlines()[0] if v else v}")
    print(f"load average (1 min) {results['loadavg_start']:.2f} at start, "
          f"{results['loadavg_end']:.2f} at the end; bench took {results['elapsed_s']} s")
    if max(results["loadavg_start"], results["loadavg_end"]) > 0.5 * (os.cpu_count() or 1):
        print("warning: the machine was busy with other work; absolute figures are noisy, "
              "the interleaved ratios less so")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
