"""A sample's bytes: PNG decoding, and the checks of a shard's samples and files against the dataset's records,
which ``fracgen verify`` and the trainer share."""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fracgen.dataset.names import BUILD_JSON, KEY_RE, SAMPLE_EXTS, SHARD_GLOB, DatasetError


def decode_image(data: bytes, mode: str = "L") -> np.ndarray:
    """Image bytes -> uint8 array, fully decoded so truncated data fails (DatasetError if it does not decode).

    ``mode`` "L" gives (H, W) grey (old builds' palette PNGs too: {0, 127}), "RGB" gives (H, W, 3).
    """
    from PIL import Image  # Pillow costs ~50 ms to import; the writer never needs it

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert(mode), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, ValueError, SyntaxError... for bad bytes
        raise DatasetError(f"cannot decode the image ({type(e).__name__}: {e})") from None


def decode_grey(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W) uint8 grey, as every reader of the shards sees a sample (DatasetError if undecodable)."""
    return decode_image(data, "L")


PNG_GREY, PNG_RGB, PNG_PALETTE = 0, 2, 3  # PNG colour types; palette: earlier fracgens' images
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR = {"fractal": PNG_GREY, "L": PNG_GREY, "RGB": PNG_RGB}


def png_colour_type(data: bytes) -> int | None:
    """The colour type in a PNG's header (``PNG_GREY``, ``PNG_RGB``, ``PNG_PALETTE``...), None if not a PNG."""
    return data[25] if len(data) > 25 and data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" else None


@dataclass(frozen=True)
class Expect:
    """What every sample of a dataset is, by its records (None: not recorded, not checked).

    Attributes:
        num_classes: labels are in [0, num_classes).
        size: images are size x size px.
        mode: "fractal" (8-bit grey, values {0, 127}, something lit), "L" (8-bit grey) or "RGB" (8-bit RGB).
        per_class: label = the key's index // per_class.
    """

    num_classes: int
    size: int | None = None
    mode: str | None = None
    per_class: int | None = None


class SampleError(DatasetError):
    """A sample that is not what its records say; ``kind`` is "sample" (its members or key), "label", "image" or
    "palette" (a 1-bit palette PNG, the format of earlier fracgen builds)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def check_sample(sample: dict[str, Any], expect: Expect) -> tuple[np.ndarray, int]:
    """The image and label of a shard's sample, checked as its build wrote them.

    Checks: a key of 8 digits, exactly the members png, cls and json; cls a label's plain digits in range, equal to
    the json's label and to the key's index // per_class; the png a whole PNG (every chunk's CRC, nothing after
    IEND) of the build's colour type, 8-bit, size x size, fully decodable (the fractal look: values {0, 127},
    something lit).

    Returns:
        The decoded image ((H, W) uint8 grey or (H, W, 3) uint8 RGB, as stored) and the label.

    Raises:
        SampleError: naming the sample and the first problem.
    """
    key = sample.get("__key__", "?")
    missing = [ext for ext in SAMPLE_EXTS if ext not in sample]
    extra = sorted(set(sample) - {"__key__", "__url__", *SAMPLE_EXTS})
    if missing or extra or not KEY_RE.match(key):
        why = (f"lacks {', '.join(missing)}" if missing else f"holds members no build writes: {', '.join(extra)}"
               if extra else "key is not 8 digits")
        raise SampleError(f"sample {key!r} {why}", "sample")
    label = check_label(sample, expect)
    return _image(key, sample["png"], expect), label


def check_label(sample: dict[str, Any], expect: Expect) -> int:
    """A sample's label, checked: cls a label's plain digits in range, equal to its json's label and to the key's
    index // per_class (SampleError of kind "label" otherwise)."""
    key = sample.get("__key__", "?")
    try:
        label = int(sample["cls"].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        label = -1
    if str(label).encode() != sample["cls"] or label < 0:
        raise SampleError(f"sample {key} cls {sample['cls'][:20]!r} is not a label's plain digits", "label")
    if not 0 <= label < expect.num_classes:
        raise SampleError(f"sample {key} label {label} is outside 0..{expect.num_classes - 1}", "label")
    try:
        meta = json.loads(sample["json"])
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise SampleError(f"sample {key} json does not parse", "label") from None
    if not isinstance(meta, dict) or meta.get("label") != label:
        raise SampleError(f"sample {key} json label {meta.get('label') if isinstance(meta, dict) else None} != "
                          f"cls {label}", "label")
    if expect.per_class and int(key) // expect.per_class != label:
        raise SampleError(f"sample {key} label {label} is not its index // {expect.per_class}", "label")
    return label


def _image(key: str, data: bytes, expect: Expect) -> np.ndarray:
    problem = png_problem(data)
    if problem:
        raise SampleError(f"sample {key} png {problem}", "image")
    depth, colour = data[24], data[25]
    if colour == PNG_PALETTE:
        raise SampleError(f"sample {key} png is a palette PNG (an earlier fracgen's format)", "palette")
    wanted = (_COLOUR[expect.mode],) if expect.mode else (PNG_GREY, PNG_RGB)
    if depth != 8 or colour not in wanted:
        raise SampleError(f"sample {key} png is {depth}-bit of colour type {colour}, not the build's 8-bit "
                          f"{'grey' if wanted == (PNG_GREY,) else 'RGB' if wanted == (PNG_RGB,) else 'grey or RGB'}",
                          "image")
    try:
        pixels = decode_image(data, "L" if colour == PNG_GREY else "RGB")
    except DatasetError as e:
        raise SampleError(f"sample {key} png does not decode ({e})", "image") from None
    if expect.size is not None and pixels.shape[:2] != (expect.size, expect.size):
        raise SampleError(f"sample {key} is {pixels.shape[1]}x{pixels.shape[0]}, expected {expect.size}x"
                          f"{expect.size}", "image")
    if expect.mode == "fractal" and (not pixels.any() or ((pixels != 0) & (pixels != 127)).any()):
        raise SampleError(f"sample {key} has grey values other than the fractal looks' 0 and 127, or none lit",
                          "image")
    return pixels


def png_problem(data: bytes) -> str:
    """Why ``data`` is not one whole PNG ('' when it is): the signature and IHDR first, every chunk's CRC (which
    Pillow ignores and libpng refuses), an IEND, and nothing after it."""
    if png_colour_type(data) is None:
        return "is not a PNG"
    at = len(PNG_SIGNATURE)
    while at + 12 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        end = at + 12 + length
        if end > len(data):
            return "is cut short"
        if zlib.crc32(data[at + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return f"has a bad CRC in its {data[at + 4:at + 8].decode('latin-1')!r} chunk"
        if data[at + 4:at + 8] == b"IEND":
            return f"holds {len(data) - end} bytes after its end" if end != len(data) else ""
        at = end
    return "has no end (IEND)"


def file_problem(root: Path, name: Any, size: Any = None) -> str:
    """Why a file a dataset's records name (a shard, the source image) is not what they record ('' when it is): a
    regular file inside the dataset folder (a link that leaves it is refused: `push-to-hub` would publish what it
    points at), of the recorded ``size`` in bytes when one is recorded."""
    if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
        return "filename is not a plain file name in the dataset folder"
    path = Path(root) / name
    if path.is_symlink() and not path.resolve().is_relative_to(Path(root).resolve()):
        return "is a link to a file outside the dataset folder; copy the file in"
    if not path.exists():
        return "missing"
    if not path.is_file():
        return "not a regular file"
    actual = path.stat().st_size
    if type(size) is int and actual != size:
        return f"size {actual} bytes, {BUILD_JSON} records {size}"
    return ""


UNLISTED = f"not listed in {BUILD_JSON} (a {SHARD_GLOB} glob would load it)"
"""Why a shard-named file beside a build's shards is a problem (``stray_shards``)."""


def stray_shards(root: Path, listed: Any) -> list[str]:
    """The shard-named files (``train-*.tar``) in ``root`` that are not among ``listed`` (the names ``build.json``
    records), sorted: a glob of the folder's shards, as many readers make, would load them."""
    names = set(listed)
    return sorted(p.name for p in Path(root).glob(SHARD_GLOB) if p.name not in names)
