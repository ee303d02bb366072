"""fracgen/folder.py, the primitives every writer goes through (the builder's and the trainer's): a file appears
whole or not at all, never through a link; a record several jobs race for is created once; the folders a failed
first write made are removed again; and a temporary's writer is told gone or alive by the name it left."""

import errno
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fracgen import folder, output
from fracgen.errors import FracgenError, UsageError


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if folder.temporary_of(p.name))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no process has it (until the system reuses it, which takes a while)


def test_write_atomic_replaces_a_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "record.json"
    folder.write_atomic(path, b"first")
    folder.write_atomic(path, b"second, longer")
    assert path.read_bytes() == b"second, longer" and _leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    path.write_bytes(b"old")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(folder.os, "replace", full)
    with pytest.raises(FracgenError, match=r"disk full while writing .*record.json; free space and rerun with --resume"):
        folder.write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_nothing_is_written_through_a_link_or_over_a_folder(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "link").symlink_to(victim)
    (tmp_path / "sub").mkdir()
    for write in (lambda p: folder.write_atomic(p, b"x"), lambda p: folder.link_or_copy(victim, p),
                  lambda p: folder.append_text(p, "x")):
        with pytest.raises(UsageError, match="is a link"):
            write(tmp_path / "link")
    for write in (lambda p: folder.write_atomic(p, b"x"), lambda p: folder.link_or_copy(victim, p)):
        with pytest.raises(UsageError, match="not a regular file"):
            write(tmp_path / "sub")
    assert victim.read_text() == "keep" and (tmp_path / "link").is_symlink() and (tmp_path / "sub").is_dir()


def test_a_temporary_name_held_by_a_link_is_replaced_not_followed(tmp_path):
    """A leftover of an earlier process of the same PID (a restarted container) may be a link: the link goes,
    its target stays."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    tmp = folder.tmp_path(tmp_path / "record.json")
    tmp.symlink_to(victim)
    with folder.open_new(tmp) as f:
        f.write(b"mine")
    assert not tmp.is_symlink() and tmp.read_bytes() == b"mine" and victim.read_text() == "keep"


def test_publish_once_creates_a_record_once(tmp_path):
    path = tmp_path / "config.json"
    assert folder.publish_once(path, b"first")
    assert not folder.publish_once(path, b"second")
    assert path.read_bytes() == b"first" and _leftovers(tmp_path) == []


def test_make_folders_removes_what_it_made_when_the_folder_cannot_be_written(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b" / "out"

    def refused(path, then="rerun"):
        raise FracgenError(f"cannot write {path}: Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(folder, "open_new", refused)
        with pytest.raises(UsageError, match=r"output folder .*out cannot be written: Permission denied"):
            folder.make_folders(target)
    assert not (tmp_path / "a").exists()
    made = folder.make_folders(target)
    assert made == [target, target.parent, target.parent.parent] and target.is_dir() and _leftovers(target) == []
    (target.parent / "theirs.txt").write_text("someone writes here now")
    folder.remove_made(made)  # removes the empty folders only, nearest first
    assert not target.exists() and (target.parent / "theirs.txt").exists()


def test_temporary_of_knows_fracgen_temporary_names():
    cases = {"train-000001.tar.tmp-host-12": "train-000001.tar", "params.json.tmp-my-host-3": "params.json",
             "config.json.tmp-h-1.tmp-h-1": "config.json", "notes.tmp.md": None, "card.tmpl": None,
             "params.json.tmp": None, "x.tmp-h-x": None, ".tmp-h-1": None}
    assert {name: folder.temporary_of(name) for name in cases} == cases


def test_a_temporary_is_abandoned_when_its_writer_is_gone(tmp_path):
    host = socket.gethostname()
    mine = tmp_path / f"a.tmp-{host}-{os.getpid()}"
    gone = tmp_path / f"b.tmp-{host}-{_dead_pid()}"
    theirs = tmp_path / "c.tmp-otherhost-7"  # another host's: judged by how long it has sat untouched
    for path in (mine, gone, theirs):
        path.write_bytes(b"half")
    assert not folder.abandoned(mine) and folder.abandoned(gone) and not folder.abandoned(theirs)
    old = time.time() - folder.OTHER_HOST_GRACE - 60
    os.utime(theirs, (old, old))
    assert folder.abandoned(theirs)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are told apart through Linux's /proc")
def test_a_zombie_writer_counts_as_gone(tmp_path: Path) -> None:
    # a killed build's workers stay zombies until reaped: their files are abandoned, a live writer's are not
    zombie = subprocess.Popen(["true"])
    live = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.time() + 10
        while Path(f"/proc/{zombie.pid}").exists() and b") Z" not in Path(f"/proc/{zombie.pid}/stat").read_bytes():
            assert time.time() < deadline
            time.sleep(0.01)
        assert not folder.running(zombie.pid) and folder.running(live.pid)
        host = socket.gethostname()
        (tmp_path / ".fracgen/stats").mkdir(parents=True)
        gone = tmp_path / f"train-000000.tar.tmp-{host}-{zombie.pid}"
        kept = tmp_path / f"train-000001.tar.tmp-{host}-{live.pid}"
        for path in (gone, kept):
            path.write_bytes(b"half")
        assert output.DatasetFolder(tmp_path).remove_partials() == [gone] and kept.exists()
    finally:
        live.kill()
        live.wait()
        zombie.wait()


def test_replaceable_refuses_anything_but_fracgen_s_own_kind_of_file(tmp_path):
    def ours(head: bytes) -> bool:
        return head.startswith(b"FRACGEN")

    path = tmp_path / "out.bin"
    folder.replaceable(path, ours, "file fracgen wrote")  # nothing there yet
    path.write_bytes(b"FRACGEN 1")
    folder.replaceable(path, ours, "file fracgen wrote")
    path.write_bytes(b"my notes")
    with pytest.raises(UsageError, match="exists and is not a file fracgen wrote"):
        folder.replaceable(path, ours, "file fracgen wrote")
    (tmp_path / "link").symlink_to(path)
    with pytest.raises(UsageError, match="is a link"):
        folder.replaceable(tmp_path / "link", ours, "file fracgen wrote")


def test_a_record_is_read_only_from_a_regular_file_of_at_most_its_size(tmp_path):
    """read_regular: a file's bytes, or None for a link (when asked not to follow one), a FIFO, a folder, a file
    over the size given, or nothing at all."""
    record = tmp_path / "r.json"
    record.write_bytes(b"{}")
    (tmp_path / "link").symlink_to(record)
    os.mkfifo(tmp_path / "fifo")
    assert folder.read_regular(record, 2) == b"{}"
    assert folder.read_regular(tmp_path / "link", 2) == b"{}"
    assert folder.read_regular(tmp_path / "link", 2, follow=False) is None
    for path, most in ((record, 1), (tmp_path / "fifo", 1 << 10), (tmp_path, 1 << 10), (tmp_path / "gone", 1 << 10)):
        assert folder.read_regular(path, most) is None, path
