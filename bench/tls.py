"""TLS figures for `make bench`: pyvirtd's TLS listener side by side with libvirtd's.

    .venv/bin/python bench/tls.py [--quick] [--json FILE]

Both daemons listen on 127.0.0.1 with the same certificates (made by
``pyvirtd cert``); libvirtd runs in session mode as the unprivileged bench
user with ``--listen`` (bench/daemons.py), and is skipped, with the reason,
when it cannot start. Measured with python-libvirt, in interleaved chunks:

  tls connect   libvirt.open('test+tls://...') + close(): TCP, TLS handshake,
                confirmation byte, AUTH_LIST, CONNECT_OPEN, close
  tls getVersion  CONNECT_GET_VERSION round trip over the TLS session
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemons import LIBVIRTD, REPO, _ensure_user  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"does not listen on {port}")


def start_pyvirtd(root: Path, pki: Path, port: int) -> subprocess.Popen:
    (root / "etc").mkdir(parents=True)
    shutil.copytree(pki, root / "etc" / "pki")
    (root / "etc" / "pyvirtd.yaml").write_text(
        f"listen_tls: true\ntls_port: '{port}'\nlisten_addr: 127.0.0.1\n")
    log = root / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtd.cli", "--root", str(root), "--listen"],
                            cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    wait_port(port, proc, log)
    return proc


def start_libvirtd(root: Path, pki: Path, port: int) -> subprocess.Popen | str:
    if not LIBVIRTD.exists():
        return f"{LIBVIRTD} is not installed"
    kw: dict = {}
    if os.geteuid() == 0:
        ids = _ensure_user()
        if isinstance(ids, str):
            return ids
        kw = dict(user=ids[0], group=ids[1], extra_groups=[])
    root.mkdir(parents=True)
    conf = root / "libvirtd.conf"
    conf.write_text(f'listen_tls = 1\nlisten_tcp = 0\ntls_port = "{port}"\n'
                    f'listen_addr = "127.0.0.1"\nkey_file = "{pki}/serverkey.pem"\n'
                    f'cert_file = "{pki}/servercert.pem"\nca_file = "{pki}/cacert.pem"\n')
    if kw:
        for path in (root, *root.rglob("*"), pki, *pki.iterdir()):
            os.chown(path, kw["user"], kw["group"])
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(root), "LC_ALL": "C",
           "XDG_RUNTIME_DIR": str(root), "XDG_CONFIG_HOME": str(root / "config"),
           "XDG_CACHE_HOME": str(root / "cache"), "XDG_DATA_HOME": str(root / "data")}
    log = root / "libvirtd.log"
    proc = subprocess.Popen([str(LIBVIRTD), "--timeout", "120", "--listen", "-f", str(conf)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, cwd=root, **kw)
    try:
        wait_port(port, proc, log)
    except RuntimeError as exc:
        proc.kill()
        return f"libvirtd --listen: {exc}"
    return proc


def p50_us(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import libvirt
    libvirt.registerErrorHandler(lambda *_: None, None)
    n_connect, n_rt, reps = (30, 2000, 2) if args.quick else (150, 10000, 6)

    tmp = Path(tempfile.mkdtemp(prefix="pyvirtd-bench-tls-"))
    os.chmod(tmp, 0o755)
    pki = tmp / "pki"
    subprocess.run([sys.executable, "-m", "pyvirtd.cli", "cert", "--dir", str(pki),
                    "--hostname", "localhost"], check=True, cwd=REPO, capture_output=True)
    procs: dict[str, subprocess.Popen] = {}
    uris: dict[str, str] = {}
    skipped = {}
    try:
        port = free_port()
        procs["pyvirtd"] = start_pyvirtd(tmp / "pyvirtd", pki, port)
        uris["pyvirtd"] = f"test+tls://localhost:{port}/default?pkipath={pki}"
        port = free_port()
        lv = start_libvirtd(tmp / "libvirtd", pki, port)
        if isinstance(lv, str):
            skipped["libvirtd"] = lv
        else:
            procs["libvirtd"] = lv
            uris["libvirtd"] = f"test+tls://localhost:{port}/default?pkipath={pki}"
        names = list(uris)
        samples: dict = {(n, m): [] for n in names for m in ("connect", "get_version")}
        conns = {n: libvirt.open(uris[n]) for n in names}
        for rep in range(reps):
            order = names if rep % 2 == 0 else names[::-1]
            for n in order:
                samples[(n, "connect")] += p50_us(lambda u=uris[n]: libvirt.open(u).close(),
                                                  n_connect // reps)
                samples[(n, "get_version")] += p50_us(conns[n].getVersion, n_rt // reps)
        for c in conns.values():
            c.close()
    finally:
        for p in procs.values():
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    results = {f"{n}/{m}": statistics.median(v) for (n, m), v in samples.items() if v}
    print("TLS (test:///default, python-libvirt client, p50 in µs)")
    print(f"  {'':<16}{'pyvirtd':>10}{'libvirtd':>10}{'ratio':>8}")
    for m, label in (("connect", "tls connect"), ("get_version", "tls getVersion")):
        py, lv = results.get(f"pyvirtd/{m}"), results.get(f"libvirtd/{m}")
        ratio = f"{py / lv:.2f}" if py and lv else "-"
        print(f"  {label:<16}{py or 0:>10.1f}{(f'{lv:.1f}' if lv else '-'):>10}{ratio:>8}")
    for k, v in skipped.items():
        print(f"{k} skipped: {v.splitlines()[0]}")
    if args.json:
        args.json.write_text(json.dumps({"p50_us": results, "skipped": skipped}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
