"""``fracgen-train`` / ``python -m train``: help like ``fracgen -h``, a console script no ``train.py`` shadows, one
line without the trainer's extra; errors one line, once, from the rank that knows them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import (
    REPO,
    assert_one_line,
    run_cli,
)

from train.errors import TrainError


@pytest.mark.slow
def test_dash_h_works_like_fracgen():
    proc = subprocess.run([sys.executable, "-m", "train", "-h"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: python -m train [OPTIONS] COMMAND")
    commands = proc.stdout.split("Commands:", 1)[1]
    assert all(name in commands for name in ("pretrain", "finetune", "repro-small", "sweep", "toy-data"))
    sub = subprocess.run([sys.executable, "-m", "train", "pretrain", "-h"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert sub.returncode == 0 and "--verify-data / --no-verify-data" in sub.stdout


def _console_script() -> Path:
    """The venv's ``fracgen-train`` (``pip install -e .`` makes it), beside the interpreter running the tests."""
    exe = Path(sys.executable).parent / "fracgen-train"
    if not exe.is_file():
        pytest.skip(f"no {exe}: the package is not installed in this environment (make install-dev)")
    return exe


def test_the_console_script_is_not_shadowed_by_a_train_py_in_the_working_folder(tmp_path):
    (tmp_path / "train.py").write_text("raise SystemExit('the user file ran')\n")
    proc = subprocess.run([_console_script(), "-h"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: fracgen-train [OPTIONS] COMMAND") and "toy-data" in proc.stdout


@pytest.mark.parametrize("entry", ["console script", "python -m train"])
def test_without_torch_one_line_names_the_extra(entry, tmp_path):
    """torch made unimportable by a sitecustomize (as in a builder-only install): one line, exit 2, even for -h."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    argv = [_console_script()] if entry == "console script" else [sys.executable, "-m", "train"]
    for args in (["-h"], ["pretrain", "--data", "x", "--out", "y"]):
        proc = subprocess.run([*argv, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
        assert proc.stderr == "error: the trainer needs torch, not installed here: pip install 'fracgen[train]'\n"


def test_worker_tracebacks_become_their_last_line():
    from train.__main__ import _one_line

    wrapped = ("Caught TrainError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\ntrain.errors.TrainError: image a/b.jpg: cannot decode (OSError: x)\n')
    assert _one_line(wrapped) == "image a/b.jpg: cannot decode (OSError: x)"
    assert _one_line("plain message") == "plain message"


def test_finetune_steps_set_the_length_instead_of_the_configs_epochs(tmp_path, capsys, monkeypatch):
    """`finetune --steps N` sets the length even where the config gives epochs (tiny-finetune: 2), and --steps
    with --epochs is refused on one line."""

    import train.finetune

    seen = []
    monkeypatch.setattr(train.finetune, "finetune", lambda cfg, out, resume=False: seen.append(cfg) or
                        {"steps": cfg.train.steps, "checkpoint": None, "top1": 0.0})
    base = ["finetune", "--config", "tiny-finetune", "--out", tmp_path / "ft"]
    code, out, err = run_cli([*base, "--steps", "7"], capsys)
    assert code == 0, err
    assert (seen[-1].train.steps, seen[-1].train.epochs) == (7, 0)
    code, out, err = run_cli(base, capsys)
    assert code == 0 and seen[-1].train.epochs == 2, err  # the config's epochs when --steps is not given
    assert_one_line(*run_cli([*base, "--steps", "7", "--epochs", "1"], capsys)[::2], "--steps and --epochs")


def test_pretrain_summary_without_evaluation_says_so(tmp_path, capsys, monkeypatch):
    """With data.eval_path empty the summary printed "top-1 on its 8 classes None%"."""

    import train.pretrain

    metrics = {"steps": 2, "final_loss": 2.0, "num_classes": 8, "eval_top1": None, "chance": 12.5}
    monkeypatch.setattr(train.pretrain, "pretrain", lambda cfg, out, resume=False: metrics)
    code, out, err = run_cli(["pretrain", "--config", "tiny", "--data", tmp_path, "--out", tmp_path / "r"], capsys)
    assert code == 0, err
    assert "top-1 on its 8 classes not measured" in out and "None" not in out, out


def test_under_torchrun_each_error_is_printed_once_by_the_rank_that_knows_it(tmp_path, capsys, monkeypatch):
    """Every rank raises the same line for a bad command (rank 0 prints it, once; a usage error too); a damaged
    sample in one rank's shards is printed by that rank, and rank 0, whose collective then fails, says so in one
    line instead of gloo's traceback."""

    import train.pretrain
    from train.errors import RankError

    argv = ["pretrain", "--config", "tiny", "--data", tmp_path, "--out", tmp_path / "r"]
    monkeypatch.setenv("WORLD_SIZE", "2")

    def fails_with(error):
        def pretrain(cfg, out, resume=False):
            raise error
        monkeypatch.setattr(train.pretrain, "pretrain", pretrain)

    monkeypatch.setenv("RANK", "1")
    fails_with(TrainError("bad option"))
    assert run_cli(argv, capsys)[::2] == (2, "")
    fails_with(RankError("shard s: sample k: cannot decode"))
    assert run_cli(argv, capsys)[::2] == (2, "error: rank 1: shard s: sample k: cannot decode\n")
    assert run_cli([*argv, "--steps", "0"], capsys)[::2] == (2, "")
    monkeypatch.setenv("RANK", "0")
    fails_with(RuntimeError("[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:1234"))
    code, _, err = run_cli(argv, capsys)
    assert (code, err) == (2, "error: another rank stopped the run (its error is printed above)\n")
    code, _, err = run_cli([*argv, "--steps", "0"], capsys)
    assert code == 2 and err.count("Invalid value for '--steps'") == 1


def test_an_eof_error_is_not_taken_for_ctrl_c(monkeypatch, tmp_path):
    """click turns EOFError into Abort ("aborted", 130 like Ctrl-C); a real one must stay itself."""
    import train.pretrain

    def eof(*args, **kwargs):
        raise EOFError("Ran out of input")

    monkeypatch.setattr(train.pretrain, "pretrain", eof)
    from train.__main__ import main

    old = sys.argv
    sys.argv = ["python -m train", "pretrain", "--config", "tiny", "--data", "x", "--out", str(tmp_path / "r")]
    try:
        with pytest.raises(EOFError, match="Ran out of input"):
            main()
    finally:
        sys.argv = old
