"""preview.png: base, perturbations, a difference view in which one changed pixel still shows; hostile records
and targets end in one line; the numba-free renderer it draws with gives the kernels' pixels."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line
from PIL import Image

from fracgen import dataset
from fracgen import preview as preview_module
from fracgen.cli import cli
from fracgen.errors import FracgenError, UsageError
from fracgen.preview import ONLY_FIRST, ONLY_SECOND, _difference, caption, preview


def _colour_pixels(image: Image.Image, colour: np.ndarray) -> int:
    return int(np.all(np.asarray(image.convert("RGB")) == colour, axis=-1).sum())


def test_preview_command_writes_the_image(tiny_copy: Path) -> None:
    result = CliRunner().invoke(cli, ["preview", str(tiny_copy)])
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


def test_one_moved_pixel_is_visible_in_a_small_tile() -> None:
    a = np.zeros((512, 512), np.uint8)
    a[100:400, 200] = 127
    b = a.copy()
    b[405, 200] = 127  # the branch reaches a few pixels further in b
    tile, changed = _difference(a, b, 160)
    assert 0 < changed < 0.01
    assert _colour_pixels(tile, ONLY_SECOND) >= 1
    assert _colour_pixels(tile, ONLY_FIRST) == 0


def test_patch_mask_noise_is_not_a_difference() -> None:
    """Two renders of one shape whose 3 x 3 patches have different random masks: no shape difference."""
    rng = np.random.default_rng(0)
    a, b = np.zeros((2, 512, 512), np.uint8)
    for image in (a, b):
        for y in range(150, 350, 3):
            for x in range(150, 350, 3):
                mask = rng.integers(1, 512)
                patch = ((mask >> np.arange(9)) & 1).reshape(3, 3) * 127
                image[y : y + 3, x : x + 3] = patch
                image[y + 1, x + 1] = 127  # every patch keeps its centre: the shape is the same
    assert (a != b).mean() > 0.01  # pixel by pixel they differ a lot
    _, changed = _difference(a, b, 160)
    assert changed < 0.01


def test_falls_back_to_class_zero_without_params(tiny_copy: Path, tmp_path: Path) -> None:
    (tiny_copy / "params.json").unlink()
    out = preview(tiny_copy, out=tmp_path / "p.png", count=3)
    assert out.is_file() and not (tiny_copy / "preview.png").exists()


def test_bad_count(tiny_dataset: Path) -> None:
    with pytest.raises(UsageError, match="count"):
        preview(tiny_dataset, count=0)
    result = CliRunner().invoke(cli, ["preview", str(tiny_dataset), "--count", "99"])
    assert result.exit_code == 2 and "--count" in result.output


def test_noise_images_get_an_intensity_difference_view(tmp_path: Path) -> None:
    from fracgen.build import BuildConfig, build

    root = tmp_path / "noise"
    build(BuildConfig(preset="uniform-noise", L=4, size=16, shard_size=4, seed=0), root, workers=1)
    build_json = json.loads((root / "build.json").read_text())
    assert "sigma" not in caption(build_json) and "Delta=0.1" in caption(build_json)
    with Image.open(preview(root)) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert _colour_pixels(Image.fromarray(pixels), ONLY_FIRST) == 0  # no binary-shape colours
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # the noise itself is shown, not a white square


def test_preview_never_writes_over_a_users_file(tiny_copy: Path, tmp_path: Path) -> None:
    """`--out` replaces only a file of the kind fracgen writes there (the dataset's own preview.png, or a preview
    an earlier run drew), never a user's notes, a shard of the dataset or the target of a link."""
    notes = tmp_path / "notes.png"
    notes.write_text("mine")
    shard = sorted(tiny_copy.glob("train-*.tar"))[0]
    before = shard.read_bytes()
    runner = CliRunner()
    for target in (notes, shard):
        one_line(runner.invoke(cli, ["preview", str(tiny_copy), "--out", str(target)]), "is not a preview drawn")
    assert notes.read_text() == "mine" and shard.read_bytes() == before
    again = tmp_path / "p.png"
    for _ in range(2):  # a preview fracgen drew is replaced by the next
        assert runner.invoke(cli, ["preview", str(tiny_copy), "--out", str(again)]).exit_code == 0
    (tiny_copy / "preview.png").symlink_to(notes)
    one_line(runner.invoke(cli, ["preview", str(tiny_copy)]), "is a link")
    assert notes.read_text() == "mine"


def test_preview_survives_a_newline_in_the_name(tiny_copy):
    record = json.loads((tiny_copy / "build.json").read_text())
    record["name"] = "a\nb"
    (tiny_copy / "build.json").write_text(json.dumps(record))
    result = CliRunner().invoke(cli, ["preview", str(tiny_copy)])
    assert result.exit_code == 0, result.output


def test_preview_out_on_a_folder_that_cannot_be_written(tiny_dataset):
    out = "/proc/fracgen-no-such/p.png"  # read-only even for root
    one_line(CliRunner().invoke(cli, ["preview", str(tiny_dataset), "--out", out]), "--out folder /proc/fracgen-no-such cannot be written")


def test_preview_out_on_a_full_disk_leaves_nothing(tiny_dataset, tmp_path, monkeypatch):
    def full(path, data, then="rerun with --resume"):
        raise FracgenError(f"disk full while writing {path}; free space and {then}")

    monkeypatch.setattr(preview_module, "write_atomic", full)
    out = tmp_path / "new" / "folders" / "p.png"
    one_line(CliRunner().invoke(cli, ["preview", str(tiny_dataset), "--out", str(out)]), "disk full")
    assert not (tmp_path / "new").exists()  # the folders it made for it are taken back


def test_preview_of_an_undecodable_image(tiny_copy):
    for shard in (0, 1):
        samples = [{k: v for k, v in x.items() if k != "__url__"} | {"png": b"\x89PNG\r\n\x1a\nbroken"}
                   for x in dataset.iter_shard(tiny_copy / dataset.shard_name(shard))]
        dataset.write_shard(tiny_copy, shard, samples)
    one_line(CliRunner().invoke(cli, ["preview", str(tiny_copy)]), "cannot decode")


def test_the_plain_patches_are_the_kernels_patch_rows():
    from fracgen import plain_render
    from fracgen.kernels import chaos

    patches = plain_render._patches()  # the renderer pastes each patch row as 3 bits: bit j = pixel (i, j)
    assert set(np.unique(patches)) == {0, chaos.VALUE}
    np.testing.assert_array_equal(((patches > 0) << np.arange(3)).sum(axis=2), chaos.ROW_BITS)


@pytest.mark.parametrize("style", ["reference", "points"])
def test_the_plain_renderer_draws_the_kernels_pixels(style: str) -> None:
    from fracgen import ifs, plain_render
    from fracgen.kernels import chaos
    from fracgen.seeds import choice_uniforms, draw_masks, generator

    rng = generator(7, 99)
    for k in range(4):
        maps, _ = ifs.sample_system(2 + k % 2, 3.5, rng)
        maps = maps * (3.0 if k == 3 else 1.0)  # the last one diverges
        probs = ifs.probabilities(maps)
        uniforms = choice_uniforms(7, k, 4000)
        masks = draw_masks(rng, 4000)
        canvas = chaos.Canvas(48, 4000)
        fill = chaos.render(maps, probs, uniforms, masks, canvas.image, canvas.points, style)
        image, plain_fill = plain_render.render(maps, probs, uniforms, masks, 48, style)
        assert plain_fill == fill
        if fill >= 0:
            np.testing.assert_array_equal(image, canvas.image)
    assert fill == -1.0  # the check above covered a divergent system too
