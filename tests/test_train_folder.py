"""train.run.folder: the run folder a run may take, its lock and status, the job folders of sweeps and
repro-small, and what a run leaves when it ends."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from train_helpers import (
    QUICK,
    REPO,
    assert_one_line,
    assert_same_weights,
    cfg_of,
    run_cli,
    snapshot,
    start_cli,
    tiny_cfg,
    wait_for_step,
)

from train.config import load_config
from train.errors import TrainError
from train.pretrain import pretrain
from train.run.folder import run_job, start_run_folder, write_status


def test_a_run_folder_the_trainer_wrote_is_still_taken(tmp_path):
    """Empty, absent and trainer-written folders (with a user's extra file) keep their behaviour."""
    cfg = load_config("tiny")
    assert start_run_folder(tmp_path / "new", cfg, resume=False) is False
    (tmp_path / "empty").mkdir()
    assert start_run_folder(tmp_path / "empty", cfg, resume=False) is False
    ours = tmp_path / "ours"
    ours.mkdir()
    write_status(ours, "failed", error="x")
    (ours / "notes.txt").write_text("kept")
    assert start_run_folder(ours, cfg, resume=True) is False  # no checkpoint: from step 0
    assert json.loads((ours / "run.json").read_text())["status"] == "running"
    assert (ours / "notes.txt").read_text() == "kept"
    (ours / "model.safetensors").write_bytes(b"x")
    (ours / "state.safetensors").write_bytes(b"x")
    with pytest.raises(TrainError, match="already holds a run"):
        start_run_folder(ours, cfg, resume=False)


@pytest.fixture(scope="module")
def complete(tiny_dataset, tmp_path_factory):
    """A complete run of 6 steps."""
    out = tmp_path_factory.mktemp("attack2") / "done"
    assert pretrain(cfg_of(tiny_dataset), out)["steps"] == 6
    return out


# ----------------------------------------------------------------------------- --resume of a complete run (F-RES4)
def test_resume_of_a_complete_run_says_so_and_leaves_the_folder_byte_identical(complete, tiny_dataset, tmp_path,
                                                                                capsys):
    run = tmp_path / "run"
    shutil.copytree(complete, run)
    before = snapshot(run)
    code, out, err = run_cli(resume_argv(tiny_dataset, run), capsys)
    assert code == 0 and f"{run} is complete (6 steps); nothing to do" in out, (code, out, err)
    assert snapshot(run) == before
    # another total is another run, still refused
    code, _, err = run_cli([*resume_argv(tiny_dataset, run), "--steps", "9"], capsys)
    assert_one_line(code, err, "train.steps=6, this command gives 9")
    assert snapshot(run) == before


def test_metrics_never_hold_nan(tmp_path):
    """Whatever a job reports, metrics.json is strict JSON: a value that is not finite is written as null."""
    from train.distributed import Dist

    (tmp_path / "run").mkdir()
    env = Dist(rank=0, world_size=1, local_rank=0, device=__import__("torch").device("cpu"))
    result = {"step": 3, "loss": float("nan"), "images_per_s": float("inf"), "eval": [], "elapsed_s": 1.0}
    values = run_job(tmp_path / "run", env, lambda: result,
                     lambda r: {"steps": r["step"], "final_loss": r["loss"], "images_per_s": r["images_per_s"],
                                "per_epoch": [{"step": 3, "eval_top1": float("-inf")}]}, complete="steps")
    text = (tmp_path / "run" / "metrics.json").read_text()
    written = json.loads(text, parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))
    assert written["final_loss"] is None and written["images_per_s"] is None
    assert written["per_epoch"][0]["eval_top1"] is None and written["steps"] == 3
    assert values["final_loss"] is None


@pytest.mark.parametrize("made", [False, True])
def test_resume_of_an_absent_or_empty_folder_starts_the_run(tiny_dataset, tmp_path, made, caplog):
    """A run killed before it made its folder is requeued with --resume: it starts from step 0."""
    out = tmp_path / "kr"
    if made:
        out.mkdir()
    with caplog.at_level("WARNING"):
        assert pretrain(cfg_of(tiny_dataset, "train.steps=2"), out, resume=True)["steps"] == 2
    assert "holds no run yet" in caplog.text and "starting one from step 0" in caplog.text
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_killed_before_the_first_checkpoint(tiny_dataset, tmp_path):
    """kill -9 before any checkpoint: the folder is refused while in use, then --resume starts from step 0
    (the weights of a fresh run) and so does a plain rerun."""
    run = tmp_path / "killed"
    proc = start_cli(tiny_dataset, run, 5000)
    wait_for_step(proc, run, 2)
    with pytest.raises(TrainError, match=r"in use by another training process \(pid \d+\)"):
        pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), run)
    proc.kill()
    proc.communicate(timeout=60)
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    assert not (run / "state.safetensors").exists() and not (run / "model.safetensors").exists()
    shutil.copytree(run, tmp_path / "killed-again")

    assert pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), run, resume=True)["steps"] == 6
    assert pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), tmp_path / "killed-again")["steps"] == 6
    pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), tmp_path / "fresh")
    assert_same_weights(tmp_path / "fresh", run)
    assert_same_weights(tmp_path / "fresh", tmp_path / "killed-again")
    assert [r.split(",")[0] for r in (run / "log.csv").read_text().splitlines()[1:]] == [str(i) for i in range(1, 7)]
    # a finished run is still protected (--resume of an absent folder: test_resume_of_an_absent_or_empty_folder_starts_the_run)
    with pytest.raises(TrainError, match="already holds a run"):
        pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), run)


def resume_argv(data, out):
    argv = ["pretrain", "--config", "tiny", "--data", data, "--out", out, "--resume"]
    for item in QUICK:
        argv += ["--set", item]
    return argv


@pytest.mark.slow
def test_a_full_disk_while_training_is_one_line_and_the_run_is_marked_failed(tiny_dataset, tmp_path):
    """The checkpoint's first write meets the end of the space a process may fill (RLIMIT_FSIZE, as a full disk):
    one line, exit 2, run.json failed, no temporary left behind."""
    import resource

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))  # the state file is about 15 MB

    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "train", "pretrain", "--config", "tiny", "--data", str(tiny_dataset),
                           "--out", str(run), "--steps", "2", *[a for q in QUICK[:-1] for a in ("--set", q)]],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300, preexec_fn=limited)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and "state.safetensors" in errors[0] and "File too large" in errors[0], errors
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


# ------------------------------------------------------------------ fracgen.folder's primitives the run folder uses
def test_the_lock_refuses_a_second_holder_and_a_refusal_changes_nothing(tmp_path):
    from fracgen import folder as fs

    lock = fs.hold_lock(tmp_path)
    assert lock.created and (tmp_path / ".lock").read_bytes() == b""
    lock.mark()
    held = snapshot(tmp_path)
    with pytest.raises(fs.FolderInUse, match=rf"in use by another process \(pid {os.getpid()}\)") as e:
        fs.hold_lock(tmp_path)  # flock is per open file: a second open in this process is another holder
    assert e.value.holder == str(os.getpid()) and snapshot(tmp_path) == held
    lock.release()
    again = fs.hold_lock(tmp_path)
    assert not again.created
    again.mark()
    again.release(undo=True)  # a failed start puts back the previous holder's PID
    assert (tmp_path / ".lock").read_bytes() == f"{os.getpid()}\n".encode()
    fresh = fs.hold_lock(tmp_path / "..", tmp_path.name + ".lock")
    fresh.release(undo=True)  # a failed start removes the lock file it created
    assert not (tmp_path.parent / (tmp_path.name + ".lock")).exists()


@pytest.mark.parametrize("kind, fragment", [("link", "is a link"), ("folder", "is not a regular file"),
                                            ("fifo", "is not a regular file"), ("dangling", "is a link")])
def test_a_lock_file_that_is_not_a_file_is_refused_untouched(kind, fragment, tmp_path):
    from fracgen import folder as fs

    (tmp_path / "outside.txt").write_text("precious")
    path = tmp_path / "run" / ".lock"
    path.parent.mkdir()
    {"link": lambda: path.symlink_to(tmp_path / "outside.txt"), "folder": path.mkdir,
     "fifo": lambda: os.mkfifo(path), "dangling": lambda: path.symlink_to(tmp_path / "nowhere")}[kind]()
    before = {p: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in tmp_path.rglob("*")}
    with pytest.raises(fs.UsageError, match=fragment):
        fs.hold_lock(path.parent)
    assert {p: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in tmp_path.rglob("*")} == before
    assert (tmp_path / "outside.txt").read_text() == "precious" and not (tmp_path / "nowhere").exists()


def test_read_regular_reads_only_a_regular_file_under_its_limit(tmp_path):
    import threading

    from fracgen.folder import read_regular

    (tmp_path / "record").write_bytes(b"x" * 10)
    (tmp_path / "link").symlink_to(tmp_path / "record")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    assert read_regular(tmp_path / "record", 10) == b"x" * 10 and read_regular(tmp_path / "link", 10) == b"x" * 10
    assert read_regular(tmp_path / "record", 9) is None and read_regular(tmp_path / "absent", 9) is None
    found = {}
    reader = threading.Thread(target=lambda: found.update(fifo=read_regular(tmp_path / "fifo", 10),
                                                          folder=read_regular(tmp_path / "folder", 10)), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and found == {"fifo": None, "folder": None}  # a FIFO never blocks the reader


def test_append_text_says_a_full_disk_and_a_file_past_its_limit_in_one_line(tmp_path, monkeypatch):
    import errno

    from fracgen import folder as fs

    script = ("import resource, signal, sys\nfrom fracgen import folder as fs\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
              "try:\n    fs.append_text(sys.argv[1], 'x' * 5000)\n"
              "except fs.FracgenError as e:\n    print(type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "log.csv")], capture_output=True, text=True,
                          cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.startswith(f"FracgenError cannot write {tmp_path / 'log.csv'}: File too large"), proc
    assert "Traceback" not in proc.stderr

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def fileno(self):
            return self.f.fileno()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    real = os.fdopen
    monkeypatch.setattr(fs.os, "fdopen", lambda *a, **k: Full(real(*a, **k)))
    with pytest.raises(fs.FracgenError, match=r"disk full while writing .*log.csv; free space and rerun"):
        fs.append_text(tmp_path / "log.csv", "row\n")
