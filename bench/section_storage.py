"""Storage section of `make bench`: dir pools on pyvirtd beside libvirtd (qemu:///session).

Each daemon gets dir pools in its own temp dir (libvirtd's owned by the
pyvirtd-bench user it runs as).  Client: python-libvirt, in chunks that alternate
between the daemons.  Measured:

  vol-upload     a 1 GiB sparse raw image (256 MiB of random data in 16 extents, the rest
                 holes) into a raw volume: virStorageVolUpload with SPARSE_STREAM and
                 stream.sparseSendAll(); MiB/s of the image's 1 GiB size
  vol-download   the same volume back into a local file: SPARSE_STREAM and
                 stream.sparseRecvAll(); checked equal to the source once
  1,000 volumes  a pool whose dir holds 1,000 small raw files: pool.refresh() and
                 pool.listAllVolumes(), timed separately; then what `virsh vol-list`
                 asks for the same pool (listAllVolumes, then each volume's path:
                 1,001 calls; see client-traces.md), timed as a whole
"""

from __future__ import annotations

import errno
import filecmp
import os
import statistics
import time
from pathlib import Path

from daemons import Daemon, start_libvirtd, start_pyvirtd
from report import row

GiB = 1 << 30
MiB = 1 << 20
N_VOLS = 1000
EXTENTS = 16
EXTENT = 16 * MiB
TPUT_TARGET = 1.0       # at least libvirtd's throughput

POOL_XML = "<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>"
VOL_XML = ("<volume><name>{name}</name><capacity unit='bytes'>{cap}</capacity>"
           "<allocation>0</allocation><target><format type='raw'/></target></volume>")


def _libvirt():
    import libvirt
    libvirt.registerErrorHandler(lambda *_: None, None)
    return libvirt


def make_image(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(GiB)
        step = GiB // EXTENTS
        for i in range(EXTENTS):
            f.seek(i * step + step // 3)
            f.write(os.urandom(EXTENT))


# python-libvirt's sparse stream callbacks (after libvirt-python's examples/sparsestream.py)
def _read(stream, nbytes, fd):
    return os.read(fd, nbytes)


def _send_skip(stream, length, fd):
    return os.lseek(fd, length, os.SEEK_CUR)


def _in_data(stream, fd):
    cur = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        data = os.lseek(fd, cur, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        data = -1
    if data < 0:            # trailing hole
        in_data, nxt = False, os.lseek(fd, 0, os.SEEK_END)
    elif data > cur:
        in_data, nxt = False, data
    else:
        in_data, nxt = True, os.lseek(fd, cur, os.SEEK_HOLE)
    os.lseek(fd, cur, os.SEEK_SET)
    return [in_data, nxt - cur]


def _write(stream, buf, fd):
    return os.write(fd, buf)


def _recv_hole(stream, length, fd):
    cur = os.lseek(fd, length, os.SEEK_CUR)
    return os.ftruncate(fd, cur)


def upload(conn, vol, src: Path) -> float:
    libvirt = _libvirt()
    fd = os.open(src, os.O_RDONLY)
    try:
        t = time.perf_counter()
        st = conn.newStream(0)
        vol.upload(st, 0, GiB, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        st.sparseSendAll(_read, _in_data, _send_skip, fd)
        st.finish()
        return time.perf_counter() - t
    finally:
        os.close(fd)


def download(conn, vol, dst: Path) -> float:
    libvirt = _libvirt()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t = time.perf_counter()
        st = conn.newStream(0)
        vol.download(st, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
        st.sparseRecvAll(_write, _recv_hole, fd)
        st.finish()
        return time.perf_counter() - t
    finally:
        os.close(fd)


def _owned_dir(path: Path, d: Daemon) -> Path:
    path.mkdir()
    owner = d.owner()
    if owner:
        os.chown(path, *owner)
    return path


class Side:
    """One daemon's pools and volumes."""

    def __init__(self, d: Daemon, base: Path) -> None:
        libvirt = _libvirt()
        self.d = d
        self.conn = libvirt.open(d.session_uri)
        self.pools = []
        top = _owned_dir(base / f"{d.name}-pools", d)
        self.xfer = self._pool("bench-xfer", _owned_dir(top / "xfer", d))
        self.vol = self.xfer.createXML(VOL_XML.format(name="big.raw", cap=GiB), 0)
        many = _owned_dir(top / "many", d)
        owner = d.owner()
        for i in range(N_VOLS):
            p = many / f"vol-{i:04d}.raw"
            with open(p, "wb") as f:
                f.truncate(MiB)
            if owner:
                os.chown(p, *owner)
        self.many = self._pool("bench-many", many)

    def _pool(self, name: str, path: Path):
        pool = self.conn.storagePoolDefineXML(POOL_XML.format(name=name, path=path), 0)
        self.pools.append(pool)
        pool.create(0)
        return pool

    def close(self) -> None:
        for pool in self.pools:
            for step in (pool.destroy, pool.undefine):
                try:
                    step()
                except Exception:
                    pass
        try:
            self.conn.close()
        except Exception:
            pass


def run(tmp: Path, quick: bool, with_libvirtd: bool, log=print) -> dict:
    """The storage section; returns {"rows": [...], "skipped": {...}, "data": {...}}."""
    res: dict = {"rows": [], "skipped": {}, "data": {}}
    n_xfer = 2 if quick else 5
    n_list = 3 if quick else 7
    base = tmp / "storage"
    base.mkdir()
    os.chmod(base, 0o755)
    src = base / "src.img"
    make_image(src)
    daemons: list[Daemon] = []
    sides: dict[str, Side] = {}
    data = res["data"]
    try:
        daemons.append(start_pyvirtd(base / "pyvirtd"))
        if with_libvirtd:
            lv = start_libvirtd(base / "libvirtd")
            if isinstance(lv, str):
                res["skipped"]["libvirtd (storage)"] = lv
            else:
                daemons.append(lv)
        for d in daemons:
            sides[d.name] = Side(d, base)
        names = list(sides)
        up = {n: [] for n in names}
        down = {n: [] for n in names}
        refresh = {n: [] for n in names}
        listing = {n: [] for n in names}
        vol_list = {n: [] for n in names}
        counts = {}
        for i in range(max(n_xfer, n_list)):
            for n in (names if i % 2 == 0 else names[::-1]):
                s = sides[n]
                if i < n_xfer:
                    up[n].append(upload(s.conn, s.vol, src))
                    dst = base / f"down-{n}.img"
                    down[n].append(download(s.conn, s.vol, dst))
                    if i == 0 and not filecmp.cmp(src, dst, shallow=False):
                        raise RuntimeError(f"{n}: downloaded image differs from the uploaded one")
                    dst.unlink()
                if i < n_list:
                    t = time.perf_counter()
                    s.many.refresh(0)
                    t1 = time.perf_counter()
                    vols = s.many.listAllVolumes(0)
                    t2 = time.perf_counter()
                    refresh[n].append(t1 - t)
                    listing[n].append(t2 - t1)
                    counts[n] = len(vols)
                    t = time.perf_counter()
                    paths = [v.path() for v in s.many.listAllVolumes(0)]
                    vol_list[n].append(time.perf_counter() - t)
                    if len(paths) != N_VOLS:
                        raise RuntimeError(f"{n}: vol-list's calls gave {len(paths)} paths")
        for n in names:
            if counts[n] != N_VOLS:
                raise RuntimeError(f"{n}: listAllVolumes returned {counts[n]} volumes, not {N_VOLS}")
            data[n] = {"upload_mib_s": GiB / MiB / statistics.median(up[n]),
                       "download_mib_s": GiB / MiB / statistics.median(down[n]),
                       "upload_runs_s": [round(x, 3) for x in up[n]],
                       "download_runs_s": [round(x, 3) for x in down[n]],
                       "refresh_ms": statistics.median(refresh[n]) * 1000,
                       "list_ms": statistics.median(listing[n]) * 1000,
                       "refresh_list_ms": statistics.median(
                           [a + b for a, b in zip(refresh[n], listing[n])]) * 1000,
                       "vol_list_ms": statistics.median(vol_list[n]) * 1000}
            r = data[n]
            log(f"  {n:<8} upload {r['upload_mib_s']:.0f} MiB/s, download {r['download_mib_s']:.0f} MiB/s "
                f"(1 GiB, 256 MiB of data; runs {r['upload_runs_s']} / {r['download_runs_s']} s); "
                f"{N_VOLS} vols: refresh {r['refresh_ms']:.1f} ms, listAllVolumes {r['list_ms']:.1f} ms, "
                f"vol-list's calls {r['vol_list_ms']:.1f} ms")
    finally:
        for s in sides.values():
            s.close()
        for d in daemons:
            d.stop()

    def val(name, key):
        r = data.get(name)
        if r is None:
            return "not run" if name == "libvirtd" else None
        return r.get(key)

    rows = res["rows"]
    rows.append(row("vol-upload 1 GiB sparse, MiB/s", val("pyvirtd", "upload_mib_s"),
                    val("libvirtd", "upload_mib_s"), min_ratio=TPUT_TARGET))
    rows.append(row("vol-download 1 GiB sparse, MiB/s", val("pyvirtd", "download_mib_s"),
                    val("libvirtd", "download_mib_s"), min_ratio=TPUT_TARGET))
    rows.append(row(f"pool refresh, {N_VOLS:,} vols, ms (median)", val("pyvirtd", "refresh_ms"),
                    val("libvirtd", "refresh_ms")))
    rows.append(row(f"listAllVolumes, {N_VOLS:,} vols, ms (median)", val("pyvirtd", "list_ms"),
                    val("libvirtd", "list_ms")))
    rows.append(row(f"refresh + listAllVolumes, {N_VOLS:,} vols, ms", val("pyvirtd", "refresh_list_ms"),
                    val("libvirtd", "refresh_list_ms")))
    rows.append(row(f"vol-list's calls (list + {N_VOLS:,} paths), ms", val("pyvirtd", "vol_list_ms"),
                    val("libvirtd", "vol_list_ms")))
    return res
