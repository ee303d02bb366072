"""train.experiments.bench on CPU with a tiny model: every path measured, one Markdown table."""

import json
from pathlib import Path

import pytest
from train_helpers import (
    assert_one_line,
)

from train.experiments import bench

pytestmark = pytest.mark.usefixtures("restore_timm_ops")  # the bench may patch timm's posterize


def test_bench_measures_all_paths(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, js = tmp_path / "bench.md", tmp_path / "bench.json"
    rc = bench.main(["--data", str(tiny_dataset), "--img-size", "32", "--batch", "8", "--steps", "2",
                     "--warmup", "1", "--workers", "0", "--set", "model.kwargs={patch_size: 8, depth: 2}",
                     "--out", str(out), "--json", str(js)])
    assert rc == 0
    table = capsys.readouterr().out
    assert table == out.read_text()[: len(table)]
    assert "vit_tiny_patch16_224 at 32 px, batch 8" in table and "compile off" in table
    rows = {r["path"]: r for r in json.loads(js.read_text())["rows"]}
    assert set(rows) == {"model only (random tensors on the device)", "stream loader", "GPU-resident source",
                         "resident augmentation alone (no model)"}
    for row in rows.values():
        assert row["images_per_s"] and row["images_per_s"] > 0, row
    assert "ResidentSource" in rows["GPU-resident source"]["note"]
    assert "| model only (random tensors on the device) |" in table and "| 100% |" in table


def test_schedule_estimate_and_failed_rows() -> None:
    rows = [bench.Row("model only (random tensors on the device)", 12_000.0),
            bench.Row("GPU-resident source", 11_400.0), bench.Row("stream", None, "failed: TrainError: x")]
    context = dict(device="NVIDIA H100", torch="2", timm="1", others="fracgen 0", date="2026-01-01", load="0.1",
                   model="vit_tiny_patch16_224", img_size=224,
                   batch=256, amp="bf16", compile=True, steps=50, warmup=10, workers=16, data="d", recipe="r")
    table = bench.markdown(rows, context)
    assert "| GPU-resident source | 11,400 | 95% | 90 min |" in table  # 61.44M images / 11,400 per s
    assert "| stream | - | - | - | failed: TrainError: x |" in table


def test_bad_options_are_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--paths", "model,gpu"])
    assert "unknown ['gpu']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "0"])


def test_on_a_cpu_it_says_so_and_shows_progress_from_the_first_step(tiny_dataset: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    rc = bench.main(["--data", str(tiny_dataset), "--device", "cpu", "--paths", "model", "--img-size", "32",
                     "--batch", "8", "--steps", "2", "--warmup", "1",
                     "--set", "model.kwargs={patch_size: 8, depth: 2}"])
    assert rc == 0
    err = capsys.readouterr().err
    assert err.startswith("on a CPU (no CUDA device), CPU ") and "--img-size 64" in err
    updates = err.replace("\r", "\n")
    # the bar is drawn at step 0, before the first (slow) step, then after every step
    assert "model only (warm-up):   0%" in updates and "0/3" in updates
    assert "1/3" in updates and "3/3" in updates and "images/s" in updates
    assert updates.index("0/3") < updates.index("1/3") < updates.index("3/3")


def test_no_progress_keeps_stderr_to_the_cpu_notice(tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    rc = bench.main(["--data", str(tiny_dataset), "--device", "cpu", "--paths", "model", "--img-size", "32",
                     "--batch", "8", "--steps", "1", "--warmup", "0", "--no-progress",
                     "--set", "model.kwargs={patch_size: 8, depth: 2}"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "on a CPU" in err and "/1" not in err


def test_bench_json_into_a_folder_is_refused(tmp_path, capsys):
    from train.experiments import bench

    with pytest.raises(SystemExit):
        bench.parse_args(["--json", str(tmp_path)])
    assert_one_line(2, capsys.readouterr().err, f"--json: {tmp_path} is a folder")


def test_recipe_rows_stream_each_family_live_beside_its_shards(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """Two families: a recipe rendered by one worker and the same samples read from shards, with the workers that
    feed the model-only rate; the header says the date, the load and the versions."""
    js = tmp_path / "bench.json"
    rc = bench.main(["--config", "tiny", "--img-size", "32", "--batch", "8", "--steps", "2", "--warmup", "1",
                     "--set", "model.kwargs={patch_size: 8, depth: 2}", "--paths", "model", "--no-progress",
                     "--recipes", "1p-frac,gaussian-noise", "--data", str(_build(tmp_path / "ds")), "--json", str(js)])
    assert rc == 0
    table = capsys.readouterr().out
    record = json.loads(js.read_text())
    rows = {r["path"]: r for r in record["rows"]}
    assert list(rows)[1:] == [f"{f}: {k}, 1 worker" for f in ("1p-frac", "gaussian-noise")
                              for k in ("recipe, rendered", "shards, read")]
    model = rows["model only (random tensors on the device)"]["images_per_s"]
    for path, row in list(rows.items())[1:]:
        need = -(-model // row["images_per_s"])
        assert row["note"] == f"{need:.0f} worker{'s' if need > 1 else ''} feed{'' if need > 1 else 's'} model only"
        assert f"| {path} |" in table
    assert record["context"]["date"] in table and "numba " in table and "load " in table


def _build(root: Path) -> Path:
    from fracgen.build import BuildConfig, build

    build(BuildConfig(L=4, size=32, points=2000, shard_size=4), root, workers=1)
    return root
