"""Dataset cards: YAML header fields, the build's own figures in the body, both templates."""

import json
import re
from pathlib import Path

import pytest
import yaml

from fracgen.card import CARDS_DIR, render_card, render_template, size_category, template_for
from fracgen.errors import UsageError


def _split(card: str) -> tuple[dict, str]:
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1)), match.group(2)


def test_1p_frac_card_header_and_body(tiny_dataset: Path) -> None:
    build = json.loads((tiny_dataset / "build.json").read_text())
    card = render_card(tiny_dataset, license="cc-by-4.0", repo_id="alice/one-frac")
    header, body = _split(card)
    assert header["license"] == "cc-by-4.0"
    assert header["task_categories"] == ["image-classification"]
    assert header["size_categories"] == ["n<1K"]
    assert {"synthetic", "fractals", "formula-driven", "webdataset"} <= set(header["tags"])
    assert header["pretty_name"] == "1p-frac (sigma 3.5, Delta 0.1, L 16)"
    assert header["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "train-*.tar"}]}
    ]
    # the data_files glob matches exactly the shards of the build
    assert sorted(p.name for p in tiny_dataset.glob("train-*.tar")) == sorted(
        s["filename"] for s in build["shards"]
    )

    assert "{{" not in card and "}}" not in card
    assert build["command"] in body
    for package, version in build["versions"].items():
        assert f"| {package} | `{version}` |" in body
    assert "| sigma (sigma-factor of the base system) | 3.5 |" in body
    assert "| Delta (perturbation degree) | 0.1 |" in body
    assert "| L (perturbations per fractal) | 16 |" in body
    assert "| N (affine maps per system) | 2 |" in body
    assert "| perturbation mode | multiplicative |" in body
    assert re.search(r"\| build time \| [0-9.]+ seconds on 1 worker \([^|]+ logical cores\), .*for 16 images \|", body)
    assert "![preview" in body and "(preview.png)" in body
    assert 'load_dataset("webdataset"' in body and 'load_dataset("alice/one-frac"' in body
    assert 'create_dataset("wds/' in body and "wds.WebDataset(" in body
    assert "train-{000000..000001}.tar" in body
    assert "@inproceedings{nakamura2024scaling" in body and "Kataoka, Hirokatsu" in body and "ECCV" in body
    assert "multiplicative, as in the released code" in body and "Eq. 9" in body


def test_license_option_and_bad_license(tiny_dataset: Path) -> None:
    header, _ = _split(render_card(tiny_dataset, license="mit"))
    assert header["license"] == "mit"
    with pytest.raises(UsageError, match="--license"):
        render_card(tiny_dataset, license="CC BY: 4.0")
    with pytest.raises(UsageError, match="choose the dataset's licence"):
        render_card(tiny_dataset)  # nobody chose one: no default


def test_generic_template_for_many_fractals_and_additive_mode(tiny_copy: Path) -> None:
    build = json.loads((tiny_copy / "build.json").read_text())
    build["config"].update(fractals=2, perturbation="additive")
    build["name"] = "fractals2-test: a 'quoted' name"
    (tiny_copy / "build.json").write_text(json.dumps(build))
    assert template_for(build) == CARDS_DIR / "generic.md"
    header, body = _split(render_card(tiny_copy, license="cc-by-4.0"))
    assert header["pretty_name"] == "fractals2-test: a 'quoted' name"  # JSON-quoted: YAML-safe
    assert "formula-driven" in header["tags"]
    assert "| option | value |" in body and "| fractals | `2` |" in body
    assert "additive, as in the paper's Eq. 9" in body


def test_size_categories() -> None:
    assert [size_category(n) for n in (16, 1000, 99_999, 1_000_000)] == [
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "1M<n<10M",
    ]


def test_unknown_placeholder_is_an_error() -> None:
    assert render_template("a {{x}} b", {"x": "1"}) == "a 1 b"
    with pytest.raises(UsageError, match="tpyo"):
        render_template("{{tpyo}}", {"typo": "1"})


def test_noise_preset_gets_the_generic_card(tmp_path: Path) -> None:
    from fracgen.build import BuildConfig, build

    root = tmp_path / "noise"
    build(BuildConfig(preset="gaussian-noise", L=4, size=16, shard_size=4, seed=0), root, workers=1)
    header, body = _split(render_card(root, license="cc0-1.0"))
    assert "fractals" not in header["tags"]
    assert {"synthetic", "formula-driven", "webdataset", "gaussian-noise"} <= set(header["tags"])
    assert "Gaussian noise baseline" in body
    assert "| Delta (perturbation degree) | 0.1 |" in body and "| image | 16 x 16 8-bit RGB PNG |" in body
    for ifs_option in ("sigma", "maps", "points", "style", "perturbation", "fractals", "min_fill"):
        assert f"| {ifs_option} |" not in body and f"| `{ifs_option}`" not in body, ifs_option
    assert "affine maps" not in body and "chaos-game points" not in body


def _photo(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = np.zeros((48, 48, 3), np.uint8)
    photo[8:40, 12:36] = rng.integers(40, 255, 3, dtype=np.uint8)
    Image.fromarray(photo).save(path)
    return path


def test_real_image_card_names_the_photo_s_licence_and_provenance(tmp_path: Path) -> None:
    from fracgen.build import BuildConfig, build

    root = tmp_path / "real"
    build(BuildConfig(preset="real", L=3, size=16, shard_size=4, seed=0), root, workers=1,
          source=_photo(tmp_path / "photo.png"))
    header, body = _split(render_card(root, license="cc-by-4.0", source_license="cc-by-sa-4.0",
                                      source_url="https://example.org/photo"))
    assert "formula-driven" not in header["tags"] and "fractals" not in header["tags"]
    assert "| licence of the photo | `cc-by-sa-4.0` |" in body
    assert "| provenance (where the photo comes from) | https://example.org/photo |" in body
    for ifs_option in ("sigma", "maps", "points", "style", "perturbation", "min_fill"):
        assert f"| `{ifs_option}`" not in body and f"| {ifs_option} |" not in body, ifs_option
    assert "| geometric transform | affine |" in body
    _, unstated = _split(render_card(root, license="cc-by-4.0"))
    assert "| licence of the photo | **not stated**" in unstated
    with pytest.raises(UsageError, match="--source-license"):
        render_card(root, license="cc-by-4.0", source_license="Some Licence")


def test_build_time_in_words() -> None:
    from fracgen.card import _build_time

    timing = {"wall_seconds_this_call": 125.4, "workers": 2, "images_this_call": 1000, "search_seconds": 0.3}
    assert _build_time(timing, 1000) == ("2 minutes 5 seconds on 2 workers, of which 0.3 seconds searching the "
                                         "base systems, for 1,000 images")
    timing.update(wall_seconds_this_call=7300, images_this_call=10, search_seconds=0)
    assert _build_time(timing, 1000) == "2 hours 1 minutes on 2 workers, for the last 10 of 1,000 images (the " \
        "build was resumed)"
    assert _build_time({}, 5) == "not recorded"
    timing.update(search_seconds=0.3, images_this_call=1000, machine="AMD EPYC 7B13,  2 logical cores")
    assert _build_time(timing, 1000, from_file=True) == (
        "2 hours 1 minutes on 2 workers (AMD EPYC 7B13, 2 logical cores), of which 0.3 seconds checking the base "
        "systems of the params file, for 1,000 images")


def _hub_folder(root: Path, out: Path, **card) -> Path:
    """A folder shaped like the Hub repo: the card as README.md beside the shards and records."""
    import shutil

    out.mkdir()
    for path in root.iterdir():
        if path.is_file():
            shutil.copy(path, out / path.name)
    (out / "README.md").write_text(render_card(root, license="cc-by-4.0", **card), encoding="utf-8")
    return out


@pytest.mark.parametrize("preset", ["1p-frac", "fractaldb", "gaussian-noise", "real"])
def test_a_hub_shaped_folder_loads_with_a_class_label(preset: str, tmp_path: Path, tiny_dataset: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from fracgen.build import BuildConfig, build

    if preset == "1p-frac":
        root = tiny_dataset
    else:
        root = tmp_path / "ds"
        options = {"fractaldb": dict(fractals=2, instances=2, points=3000, min_fill=0.05),
                   "gaussian-noise": dict(L=3), "real": dict(L=3)}[preset]
        build(BuildConfig(preset=preset, size=32, shard_size=4, seed=0, **options), root, workers=1,
              source=_photo(tmp_path / "photo.png") if preset == "real" else None)
    built = json.loads((root / "build.json").read_text())
    hub = _hub_folder(root, tmp_path / "hub")
    ds = datasets.load_dataset(str(hub), split="train", cache_dir=str(tmp_path / "cache"))
    cls = ds.features["cls"]
    assert isinstance(cls, datasets.ClassLabel) and cls.num_classes == built["num_classes"]
    assert cls.names == [str(k) for k in range(built["num_classes"])]
    assert isinstance(ds.features["png"], datasets.Image)
    assert len(ds) == built["num_samples"]
    row = ds[0]
    assert row["json"]["label"] == row["cls"]
    assert row["png"].size == (built["config"]["size"],) * 2


def test_a_patch_variants_card_says_images_per_class_and_loads_with_its_class_count(tmp_path: Path) -> None:
    """--patch-variants K: K images a class; the card must not say "one image per perturbation", must name the
    `variant` field, and a Hub-shaped folder loads with a ClassLabel of L classes over L x K samples."""
    from fracgen.build import BuildConfig, build

    root = tmp_path / "aug"
    build(BuildConfig(L=4, patch_variants=3, size=32, points=2000, shard_size=5, seed=0), root, workers=1)
    header, body = _split(render_card(root, license="cc0-1.0"))
    assert "one image per perturbation" not in body
    assert "3 images per class" in body and "`variant`" in body
    assert "| images (samples) | 12 |" in body and "| classes | 4 " in body
    datasets = pytest.importorskip("datasets")
    hub = _hub_folder(root, tmp_path / "hub")
    ds = datasets.load_dataset(str(hub), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.features["cls"].num_classes == 4 and len(ds) == 12
    assert sorted(ds["cls"]) == [c for c in range(4) for _ in range(3)]
    assert sorted(row["json"]["variant"] for row in ds) == [v for v in range(3) for _ in range(4)]


@pytest.mark.parametrize("preset", ["fractaldb", "ofdb"])
def test_fractaldb_and_ofdb_cards_describe_their_own_search_not_1p_frac_redraws(preset: str) -> None:
    """FractalDB/OFDB draw no perturbation: their fill is the category search's criterion (FractalDB's own render
    at fixed settings), their seeds are (seed, category, patch instance), and their released scripts render 362 px
    with 200,000 points; the 1p-frac wording (a perturbation redrawn, seeds by perturbation) would be false."""
    from fracgen.presets import get

    config = {"preset": preset, "fractals": 3, "min_fill": 0.2, "points": 5000, "size": 64, "style": "reference",
              "max_redraws": 100}
    text = get(preset).card_text(config, None)["differences"]
    assert "perturbation is drawn again" not in text and "(seed, fractal, perturbation)" not in text
    assert "FractalDB's search" in text and "0.2" in text
    assert "released: 362" in text and "200,000 points" in text


def test_a_patch_variants_build_is_not_named_like_the_plain_one() -> None:
    """`_info.json`'s name (timm's `wds/NAME`) and the card's title tell a K-variant 1p-frac from the plain build
    of the same sigma, Delta and L, as OFDB's `-augK` does."""
    from fracgen.config import BuildConfig

    plain, aug = BuildConfig(L=4), BuildConfig(L=4, patch_variants=3)
    assert plain.name() == "1p-frac-sigma3.5-delta0.1-L4" and aug.name() == "1p-frac-sigma3.5-delta0.1-L4-aug3"
    assert BuildConfig(preset="ofdb", fractals=2, patch_variants=3).name() == "ofdb-2-aug3"


def test_a_params_file_build_shows_the_files_sigma_not_the_search_options(tmp_path: Path) -> None:
    """--params takes the systems from a file: the card and name show its measured sigma-factor and its maps (3
    here), not the --sigma / --maps defaults build.json records beside them."""
    from conftest import TINY

    from fracgen.build import BuildConfig, build

    sierpinski = [[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0.25, 0.5]]
    (tmp_path / "p.json").write_text(json.dumps({"maps": sierpinski, "sigma": 4.25}))
    build(BuildConfig(**{**TINY, "L": 4, "shard_size": 4}), tmp_path / "d", workers=1, params=tmp_path / "p.json")
    recorded = json.loads((tmp_path / "d" / "build.json").read_text())
    assert recorded["config"]["sigma"] == 3.5 and recorded["config"]["maps"] == 2  # the defaults, unused
    assert recorded["name"] == "1p-frac-params-delta0.1-L4"
    header, body = _split(render_card(tmp_path / "d", license="mit"))
    assert header["pretty_name"] == "1p-frac (params file, sigma 4.25, Delta 0.1, L 4)"
    assert "| sigma (sigma-factor of the base system) | 4.25 (measured; the base system came from a params file) |" \
        in body
    assert "| N (affine maps per system) | 3 |" in body
    assert "sigma target" not in body and "read from a params file" in body
    assert "| sigma | 3.5 |" not in body and "| margin |" not in body  # the recorded config table


def test_a_built_folder_and_its_dry_run_load_labelled_with_datasets(tiny_copy: Path, tmp_path: Path) -> None:
    """A build carries its card, so `datasets.load_dataset(folder)` gives `cls` as a ClassLabel as the Hub will;
    `push-to-hub --dry-run DIR` writes a folder that loads the same way."""
    datasets = pytest.importorskip("datasets")
    from fracgen.publish import push_to_hub

    built = json.loads((tiny_copy / "build.json").read_text())
    header, _ = _split((tiny_copy / "README.md").read_text())
    assert header["license"] == "other"
    dry = Path(push_to_hub(tiny_copy, "alice/one-frac", dry_run=tmp_path / "dry", license="cc-by-4.0"))
    assert _split((dry / "README.md").read_text())[0]["license"] == "cc-by-4.0"
    for folder in (tiny_copy, dry):
        ds = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache" / folder.name))
        cls = ds.features["cls"]
        assert isinstance(cls, datasets.ClassLabel) and cls.names == [str(k) for k in range(built["num_classes"])]
        assert len(ds) == built["num_samples"] and ds[0]["json"]["label"] == ds[0]["cls"]
    assert (dry / "train-000000.tar").read_bytes() == (tiny_copy / "train-000000.tar").read_bytes()
