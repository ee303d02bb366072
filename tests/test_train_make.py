"""The Makefile's training targets: the commands they run (SMALL=1 offline on CPU), and the trainer's errors and
warnings in the make variables the user typed (``train/make_words.py``)."""

import logging
import re
import shutil
import subprocess

import pytest
from train_helpers import REPO, assert_one_line, run_cli

from train.cli import cli
from train.make_words import ENV, MakeWords, flag_options, in_make_words


def make_mapping(target: str) -> str:
    """The ``FRACGEN_TRAIN_MAKE`` value the Makefile exports for ``target``."""
    m = re.search(rf"^{re.escape(target)}: export {ENV} = (.*)$", (REPO / "Makefile").read_text(), re.M)
    assert m, f"the Makefile exports no {ENV} for {target}"
    return m.group(1)


def words_of(target: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in make_mapping(target).split())


@pytest.mark.parametrize("message,expected", [
    ("pass --data with an ImageFolder root", "pass FT_DATA= with an ImageFolder root"),
    ("pass --data (or finetune.data in s.yaml) with", "pass FT_DATA= (or finetune.data in s.yaml) with"),
    ("--out runs/x: not a folder", "RUN=runs/x: not a folder"),
    ("unknown dataset 'x' (--data): no such file", "unknown dataset 'x' (FT_DATA=): no such file"),
    ("data.path out/x has 3 classes", "FT_DATA=out/x has 3 classes"),
    ("checkpoint runs/t/model.safetensors: no config.json", "checkpoint runs/t/model.safetensors: no config.json"),
    ("data.workers: must be at most 2, the CPUs (got 8)",
     'data.workers: must be at most 2, the CPUs (got 8) (make: ARGS="--set data.workers=2")'),
    ("fewer than one batch of 768: lower train.batch_size to 32",
     'fewer than one batch of 768: lower train.batch_size to 32 (make: ARGS="--set train.batch_size=32")'),
    ("lower train.batch_size", 'lower train.batch_size (make: ARGS="--set train.batch_size=N")'),
    ("runs/ft holds a checkpoint: pass --resume or a new --out",
     'runs/ft holds a checkpoint: pass --resume or a new RUN= (make: ARGS="--resume")'),
    ("--probe-blocks 3 exceeds", '--probe-blocks 3 exceeds (make: ARGS="--probe-blocks ...")'),
    ("fewer than one batch of 50 (train.batch_size over 1 rank(s)): pass --batch-size 32 (train.batch_size) or less",
     'fewer than one batch of 50 (train.batch_size over 1 rank(s)): pass --batch-size 32 (train.batch_size) or less '
     '(make: ARGS="--batch-size ...")'),
])
def test_finetune_messages_name_the_make_variables(message, expected):
    assert in_make_words(message, words_of("finetune"), argv=[], switches=flag_options(cli)) == expected


def test_options_the_command_line_holds_get_no_hint_and_outside_make_nothing_changes():
    words = words_of("finetune")
    assert in_make_words("--steps and --epochs both set the length", words, argv=["--steps", "3", "--epochs", "2"]) \
        == "--steps and --epochs both set the length"
    assert in_make_words("lower train.batch_size", words, argv=["--set", "train.batch_size=9"]) == \
        "lower train.batch_size"
    assert in_make_words("pass --data with a folder", {}) == "pass --data with a folder"


def test_each_target_maps_the_options_it_passes():
    assert words_of("pretrain") == {"--data": "DATA", "data.path": "DATA", "--out": "RUN"}
    assert words_of("finetune")["--checkpoint"] == "CKPT"
    assert words_of("repro-small")["--cifar"] == "FT_DATA"
    assert words_of("sweep")["--data"] == "FT_DATA"


def test_an_error_through_make_names_ft_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(ENV, make_mapping("finetune"))
    argv = ["finetune", "--config", "tiny-finetune", "--data", tmp_path / "absent", "--out", tmp_path / "ft"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line(code, err, "FT_DATA=")
    assert "--data" not in err and not (tmp_path / "ft").exists()


def test_warnings_through_make_name_the_make_variables(monkeypatch):
    monkeypatch.setenv(ENV, make_mapping("pretrain"))
    record = logging.LogRecord("train", logging.WARNING, __file__, 1, "%s: --data %s is small", ("x", "out/d"), None)
    info = logging.LogRecord("train", logging.INFO, __file__, 1, "reading --data %s", ("out/d",), None)
    assert MakeWords().filter(record) and MakeWords().filter(info)
    assert record.getMessage() == "x: DATA=out/d is small"
    assert info.getMessage() == "reading --data out/d"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
@pytest.mark.parametrize("target,expected", [
    ("pretrain", ["fracgen build --sigma 3.5 --delta 0.1 --L 16 --size 64 --points 5000 --shard-size 8",
                  "fracgen-train pretrain --config tiny --data out/1p-frac-tiny --out runs/tiny"]),
    ("finetune", ["fracgen-train toy-data out/toy-images", "[ -f runs/tiny/model.safetensors ] ||",
                  "fracgen-train finetune --config tiny-finetune --data out/toy-images --checkpoint runs/tiny "
                  "--out runs/tiny-finetune"]),
    ("repro-small", ["fracgen-train toy-data out/toy-images",
                     "fracgen-train repro-small --cpu-check --budgets 5 --finetune-seconds 5 --cifar out/toy-images"]),
    ("sweep", ["fracgen-train toy-data out/toy-images", "fracgen-train sweep sweep-cpu --data out/toy-images"]),
])
def test_small_targets_make_their_data_here_and_download_nothing(target, expected):
    proc = subprocess.run(["make", "-n", "-C", str(REPO), target, "SMALL=1"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    recipe = " ".join(proc.stdout.replace("\\\n", " ").split())
    assert all(line in recipe for line in expected), recipe
    assert "cifar10" not in recipe
