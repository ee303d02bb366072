"""train.data.recipe: a recipe as pre-training data, rendered while the run trains: the stream and the resident
source give what the full build of the same options gives, fresh patch masks where they apply, and refusals."""
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from train_helpers import assert_one_line, assert_same_weights, cli, start_cli, tiny_cfg, wait_for_step

from fracgen import dataset
from train.data.recipe import RecipeShards, open_data_recipe, render_images
from train.data.stream import ShardFiles, StreamSource
from train.errors import TrainError
from train.pretrain import pretrain


def _build(root: Path, recipe_only: bool = True, **options) -> Path:
    from fracgen.build import BuildConfig, build

    build(BuildConfig(**{**TINY, **options}), root, workers=1, recipe_only=recipe_only)
    return root


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory) -> Path:
    """The recipe of ``tiny_dataset``: the same options, no shards. Read-only."""
    return _build(tmp_path_factory.mktemp("recipe") / "ds")


def _batches(data, *overrides, count=3, epoch=0):
    source = StreamSource(tiny_cfg(data, *overrides), torch.device("cpu"), 0, 1) if isinstance(data, Path) else data
    batches = source.batches(epoch)
    try:
        return [next(batches) for _ in range(count)]
    finally:
        batches.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_the_live_stream_of_a_recipe_is_the_stored_stream_of_its_build(tiny_recipe, tiny_dataset, workers):
    assert not list(tiny_recipe.glob("*.tar"))
    for epoch in (0, 1):
        built = _batches(tiny_dataset, f"data.workers={workers}", epoch=epoch)
        live = _batches(tiny_recipe, f"data.workers={workers}", epoch=epoch)
        for (images, labels), (live_images, live_labels) in zip(built, live, strict=True):
            assert torch.equal(images, live_images) and torch.equal(labels, live_labels)


@pytest.mark.parametrize("shards, every", [([1, 0], None), ([0, 1], (0, 3)), ([1, 0], (1, 3)), ([0, 1], (2, 3))])
def test_each_reader_renders_what_it_would_read_from_the_shards(tiny_recipe, tiny_dataset, shards, every):
    """Readers that do not divide the shards keep every n-th sample: the recipe renders only those."""
    from train.data.shards import plan_shards, read_info

    files = ShardFiles(plan_shards(str(tiny_dataset), read_info(str(tiny_dataset))), 16)
    stored = list(files.samples(shards, every, (0, 0, 0)))
    rendered = list(RecipeShards(open_data_recipe(str(tiny_recipe))).samples(shards, every, (0, 0, 0)))
    assert len(stored) == len(rendered) == (16 if every is None else len(range(every[0], 16, every[1])))
    for (image, label), (live, live_label) in zip(stored, rendered, strict=True):
        assert label == live_label and np.array_equal(image, live)


@pytest.mark.parametrize("rank, world, split", [(0, 1, False), (1, 2, True)])
def test_the_resident_source_renders_the_images_the_shards_hold(tiny_recipe, tiny_dataset, rank, world, split):
    from train.data.resident import load_images

    stored, labels = load_images(tiny_dataset, rank=rank, world_size=world, split_ranks=split)
    rendered, live_labels = render_images(open_data_recipe(str(tiny_recipe)), rank, world, split, threads=2)
    assert np.array_equal(stored, rendered) and np.array_equal(labels, live_labels)


@pytest.mark.parametrize("source", ["resident", "stream"])
def test_pretraining_on_a_recipe_ends_with_the_weights_of_its_build(tiny_recipe, tiny_dataset, tmp_path, source):
    metrics = [pretrain(tiny_cfg(data, f"data.source={source}", "train.steps=4", "data.eval_path=null"),
                        tmp_path / name) for name, data in (("built", tiny_dataset), ("live", tiny_recipe))]
    assert metrics[0]["source"] == metrics[1]["source"] == ("ResidentSource" if source == "resident" else "StreamSource")
    assert metrics[0]["eval_top1"] == metrics[1]["eval_top1"]  # the evaluation set: the first samples, rendered
    assert_same_weights(tmp_path / "built", tmp_path / "live")


def test_a_recipe_is_an_evaluation_set_as_its_build_is(tiny_recipe, tiny_dataset, tmp_path):
    from train.data.pretraining import make_pretrain_eval_loader

    loaders = [make_pretrain_eval_loader(tiny_cfg(tiny_dataset, f"data.eval_path={data}")) for data in
               (tiny_dataset, tiny_recipe)]
    (built, labels), (live, live_labels) = (next(iter(loader)) for loader in loaders)
    assert len(built) == 16 and torch.equal(built, live) and torch.equal(labels, live_labels)


def test_the_command_line_pretrains_on_a_recipe(tiny_recipe, tmp_path, capsys):
    code, err = cli(["pretrain", "--config", "tiny", "--data", tiny_recipe, "--out", tmp_path / "run", "--steps", "2"],
                    capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["num_classes"] == 16


@pytest.mark.slow
def test_a_sigtermed_live_run_with_workers_resumes_to_the_weights_of_a_straight_one(tiny_recipe, tmp_path):
    """The stream renders in two DataLoader workers, fresh masks at every showing: SIGTERM, --resume, same end."""
    steps, extra = 30, ["--set", "data.workers=2", "--set", "data.fresh_masks=true"]
    proc = start_cli(tiny_recipe, tmp_path / "stopped", steps, *extra)
    wait_for_step(proc, tmp_path / "stopped", 3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    status = json.loads((tmp_path / "stopped" / "run.json").read_text())
    assert status["status"] == "stopped" and 3 <= status["step"] < steps, status
    overrides = (f"train.steps={steps}", "data.workers=2", "data.fresh_masks=true")
    assert pretrain(tiny_cfg(tiny_recipe, *overrides), tmp_path / "stopped", resume=True)["steps"] == steps
    pretrain(tiny_cfg(tiny_recipe, *overrides), tmp_path / "straight")
    assert_same_weights(tmp_path / "straight", tmp_path / "stopped")


# ------------------------------------------------------------------------------------------------ fresh masks
def test_fresh_masks_change_with_each_showing_and_repeat_with_the_seed(tiny_recipe):
    recipe = open_data_recipe(str(tiny_recipe))
    stored = list(RecipeShards(recipe).samples([0], None, (0, 0, 0)))
    fresh = RecipeShards(recipe, fresh=True)
    first, again, later = (list(fresh.samples([0], None, key)) for key in ((0, 0, 0), (0, 0, 0), (0, 0, 1)))
    assert [label for _, label in first] == [label for _, label in stored] == [label for _, label in later]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, again, strict=True))
    assert sum(not np.array_equal(a, b) for (a, _), (b, _) in zip(first, later, strict=True)) >= len(first) // 2
    assert sum(not np.array_equal(a, b) for (a, _), (b, _) in zip(first, stored, strict=True)) >= len(first) // 2


def test_fresh_masks_stream_under_auto_and_change_the_batches(tiny_recipe):
    source = StreamSource(tiny_cfg(tiny_recipe, "data.fresh_masks=true"), torch.device("cpu"), 0, 1)
    assert source.data.fresh
    from train.data.pretraining import make_source

    auto = make_source(tiny_cfg(tiny_recipe, "data.source=auto", "data.fresh_masks=true"), torch.device("cpu"), 0, 1)
    assert type(auto).__name__ == "StreamSource" and auto.data.fresh
    plain = _batches(tiny_recipe)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(plain, _batches(auto), strict=True))


@pytest.fixture(scope="session")
def noise_recipe(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("noise") / "ds", preset="gaussian-noise", L=4, size=32, shard_size=4)


@pytest.mark.parametrize("case, fragment", [
    ("built", "data.fresh_masks: {data} is not a recipe"),
    ("resident", "data.fresh_masks: the resident source renders the recipe once"),
    ("no-masks", "data.fresh_masks: --preset gaussian-noise draws no patch masks to draw afresh"),
])
def test_fresh_masks_are_refused_in_one_line_where_they_cannot_apply(case, fragment, tiny_dataset, tiny_recipe,
                                                                     noise_recipe, tmp_path, capsys):
    data = {"built": tiny_dataset, "resident": tiny_recipe, "no-masks": noise_recipe}[case]
    source = "resident" if case == "resident" else "stream"
    code, err = cli(["pretrain", "--config", "tiny", "--data", data, "--out", tmp_path / "run", "--steps", "2",
                     "--img-size", "32", "--set", "data.fresh_masks=true", "--set", f"data.source={source}"], capsys)
    assert_one_line(code, err, fragment.format(data=data))
    assert not (tmp_path / "run").exists()


def test_fresh_masks_on_a_recipe_without_its_class_records_are_refused_in_one_line(tiny_recipe, tmp_path):
    import shutil

    from fracgen.recipe import open_recipe
    from train.data.recipe import check_fresh

    root = tmp_path / "ds"
    shutil.copytree(tiny_recipe, root)
    from conftest import rewrite_record

    params = json.loads((root / dataset.PARAMS_JSON).read_text())
    rewrite_record(root, dataset.PARAMS_JSON, dict(params, classes=[]))
    with pytest.raises(TrainError, match="^data.fresh_masks: .*params.json records 0 classes"):
        check_fresh(tiny_cfg(root, "data.fresh_masks=true"), open_recipe(root))


# ------------------------------------------------------------------------------------------------ refusals
def test_data_verify_true_is_refused_for_a_recipe(tiny_recipe, tmp_path, capsys):
    code, err = cli(["pretrain", "--config", "tiny", "--data", tiny_recipe, "--out", tmp_path / "run", "--steps", "2",
                     "--set", "data.verify=true"], capsys)
    assert_one_line(code, err, f"data.verify=true: {tiny_recipe} is a recipe, whose images are rendered")
    assert not (tmp_path / "run").exists()


def test_a_recipe_verify_refuses_is_refused_in_its_words(tiny_recipe, tmp_path, capsys):
    import shutil

    from fracgen.verify import verify

    root = tmp_path / "ds"
    shutil.copytree(tiny_recipe, root)
    params = json.loads((root / dataset.PARAMS_JSON).read_text())
    params["classes"][0]["perturbation"] = [9, 9, 9]
    (root / dataset.PARAMS_JSON).write_text(json.dumps(params))
    said = verify(root).lines()[1].split(": ", 1)[1]
    code, err = cli(["pretrain", "--config", "tiny", "--data", root, "--out", tmp_path / "run", "--steps", "2"], capsys)
    assert_one_line(code, err, f"recipe {root}", said)
    assert not (tmp_path / "run").exists()


def test_a_recipe_too_large_for_the_machine_is_refused_in_one_line(tiny_recipe, tmp_path, monkeypatch, capsys):
    """A recipe whose records agree with each other but whose plan alone needs more memory than the machine has: the
    memory refusal, before anything is allocated."""
    import hashlib
    import shutil

    from fracgen.folder import dump_json
    from fracgen.verify import verify

    root = tmp_path / "ds"
    shutil.copytree(tiny_recipe, root, ignore=shutil.ignore_patterns(dataset.INTERNAL))
    build = json.loads((root / dataset.BUILD_JSON).read_text())
    half = TINY["L"] * 6_250_000_000 // 2  # two shards, as the recipe lists
    build["config"].update(patch_variants=6_250_000_000, shard_size=half)
    build["num_samples"] = 2 * half
    for shard in build["shards"]:
        shard["num_samples"] = half
    info = json.loads((root / dataset.INFO_JSON).read_text())
    info["splits"]["train"].update(num_samples=2 * half, shard_lengths=[half, half])
    (root / dataset.INFO_JSON).write_bytes(dump_json(info))
    build["records"][dataset.INFO_JSON] = hashlib.sha256(dump_json(info)).hexdigest()
    (root / dataset.BUILD_JSON).write_text(json.dumps(build))
    monkeypatch.setattr("fracgen.config.available_memory", lambda: 64 << 30)
    problems = verify(root).dataset_problems  # it renders the first samples: the plan is refused first
    assert len(problems) == 1 and problems[0].startswith("--patch-variants 6250000000 needs about"), problems
    code, err = cli(["pretrain", "--config", "tiny", "--data", root, "--out", tmp_path / "run", "--steps", "2"], capsys)
    assert_one_line(code, err, f"recipe {root}: dataset: --patch-variants 6250000000 needs about")
    assert not (tmp_path / "run").exists()


def test_resume_on_another_recipe_is_refused(tiny_recipe, tmp_path):
    other = _build(tmp_path / "other", seed=1)
    pretrain(tiny_cfg(tiny_recipe, "train.steps=4", "train.stop_at=2"), tmp_path / "run")
    with pytest.raises(TrainError, match="--resume: .*dataset.recipe_sha256"):
        pretrain(tiny_cfg(other, "train.steps=4"), tmp_path / "run", resume=True)
    assert pretrain(tiny_cfg(tiny_recipe, "train.steps=4"), tmp_path / "run", resume=True)["steps"] == 4
