"""Domain jobs, block jobs and disk-only snapshots of QEMU guests, on the tiny TCG guest.

Domain jobs: a save is a job that ``domjobinfo`` follows while it runs (here
held open on a FIFO the test controls, so "while it runs" is a condition, not
a time), that blocks a second job with libvirt's "cannot acquire state change
lock" error, that ``domjobabort`` cancels, and whose statistics (from QEMU's
query-migrate) stay readable with ``--completed`` and go out in JOB_COMPLETED.

Block jobs: the guest writes numbered blocks to its disk with fsync while a
block copy runs and is pivoted; the copy read back with qemu-img holds every
block.  A commit of a backing chain, an active commit with pivot, a pull,
each with the live XML's chain (``index``, ``<backingStore>``, ``<mirror>``)
at each step and the BLOCK_JOB / BLOCK_JOB_2 events as python-libvirt and
``virsh event`` receive them.  Disk-only snapshots put qcow2 overlays on top
of the disks; ``blockcommit --active --pivot`` merges them back, and the
guest's markers are read from the base image.  Errors are libvirt's words.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading

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


# -- block jobs ----------------------------------------------------------------------------

# The guest writes block i (512 bytes) = "blk%06d" % i, each synced to the disk
WRITER = ("(i=0; while [ $i -lt {count} ]; do printf 'blk%06d' $i | "
          "dd of=/dev/vda bs=512 seek=$i conv=notrunc,fsync 2>/dev/null; i=$((i+1)); done; "
          "echo WRITER-$((1000+1))) &")


def read_blocks(path, fmt: str, count: int, tmp_path) -> list[bytes]:
    """The first ``count`` 512-byte blocks of an image, as its guest sees them."""
    raw = tmp_path / f"{os.path.basename(str(path))}.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path), str(raw)],
                   check=True)
    data = raw.read_bytes()
    return [data[i * 512:i * 512 + 9] for i in range(count)]


def live_disk(uri: str, name: str, dev: str = "vda") -> str:
    """The <disk> element of ``dev`` in the live XML, as text."""
    xml = ok(uri, f"dumpxml {name}")
    for m in re.finditer(r"<disk .*?</disk>", xml, re.S):
        if f"<target dev='{dev}'" in m.group(0):
            return m.group(0)
    raise AssertionError(f"no disk {dev} in {xml}")


@pytest.fixture
def blocklog(uri):
    import libvirt

    log = EventLog(uri, {"bj": libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB,
                         "bj2": libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2})
    try:
        yield log
    finally:
        log.close()


def test_block_copy_pivot_while_the_guest_writes(uri, guest_files, tmp_path, blocklog):
    count = 1500
    disk = image(tmp_path / "orig.qcow2")
    con = boot(uri, tmp_path, "bjcopy1", guest_files,
               QCOW2_DISK.format(fmt="qcow2", path=disk, dev="vda"))
    dest = tmp_path / "copy.qcow2"
    try:
        xml = live_disk(uri, "bjcopy1")
        assert f"<source file='{disk}' index='1'/>\n      <backingStore/>" in xml, xml
        # errors first: libvirt's words
        assert "invalid argument: disk 'vdz' not found in domain" in \
            err(uri, f"blockcopy bjcopy1 vdz {dest}")
        assert "invalid argument: disk vda does not have an active block job" in \
            err(uri, "blockjob bjcopy1 vda --abort")
        assert ok(uri, "blockjob bjcopy1 vda --info").strip() == "No current block job for vda"
        taken = tmp_path / "taken.qcow2"
        taken.write_bytes(b"x" * 4096)
        assert f"unsupported configuration: external destination file for disk vda already " \
               f"exists and is not a block device: {taken}" in \
            err(uri, f"blockcopy bjcopy1 vda {taken} --transient-job")
        assert "missing destination file for disk vda" in \
            err(uri, f"blockcopy bjcopy1 vda {tmp_path / 'none.qcow2'} --reuse-external "
                     "--transient-job")
        # the copy, while the guest writes
        at = con.mark()
        con.send(WRITER.format(count=count) + "\n")
        ok(uri, f"blockcopy bjcopy1 vda {dest} --transient-job --format qcow2 "
                "--bandwidth 1")
        xml = live_disk(uri, "bjcopy1")
        assert f"<mirror type='file' file='{dest}' format='qcow2' job='copy'" in xml
        assert "block copy still active: disk 'vda' already in active block job" in \
            err(uri, f"blockcopy bjcopy1 vda {tmp_path / 'second.qcow2'} --transient-job")
        ok(uri, "blockjob bjcopy1 vda --bandwidth 0")      # unthrottled: it catches up
        wait_for(lambda: "ready='yes'" in live_disk(uri, "bjcopy1"), 60)
        assert "Block Copy: [100 %]" in virsh(uri, "blockjob bjcopy1 vda --info").err
        ok(uri, "blockjob bjcopy1 vda --pivot")
        xml = live_disk(uri, "bjcopy1")
        assert "<mirror" not in xml
        assert re.search(rf"<source file='{re.escape(str(dest))}' index='\d+'/>", xml)
        con.wait("WRITER-1001", since=at, timeout=300)
        con.run("sync; echo SYNCED-$((2+2))", "SYNCED-4")
        blocks = read_blocks(dest, "qcow2", count, tmp_path)
        assert blocks == [b"blk%06d" % i for i in range(count)]
        # events: ready then completed, by target (BLOCK_JOB_2) and by path (BLOCK_JOB)
        wait_for(lambda: ("vda", 2, 0) in blocklog.of("bjcopy1", "bj2"), 30)
        assert blocklog.of("bjcopy1", "bj2") == [("vda", 2, 3), ("vda", 2, 0)]
        assert blocklog.of("bjcopy1", "bj") == [(str(disk), 2, 3), (str(dest), 2, 0)]
        # --finish: the copy is left as a consistent image, the guest stays where it is
        dest2 = tmp_path / "copy2.qcow2"
        ok(uri, f"blockcopy bjcopy1 vda {dest2} --transient-job --format qcow2 --wait --finish")
        assert re.findall(r"<source file='([^']+)'", live_disk(uri, "bjcopy1")) == [str(dest)]
        assert read_blocks(dest2, "qcow2", count, tmp_path) == blocks
        wait_for(lambda: len(blocklog.of("bjcopy1", "bj2")) == 4, 30)
        assert blocklog.of("bjcopy1", "bj2")[2:] == [("vda", 2, 3), ("vda", 2, 2)]
    finally:
        gone(uri, "bjcopy1", con)


def test_block_commit_of_a_chain_and_pull(uri, guest_files, tmp_path, blocklog):
    base = image(tmp_path / "base.qcow2")
    mid = image(tmp_path / "mid.qcow2", backing=base)
    top = image(tmp_path / "top.qcow2", backing=mid)
    con = boot(uri, tmp_path, "bjcommit1", guest_files,
               QCOW2_DISK.format(fmt="qcow2", path=top, dev="vda"))
    try:
        xml = live_disk(uri, "bjcommit1")
        chain = re.findall(r"<source file='([^']+)'", xml)
        assert chain == [str(top), str(mid), str(base)]
        assert re.search(r"<backingStore type='file' index='\d+'>\s*<format type='qcow2'/>\s*"
                         rf"<source file='{re.escape(str(mid))}'/>", xml)
        con.run("printf 'COMMITTED-DATA' | dd of=/dev/vda bs=512 seek=7 conv=notrunc,fsync "
                "2>/dev/null; echo W-$((1+1))", "W-2")
        # the active layer needs --active
        assert "invalid argument: commit of 'vda' active layer requires active flag" in \
            err(uri, "blockcommit bjcommit1 vda")
        # inactive commit: mid into base; top now sits on base
        ok(uri, f"blockcommit bjcommit1 vda --top {mid} --base {base} --wait")
        xml = live_disk(uri, "bjcommit1")
        assert re.findall(r"<source file='([^']+)'", xml) == [str(top), str(base)]
        # active commit of top into base, pivoted: the disk is the base now
        ok(uri, "blockcommit bjcommit1 vda --active --wait --pivot")
        xml = live_disk(uri, "bjcommit1")
        assert re.findall(r"<source file='([^']+)'", xml) == [str(base)]
        assert "<mirror" not in xml
        con.run("sync; echo S-$((3+3))", "S-6")
        data = read_blocks(base, "qcow2", 8, tmp_path)[7]
        assert data == b"COMMITTED"
        wait_for(lambda: ("vda", 4, 0) in blocklog.of("bjcommit1", "bj2"), 30)
        assert blocklog.of("bjcommit1", "bj2") == [("vda", 3, 0), ("vda", 4, 3), ("vda", 4, 0)]
        assert "top '" in err(uri, "blockcommit bjcommit1 vda --active")
        # resize of the running guest's disk
        ok(uri, "blockresize bjcommit1 vda 32M")
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(base)],
                              capture_output=True, text=True, check=True).stdout
        assert '"virtual-size": 33554432' in info
        assert "disk 'vdz' was not found in the domain config" in \
            err(uri, "blockresize bjcommit1 vdz 32M")
    finally:
        gone(uri, "bjcommit1", con)


def test_block_pull(uri, guest_files, tmp_path, blocklog):
    base = image(tmp_path / "pbase.qcow2")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 64k", str(base)],
                   check=True, capture_output=True)
    top = image(tmp_path / "ptop.qcow2", backing=base)
    con = boot(uri, tmp_path, "bjpull1", guest_files,
               QCOW2_DISK.format(fmt="qcow2", path=top, dev="vda"))
    watcher = subprocess.Popen(["stdbuf", "-oL", "virsh", "-c", uri, "event", "--domain",
                                "bjpull1", "--all", "--loop"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(watcher.stdout), daemon=True)
    reader.start()
    try:
        # virsh event is listening once it reports a lifecycle event we caused
        def listening() -> bool:
            ok(uri, "suspend bjpull1; resume bjpull1")
            return any("lifecycle" in line for line in seen)
        wait_for(listening, 30)
        ok(uri, "blockpull bjpull1 vda --wait")
        wait_for(lambda: any("event 'block-job-2' for domain 'bjpull1': Block Pull for vda "
                             "completed" in line for line in seen), 30)
        assert any(f"event 'block-job' for domain 'bjpull1': Block Pull for {top} completed"
                   in line for line in seen), seen
        # a synced write makes QEMU flush its qcow2 caches (the stream's too) to the file
        con.run("printf x | dd of=/dev/vda bs=512 seek=4000 conv=notrunc,fsync 2>/dev/null; "
                "echo S-$((3+4))", "S-7")
        xml = live_disk(uri, "bjpull1")
        assert re.findall(r"<source file='([^']+)'", xml) == [str(top)]
        wait_for(lambda: blocklog.of("bjpull1", "bj2") == [("vda", 1, 0)], 30)
        out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(top)],
                             capture_output=True, text=True, check=True).stdout
        assert "backing-filename" not in out
        r = subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", "read -P 0x42 0 64k",
                            str(top)], capture_output=True, text=True)
        assert "Pattern verification failed" not in r.stdout and r.returncode == 0
    finally:
        watcher.kill()
        watcher.wait()
        gone(uri, "bjpull1", con)


def test_block_jobs_of_a_shut_off_guest(uri, tmp_path):
    disk = image(tmp_path / "off.qcow2")
    path = tmp_path / "bjoff2.xml"
    xml = guest_xml("bjoff2").replace(
        "<devices>", "<devices>\n    " + QCOW2_DISK.format(fmt="qcow2", path=disk, dev="vda"), 1)
    path.write_text(xml)
    ok(uri, f"define {path}")
    try:
        not_running = "Requested operation is not valid: domain is not running"
        assert not_running in err(uri, f"blockcopy bjoff2 vda {tmp_path / 'c.qcow2'}")
        assert not_running in err(uri, "blockcommit bjoff2 vda --active")
        assert not_running in err(uri, "blockpull bjoff2 vda")
        assert not_running in err(uri, "blockresize bjoff2 vda 32M")
        assert not_running in err(uri, "blockjob bjoff2 vda --info")
    finally:
        virsh(uri, "undefine bjoff2")


# -- external disk-only snapshots, and committing them back ----------------------------------

def chain_of(uri: str, name: str, *extra: str) -> list[str]:
    xml = ok(uri, f"dumpxml {name} {' '.join(extra)}")
    disk = next(m.group(0) for m in re.finditer(r"<disk .*?</disk>", xml, re.S)
                if "<target dev='vda'" in m.group(0))
    return re.findall(r"<source file='([^']+)'", disk)


def write_marker(con: Console, text: str, block: int) -> None:
    con.run(f"printf '{text}' | dd of=/dev/vda bs=512 seek={block} conv=notrunc,fsync "
            f"2>/dev/null; echo M-$(({block}+100))", f"M-{block + 100}")


def test_disk_only_snapshots_then_commit_into_base(uri, guest_files, tmp_path):
    base = image(tmp_path / "base.qcow2")
    ov1 = tmp_path / "ov1.qcow2"
    con = boot(uri, tmp_path, "bjsnap1", guest_files,
               QCOW2_DISK.format(fmt="qcow2", path=base, dev="vda"))
    try:
        write_marker(con, "MARKER-A", 3)
        ok(uri, f"snapshot-create-as bjsnap1 s1 --disk-only --diskspec vda,file={ov1}")
        assert chain_of(uri, "bjsnap1") == [str(ov1), str(base)]
        assert chain_of(uri, "bjsnap1", "--inactive") == [str(ov1)]
        dump = ok(uri, "snapshot-dumpxml bjsnap1 s1")
        assert "<state>disk-snapshot</state>" in dump
        assert f"<disk name='vda' snapshot='external' type='file'>\n      " \
               f"<driver type='qcow2'/>\n      <source file='{ov1}'/>" in dump
        write_marker(con, "MARKER-B", 4)
        # no file given: the overlay is named after the snapshot; --no-metadata: not listed
        ok(uri, "snapshot-create-as bjsnap1 s2 --disk-only --no-metadata")
        ov2 = tmp_path / "ov1.s2"
        assert chain_of(uri, "bjsnap1") == [str(ov2), str(ov1), str(base)]
        assert ok(uri, "snapshot-list bjsnap1 --name").split() == ["s1"]
        taken = tmp_path / "taken"
        taken.write_bytes(b"x")
        assert f"unsupported configuration: external snapshot file for disk vda already " \
               f"exists and is not a block device: {taken}" in \
            err(uri, f"snapshot-create-as bjsnap1 s3 --disk-only --diskspec vda,file={taken}")
        assert "Operation not supported" in err(uri, "snapshot-delete bjsnap1 s1")
        write_marker(con, "MARKER-C", 5)
        # the whole chain back into the base, pivoted: the guest runs on base.qcow2 again
        ok(uri, "blockcommit bjsnap1 vda --active --pivot --wait")
        assert chain_of(uri, "bjsnap1") == [str(base)]
        assert chain_of(uri, "bjsnap1", "--inactive") == [str(base)]
        write_marker(con, "MARKER-D", 6)      # and its synced write flushes QEMU's caches
        blocks = read_blocks(base, "qcow2", 7, tmp_path)
        assert blocks[3:7] == [b"MARKER-A\0", b"MARKER-B\0", b"MARKER-C\0", b"MARKER-D\0"]
        ok(uri, "snapshot-delete bjsnap1 s1 --metadata")
    finally:
        gone(uri, "bjsnap1", con)


def test_disk_only_snapshot_of_a_shut_off_raw_guest(uri, tmp_path):
    disk = image(tmp_path / "off.raw", "raw")
    xml = guest_xml("bjoff3").replace(
        "<devices>", "<devices>\n    " + QCOW2_DISK.format(fmt="raw", path=disk, dev="vda"), 1)
    path = tmp_path / "bjoff3.xml"
    path.write_text(xml)
    ok(uri, f"define {path}")
    try:
        ok(uri, "snapshot-create-as bjoff3 s1 --disk-only")
        overlay = tmp_path / "off.s1"
        assert chain_of(uri, "bjoff3") == [str(overlay)]
        assert "<driver name='qemu' type='qcow2'/>" in ok(uri, "dumpxml bjoff3")
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)],
                                         capture_output=True, text=True, check=True).stdout)
        assert info["backing-filename"] == str(disk)
        assert info["backing-filename-format"] == "raw"
        assert "<state>shutoff</state>" in ok(uri, "snapshot-dumpxml bjoff3 s1")
    finally:
        virsh(uri, "undefine bjoff3 --snapshots-metadata")
