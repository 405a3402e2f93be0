"""Inside the container: what its first process does before it becomes init.

Runs in the child the controller forked into fresh mount, uts, ipc, net and
pid namespaces (it is pid 1 there), after the controller moved its veths in
and put it in its cgroup.  The steps follow libvirt's lxc_container.c
(lxcContainerChild): private mount propagation; the root bound onto itself;
the <filesystem> mounts; /proc, /sys (read-only), a tmpfs /dev with the
minimal device set, a devpts of its own and the console; pivot_root and the
old root detached; hostname; network interfaces renamed and addressed; then
exec of <init> with libvirt's environment.  Any failure raises OSError (or
ContainerError) with a message the controller passes back to the daemon.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from . import nsutil as ns

# lxcContainerPopulateDevices: name -> (major, minor)
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
           "urandom": (1, 9), "tty": (5, 0)}
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}


class ContainerError(Exception):
    pass


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def setup_mounts(spec: dict[str, Any]) -> str:
    """Every mount of the container under its root on the host side; returns the root."""
    root = os.path.realpath(spec["root"]["source"])
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)
    ns.mount(root, root, None, ns.MS_BIND | ns.MS_REC)
    for m in spec["mounts"]:
        target = _inside(root, m["target"])
        if m["type"] == "bind":
            if not os.path.exists(m["source"]):
                raise ContainerError(f"Failed to access '{m['source']}': No such file or directory")
            if os.path.isdir(m["source"]):
                _mkdirs(target)
            elif not os.path.exists(target):
                open(target, "a").close()
            ns.mount(m["source"], target, None, ns.MS_BIND | ns.MS_REC)
            if m.get("readonly"):
                ns.mount(None, target, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_REC)
        elif m["type"] == "ram":
            _mkdirs(target)
            ns.mount("tmpfs", target, "tmpfs", ns.MS_NOSUID | ns.MS_NODEV,
                     f"size={m['usage_kib']}k,mode=0755")
    # /proc and /sys of the container's own namespaces (lxcContainerMountBasicFS)
    _mkdirs(_inside(root, "proc"))
    ns.mount("proc", _inside(root, "proc"), "proc", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
    _mkdirs(_inside(root, "sys"))
    ns.mount("sysfs", _inside(root, "sys"), "sysfs",
             ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC | ns.MS_RDONLY)
    _setup_dev(root, spec["console"], userns=bool(spec.get("idmap")))
    if spec["root"].get("readonly"):
        ns.mount(None, root, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY)
    return root


def _setup_dev(root: str, console: str, userns: bool = False) -> None:
    dev = _inside(root, "dev")
    _mkdirs(dev)
    ns.mount("devfs", dev, "tmpfs", ns.MS_NOSUID, "mode=755,size=65536")
    for name, (major, minor) in DEVICES.items():
        path = os.path.join(dev, name)
        if userns:
            # no mknod in a user namespace, and its tmpfs is nodev: bind the host's nodes
            open(path, "a").close()
            ns.mount(f"/dev/{name}", path, None, ns.MS_BIND)
        else:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(path, 0o666)
    for name, target in DEV_LINKS.items():
        os.symlink(target, os.path.join(dev, name))
    _mkdirs(os.path.join(dev, "pts"))
    ns.mount("devpts", os.path.join(dev, "pts"), "devpts", ns.MS_NOSUID | ns.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620" + ("" if userns else ",gid=5"))
    _mkdirs(os.path.join(dev, "shm"))
    ns.mount("shm", os.path.join(dev, "shm"), "tmpfs", ns.MS_NOSUID | ns.MS_NODEV,
             "mode=1777,size=65536k")
    # the console: the controller's pty, bound over /dev/console and /dev/tty1
    for name in ("console", "tty1"):
        path = os.path.join(dev, name)
        open(path, "a").close()
        ns.mount(console, path, None, ns.MS_BIND)


def pivot(root: str) -> None:
    old = os.path.join(root, ".oldroot")
    _mkdirs(old)
    ns.pivot_root(root, old)
    os.chdir("/")
    ns.umount2("/.oldroot", ns.MNT_DETACH)
    os.rmdir("/.oldroot")


def setup_network(interfaces: list[dict]) -> None:
    """Rename each moved-in veth to its guest name, address it and bring it up (lxcContainerSetupInterfaces)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")
        for iface in interfaces:
            configure_interface(ipr, iface)


def configure_interface(ipr: Any, iface: dict) -> None:
    """One moved-in veth (``iface`` as spec.interface_config gives it), through ``ipr``
    (a pyroute2 IPRoute in the container's network namespace): also for a NIC
    attached to a running container."""
    idx = ipr.link_lookup(ifname=iface["peer"])
    if not idx:
        raise ContainerError(f"interface {iface['peer']} did not reach the container")
    idx = idx[0]
    ipr.link("set", index=idx, ifname=iface["guest"])
    if iface.get("mac"):
        ipr.link("set", index=idx, address=iface["mac"])
    for addr in iface.get("ips", []):
        ip, prefix = addr.split("/")
        ipr.addr("add", index=idx, address=ip, prefixlen=int(prefix))
    ipr.link("set", index=idx, state="up")
    for route in iface.get("routes", []):
        ipr.route("add", dst=route["dest"], gateway=route["gateway"])


def environment(spec: dict[str, Any]) -> dict[str, str]:
    """What libvirt gives init (lxcContainerBuildInitCmd)."""
    env = {"PATH": "/bin:/sbin", "TERM": "linux", "container": "lxc-libvirt", "HOME": "/",
           "container_uuid": spec["uuid"], "LIBVIRT_LXC_UUID": spec["uuid"],
           "LIBVIRT_LXC_NAME": spec["name"]}
    if len(spec["init"]) > 1:
        env["LIBVIRT_LXC_CMDLINE"] = " ".join(spec["init"][1:])
    env.update(spec.get("env", {}))
    return env


def become_init(spec: dict[str, Any], console_fd: int) -> None:
    """Everything after the controller's go-ahead, ending in exec of init (never returns)."""
    root = setup_mounts(spec)
    setup_network(spec["interfaces"])
    ns.sethostname(spec["hostname"])
    pivot(root)
    init = spec["init"][0]
    if not os.access(init, os.X_OK):
        raise ContainerError(f"cannot find init path '{init}' relative to container root: "
                             f"{os.strerror(2)}")
    ns.drop_capabilities(spec.get("drop_caps", []))
    if spec.get("initdir"):
        os.chdir(spec["initdir"])
    os.setsid()
    import fcntl
    import termios
    fcntl.ioctl(console_fd, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(console_fd, fd)
    if console_fd > 2:
        os.close(console_fd)
    os.execve(init, spec["init"], environment(spec))
