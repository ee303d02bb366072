import io
import struct

import numpy as np
import pytest
from PIL import Image

from fracgen.encode import encode_png, grey_levels


def ihdr(data: bytes) -> tuple[int, int, int, int]:
    w, h, depth, colour = struct.unpack(">IIBB", data[16:26])
    return w, h, depth, colour


@pytest.mark.parametrize("levels,depth,colour", [(1, 1, 3), (2, 1, 3), (3, 2, 3), (4, 2, 3), (9, 4, 3), (16, 4, 3),
                                                 (17, 8, 0), (256, 8, 0)])
def test_round_trip_with_the_smallest_bit_depth(levels, depth, colour):
    rng = np.random.default_rng(levels)
    values = np.sort(rng.choice(256, levels, replace=False)).astype(np.uint8)
    image = values[rng.integers(0, levels, (23, 37))]
    data = encode_png(image)
    assert ihdr(data) == (37, 23, depth, colour)
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(data)).convert("L")), image)


def test_reference_look_is_a_one_bit_png_smaller_than_pillows():
    rng = np.random.default_rng(0)
    image = np.where(rng.random((512, 512)) < 0.2, 127, 0).astype(np.uint8)
    data = encode_png(image, levels=np.array([0, 127], np.uint8))
    assert ihdr(data)[2] == 1
    decoded = Image.open(io.BytesIO(data))
    np.testing.assert_array_equal(np.array(decoded.convert("RGB"))[..., 0], image)
    pil = io.BytesIO()
    Image.fromarray(image).save(pil, "PNG")
    assert len(data) < len(pil.getvalue())


def test_grey_levels():
    image = np.array([[0, 127], [127, 3]], np.uint8)
    assert grey_levels(image).tolist() == [0, 3, 127]
