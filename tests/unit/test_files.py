"""write_atomic's one temporary per file, and the sweep of leftovers at start-up (issue #11)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pyvirtd.files import remove_leftovers, temp_path, write_atomic


def test_the_temporary_is_dot_name_dot_tmp_and_is_gone_after_the_write(tmp_path: Path) -> None:
    target = tmp_path / "a" / "dom.xml"
    assert temp_path(target) == tmp_path / "a" / ".dom.xml.tmp"
    write_atomic(target, "<domain/>", 0o640)
    assert target.read_text() == "<domain/>"
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(p.name for p in target.parent.iterdir()) == ["dom.xml"]


def test_a_leftover_of_a_killed_writer_is_reused(tmp_path: Path) -> None:
    target = tmp_path / "net.xml"
    temp_path(target).write_text("<network><na")      # the daemon died here
    write_atomic(target, "<network/>")
    assert target.read_text() == "<network/>"
    assert not temp_path(target).exists()


def test_a_link_planted_as_the_temporary_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "d" / "pool.xml"
    target.parent.mkdir()
    temp_path(target).symlink_to(victim)
    try:
        write_atomic(target, "<pool/>")
    except OSError:
        pass
    assert victim.read_text() == "keep"


def test_concurrent_writers_of_one_file_take_turns(tmp_path: Path) -> None:
    target = tmp_path / "status.xml"
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(200):
                write_atomic(target, f"<s n='{n}' i='{i}'/>" * 50, sync=False)
        except BaseException as exc:       # a shared temporary would break a rename
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    text = target.read_text()
    assert text == text[:len(text) // 50] * 50         # one writer's content, whole
    assert not temp_path(target).exists()


def test_remove_leftovers_takes_only_temporaries(tmp_path: Path) -> None:
    lib, run = tmp_path / "lib", tmp_path / "run"
    (lib / "qemu" / "autostart").mkdir(parents=True)
    (run / "network").mkdir(parents=True)
    keep = [lib / "qemu" / "g.xml", lib / "qemu" / ".hidden", lib / "notes.tmp",
            run / "network" / "n.xml", lib / "qemu" / ".tmp", run / "ctl.exit.tmp"]
    gone = [lib / "qemu" / ".g.xml.tmp", lib / "qemu" / "autostart" / ".x.xml.tmp",
            run / "network" / ".n.xml.tmp"]
    for p in keep + gone:
        p.write_text("x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / ".mine.tmp").write_text("y")
    (lib / ".link.tmp").symlink_to(outside / ".mine.tmp")
    deep = lib / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    (deep / ".deep.tmp").write_text("z")        # deeper than the daemon writes

    removed = remove_leftovers([lib, run, tmp_path / "missing"])
    assert sorted(removed) == sorted(gone)
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in gone)
    assert (outside / ".mine.tmp").exists() and (lib / ".link.tmp").is_symlink()
    assert (deep / ".deep.tmp").exists()
    assert os.listdir(run / "network") == ["n.xml"]
