"""The PNG encoder: 8-bit images that decode to the stored values (the reader matrix is in test_readers.py),
deflate streams zlib accepts (checksum included) from both kernels, and the old palette format kept for
comparison."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fracgen.encode import encode_palette_png, encode_png, grey_levels


def ihdr(data: bytes) -> tuple[int, int, int, int]:
    w, h, depth, colour = struct.unpack(">IIBB", data[16:26])
    return w, h, depth, colour


def idat(data: bytes) -> bytes:
    """The IDAT payload of a PNG with one IDAT chunk."""
    at = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[at - 4:at])
    return data[at + 4:at + 4 + length]


def scanlines(image: np.ndarray) -> bytes:
    rows = image.reshape(image.shape[0], -1)
    return np.hstack([np.zeros((rows.shape[0], 1), np.uint8), rows]).tobytes()


def two_level_images():
    """Two-level images of awkward shapes and contents (widths not a multiple of 8, long runs, noise)."""
    rng = np.random.default_rng(0)
    for trial in range(60):
        h, w = rng.integers(1, 90, 2)
        value = int(rng.choice([127, 255, 1, int(rng.integers(1, 256))]))
        image = np.where(rng.random((h, w)) < rng.random(), value, 0).astype(np.uint8)
        if trial % 3 == 0:
            image[: h // 2] = 0  # long runs: copies longer than 258 bytes
        if trial % 5 == 0:
            image[:, : w // 2] = value
        yield image
    yield np.zeros((40, 1000), np.uint8)  # one run of 40,040 bytes
    yield np.full((3, 3), 127, np.uint8)
    yield np.full((17, 33), 200, np.uint8)  # one level that is not 0: with the filter bytes, two values


@pytest.mark.parametrize("image", list(two_level_images()), ids=lambda im: f"{im.shape}")
def test_two_level_images_are_8_bit_grey_and_decode_exactly(image):
    data = encode_png(image)
    assert ihdr(data) == (image.shape[1], image.shape[0], 8, 0)
    assert zlib.decompress(idat(data)) == scanlines(image)  # zlib also checks the Adler-32
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, image)


@pytest.mark.parametrize("wide", [0, 3])
def test_both_literal_word_writers_give_a_valid_stream(wide):
    from fracgen.kernels.deflate import deflate_two_level

    for image in list(two_level_images())[:20]:
        raw = np.hstack([np.zeros((image.shape[0], 1), np.uint8), image])
        stream = deflate_two_level(raw, int(image.max()) or 127, wide=wide)
        assert stream is not None and zlib.decompress(stream) == raw.tobytes()


def test_known_levels_give_the_same_bytes_as_a_histogram():
    rng = np.random.default_rng(1)
    image = np.where(rng.random((64, 64)) < 0.3, 127, 0).astype(np.uint8)
    assert encode_png(image, np.array([0, 127], np.uint8)) == encode_png(image)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("levels", [3, 16, 17, 256])
def test_many_levels(levels, fast):
    rng = np.random.default_rng(levels)
    values = np.sort(rng.choice(256, levels, replace=False)).astype(np.uint8)
    image = values[rng.integers(0, levels, (23, 37))]
    data = encode_png(image, fast=fast)
    assert ihdr(data) == (37, 23, 8, 0)
    assert idat(data)[:2] == (b"\x78\x01" if fast else b"\x78\x9c")  # the kernel's header, or zlib level 6's
    assert zlib.decompress(idat(data)) == scanlines(image)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def many_level_images():
    """Awkward images for the few-distance deflate: sizes, runs, copies only the row above or its neighbours
    give, and rows too long for the stride distance."""
    rng = np.random.default_rng(3)
    yield "1x1", np.array([[7]], np.uint8)
    yield "1x2", np.array([[7, 9]], np.uint8)
    yield "one row", rng.integers(0, 4, (1, 300), dtype=np.uint8)
    yield "one column", rng.integers(0, 3, (200, 1), dtype=np.uint8)
    for h, w in [(3, 5), (9, 13), (31, 7), (64, 63), (17, 100)]:
        yield f"few levels {h}x{w}", rng.integers(0, 3, (h, w), dtype=np.uint8) * 60
        yield f"noise {h}x{w}", rng.integers(0, 256, (h, w), dtype=np.uint8)
    yield "one value", np.full((20, 30), 200, np.uint8)
    yield "256 levels", np.arange(256 * 9, dtype=np.uint8).reshape(36, 64)
    runs = np.full((12, 1000), 255, np.uint8)
    runs[::3, 500] = 7  # runs longer than 258 (cut into pieces) broken by single pixels
    yield "long runs", runs
    stripes = np.tile(rng.integers(0, 256, 41, dtype=np.uint8), (30, 1))
    yield "vertical stripes", stripes  # only the row above repeats
    lines = np.full((80, 90), 255, np.uint8)
    for k in range(12):  # diagonals of many greys: copies from the row above, one pixel to either side
        rows = np.arange(80)
        lines[rows, (rows + 7 * k) % 90] = 10 + 20 * k
        lines[rows, (3 * k - rows) % 90] = 13 + 20 * k
    yield "diagonals", lines
    contour = np.full((64, 64), 255, np.uint8)
    contour[10:50, 20] = np.arange(40, dtype=np.uint8)
    contour[30, :] = 90
    yield "lines", contour
    yield "wide rows (stride > 32768)", np.tile(rng.integers(0, 5, (3, 1), dtype=np.uint8) * 50, (1, 40000))
    skewed = rng.permutation(np.repeat(np.arange(20, dtype=np.uint8) * 7, 2 ** np.arange(20) // 16 + 1))
    wide = skewed[:60000].reshape(2, 30000)
    wide[0, 100:350] = rng.integers(0, 256, 250)
    wide[1, 100:350] = wide[0, 100:350]  # a copy from 30,001 bytes back (13 extra bits) with a rare length code
    yield "token wider than 32 bits", wide
    skew = np.repeat(np.arange(19, dtype=np.uint8), 2 ** np.arange(19) // 8 + 1)
    yield "skewed counts", rng.permutation(skew)[: skew.size // 256 * 256].reshape(-1, 256)


@pytest.mark.parametrize("name,image", list(many_level_images()), ids=lambda x: x if isinstance(x, str) else "")
def test_the_few_distance_deflate_gives_the_scanlines(name, image):
    from fracgen.kernels.deflate_many import deflate_grey

    for above in [(-1, 0, 1), (0,), ()]:
        stream = deflate_grey(image, above)
        assert zlib.decompress(stream) == scanlines(image), above  # zlib checks the Adler-32 too
        assert stream[-4:] == struct.pack(">I", zlib.adler32(scanlines(image)))
    data = encode_png(image, fast=True)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_the_few_distance_deflate_compresses_runs_and_rows():
    from fracgen.kernels.deflate_many import deflate_grey

    images = dict(many_level_images())
    assert len(deflate_grey(images["long runs"])) < 300  # 12,012 bytes: runs, not literals (160 of header)
    stripes = images["vertical stripes"]  # 1,260 bytes: one row, then copies of it
    assert len(deflate_grey(stripes)) < 0.3 * len(deflate_grey(stripes, ()))
    diagonals = images["diagonals"]
    assert len(deflate_grey(diagonals)) < 0.6 * len(deflate_grey(diagonals, (0,)))  # stride -+ 1 pays


def test_the_kernel_takes_at_most_three_offsets():
    from fracgen.kernels.deflate_many import deflate_grey

    with pytest.raises(ValueError, match="at most 3"):
        deflate_grey(np.zeros((4, 4), np.uint8), (-2, -1, 0, 1))


def test_rgb_through_the_kernel():
    image = np.random.default_rng(5).integers(0, 256, (19, 21, 3), dtype=np.uint8)
    data = encode_png(image, fast=True)
    assert ihdr(data) == (21, 19, 8, 2) and idat(data)[:2] == b"\x78\x01"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_big_endian_machines_fall_back_to_zlib(monkeypatch):
    from fracgen.kernels import deflate, deflate_many

    monkeypatch.setattr(deflate.sys, "byteorder", "big")
    monkeypatch.setattr(deflate_many.sys, "byteorder", "big")
    rng = np.random.default_rng(6)
    for image in [rng.integers(0, 9, (30, 40), dtype=np.uint8), np.where(rng.random((30, 40)) < 0.5, 127, 0)]:
        image = image.astype(np.uint8)
        data = encode_png(image, fast=True)
        assert idat(data)[:2] == b"\x78\x9c"  # zlib level 6
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_two_level_value():
    from fracgen.kernels.deflate import two_level_value

    rng = np.random.default_rng(7)
    assert two_level_value(np.array([[0]], np.uint8)) == 0
    assert two_level_value(np.array([[9]], np.uint8)) == 9
    for h, w in [(1, 2), (3, 5), (9, 17), (40, 64)]:
        image = np.where(rng.random((h, w)) < 0.5, 200, 0).astype(np.uint8)
        image.flat[0] = 200
        assert two_level_value(image) == 200
        assert two_level_value(np.zeros((h, w), np.uint8)) == 0
        assert two_level_value(np.full((h, w), 9, np.uint8)) == 9
        for at in [-1, h * w // 2]:  # a third value in the tail, or inside a word
            third = image.copy()
            third.flat[at] = 5
            assert two_level_value(third) is None


@pytest.mark.parametrize("kind", ["rcdb", "visualatom"])
def test_contour_images_round_trip_smaller_than_raw(kind):
    from fracgen.presets import contours as contour_params

    image, _ = contour_params.render_image(kind, 0, 3, 0, 256)
    data = encode_png(image, fast=True)
    assert idat(data)[:2] == b"\x78\x01"
    assert zlib.decompress(idat(data)) == scanlines(image)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)
    assert len(data) < 0.5 * image.size


def test_rgb_is_8_bit_rgb():
    image = np.random.default_rng(2).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    data = encode_png(image)
    assert ihdr(data) == (11, 9, 8, 2)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_the_reference_look_is_compressed_well():
    rng = np.random.default_rng(0)
    image = np.zeros((512, 512), np.uint8)
    image[100:400, 150:350] = np.where(rng.random((300, 200)) < 0.4, 127, 0)
    data = encode_png(image, np.array([0, 127], np.uint8))
    pillow = io.BytesIO()
    Image.fromarray(image).save(pillow, "PNG")  # zlib level 6 on the same 8-bit data
    assert len(data) < 1.5 * len(pillow.getvalue())
    assert len(data) < image.size / 4


@pytest.mark.parametrize("levels,depth", [(1, 1), (2, 1), (3, 2), (4, 2), (9, 4), (16, 4), (17, 8)])
def test_the_old_palette_format(levels, depth):
    rng = np.random.default_rng(levels)
    values = np.sort(rng.choice(256, levels, replace=False)).astype(np.uint8)
    image = values[rng.integers(0, levels, (23, 37))]
    data = encode_palette_png(image)
    assert ihdr(data) == (37, 23, depth, 3 if depth < 8 else 0)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("L")), image)


def test_grey_levels():
    image = np.array([[0, 127], [127, 3]], np.uint8)
    assert grey_levels(image).tolist() == [0, 3, 127]
