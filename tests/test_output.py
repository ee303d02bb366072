"""DatasetFolder (fracgen/output.py): a dataset folder's state and a build's claim on it.

One owner per folder (a job of other options is refused, identical ones share it); --resume only of what was
recorded (markers that lie, stray shards, damaged, edited or older records are named or built again);
--overwrite only of what a build wrote (never through a link, never under a live writer); and the temporaries of
writers that are gone removed, those of live writers and of users kept.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY, one_line
from test_build import files

from fracgen import dataset, output
from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.errors import UsageError
from fracgen.verify import verify

CFG = BuildConfig(**TINY)
ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--L", "16", "--size", "64", "--points", "5000", "--shard-size", "8", "--workers", "1",
             "--no-progress"]


def fracgen(*args, wait=True):
    """The command line in a process of its own: (stdout, stderr, exit status), or the running process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(ROOT / ".cache" / "numba"))
    proc = subprocess.Popen([sys.executable, "-m", "fracgen.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc.communicate(timeout=120) + (proc.returncode,) if wait else proc


def _resume(root: Path):
    return CliRunner().invoke(cli, ["build", "--resume", "--no-progress", "--workers", "1", str(root)])


def _digests(root: Path) -> dict[str, str]:
    return {p.name: dataset.sha256_file(p) for p in sorted(root.glob("train-*.tar"))}


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no process has it (until the system reuses it, which takes a while)


# ----------------------------------------------------------------------------------------------- one owner


def test_a_job_with_other_options_is_refused_even_before_the_first_wrote_anything(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    other = BuildConfig(**{**TINY, "delta": 0.3})
    with output.DatasetFolder(out).building(CFG, fresh=True, overwrite=False):  # a job has claimed the folder
        with pytest.raises(UsageError, match=r"options differ: --delta 0.3 \(stored 0.1\)"):
            build(other, out, workers=1, resume=True, shard_range=(1, 2))
        with pytest.raises(UsageError, match="another job"):  # same options, but a plain build: not two at once
            build(CFG, out, workers=1)
        assert sorted(p.name for p in out.iterdir()) == [".fracgen"]  # the refused jobs wrote nothing
        assert build(CFG, out, workers=1, resume=True, shard_range=(1, 2)).built == [1]  # same options: joins


@pytest.mark.slow
def test_concurrent_jobs_never_mix_options_and_identical_ones_share_the_folder(tmp_path, tiny_dataset):
    out = tmp_path / "shared"
    jobs = [(0, ["--resume", "--shard-range", "0:1"]), (0, ["--resume", "--shard-range", "1:2"]), (1, [])]
    procs = [fracgen("build", *TINY_ARGS, "--seed", seed, *extra, out, wait=False) for seed, extra in jobs]
    results = [(seed, *p.communicate(timeout=120), p.returncode) for (seed, _), p in zip(jobs, procs, strict=True)]
    owner = BuildConfig.from_json(json.loads((out / ".fracgen" / "config.json").read_text())).seed
    for seed, _stdout, stderr, code in results:
        if seed == owner:
            assert code == 0, stderr
        else:
            # refused either by the claim ("options differ") or, when the owner's shards already landed before
            # this job looked, by the folder check ("not empty"): both one line, nothing written
            assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
            assert "options differ: --seed" in stderr or "is not empty" in stderr, stderr
    if owner == 0:
        build(None, out, resume=True, workers=1)
        assert files(out) == files(tiny_dataset)
    else:
        want = tmp_path / "want"
        build(BuildConfig(**{**TINY, "seed": 1}), want, workers=1)
        assert files(out) == files(want)


def test_a_users_own_fracgen_folder_makes_the_output_occupied(tmp_path: Path) -> None:
    """A folder holding only `.fracgen/` passes as a build another shard range is starting; one holding a file
    fracgen never writes there (a user's `.fracgen/notes.txt`) is not fracgen's, and is refused untouched."""
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
    judged by its name, it is absent, not foreign (else a split job is refused at random, when it looks at the
    wrong moment)."""
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


# -------------------------------------------------------------------------- resume: only what was recorded


@pytest.mark.slow
def test_resume_of_nothing_says_what_to_run(tmp_path):
    stdout, stderr, code = fracgen("build", "--resume", tmp_path / "typo")
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "holds no recorded build" in stderr and "fracgen build [options]" in stderr
    assert not (tmp_path / "typo").exists()


def test_resume_of_a_build_killed_before_its_options_were_stored_says_what_to_run(tmp_path):
    (tmp_path / "started" / ".fracgen" / "stats").mkdir(parents=True)
    with pytest.raises(UsageError, match="holds no recorded build"):
        build(None, tmp_path / "started", resume=True)


def test_resume_after_a_kill_during_planning_builds_the_recorded_options(tmp_path, tiny_dataset, monkeypatch):
    out = tmp_path / "out"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the search is under way: nothing is written before the plan

    monkeypatch.setattr(CFG.family, "search", killed)
    with pytest.raises(KeyboardInterrupt):
        build(CFG, out, workers=1)
    assert not out.exists()
    with pytest.raises(KeyboardInterrupt):
        build(CFG, tmp_path / "split", workers=1, shard_range=(0, 1))
    assert not (tmp_path / "split").exists()
    with pytest.raises(KeyboardInterrupt), output.DatasetFolder(out).building(CFG, fresh=True, overwrite=False):
        raise KeyboardInterrupt  # what kill -9 after the claim leaves: the options, no systems
    assert output.stored_config(out) == CFG
    monkeypatch.undo()
    assert build(None, out, workers=1, resume=True).complete
    assert files(out) == files(tiny_dataset)


def test_options_that_cannot_render_leave_the_folder_as_found(tmp_path):
    """A class that never fills fails every rerun alike: a fresh build keeps nothing, so the corrected command
    needs no --overwrite; a split build keeps its claim (another job of its options may finish shards)."""
    never = BuildConfig(**{**TINY, "min_fill": 0.99, "base_min_fill": 0.05, "max_redraws": 0})
    with pytest.raises(UsageError, match=r"no perturbation .* \(nothing was kept in .*fresh\)"):
        build(never, tmp_path / "new" / "parents" / "fresh", workers=2)
    assert not (tmp_path / "new").exists()  # nor the parent folders the build made for it
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="nothing was kept"):
        build(never, empty, workers=1)
    assert list(empty.iterdir()) == []
    assert build(CFG, empty, workers=1).complete

    with pytest.raises(UsageError, match="no perturbation") as refused:
        build(never, tmp_path / "split", workers=1, shard_range=(0, 1))
    assert "nothing was kept" not in str(refused.value)
    assert (tmp_path / "split" / ".fracgen" / "config.json").is_file()


def test_a_damaged_systems_file_is_reported_as_such(tiny_copy):
    path = tiny_copy / dataset.SYSTEMS_JSON
    path.write_text('{"systems": [{"maps": "x"}]}')
    with pytest.raises(UsageError, match=r"systems.json is damaged .*--overwrite") as err:
        build(None, tiny_copy, workers=1, resume=True)
    assert "--params" not in str(err.value)


def test_resume_with_other_params_is_refused(tiny_copy, tmp_path):
    params = json.loads((tiny_copy / "params.json").read_text())
    params["systems"][0]["maps"][0][0] *= 0.99
    (tmp_path / "other.json").write_text(json.dumps(params))
    with pytest.raises(UsageError, match="other systems"):
        build(None, tiny_copy, workers=1, resume=True, params=tmp_path / "other.json")


def test_fractaldb_split_and_resumed_never_rejudges_its_systems(tmp_path, monkeypatch):
    cfg = BuildConfig(preset="fractaldb", fractals=3, instances=2, size=64, points=2000, shard_size=2)
    whole = tmp_path / "whole"
    build(cfg, whole, workers=1)
    split = tmp_path / "split"
    assert not build(cfg, split, workers=1, shard_range=(0, 1)).complete

    def judged(*args, **kwargs):
        raise AssertionError("a stored system was judged again")

    monkeypatch.setattr(cfg.family, "check_systems", judged)
    monkeypatch.setattr(cfg.family, "search", judged)
    assert build(cfg, split, workers=1, resume=True, shard_range=(2, 3)).built == [2]
    assert build(None, split, workers=1, resume=True).complete
    assert files(split) == files(whole)


def test_resuming_a_build_started_by_an_older_fracgen_says_so(tmp_path) -> None:
    """A build interrupted before an upgrade lacks the options added since: the refusal says the build is older,
    not that its config is damaged (its images would differ from this version's anyway)."""
    root = tmp_path / "old"
    build(BuildConfig(L=4, size=32, points=2000, shard_size=2), root, workers=1, shard_range=(0, 1))
    path = root / ".fracgen" / "config.json"
    data = json.loads(path.read_text())
    for key in ("patch_variants", "base_min_fill"):
        data.pop(key)
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="started by an older fracgen") as err:
        output.stored_config(root)
    assert "damaged" not in str(err.value) and "--overwrite" in str(err.value)


def test_resume_builds_again_shards_copied_in_from_a_job_of_other_options(tmp_path, tiny_dataset):
    """The README's split into separate folders, with host 2 given another --delta: its shards and markers copied
    in have the right labels, so only the plan's digest each marker records (options + base systems) tells them
    apart; kept, they would make a dataset of two option sets that verify calls OK. They are built again."""
    one, two = tmp_path / "one", tmp_path / "two"
    build(CFG, one, workers=1, shard_range=(0, 1))
    build(BuildConfig(**{**TINY, "delta": 0.3}), two, workers=1, shard_range=(1, 2))
    shutil.copy(two / "train-000001.tar", one)
    shutil.copy(two / ".fracgen" / "stats" / "000001.json", one / ".fracgen" / "stats")
    result = build(None, one, workers=1, resume=True)
    assert result.complete and result.built == [1], result
    assert files(one) == files(tiny_dataset)


def test_a_shard_marked_by_an_older_fracgen_is_kept_on_resume(tmp_path, tiny_dataset, caplog):
    """Markers written before the plan digest existed (a build resumed after an upgrade) are judged as then: an
    interrupted million-image build does not start again from zero; a shard of another plan is named in a warning."""
    out = tmp_path / "out"
    build(CFG, out, workers=1, shard_range=(0, 1))
    marker = out / ".fracgen" / "stats" / "000000.json"
    old = json.loads(marker.read_text())
    for key in ("plan", "samples_sha256"):
        del old[key]
    marker.write_text(json.dumps(old))
    result = build(None, out, workers=1, resume=True)
    assert result.built == [1] and result.skipped == [0], result
    assert files(out) == files(tiny_dataset)
    assert "not made by this plan" not in caplog.text
    stale = json.loads(marker.read_text())
    marker.write_text(json.dumps({**stale, "plan": "0" * 64}))
    (out / "build.json").unlink()
    assert build(None, out, workers=1, resume=True).built == [0]
    assert "1 complete shard(s) in" in caplog.text and "not made by this plan" in caplog.text


def test_resume_builds_again_a_shard_whose_marker_records_were_edited(tmp_path, tiny_dataset):
    """A marker's class records become params.json: edited ones (checksum of the shard still right) are not
    trusted, so a resume renders that shard again and params.json is the plan's."""
    out = tmp_path / "out"
    build(CFG, out, workers=1)
    (out / "build.json").unlink()
    marker = out / ".fracgen" / "stats" / "000000.json"
    data = json.loads(marker.read_text())
    data["samples"][0]["maps"] = [[9, 9, 9, 9, 9, 9]]
    marker.write_text(json.dumps(data))
    result = build(None, out, workers=1, resume=True)
    assert result.built == [0], result
    assert files(out) == files(tiny_dataset)


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


def test_resume_refuses_a_linked_stats_folder(tiny_copy: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "000001.json").write_text("keep")
    shutil.rmtree(tiny_copy / ".fracgen/stats")
    (tiny_copy / ".fracgen/stats").symlink_to(mine)
    (tiny_copy / "build.json").unlink()
    one_line(_resume(tiny_copy), ".fracgen/stats", "not a plain folder")
    assert [p.name for p in mine.iterdir()] == ["000001.json"] and (mine / "000001.json").read_text() == "keep"


def test_unreadable_files_are_one_line(tiny_copy: Path, monkeypatch) -> None:
    def denied(path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    (tiny_copy / "build.json").unlink()
    monkeypatch.setattr(dataset.records, "sha256_file", denied)
    one_line(_resume(tiny_copy), "Permission denied", "train-000000.tar")


# ---------------------------------------------------------------------- overwrite: only what a build wrote


def test_overwrite_only_replaces_a_fracgen_build(tmp_path, tiny_copy):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(UsageError, match="not empty"):
        build(CFG, mine)
    with pytest.raises(UsageError, match="not a fracgen build"):
        build(CFG, mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "precious"
    result = build(BuildConfig(**{**TINY, "L": 8}), tiny_copy, overwrite=True, workers=1)
    assert result.complete and json.loads((tiny_copy / "_info.json").read_text())["num_classes"] == 8


def test_overwrite_names_what_the_build_did_not_write_and_deletes_nothing(tiny_copy, tmp_path):
    (tiny_copy / "runs").mkdir()
    (tiny_copy / "NOTES.md").write_text("mine")
    before = sorted(p.name for p in tiny_copy.iterdir())
    with pytest.raises(UsageError, match=r"did not write \(NOTES.md, runs\)"):
        build(CFG, tiny_copy, overwrite=True, workers=1)
    assert sorted(p.name for p in tiny_copy.iterdir()) == before


def test_overwrite_never_follows_a_link(tiny_copy, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    (tiny_copy / "data").symlink_to(victim)
    with pytest.raises(UsageError, match=r"did not write \(data\)"):
        build(CFG, tiny_copy, overwrite=True, workers=1)
    (tiny_copy / "data").unlink()
    shard = tiny_copy / "train-000001.tar"
    shard.unlink()
    shard.symlink_to(victim / "keep.txt")  # a recorded name that is a link: not something fracgen wrote
    with pytest.raises(UsageError, match="train-000001.tar"):
        build(CFG, tiny_copy, overwrite=True, workers=1)
    assert (victim / "keep.txt").read_text() == "keep" and (tiny_copy / "params.json").is_file()


def test_overwrite_replaces_a_genuine_build_with_its_leftovers(tiny_copy):
    (tiny_copy / "preview.png").write_bytes(b"png")
    (tiny_copy / "train-000000.tar.tmp-host-1").write_bytes(b"half")
    old = time.time() - output.OTHER_HOST_GRACE - 60  # another host's writer, silent long enough to be gone
    os.utime(tiny_copy / "train-000000.tar.tmp-host-1", (old, old))
    result = build(BuildConfig(**{**TINY, "L": 8}), tiny_copy, overwrite=True, workers=1)
    assert result.complete and result.num_shards == 1
    assert sorted(p.name for p in tiny_copy.iterdir()) == [".fracgen", "README.md", "_info.json", "build.json",
                                                           "params.json", "train-000000.tar"]


def test_a_build_started_by_an_older_fracgen_can_be_overwritten(tmp_path) -> None:
    """The refusal above advises --overwrite: it must work on such a build, complete or interrupted."""
    for complete in (True, False):
        root = tmp_path / f"old-{complete}"
        build(BuildConfig(L=4, size=32, points=2000, shard_size=2), root, workers=1,
              shard_range=None if complete else (0, 1))
        for rel in (".fracgen/config.json", "build.json"):
            path = root / rel
            if not path.exists():
                continue
            data = json.loads(path.read_text())
            inner = data["config"] if rel == "build.json" else data
            for key in ("patch_variants", "base_min_fill"):
                inner.pop(key)
            path.write_text(json.dumps(data))
        result = build(BuildConfig(L=4, size=32, points=2000, shard_size=2), root, workers=1, overwrite=True)
        assert result.complete


def test_overwrite_refuses_a_folder_a_build_is_writing_in(tmp_path):
    """A live writer's temporary (this host, a running PID) means a build is running there: --overwrite says so
    instead of deleting its files from under it (or naming its temporary as a stranger's file)."""
    out = tmp_path / "out"
    build(CFG, out, workers=1)
    partial = out / f"train-000001.tar.tmp-{socket.gethostname()}-{os.getpid()}"
    partial.write_bytes(b"half a shard")
    with pytest.raises(UsageError, match=r"a build is writing in it now \(train-000001.tar.tmp-"):
        build(CFG, out, workers=1, overwrite=True)
    assert partial.exists() and (out / "build.json").exists()


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


# --------------------------------------------------------------------------------------------- temporaries


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


def test_a_shard_range_leaves_other_builds_partial_files_alone(tiny_dataset, tmp_path):
    out = tmp_path / "shared"
    build(CFG, out, workers=1, shard_range=(1, 2))
    theirs = out / "train-000000.tar.tmp-otherhost-4242"  # shard 0, still being written elsewhere
    theirs.write_bytes(b"half a tar")
    stale = out / "train-000001.tar.tmp-otherhost-99"  # this range's shard, from a crashed run long ago
    stale.write_bytes(b"junk")
    long_ago = time.time() - output.OTHER_HOST_GRACE - 1
    os.utime(stale, (long_ago, long_ago))
    (out / "train-000001.tar").unlink()
    build(CFG, out, workers=1, resume=True, shard_range=(1, 2))
    assert theirs.exists() and not stale.exists()
    build(CFG, out, workers=1, resume=True, shard_range=(0, 1))
    assert theirs.exists()  # written a moment ago on another host: its writer may still be at it
    os.utime(theirs, (long_ago, long_ago))  # until it has sat untouched for longer than any writer pauses
    build(CFG, out, workers=1, resume=True)
    assert not theirs.exists()
    assert files(out) == files(tiny_dataset)


# ------------------------------------------------------------------------ a recipe or a downloaded dataset


def _downloaded(tiny_dataset: Path, dest: Path, **changes) -> Path:
    """What a Hub download of the tiny dataset holds without its shards (records only, no .fracgen), its
    build.json's shard rows changed by ``changes`` (shard index -> sha256)."""
    dest.mkdir()
    for name in (dataset.PARAMS_JSON, dataset.INFO_JSON, dataset.CARD_MD):
        shutil.copyfile(tiny_dataset / name, dest / name)
    record = json.loads((tiny_dataset / dataset.BUILD_JSON).read_text())
    for shard, sha256 in changes.items():
        record["shards"][int(shard)]["sha256"] = sha256
    (dest / dataset.BUILD_JSON).write_text(json.dumps(record))
    return dest


def test_a_refused_render_of_a_downloaded_dataset_keeps_its_record_and_refuses_again(tiny_dataset, tmp_path):
    root = _downloaded(tiny_dataset, tmp_path / "dl", **{"1": "0" * 64})
    record = (root / dataset.BUILD_JSON).read_bytes()
    for _ in range(2):  # the second resume still knows the published sha256
        one_line(_resume(root), "renders other bytes than the published ones")
        assert (root / dataset.PUBLISHED_JSON).read_bytes() == record
        assert not (root / "train-000001.tar").exists() and not dataset.marker_path(root, 1).exists()
    with pytest.raises(UsageError, match="has no build.json: the build is incomplete"):
        verify(root)


def test_an_edited_or_linked_record_of_a_downloaded_dataset_is_refused_before_rendering(tiny_dataset, tmp_path):
    edited = _downloaded(tiny_dataset, tmp_path / "edited")
    params = json.loads((edited / dataset.PARAMS_JSON).read_text())
    params["systems"][0]["maps"][0][0] += 0.01
    (edited / dataset.PARAMS_JSON).write_text(json.dumps(params))
    one_line(_resume(edited), "params.json was changed after the build", "download the dataset again")
    linked = _downloaded(tiny_dataset, tmp_path / "linked")
    shutil.move(linked / dataset.PARAMS_JSON, tmp_path / "blob")
    (linked / dataset.PARAMS_JSON).symlink_to(tmp_path / "blob")
    one_line(_resume(linked), "params.json", "is a link")
    for root in (edited, linked):
        assert not (root / dataset.INTERNAL).exists() and not list(root.glob("train-*.tar"))


def test_a_finished_download_keeps_its_publishers_licence(tiny_dataset, tmp_path):
    root = _downloaded(tiny_dataset, tmp_path / "dl")
    card = (root / dataset.CARD_MD).read_text()
    (root / dataset.CARD_MD).write_text(card.replace("license: other", "license: mit", 1))
    assert _resume(root).exit_code == 0 and verify(root).ok
    assert "\nlicense: mit\n" in (root / dataset.CARD_MD).read_text()
    assert _digests(root) == _digests(tiny_dataset)


def test_resume_as_a_recipe_refuses_a_folder_with_shards(tiny_copy, tmp_path):
    args = ["build", "--resume", "--recipe-only", "--no-progress"]
    one_line(CliRunner().invoke(cli, [*args, str(tiny_copy)]), "holds rendered shards", "a recipe holds none")
    partial = tmp_path / "partial"
    build(CFG, partial, workers=1, shard_range=(1, 2))
    one_line(CliRunner().invoke(cli, [*args, str(partial)]), "holds rendered shards")
    assert not (partial / dataset.BUILD_JSON).exists()


def test_a_marker_that_is_not_an_object_is_built_again(tiny_copy):
    before = _digests(tiny_copy)
    (tiny_copy / dataset.BUILD_JSON).unlink()
    dataset.marker_path(tiny_copy, 0).write_text("[]")
    assert _resume(tiny_copy).exit_code == 0 and _digests(tiny_copy) == before and verify(tiny_copy).ok


def test_overwrite_does_not_wait_on_a_fifo_config(tiny_copy):
    config = tiny_copy / dataset.CONFIG_JSON
    config.unlink()
    os.mkfifo(config)
    proc = fracgen("build", *TINY_ARGS, "--overwrite", tiny_copy, wait=False)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    code = proc.wait()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
