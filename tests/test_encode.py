"""The PNG encoder: 8-bit images that decode to the stored values (the reader matrix is in test_readers.py), a
deflate stream zlib accepts (checksum included), and the old palette format kept for comparison."""

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
    from fracgen.deflate import deflate_two_level

    for image in list(two_level_images())[:20]:
        raw = np.hstack([np.zeros((image.shape[0], 1), np.uint8), image])
        stream = deflate_two_level(raw, int(image.max()) or 127, wide=wide)
        assert stream is not None and zlib.decompress(stream) == raw.tobytes()


def test_known_levels_give_the_same_bytes_as_a_histogram():
    rng = np.random.default_rng(1)
    image = np.where(rng.random((64, 64)) < 0.3, 127, 0).astype(np.uint8)
    assert encode_png(image, np.array([0, 127], np.uint8)) == encode_png(image)


@pytest.mark.parametrize("levels", [3, 16, 17, 256])
def test_many_levels_go_through_zlib(levels):
    rng = np.random.default_rng(levels)
    values = np.sort(rng.choice(256, levels, replace=False)).astype(np.uint8)
    image = values[rng.integers(0, levels, (23, 37))]
    data = encode_png(image)
    assert ihdr(data) == (37, 23, 8, 0)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


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
