"""build-real's fill check, the counterpart of the fractals' --min-fill (issue 9, item 10)."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.errors import FracgenError
from fracgen.presets import real as realimage

ARGS = ["--L", "4", "--size", "32", "--shard-size", "2", "--workers", "1", "--no-progress"]


def checker(tmp_path, shape=(48, 48)):
    path = tmp_path / "checker.png"
    Image.fromarray(((np.indices(shape).sum(0) // 6) % 2 * 255).astype(np.uint8)).save(path)
    return path


def test_a_delta_that_moves_every_image_out_of_view_is_refused(tmp_path):
    cfg = BuildConfig(preset="real", L=4, size=32, shard_size=2, edges="none", delta=100.0, max_redraws=3)
    with pytest.raises(FracgenError, match="kept the image in view"):
        build(cfg, tmp_path / "out", workers=1, source=checker(tmp_path))
    assert not list((tmp_path / "out").glob("train-*"))  # no blank image was written


def test_every_image_of_a_real_build_keeps_its_fill(tmp_path):
    from fracgen import dataset

    out = tmp_path / "out"
    assert CliRunner().invoke(cli, ["build-real", str(checker(tmp_path)), str(out), "--edges", "none",
                                    "--delta", "0.5", *ARGS]).exit_code == 0
    source = realimage.fill(realimage.prepare(realimage.load_image(checker(tmp_path), 32), edges="none"))
    for shard in range(2):
        for sample in dataset.iter_shard(out / dataset.shard_name(shard)):
            assert realimage.fill(dataset.decode_grey(sample["png"])) >= realimage.MIN_KEPT * source
