"""What a container's init may do: libvirt's capability policy and user-namespace maps (issue 11).

Read from inside the running container (/proc/1 is its init), so the test sees
what the kernel enforces, not what pyvirtd meant to do.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.lxc.test_lxc import container_xml, lab, make_root  # noqa: F401 (fixture)

CAP_SYS_MODULE, CAP_SYS_ADMIN, CAP_SYS_BOOT, CAP_SYS_TIME = 16, 21, 22, 25
CAP_MKNOD, CAP_AUDIT_CONTROL, CAP_MAC_ADMIN = 27, 30, 33


def init_status(lab, name: str) -> dict[str, str]:
    out = lab.virsh("lxc-enter-namespace", name, "/bin/cat", "/proc/1/status").stdout
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def caps(status: dict[str, str], field: str) -> set[int]:
    mask = int(status[field].strip(), 16)
    return {bit for bit in range(64) if mask >> bit & 1}


def start(lab, tmp_path: Path, name: str, features: str = "", extra_xml: str = "") -> None:
    root = make_root(tmp_path / name)
    xml = container_xml(name, root)
    if features:
        xml = xml.replace("</os>", f"</os>\n  <features>{features}</features>")
    if extra_xml:
        xml = xml.replace("</os>", f"</os>\n  {extra_xml}")
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    lab.virsh("define", str(path))
    lab.virsh("start", name)


def test_default_policy_drops_libvirts_four(lab, tmp_path: Path) -> None:
    start(lab, tmp_path, "capdef")
    status = init_status(lab, "capdef")
    for field in ("CapBnd", "CapEff", "CapPrm"):
        held = caps(status, field)
        assert not held & {CAP_SYS_MODULE, CAP_SYS_TIME, CAP_AUDIT_CONTROL, CAP_MAC_ADMIN}, field
        assert {CAP_SYS_ADMIN, CAP_MKNOD, CAP_SYS_BOOT} <= held, field
    lab.virsh("destroy", "capdef")


def test_deny_policy_keeps_only_what_is_turned_on(lab, tmp_path: Path) -> None:
    start(lab, tmp_path, "capdeny",
          "<capabilities policy='deny'><sys_admin state='on'/><mknod state='on'/></capabilities>")
    status = init_status(lab, "capdeny")
    assert caps(status, "CapBnd") == {CAP_SYS_ADMIN, CAP_MKNOD}
    assert caps(status, "CapEff") == {CAP_SYS_ADMIN, CAP_MKNOD}
    assert lab.virsh("dumpxml", "capdeny").stdout.count("<capabilities policy='deny'>") == 1
    lab.virsh("destroy", "capdeny")


def test_allow_policy_drops_only_what_is_turned_off(lab, tmp_path: Path) -> None:
    start(lab, tmp_path, "capallow",
          "<capabilities policy='allow'><mknod state='off'/></capabilities>")
    held = caps(init_status(lab, "capallow"), "CapBnd")
    assert CAP_MKNOD not in held and {CAP_SYS_MODULE, CAP_SYS_TIME, CAP_SYS_ADMIN} <= held
    lab.virsh("destroy", "capallow")


def test_unknown_capability_refuses_the_start(lab, tmp_path: Path) -> None:
    root = make_root(tmp_path / "capbad")
    xml = container_xml("capbad", root).replace(
        "</os>", "</os>\n  <features><capabilities policy='default'><no_such_cap state='on'/>"
                 "</capabilities></features>")
    path = tmp_path / "capbad.xml"
    path.write_text(xml)
    p = lab.virsh("define", str(path), check=False)
    if p.returncode == 0:
        p = lab.virsh("start", "capbad", check=False)
    assert p.returncode != 0 and "no_such_cap" in p.stderr


def test_idmap_runs_init_as_an_unprivileged_host_user(lab, tmp_path: Path) -> None:
    """<idmap>: root in the container is uid/gid 100000 on the host.

    As with libvirt, the root tree belongs to the mapped user and its parents
    are traversable (pytest's own temporary directory is root-only)."""
    import os
    import shutil
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="pyvirtd-idmap-", dir="/var/tmp"))
    try:
        base.chmod(0o755)
        root = make_root(base / "mapped")
        for path in [root, *root.rglob("*")]:
            os.lchown(path, 100000, 100000)
        xml = container_xml("mapped", root).replace(
            "</os>", "</os>\n  <idmap><uid start='0' target='100000' count='65536'/>"
                     "<gid start='0' target='100000' count='65536'/></idmap>")
        (tmp_path / "mapped.xml").write_text(xml)
        lab.virsh("define", str(tmp_path / "mapped.xml"))
        lab.virsh("start", "mapped")
        _check_mapped(lab)
    finally:
        lab.virsh("destroy", "mapped", check=False)
        shutil.rmtree(base, ignore_errors=True)


def _check_mapped(lab) -> None:
    import os
    maps = lab.virsh("lxc-enter-namespace", "mapped", "/bin/cat", "/proc/1/uid_map").stdout.split()
    assert maps == ["0", "100000", "65536"]
    gid_map = lab.virsh("lxc-enter-namespace", "mapped", "/bin/cat", "/proc/1/gid_map").stdout.split()
    assert gid_map == ["0", "100000", "65536"]
    # seen from the host, the container's init is not root
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    host_uids = set()
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"LIBVIRT_LXC_NAME=mapped\0" in environ:
            status = Path(f"/proc/{pid}/status").read_text()
            host_uids.add(next(line.split()[1] for line in status.splitlines()
                               if line.startswith("Uid:")))
    assert host_uids == {"100000"}
