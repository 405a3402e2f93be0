"""Domain jobs of QEMU guests, with virsh and python-libvirt on the tiny TCG guest.

Domain jobs: a save is a job that ``domjobinfo`` follows while it runs (here
held open on a FIFO the test controls, so "while it runs" is a condition, not
a time), that blocks a second job with libvirt's "cannot acquire state change
lock" error, that ``domjobabort`` cancels, and whose statistics (from QEMU's
query-migrate) stay readable with ``--completed`` and go out in JOB_COMPLETED.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from daemon_helpers import guest_xml, module_daemon, module_uri, needs_qemu, ok, virsh, wait_for
from guest_helpers import PROMPT, Console, EventLog, tiny_guest, tiny_xml

pytestmark = needs_qemu

BOOT_TIMEOUT = 90
QCOW2_DISK = """<disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'/>
      <source file='{path}'/>
      <target dev='{dev}' bus='virtio'/>
    </disk>"""

daemon = module_daemon("qemu-blockjobs")
uri = module_uri


@pytest.fixture(scope="module")
def guest_files():
    return tiny_guest()


def image(path, fmt: str = "qcow2", size: str = "16M", backing=None):
    argv = ["qemu-img", "create", "-q", "-f", fmt]
    if backing is not None:
        argv += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run([*argv, str(path), *([size] if backing is None else [])], check=True)
    return path


def err(uri: str, commands: str) -> str:
    r = virsh(uri, commands)
    assert r.rc != 0, f"virsh {commands!r} succeeded"
    return r.err


def boot(uri: str, tmp_path, name: str, guest_files, disks: str) -> Console:
    path = tmp_path / f"{name}.xml"
    path.write_text(tiny_xml(name, guest_files, disks=disks))
    ok(uri, f"define {path}")
    ok(uri, f"start {name} --paused")
    con = Console(uri, name)
    ok(uri, f"resume {name}")
    con.wait("GUEST READY", timeout=BOOT_TIMEOUT)
    con.wait(re.escape(PROMPT))
    return con


def gone(uri: str, name: str, con: Console | None = None) -> None:
    if con is not None:
        con.close()
    virsh(uri, f"destroy {name}")
    virsh(uri, f"undefine {name} --snapshots-metadata")


def job_info(uri: str, name: str, *extra: str) -> dict[str, str]:
    out = ok(uri, f"domjobinfo {name} {' '.join(extra)}")
    return {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in out.splitlines() if ":" in line)}


# -- domain jobs ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jobguest(uri, guest_files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bjjobs")
    disk = image(tmp / "j.qcow2")
    con = boot(uri, tmp, "bjjob1", guest_files,
               QCOW2_DISK.format(fmt="qcow2", path=disk, dev="vda"))
    try:
        yield con
    finally:
        gone(uri, "bjjob1", con)


def test_job_errors_without_a_job(uri, jobguest):
    assert job_info(uri, "bjjob1")["Job type"] == "None"
    e = err(uri, "domjobabort bjjob1")
    assert "Requested operation is not valid: no job is active on the domain" in e
    ok(uri, "list")   # the daemon still serves
    assert "failed to get domain 'nosuchguest'" in err(uri, "domjobinfo nosuchguest")


def test_job_queries_of_a_shut_off_guest(uri, tmp_path):
    path = tmp_path / "bjoff.xml"
    path.write_text(guest_xml("bjoff"))
    ok(uri, f"define {path}")
    try:
        assert "Requested operation is not valid: domain is not running" in \
            err(uri, "domjobinfo bjoff")
        assert "Requested operation is not valid: domain is not running" in \
            err(uri, "domjobabort bjoff")
        assert job_info(uri, "bjoff", "--completed")["Job type"] == "None"
    finally:
        virsh(uri, "undefine bjoff")


def test_save_job_is_visible_blocks_others_and_aborts(uri, jobguest, tmp_path):
    """A save held open on a FIFO: domjobinfo shows it, a snapshot waits for the job
    lock and times out with libvirt's error, domjobabort cancels the save."""
    import libvirt

    fifo = tmp_path / "save.fifo"
    os.mkfifo(fifo)
    saver = subprocess.Popen(["virsh", "-c", uri, "save", "bjjob1", str(fifo)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: job_info(uri, "bjjob1").get("Job type") == "Unbounded", 30)
        info = job_info(uri, "bjjob1")
        assert info["Operation"] == "Save"
        conn = libvirt.open(uri)
        try:
            dom = conn.lookupByName("bjjob1")
            stats = dom.jobStats()
            assert stats["type"] == libvirt.VIR_DOMAIN_JOB_UNBOUNDED
            assert stats["operation"] == libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE
            # another job waits 30 s (libvirt's QEMU_JOB_WAIT_TIME), then gives up
            # (python-libvirt: the test's virsh gives up on a call after 10 s)
            with pytest.raises(libvirt.libvirtError) as exc:
                dom.snapshotCreateXML("<domainsnapshot><name>s-conflict</name>"
                                      "</domainsnapshot>")
            assert exc.value.get_error_code() == libvirt.VIR_ERR_OPERATION_TIMEOUT
            assert "Timed out during operation: cannot acquire state change lock " \
                   "(held by monitor=remoteDispatchDomainSave)" in str(exc.value)
        finally:
            conn.close()
        ok(uri, "domjobabort bjjob1")
        # let the daemon's open of the FIFO return: it then sees the abort
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            _, errout = saver.communicate(timeout=60)
        finally:
            os.close(rfd)
    finally:
        if saver.poll() is None:
            saver.kill()
    assert saver.returncode != 0
    assert "operation aborted: domain save job: canceled by client" in errout
    assert ok(uri, "domstate bjjob1").strip() == "running"
    assert job_info(uri, "bjjob1")["Job type"] == "None"
    done = job_info(uri, "bjjob1", "--completed")
    assert done["Job type"] == "Cancelled"
    assert ok(uri, "snapshot-list bjjob1 --name").strip() == ""


def test_completed_save_job_stats_and_event(uri, jobguest, tmp_path):
    """A real save: QEMU's figures in --completed, JOB_COMPLETED to python-libvirt."""
    import libvirt

    log = EventLog(uri, {"job": libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED})
    try:
        target = tmp_path / "bj.save"
        ok(uri, f"save bjjob1 {target}")
        wait_for(lambda: log.of("bjjob1", "job"), 30)
        (params,) = log.of("bjjob1", "job")[0]
        assert params["operation"] == libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE
        assert params["success"] is True or params["success"] == 1
        assert params["memory_processed"] > 0
        info = job_info(uri, "bjjob1", "--completed", "--keep-completed")
        assert info["Job type"] == "Completed" and info["Operation"] == "Save"
        assert int(info["Memory processed"].split()[0].replace(".", "").replace(",", "")) > 0
        # without --keep-completed the statistics are read once
        job_info(uri, "bjjob1", "--completed")
        assert job_info(uri, "bjjob1", "--completed")["Job type"] == "None"
        ok(uri, f"restore {target}")
        con = Console(uri, "bjjob1")      # a new QEMU: a new console session
        try:
            con.run("echo still-$((40+2))", "still-42")
        finally:
            con.close()
    finally:
        log.close()
