"""The output folder under concurrency and hostile content: one owner per folder, resume only of what was
recorded, --overwrite only of what a build wrote (issue 9, items 1-4)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY
from test_build import files

from fracgen import output
from fracgen.build import BuildConfig, build
from fracgen.errors import UsageError

CFG = BuildConfig(**TINY)
ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--L", "16", "--size", "64", "--points", "5000", "--shard-size", "8", "--workers", "1",
             "--no-progress"]


def fracgen(*args, wait=True):
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(ROOT / ".cache" / "numba"))
    proc = subprocess.Popen([sys.executable, "-m", "fracgen.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc.communicate(timeout=120) + (proc.returncode,) if wait else proc


# ------------------------------------------------------------------------------------- 1: one owner


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


# ---------------------------------------------------------------------- 2: FractalDB resumable, split


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


def test_resume_with_other_params_is_refused(tiny_copy, tmp_path):
    params = json.loads((tiny_copy / "params.json").read_text())
    params["systems"][0]["maps"][0][0] *= 0.99
    (tmp_path / "other.json").write_text(json.dumps(params))
    with pytest.raises(UsageError, match="other systems"):
        build(None, tiny_copy, workers=1, resume=True, params=tmp_path / "other.json")


# ---------------------------------------------------------------- 3: --overwrite deletes only its own


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


# -------------------------------------------------------------------- 4: --resume needs a record


def test_resume_of_nothing_says_what_to_run(tmp_path):
    stdout, stderr, code = fracgen("build", "--resume", tmp_path / "typo")
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "holds no recorded build" in stderr and "fracgen build [options]" in stderr
    assert not (tmp_path / "typo").exists()
    (tmp_path / "started" / ".fracgen" / "stats").mkdir(parents=True)  # killed before its options were stored
    with pytest.raises(UsageError, match="holds no recorded build"):
        build(None, tmp_path / "started", resume=True)


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


def test_resuming_a_build_started_by_an_older_fracgen_says_so(tmp_path) -> None:
    """A build interrupted before an upgrade lacks the options added since (issue 11): the refusal says the build
    is older, not that its config is damaged (its images would differ from this version's anyway)."""
    import json

    from fracgen.build import BuildConfig, build
    from fracgen.output import stored_config

    root = tmp_path / "old"
    build(BuildConfig(L=4, size=32, points=2000, shard_size=2), root, workers=1, shard_range=(0, 1))
    path = root / ".fracgen" / "config.json"
    data = json.loads(path.read_text())
    for key in ("patch_variants", "base_min_fill"):
        data.pop(key)
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="started by an older fracgen") as err:
        stored_config(root)
    assert "damaged" not in str(err.value) and "--overwrite" in str(err.value)


def test_a_build_started_by_an_older_fracgen_can_be_overwritten(tmp_path) -> None:
    """The refusal above advises --overwrite: it must work on such a build, complete or interrupted."""
    import json

    from fracgen.build import BuildConfig, build

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


def test_resume_builds_again_shards_copied_in_from_a_job_of_other_options(tmp_path, tiny_dataset):
    """The README's split into separate folders, with host 2 given another --delta: its shards and markers copied
    in used to be kept as complete (the labels matched), leaving a dataset of two option sets that verify called
    OK. Each marker now records the plan's digest (options + base systems), so they are built again."""
    import shutil

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


def test_overwrite_refuses_a_folder_a_build_is_writing_in(tmp_path):
    """A live writer's temporary (this host, a running PID) means a build is running there: --overwrite says so
    instead of deleting its files from under it (or naming its temporary as a stranger's file)."""
    import socket

    out = tmp_path / "out"
    build(CFG, out, workers=1)
    partial = out / f"train-000001.tar.tmp-{socket.gethostname()}-{os.getpid()}"
    partial.write_bytes(b"half a shard")
    with pytest.raises(UsageError, match=r"a build is writing in it now \(train-000001.tar.tmp-"):
        build(CFG, out, workers=1, overwrite=True)
    assert partial.exists() and (out / "build.json").exists()
