"""The family registry: every registered family is complete, and a family is one module and a registry line (a toy
family defined here, and nowhere else, builds, verifies, previews and gets its card like the built-in ones)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fracgen.build import BuildConfig, build
from fracgen.card import render_card
from fracgen.cli import cli
from fracgen.options import Option
from fracgen.presets import registry
from fracgen.preview import preview
from fracgen.seeds import CLASS, generator
from fracgen.verify import verify


class Stripes(registry.Family):
    """L classes of vertical stripes, each class its own phase and every image a little noise."""

    name = "toy-stripes"
    description = "toy stripes: L classes of vertical stripes of one width, each class its own phase."
    options = frozenset({"L", "size", "seed", "shard_size", "instances", "stripe_width"})
    own_options = (Option("stripe_width", int, 4, "Pixels per stripe.", lo=1, hi=64),)
    defaults = {"size": 32, "instances": 2}
    max_instances = 8
    fast_png = True

    def render_one(self, plan, label, instance):
        cfg = plan.config
        rng = generator(cfg.seed, CLASS, label, instance)
        columns = (np.arange(cfg.size) + label) // cfg.stripe_width % 2 * 200
        image = np.broadcast_to(columns, (cfg.size, cfg.size)).astype(np.uint8)
        image = image + rng.integers(0, 20, image.shape, dtype=np.uint8)
        return image, {"label": label, "instance": instance, "phase": label % (2 * cfg.stripe_width)}

    def card_text(self, config, params):
        return {"differences": "- A toy: no released code to depart from."}


@pytest.fixture(scope="module")
def stripes():
    before = registry.option_table()
    family = registry.register(Stripes())
    yield family
    registry.unregister(family.name)
    assert registry.option_table() == before  # unregister is register's inverse, its own options included


def test_a_toy_family_builds_verifies_previews_and_has_a_card(stripes, tmp_path):
    config = BuildConfig(preset="toy-stripes", L=5, stripe_width=3, shard_size=4, seed=1)
    config.validate()
    assert config.num_classes == 5 and config.num_samples == 10 and config.size == 32
    result = build(config, tmp_path / "toy", workers=2)
    assert result.complete and result.num_shards == 3
    assert verify(tmp_path / "toy").ok
    assert preview(tmp_path / "toy").is_file()
    card = render_card(tmp_path / "toy", license="cc0-1.0")
    assert "toy stripes" in card and "no released code" in card and "| stripe_width | `3` |" in card
    recorded = json.loads((tmp_path / "toy" / "build.json").read_text())
    assert recorded["config"]["stripe_width"] == 3 and "sigma" not in recorded["config"]
    assert recorded["name"] == "toy-stripes-L5"
    again = build(config, tmp_path / "again", workers=1)  # the same bytes whatever the worker count
    for shard in range(again.num_shards):
        name = f"train-{shard:06d}.tar"
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "toy" / name).read_bytes()


def test_a_toy_familys_options_are_checked_from_its_own_table_rows(stripes):
    with pytest.raises(Exception, match="--stripe-width must be in \\[1, 64\\], got 0"):
        BuildConfig(preset="toy-stripes", stripe_width=0).validate()
    with pytest.raises(Exception, match="--instances must be in \\[1, 8\\]"):
        BuildConfig(preset="toy-stripes", instances=9).validate()
    assert BuildConfig(preset="toy-stripes").to_json().keys() >= {"stripe_width", "L"}
    assert "stripe_width" not in BuildConfig().to_json()  # other families' records do not change


def test_a_toy_build_verifies_from_the_command_line(stripes, tmp_path):
    build(BuildConfig(preset="toy-stripes", L=3, shard_size=8), tmp_path / "toy", workers=1)
    result = CliRunner().invoke(cli, ["verify", str(tmp_path / "toy")])
    assert result.exit_code == 0 and result.output.startswith("OK:"), result.output


def test_every_family_is_complete():
    from fracgen.presets import families, option_table

    classes = {"1p-frac": 15, "fractaldb": 3, "ofdb": 3, "3d-ofdb": 7, "rcdb": 7, "visualatom": 7}
    for name, family in families().items():
        assert family.name == name and family.description and family.options <= set(option_table())
        cfg = BuildConfig(preset=name, fractals=3, L=5, categories=7)
        cfg.validate()
        assert cfg.num_classes == classes.get(name, 5)
        command = "build-real" if family.takes_source else "build"
        assert cfg.name() and cfg.command().startswith(f"fracgen {command} ")
