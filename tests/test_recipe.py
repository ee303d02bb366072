"""Recipes: a folder of records that renders, live or by `--resume`, exactly the stored dataset of the same
options, for every family."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import one_line, rewrite_record
from test_pins import CASES, photo

from fracgen import dataset
from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.errors import UsageError
from fracgen.recipe import open_recipe
from fracgen.verify import verify


@pytest.mark.parametrize("case", CASES)
def test_a_recipe_renders_every_stored_sample(case, tmp_path):
    options, _ = CASES[case]
    source = photo(tmp_path) if options.get("preset") == "real" else None
    build(BuildConfig(**options), tmp_path / "full", workers=1, source=source)
    build(BuildConfig(**options), tmp_path / "recipe", workers=1, source=source, recipe_only=True)
    assert not list((tmp_path / "recipe").glob("train-*.tar")) and verify(tmp_path / "recipe").ok
    recipe = pickle.loads(pickle.dumps(open_recipe(tmp_path / "recipe")))  # as a DataLoader worker gets it
    info = dataset.read_info(tmp_path / "full")
    stored = [s for name in info.train.filenames for s in dataset.iter_shard(tmp_path / "full" / name)]
    assert len(recipe) == len(stored) == info.train.num_samples
    for i, sample in enumerate(stored):
        live = recipe[i]
        image, label = dataset.check_sample(sample, dataset.Expect(info.num_classes))
        assert live["__key__"] == sample["__key__"] and live["cls"] == label
        assert live["json"] == json.loads(sample["json"])
        assert live["image"].dtype == image.dtype and (live["image"] == image).all(), (case, i)
    for name in ("params.json", "_info.json"):
        assert (tmp_path / "recipe" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    assert "## A recipe" in (tmp_path / "recipe" / "README.md").read_text()


def test_resuming_a_recipe_renders_the_full_build(tmp_path):
    options, _ = CASES["1p-frac"]
    build(BuildConfig(**options), tmp_path / "full", workers=1)
    result = CliRunner().invoke(cli, ["build", "--L", "12", "--points", "3000", "--shard-size", "5", "--size", "64",
                                      "--recipe-only", "--no-progress", str(tmp_path / "recipe")])
    assert result.exit_code == 0 and "wrote the recipe" in result.output, result.output
    assert sum(p.stat().st_size for p in (tmp_path / "recipe").iterdir() if p.is_file()) < 64_000
    result = CliRunner().invoke(cli, ["build", "--resume", "--no-progress", str(tmp_path / "recipe")])
    assert result.exit_code == 0, result.output
    for shard in (tmp_path / "full").glob("train-*.tar"):
        assert (tmp_path / "recipe" / shard.name).read_bytes() == shard.read_bytes()
    assert verify(tmp_path / "recipe").ok


def test_a_downloaded_dataset_renders_again_and_must_match_its_recorded_bytes(tmp_path):
    options, _ = CASES["rcdb"]
    build(BuildConfig(**options), tmp_path / "full", workers=1)
    hub = tmp_path / "hub"  # what a Hub download holds: the records, no .fracgen
    hub.mkdir()
    for name in ("build.json", "params.json", "_info.json", "README.md"):
        (hub / name).write_bytes((tmp_path / "full" / name).read_bytes())
    assert build(None, hub, workers=1, resume=True).complete
    assert (hub / "train-000000.tar").read_bytes() == (tmp_path / "full" / "train-000000.tar").read_bytes()
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in ("params.json", "_info.json", "README.md"):
        (tampered / name).write_bytes((tmp_path / "full" / name).read_bytes())
    record = json.loads((tmp_path / "full" / "build.json").read_text())
    record["shards"][1]["sha256"] = "0" * 64
    (tampered / "build.json").write_text(json.dumps(record))
    result = CliRunner().invoke(cli, ["build", "--resume", "--no-progress", str(tampered)])
    assert result.exit_code == 2 and "renders other bytes than the published ones" in result.output


def test_recipe_only_refuses_a_shard_range(tmp_path):
    result = CliRunner().invoke(cli, ["build", "--L", "8", "--recipe-only", "--shard-range", "0:1", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--shard-range does not apply" in result.output
    assert not (tmp_path / "r").exists()


def test_a_recipe_previews_and_publishes_its_records_only(tmp_path):
    from fracgen.preview import preview
    from fracgen.publish import push_to_hub

    options, _ = CASES["1p-frac"]
    build(BuildConfig(**options), tmp_path / "full", workers=1)
    build(BuildConfig(**options), tmp_path / "recipe", workers=1, recipe_only=True)
    assert preview(tmp_path / "recipe").is_file()
    for root, flag in ((tmp_path / "recipe", False), (tmp_path / "full", True)):  # a recipe, or a build as one
        dry = Path(push_to_hub(root, "alice/frac", dry_run=tmp_path / f"dry-{flag}", license="mit", recipe=flag))
        listing = json.loads((dry / "files.json").read_text())
        assert not [f for f in listing["files"] if f["path_in_repo"].endswith(".tar")]
        assert "## A recipe" in (dry / "README.md").read_text()
        sent = json.loads((dry / "build.json").read_text())
        assert "recipe" in sent and all(("sha256" in r) == flag for r in sent["shards"])
    rendered = tmp_path / "rendered"  # what a user of the published recipe of the full build gets
    rendered.mkdir()
    for name in ("build.json", "params.json", "_info.json"):
        (rendered / name).write_bytes((tmp_path / "dry-True" / name).read_bytes())
    assert verify(rendered).ok and build(None, rendered, workers=1, resume=True).complete
    assert (rendered / "train-000001.tar").read_bytes() == (tmp_path / "full" / "train-000001.tar").read_bytes()


@pytest.mark.parametrize("case", ["1p-frac", "1p-frac-variants", "fractaldb", "ofdb-variants-released"])
def test_fresh_masks_keep_the_points_and_change_with_the_key(case, tmp_path):
    options, _ = CASES[case]
    build(BuildConfig(**options), tmp_path / "r", workers=1, recipe_only=True)
    recipe = open_recipe(tmp_path / "r")
    stored = recipe[0]["image"]
    one, again, other = (recipe.fresh(0, key)["image"] for key in ((1,), (1,), (2,)))
    assert (one == again).all() and (one != other).any() and (one != stored).any()  # seeded by the key
    # the class's points under other masks: the lit cells' 3 x 3 blocks cover the same places
    assert abs(int((one > 0).sum()) - int((stored > 0).sum())) < 0.5 * (stored > 0).sum()
    assert recipe.fresh(0, (1,))["cls"] == recipe[0]["cls"]


def test_fresh_masks_are_refused_where_a_family_draws_none(tmp_path):
    options, _ = CASES["rcdb"]
    build(BuildConfig(**options), tmp_path / "r", workers=1, recipe_only=True)
    with pytest.raises(Exception, match="draws no patch masks"):
        open_recipe(tmp_path / "r").fresh(0, (0,))


def _recipe(tmp_path: Path, **changes) -> Path:
    """A 1p-frac recipe as the Hub serves it (no builder's records) whose build.json config has ``changes`` (an
    option given None is removed)."""
    options, _ = CASES["1p-frac"]
    root = tmp_path / "recipe"
    build(BuildConfig(**options), root, workers=1, recipe_only=True)
    shutil.rmtree(root / dataset.INTERNAL)
    record = json.loads((root / "build.json").read_text())
    config = {k: v for k, v in {**record["config"], **changes}.items() if v is not None}
    (root / "build.json").write_text(json.dumps(dict(record, config=config)))
    return root


def test_a_recipe_lacking_options_is_refused_by_every_reader_alike(tmp_path):
    """Rendering, previewing, verifying and resuming read a recipe's config with one parser: none renders the
    options it lacks with this version's defaults."""
    root = _recipe(tmp_path, delta=None, perturbation=None)
    with pytest.raises(UsageError, match="build.json: config lacks delta, perturbation"):
        open_recipe(root)
    one_line(CliRunner().invoke(cli, ["preview", str(root)]), "build.json: config lacks delta, perturbation")
    report = verify(root)
    assert not report.ok and "build.json: config lacks delta, perturbation" in report.dataset_problems
    assert CliRunner().invoke(cli, ["build", "--resume", "--no-progress", str(root)]).exit_code == 2
    assert not (root / "preview.png").exists() and not list(root.glob("train-*.tar"))


@pytest.mark.parametrize("option,value", [("L", 10**12), ("size", 200_000), ("points", 10**12),
                                          ("patch_variants", 6_250_000_000)])
def test_a_recipe_too_large_for_the_machine_is_the_memory_refusal(tmp_path, monkeypatch, option, value):
    monkeypatch.setattr("fracgen.config.available_memory", lambda: 64 << 30)
    root = _recipe(tmp_path, **{option: value})
    flag = "--" + option.replace("_", "-")
    with pytest.raises(UsageError, match=f"^{flag} {value} needs about .* GiB of memory"):
        open_recipe(root)


def test_fresh_masks_need_a_record_of_each_class(tmp_path):
    root = _recipe(tmp_path)
    params = json.loads((root / "params.json").read_text())
    rewrite_record(root, "params.json", dict(params, classes=[]))
    with pytest.raises(UsageError, match="params.json records 0 classes, not one for each of the 12 labels"):
        open_recipe(root).fresh(0, (1,))


def test_a_recipe_whose_params_json_changed_since_the_build_is_refused(tmp_path):
    """params.json steers every image a recipe renders: one build.json does not record renders nothing."""
    root = _recipe(tmp_path)
    params = json.loads((root / "params.json").read_text())
    params["systems"][0]["maps"][0][0] += 0.01
    (root / "params.json").write_text(json.dumps(params))
    with pytest.raises(UsageError, match="params.json was changed after the build"):
        open_recipe(root)
