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
    card = render_card(tiny_dataset, repo_id="alice/one-frac")
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
    assert "search seconds" in body  # the measured timings
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


def test_generic_template_for_many_fractals_and_additive_mode(tiny_copy: Path) -> None:
    build = json.loads((tiny_copy / "build.json").read_text())
    build["config"].update(fractals=2, perturbation="additive")
    build["name"] = "fractals2-test: a 'quoted' name"
    (tiny_copy / "build.json").write_text(json.dumps(build))
    assert template_for(build) == CARDS_DIR / "generic.md"
    header, body = _split(render_card(tiny_copy))
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
    header, body = _split(render_card(root))
    assert "fractals" not in header["tags"]
    assert {"synthetic", "formula-driven", "webdataset", "gaussian-noise"} <= set(header["tags"])
    assert "Gaussian noise baseline" in body
    assert "| sigma | n/a (gaussian-noise) |" in body and "| Delta (perturbation degree) | 0.1 |" in body
