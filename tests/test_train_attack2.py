"""Second hostile round on the trainer: a damaged ``state.pt`` on ``--resume`` (F-RES3), ``--resume`` of a complete
run (F-RES4), a loss or metric that is not finite (F-NAN). Each refusal is one line, exit 2, folder untouched.
One torch thread, tiny ViT, a few steps."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from train.config import load_config
from train.pretrain import pretrain

QUICK = ["data.source=stream", "train.batch_size=8", "train.log_every=1", "data.eval_path=''", "train.steps=6"]


def cfg_of(data, *overrides):
    return load_config("tiny", [*QUICK, *overrides], {"data.path": str(data)})


def cli(argv, capsys):
    """``python -m train ARGV`` in this process: (exit status, stdout, stderr)."""
    from train.__main__ import main

    old = sys.argv
    sys.argv = ["python -m train", *map(str, argv)]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def assert_one_line(code, err, *fragments):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def resume_argv(data, out):
    argv = ["pretrain", "--config", "tiny", "--data", data, "--out", out, "--resume"]
    for item in QUICK:
        argv += ["--set", item]
    return argv


@pytest.fixture(scope="module")
def stopped(tiny_dataset, tmp_path_factory):
    """A run of 6 steps stopped at step 2 with a checkpoint (train.stop_at)."""
    out = tmp_path_factory.mktemp("attack2") / "st"
    assert pretrain(cfg_of(tiny_dataset, "train.stop_at=2"), out)["steps"] == 2
    return out


@pytest.fixture(scope="module")
def complete(tiny_dataset, tmp_path_factory):
    """A complete run of 6 steps."""
    out = tmp_path_factory.mktemp("attack2") / "done"
    assert pretrain(cfg_of(tiny_dataset), out)["steps"] == 6
    return out


# ------------------------------------------------------------------------------------ damaged state.pt (F-RES3)
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_state_file_is_one_line_and_the_folder_is_untouched(stopped, tiny_dataset, tmp_path, damage,
                                                                       capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    state = run / "state.pt"
    data = state.read_bytes()
    state.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"PK\x03\x04" + b"x" * 500}[damage])
    before = snapshot(run)
    code, _, err = cli(resume_argv(tiny_dataset, run), capsys)
    assert_one_line(code, err, f"{state} is damaged")
    assert snapshot(run) == before


def test_a_state_file_damaged_inside_its_archive_is_one_line(stopped, tiny_dataset, tmp_path):
    """A zip whose central directory is intact but whose pickle is not: found when torch loads it."""
    import zipfile

    from train.errors import TrainError

    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    with zipfile.ZipFile(run / "state.pt") as src:
        names = src.namelist()
        entries = {n: src.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("/data.pkl"))
    entries[pkl] = b"\x80\x02garbage"
    with zipfile.ZipFile(run / "state.pt", "w", zipfile.ZIP_STORED) as dst:
        for n in names:
            dst.writestr(n, entries[n])
    with pytest.raises(TrainError, match=r"state\.pt is damaged"):
        pretrain(cfg_of(tiny_dataset), run, resume=True)


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


def image_folder(root: Path, classes=("cat", "dog"), train=10, test=4, size=16) -> Path:
    """A small ImageFolder root (train/, test/) of flat-colour PNGs, one colour per class."""
    from PIL import Image

    for split, count in (("train", train), ("test", test)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (size, size), (40 * c + 3 * i, 200 - 40 * c, 90)).save(root / split / name / f"{i}.png")
    return root


def ft_cfg(data, *overrides):
    return load_config("tiny-finetune", ["train.epochs=1", "train.batch_size=10", "train.log_every=1", *overrides],
                       {"data.path": str(data)})


# ----------------------------------------------------------------------------- --resume of a complete run (F-RES4)
def test_resume_of_a_complete_run_says_so_and_leaves_the_folder_byte_identical(complete, tiny_dataset, tmp_path,
                                                                                capsys):
    run = tmp_path / "run"
    shutil.copytree(complete, run)
    before = snapshot(run)
    code, out, err = cli(resume_argv(tiny_dataset, run), capsys)
    assert code == 0 and f"{run} is complete (6 steps); nothing to do" in out, (code, out, err)
    assert snapshot(run) == before
    # another total is another run, still refused
    code, _, err = cli([*resume_argv(tiny_dataset, run), "--steps", "9"], capsys)
    assert_one_line(code, err, "train.steps=6, this command gives 9")
    assert snapshot(run) == before


def test_a_run_killed_after_its_last_checkpoint_reports_its_logged_loss(complete, tiny_dataset, tmp_path):
    """Killed between the final checkpoint and metrics.json: --resume finishes it with finite metrics."""
    from train.run_folder import write_status

    run = tmp_path / "run"
    shutil.copytree(complete, run)
    (run / "metrics.json").unlink()
    write_status(run, "running")
    logged = [line.split(",") for line in (run / "log.csv").read_text().splitlines()[1:] if line.split(",")[4]]
    m = pretrain(cfg_of(tiny_dataset), run, resume=True)
    assert m["steps"] == 6 and m["final_loss"] == pytest.approx(float(logged[-1][2]))
    text = (run / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["final_loss"] == m["final_loss"]
    assert "nan" not in (run / "log.csv").read_text()


def test_resume_of_a_complete_finetune_does_nothing(complete, tmp_path):
    from train.finetune import finetune

    data = image_folder(tmp_path / "if")
    cfg = ft_cfg(data, f"finetune.checkpoint={complete}")
    first = finetune(cfg, tmp_path / "ft")
    before = snapshot(tmp_path / "ft")
    again = finetune(ft_cfg(data, f"finetune.checkpoint={complete}"), tmp_path / "ft", resume=True)
    assert again["already_complete"] and again["top1"] == first["top1"]
    assert snapshot(tmp_path / "ft") == before
