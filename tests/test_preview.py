"""preview.png: base, perturbations, a difference view in which one changed pixel still shows."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fracgen.cli_publish import preview_command
from fracgen.errors import UsageError
from fracgen.preview import ONLY_FIRST, _difference, caption, preview


def _colour_pixels(image: Image.Image, colour: np.ndarray) -> int:
    return int(np.all(np.asarray(image.convert("RGB")) == colour, axis=-1).sum())


def test_preview_command_writes_the_image(tiny_copy: Path) -> None:
    result = CliRunner().invoke(preview_command, [str(tiny_copy)])
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip())
    assert path == tiny_copy / "preview.png"
    with Image.open(path) as image:
        assert image.width >= 600 and image.height >= 400
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels == 255).all(axis=-1).sum() > 1000  # lit fractal pixels, drawn white
    assert _colour_pixels(Image.fromarray(pixels), ONLY_FIRST) > 0  # the difference row


def test_caption_names_the_parameters(tiny_dataset: Path) -> None:
    text = caption(json.loads((tiny_dataset / "build.json").read_text()))
    for part in ("sigma=3.5", "Delta=0.1", "L=16", "seed=0"):
        assert part in text


def test_one_changed_pixel_is_visible_in_a_small_tile() -> None:
    a = np.zeros((512, 512), np.uint8)
    a[100:400, 200] = 127
    b = a.copy()
    b[250, 200] = 0  # a single pixel goes dark
    tile, changed = _difference(a, b, 160)
    assert changed == pytest.approx(1 / 512**2)
    assert _colour_pixels(tile, ONLY_FIRST) >= 1


def test_falls_back_to_class_zero_without_params(tiny_copy: Path, tmp_path: Path) -> None:
    (tiny_copy / "params.json").unlink()
    out = preview(tiny_copy, out=tmp_path / "p.png", count=3)
    assert out.is_file() and not (tiny_copy / "preview.png").exists()


def test_bad_count(tiny_dataset: Path) -> None:
    with pytest.raises(UsageError, match="count"):
        preview(tiny_dataset, count=0)
    result = CliRunner().invoke(preview_command, [str(tiny_dataset), "--count", "99"])
    assert result.exit_code == 2 and "--count" in result.output
