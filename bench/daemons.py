"""Start and stop the two daemons the bench compares: pyvirtd and Debian's libvirtd.

Kept free of pytest so `make bench` runs without the test extras; the pyvirtd
part mirrors ``start_daemon`` in tests/conftest.py.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIBVIRTD = Path("/usr/sbin/libvirtd")
BENCH_USER = "pyvirtd-bench"


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen
    root: Path
    sock: Path
    log_path: Path
    pid: int = 0
    notes: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    popen_kw: dict = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"test+unix:///default?socket={self.sock}"

    @property
    def session_uri(self) -> str:
        """qemu:///session on this daemon: QEMU guests, storage pools, networks."""
        return f"qemu+unix:///session?socket={self.sock}"

    @property
    def system_uri(self) -> str:
        """qemu:///system on this daemon (a root daemon's networks, pools, guests)."""
        return f"qemu+unix:///system?socket={self.sock}"

    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) the daemon runs as when it is not the bench's own user."""
        if "user" in self.popen_kw:
            return self.popen_kw["user"], self.popen_kw["group"]
        return None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill9(self) -> None:
        """SIGKILL the daemon (its children, e.g. QEMU guests, keep running)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def respawn(self) -> None:
        """Start the daemon again with the same command line; returns at once."""
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, **self.popen_kw)
        logf.close()
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, from /proc/PID/status."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int, split: bool = False):
    """utime + stime of a process (all its threads), in seconds; (utime, stime) with split."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is state (field 3); utime and stime are fields 14 and 15
    tck = os.sysconf("SC_CLK_TCK")
    if split:
        return int(fields[11]) / tck, int(fields[12]) / tck
    return (int(fields[11]) + int(fields[12])) / tck


def _wait_connectable(d: Daemon, ready, timeout: float = 30) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise RuntimeError(f"{d.name} exited with {d.proc.returncode}:\n{d.log()}")
        if d.sock.exists() and ready():
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(d.sock))
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    d.stop()
    raise RuntimeError(f"{d.name} did not start within {timeout}s:\n{d.log()}")


def start_pyvirtd(root: Path, *extra: str, wrap: list[str] | None = None) -> Daemon:
    """pyvirtd --root ROOT, waiting until its socket accepts connections.

    ``wrap`` prefixes the interpreter command (e.g. a profiler); the process
    started must still be the daemon's Python for RSS figures to mean anything.
    """
    root.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pyvirtd.cli", "--root", str(root), *extra]
    if wrap:
        args = [*wrap, *args]
    log_path = root / "daemon.log"
    logf = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
    logf.close()
    d = Daemon("pyvirtd", proc, root, root / "run" / "libvirt-sock", log_path, pid=proc.pid,
               argv=args, popen_kw=dict(cwd=REPO))
    _wait_connectable(d, lambda: b"ready" in log_path.read_bytes())
    return d


def _ensure_user() -> tuple[int, int] | str:
    """The throwaway unprivileged user libvirtd runs as (created when root)."""
    try:
        pw = pwd.getpwnam(BENCH_USER)
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        pass
    if not shutil.which("useradd"):
        return f"no user {BENCH_USER} and no useradd to create it"
    r = subprocess.run(["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", BENCH_USER],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"useradd {BENCH_USER} failed: {r.stderr.strip()}"
    pw = pwd.getpwnam(BENCH_USER)
    return pw.pw_uid, pw.pw_gid


def start_libvirtd(root: Path) -> Daemon | str:
    """Debian's libvirtd in session mode serving test:///default, or why not.

    As root it runs as the unprivileged BENCH_USER (a root libvirtd would be
    the system daemon and take /run/libvirt); otherwise as the current user.
    Every XDG directory points into ROOT, so nothing outside it is touched.
    ``--timeout 120`` makes a libvirtd orphaned by a crashed bench go away.
    """
    if not LIBVIRTD.exists():
        return f"{LIBVIRTD} is not installed"
    root.mkdir(parents=True, exist_ok=True)
    kw: dict = {}
    if os.geteuid() == 0:
        ids = _ensure_user()
        if isinstance(ids, str):
            return ids
        uid, gid = ids
        for parent in root.resolve().parents:
            if not os.stat(parent).st_mode & 0o001:
                return f"{parent} is not searchable by {BENCH_USER} (chmod o+x it)"
        os.chown(root, uid, gid)
        os.chmod(root, 0o755)
        kw = dict(user=uid, group=gid, extra_groups=[])
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(root),
        "XDG_RUNTIME_DIR": str(root),
        "XDG_CONFIG_HOME": str(root / "config"),
        "XDG_CACHE_HOME": str(root / "cache"),
        "XDG_DATA_HOME": str(root / "data"),
        "LC_ALL": "C",
    }
    log_path = root / "libvirtd.log"
    logf = open(log_path, "wb")
    argv = [str(LIBVIRTD), "--timeout", "120"]
    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=root, **kw)
    logf.close()
    d = Daemon("libvirtd", proc, root, root / "libvirt" / "libvirt-sock", log_path, pid=proc.pid,
               argv=argv, popen_kw=dict(env=env, cwd=root, **kw))
    try:
        _wait_connectable(d, lambda: True)
    except RuntimeError as exc:
        return str(exc)
    return d


def kill_marked(marker: str, needle: bytes = b"", environ: bool = False) -> list[int]:
    """SIGKILL every process whose command line holds ``needle`` and ``marker`` (a temp path).

    The sections' cleanup: guests (QEMU), dnsmasq and the like a daemon left behind
    in the bench's temp dir, whatever state the daemon or the bench is in.  With
    ``environ`` the marker may be in the environment instead (libvirtd's virtlogd,
    whose XDG_RUNTIME_DIR is in the temp dir).
    """
    killed = []
    mark = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        where = cmdline
        if environ and mark not in cmdline:
            try:
                where = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
        if mark in where and needle in cmdline:
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
            except ProcessLookupError:
                pass
    return killed


# The extra users a root libvirtd looks up at start (qemu.conf's user and
# swtpm_user, the network driver's dnsmasq user); Debian's libvirt-daemon-system
# creates them, but the bench installs only libvirt-daemon.
_SYSTEM_USERS = (("libvirt-qemu", 64055), ("libvirt-dnsmasq", 64056))
_SYSTEM_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/etc/libvirt", "/var/cache/libvirt",
                "/var/log/libvirt")


def start_system_libvirtd(root: Path, netns: str) -> Daemon | str:
    """Debian's libvirtd as root (qemu:///system), fenced off from the host, or why not.

    A root libvirtd is the system daemon: its state lives in fixed places
    (/run/libvirt, /var/lib/libvirt, /etc/libvirt, ...).  It runs here in a
    private mount namespace where each of those is a bind mount of a directory
    under ROOT, and in the network namespace NETNS, so the bridges, firewall
    rules and dnsmasq it makes stay there.  /etc/passwd and /etc/group are
    overlaid the same way with the users it expects, and its pid file is its
    own (/run/libvirtd.pid would clash with a host's libvirtd).  Its socket is reached
    from outside at ROOT/run/libvirt-sock (a unix socket path works across
    mount namespaces).
    """
    if not LIBVIRTD.exists():
        return f"{LIBVIRTD} is not installed"
    if os.geteuid() != 0:
        return "a system libvirtd needs root"
    if not shutil.which("unshare"):
        return "unshare (util-linux) is not installed"
    root.mkdir(parents=True, exist_ok=True)
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    for name, uid in _SYSTEM_USERS:
        if f"\n{name}:" not in "\n" + passwd:
            passwd += f"{name}:x:{uid}:{uid}::/var/lib/libvirt:/usr/sbin/nologin\n"
        if f"\n{name}:" not in "\n" + group:
            group += f"{name}:x:{uid}:\n"
    (root / "passwd").write_text(passwd)
    (root / "group").write_text(group)
    etc = root / "etc-libvirt"
    etc.mkdir(exist_ok=True)
    # QEMU (the capabilities probe too) as root: the fenced directories are root's
    # (guest logs written by libvirtd itself: no virtlogd runs in the fence)
    (etc / "qemu.conf").write_text('user = "root"\ngroup = "root"\nstdio_handler = "file"\n')
    mounts = []
    for target in _SYSTEM_DIRS:
        src = root / target.strip("/").replace("/", "-")
        src.mkdir(exist_ok=True)
        mounts.append(f"mkdir -p {target} && mount --bind {src} {target}")
    mounts += [f"mount --bind {root}/passwd /etc/passwd", f"mount --bind {root}/group /etc/group"]
    script = " && ".join(["mount --make-rprivate /", *mounts,
                          f"exec {LIBVIRTD} --timeout 300 --pid-file {root}/libvirtd.pid"])
    argv = ["ip", "netns", "exec", netns, "unshare", "-m", "sh", "-c", script]
    log_path = root / "libvirtd.log"
    logf = open(log_path, "wb")
    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=root)
    logf.close()
    d = Daemon("libvirtd", proc, root, root / "run-libvirt" / "libvirt-sock", log_path,
               pid=proc.pid, argv=argv, popen_kw=dict(cwd=root))
    try:
        _wait_connectable(d, lambda: True)
    except RuntimeError as exc:
        return str(exc)
    return d


def kill_netns(netns: str) -> list[int]:
    """SIGKILL every process inside network namespace NETNS (its daemons, dnsmasq)."""
    try:
        target = os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return []
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
        except OSError:
            pass
    return killed
