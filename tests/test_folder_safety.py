"""What a resume, an overwrite and verify do with a folder someone changed: user files that look like fracgen's,
links where fracgen writes, markers that lie, stray shards, edited records, unreadable files (attack round of
stop 18)."""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import one_line

from fracgen import dataset, output
from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.verify import verify


def _resume(root: Path):
    return CliRunner().invoke(cli, ["build", "--resume", "--no-progress", "--workers", "1", str(root)])


def _digests(root: Path) -> dict[str, str]:
    return {p.name: dataset.sha256_file(p) for p in sorted(root.glob("train-*.tar"))}


def test_resume_removes_only_fracgen_temporaries(tiny_copy: Path) -> None:
    users = {"card.tmpl": "my template", "notes.tmp.md": "my notes", "x.tmp-host-12": "not a name fracgen writes"}
    for name, text in users.items():
        (tiny_copy / name).write_text(text)
    host, dead = socket.gethostname(), _dead_pid()
    leftovers = [tiny_copy / f"train-000001.tar.tmp-{host}-{dead}", tiny_copy / ".fracgen/stats/000001.json.tmp-h-7",
                 tiny_copy / f".fracgen/config.json.tmp-{host}-{dead}.tmp-{host}-{dead}"]
    for path in leftovers:
        path.write_bytes(b"half")
    old = time.time() - output.OTHER_HOST_GRACE - 60
    os.utime(leftovers[1], (old, old))  # another host's, untouched for longer than a live writer would be
    # a live writer's: this process (the resume runs in it), and another host's written a moment ago
    live = [tiny_copy / f"train-000000.tar.tmp-{host}-{os.getpid()}", tiny_copy / "params.json.tmp-h-8"]
    for path in live:
        path.write_bytes(b"being written")
    result = _resume(tiny_copy)
    assert result.exit_code == 0, result.output
    assert {name: (tiny_copy / name).read_text() for name in users} == users
    assert not any(path.exists() for path in leftovers)
    assert all(path.read_bytes() == b"being written" for path in live)
    assert verify(tiny_copy).ok


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no process has it (until the system reuses it, which takes a while)


def test_is_temporary_knows_fracgen_names_only(tmp_path: Path) -> None:
    cases = {"train-000003.tar.tmp-a-b-1": True, "params.json.tmp-host-22": True, "source.jpeg.tmp-h-1": True,
             ".fracgen/config.json.tmp-h-1.tmp-h-1": True, ".fracgen/stats/000002.json.tmp-h-5": True,
             "notes.tmp.md": False, "card.tmpl": False, "mine.tmp-h-1": False, "params.json.tmp": False,
             ".fracgen/stats/notes.json.tmp-h-1": False, "train-000003.tar.tmp-h-x": False}
    for name, expected in cases.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        assert output.DatasetFolder(tmp_path).is_temporary(path) is expected, name


def test_resume_refuses_a_linked_stats_folder(tiny_copy: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "000001.json").write_text("keep")
    shutil.rmtree(tiny_copy / ".fracgen/stats")
    (tiny_copy / ".fracgen/stats").symlink_to(mine)
    (tiny_copy / "build.json").unlink()
    one_line(_resume(tiny_copy), ".fracgen/stats", "not a plain folder")
    assert [p.name for p in mine.iterdir()] == ["000001.json"] and (mine / "000001.json").read_text() == "keep"


def test_resume_rebuilds_a_shard_whose_marker_lies(tiny_dataset: Path, tiny_copy: Path) -> None:
    marker = tiny_copy / ".fracgen/stats/000001.json"
    data = json.loads(marker.read_text())
    data["num_samples"] -= 1
    data["samples"][0]["label"] += 1
    marker.write_text(json.dumps(data))
    (tiny_copy / "build.json").unlink()
    result = _resume(tiny_copy)
    assert result.exit_code == 0 and "1 already complete" in result.output, result.output
    assert verify(tiny_copy).ok
    assert _digests(tiny_copy) == _digests(tiny_dataset)
    assert (tiny_copy / "params.json").read_bytes() == (tiny_dataset / "params.json").read_bytes()


def test_resume_refuses_a_stray_shard(tiny_copy: Path) -> None:
    shutil.copy(tiny_copy / "train-000000.tar", tiny_copy / "train-000099.tar")
    one_line(_resume(tiny_copy), "train-000099.tar", "move it away")
    assert (tiny_copy / "train-000099.tar").is_file()


def test_overwrite_that_cannot_delete_keeps_the_claim(tiny_copy: Path, monkeypatch) -> None:
    real_unlink = Path.unlink

    def unlink(path: Path, missing_ok: bool = False) -> None:
        if path.name == "train-000001.tar":
            raise PermissionError(13, "Permission denied", str(path))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(PermissionError):
        output.DatasetFolder(tiny_copy)._clear()
    assert output.stored_config(tiny_copy) is not None  # still a build --overwrite and --resume recognise


def test_unreadable_files_are_one_line(tiny_copy: Path, monkeypatch) -> None:
    def denied(path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    (tiny_copy / "build.json").unlink()
    monkeypatch.setattr(dataset.records, "sha256_file", denied)
    one_line(_resume(tiny_copy), "Permission denied", "train-000000.tar")


def test_negative_zero_delta_is_zero(tmp_path: Path) -> None:
    tiny = {"L": 2, "size": 32, "points": 500, "shard_size": 2}
    build(BuildConfig(**tiny, delta=0.0), tmp_path / "zero", workers=1)
    result = CliRunner().invoke(cli, ["build", "--L", "2", "--size", "32", "--points", "500", "--shard-size", "2",
                                      "--workers", "1", "--no-progress", "--delta", "-0.0", str(tmp_path / "neg")])
    assert result.exit_code == 0, result.output
    assert _digests(tmp_path / "neg") == _digests(tmp_path / "zero")
    with pytest.raises(Exception, match="--delta"):
        BuildConfig(**tiny, delta=-0.0).validate()


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


def test_a_users_own_fracgen_folder_makes_the_output_occupied(tmp_path: Path) -> None:
    """A folder holding only `.fracgen/` passes as a build another shard range is starting; one holding a file
    fracgen never writes there (a user's `.fracgen/notes.txt`) is not fracgen's, and is refused untouched."""
    from conftest import TINY

    from fracgen.build import BuildConfig, build
    from fracgen.errors import UsageError

    config = BuildConfig(**{**TINY, "L": 4, "shard_size": 4})
    theirs = tmp_path / "theirs"
    (theirs / ".fracgen" / "stats").mkdir(parents=True)
    (theirs / ".fracgen" / "notes.txt").write_text("mine")
    for kwargs in ({}, {"resume": True, "shard_range": (0, 1)}):
        with pytest.raises(UsageError, match="not empty|not a fracgen build"):
            build(config, theirs, workers=1, **kwargs)
    assert sorted(p.relative_to(theirs).as_posix() for p in theirs.rglob("*")) == [
        ".fracgen", ".fracgen/notes.txt", ".fracgen/stats"]
    starting = tmp_path / "starting"
    (starting / ".fracgen" / "stats").mkdir(parents=True)  # what a job of another shard range has made so far
    assert build(config, starting, workers=1, shard_range=(0, 1)).built == [0]


def test_another_jobs_temporary_that_vanishes_is_not_a_stranger(tmp_path: Path, monkeypatch) -> None:
    """A split job starting beside another sees its probe or claim temporary, which may be gone a moment later:
    judged by its name, it is absent, not foreign (the folder used to be refused about 1 time in 3 under churn)."""
    from fracgen import output

    root = tmp_path / "shared"
    (root / ".fracgen" / "stats").mkdir(parents=True)
    gone = root / ".fracgen" / "config.json.tmp-otherhost-9.tmp-otherhost-9"  # the other job's claim, renamed since
    real = Path.iterdir

    def listing(self):
        return iter([*real(self), *([gone] if self == root / ".fracgen" else [])])

    monkeypatch.setattr(Path, "iterdir", listing)
    assert not output.DatasetFolder(root)._foreign()
    (root / ".fracgen" / "notes.tmp-otherhost-123").write_text("mine")  # not a name fracgen writes
    assert output.DatasetFolder(root)._foreign()
