"""One shard's samples and one sample's checks: its label, its image's header, its PNG decoded.

``shard_samples`` reads a shard as ``fracgen.dataset.iter_shard`` groups it (local, or over HTTP(S) through
``train/data/remote.py``), refusing members that are not regular files. A sample of a fracgen build is checked
by ``build_sample`` with ``fracgen verify``'s own check (``fracgen.dataset.check_sample``: its members, key, label,
a whole PNG of the build's colour type, depth and size), which decodes it once; a sample of any other dataset (a
toy set, a brace pattern of shards, a downstream WebDataset, shards over HTTP) by ``plain_sample``, the
trainer's lighter checks (``sample_label``: name, label, the PNG header's size) without decoding. Every refusal
is one line naming the shard and the sample. The checked read of a whole dataset is ``train/data/shards.py``'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from fracgen import dataset
from fracgen.dataset import DatasetError
from train.data.remote import is_remote, open_url
from train.errors import TrainError


@dataclass(frozen=True)
class Sample:
    """One sample of a dataset's checked read.

    Attributes:
        raw: its members as ``fracgen.dataset.iter_shard`` groups them (``__key__``, ``__url__``, ``png``, ...).
        label: its label, checked.
        image: (H, W) uint8 grey, when the check decoded it (a fracgen build's sample); None otherwise.
    """

    raw: dict[str, Any]
    label: int
    image: np.ndarray | None = None

    @property
    def key(self) -> str:
        return str(self.raw.get("__key__", "?"))

    def grey(self) -> np.ndarray:
        """The image as (H, W) uint8 grey: the check's, or the PNG decoded now (TrainError naming the sample)."""
        return self.image if self.image is not None else decode_image(self.raw)


def grey(image: np.ndarray) -> np.ndarray:
    """A decoded image as (H, W) uint8 grey, as decoding its PNG to grey gives it (an RGB image by Pillow's
    luma, the conversion ``fracgen.dataset.decode_grey`` makes)."""
    if image.ndim == 2:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image, "RGB").convert("L"))


def build_sample(raw: dict[str, Any], expect: dataset.Expect) -> Sample:
    """A sample of a fracgen build, checked as ``fracgen verify`` checks it (``fracgen.dataset.check_sample``),
    with the image that check decoded.

    Raises:
        TrainError: ``shard <url>: sample <key> ...``, in verify's words.
    """
    try:
        image, label = dataset.check_sample(raw, expect)
    except dataset.SampleError as e:
        url = raw.get("__url__", "?")
        hint = f"; `fracgen verify {Path(url).parent}` gives the command that rebuilds it" if e.kind == "palette" else ""
        raise TrainError(f"shard {url}: {e}{hint}") from None
    return Sample(raw, label, grey(image))


def plain_sample(raw: dict[str, Any], num_classes: int | None, size: int | None = None,
                 image_keys: tuple[str, ...] = ("png",)) -> Sample:
    """A sample of a dataset that is not a fracgen build, under the lighter checks of ``sample_label``; not decoded."""
    return Sample(raw, sample_label(raw, num_classes, size, image_keys))


def shard_samples(url: str) -> Iterator[dict[str, Any]]:
    """The raw samples of one shard (``fracgen.dataset.iter_shard``), a local path or an http(s) URL.

    Members that are not regular files (a link, a folder, a device: fracgen writes none) are refused; the rest is
    unchecked (``train.data.shards.read_shard`` is the checked read).

    Yields:
        ``{"__key__", "__url__", "png": bytes, "cls": bytes, ...}`` in tar order.

    Raises:
        TrainError: ``shard <url>: missing`` or ``shard <url>: corrupt tar (...)`` (after the samples before
            the damage).
    """
    remote = is_remote(url)
    if not remote and not Path(url).is_file():
        raise TrainError(f"shard {url}: missing")
    stream = open_url(url) if remote else None
    try:
        yield from dataset.iter_shard(stream if remote else url, strict=True)
    except (DatasetError, OSError) as e:
        raise TrainError(f"shard {url}: corrupt tar ({cause(e, url)})") from None
    finally:
        if stream is not None:
            stream.close()


def cause(e: Exception, url: str) -> str:
    """``fracgen.dataset``'s message without the shard it names again."""
    return str(e).removeprefix(f"shard {url}: ")


def sample_label(sample: dict[str, Any], num_classes: int | None = None, size: int | None = None,
                 image_keys: tuple[str, ...] = ("png",)) -> int:
    """The integer label of a raw sample, checked to be in ``[0, num_classes)`` and to agree with the sample's own
    ``json`` (its ``label``); with ``size``, the PNG's header must say ``size`` x ``size`` (read without decoding).
    The sample must hold one of ``image_keys`` (fracgen writes ``png``; a downstream WebDataset may hold JPEGs).

    Raises:
        TrainError: naming the shard and the key: a name leading out of the shard, no png/cls, a cls that is not an
            integer, out of range, unlike the json's label, or an image of another size.
    """
    key = str(sample.get("__key__", "?"))
    where = f"shard {sample.get('__url__', '?')}: sample {key}"
    if PurePosixPath(key).is_absolute() or ".." in PurePosixPath(key).parts:
        raise TrainError(f"shard {sample.get('__url__', '?')}: a member is named {key!r}, a path out of the shard; "
                         "the dataset is damaged (`fracgen verify` refuses it too)")
    if not any(k in sample for k in image_keys) or "cls" not in sample:
        raise TrainError(f"{where}: needs {' or '.join(image_keys)} and cls entries, has {sorted(k for k in sample if k[0] != '_')}")
    try:
        label = int(sample["cls"])
    except ValueError:
        raise TrainError(f"{where}: cls {sample['cls'][:20]!r} is not an integer") from None
    if num_classes is not None and not 0 <= label < num_classes:
        raise TrainError(f"{where}: label {label} is out of range for the {num_classes} classes of "
                         f"{dataset.INFO_JSON} (num_classes); the dataset is damaged or mislabelled")
    if "json" in sample:  # a few hundred bytes: parsing it is small next to the PNG decode
        try:
            meta = json.loads(sample["json"])
        except (UnicodeDecodeError, ValueError):
            raise TrainError(f"{where}: its json entry is not valid JSON; the dataset is damaged") from None
        # fracgen writes the integer label there; another writer's json may name the class instead
        recorded = meta.get("label") if isinstance(meta, dict) else None
        if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded != label:
            raise TrainError(f"{where}: cls {label} but its json says label {meta['label']!r}; the dataset is "
                             "damaged or mislabelled")
    png = sample.get("png")
    if size is not None and png is not None and dataset.png_colour_type(png) is not None:  # not a PNG: decoding names it
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        if (width, height) != (size, size):
            raise TrainError(f"{where}: image is {width}x{height} px, {dataset.BUILD_JSON} records size {size}; "
                             "the dataset is damaged")
    return label


def decode_sample(sample: dict[str, Any], num_classes: int | None = None,
                  size: int | None = None) -> tuple[np.ndarray, int]:
    """A shard sample -> (uint8 grey (H, W) array, label); a bad sample is an error naming shard and key.

    ``sample_label`` checks the label against ``num_classes`` and the sample's json, and the PNG header against
    ``size`` (the build's image size, when known).
    """
    label = sample_label(sample, num_classes, size)
    return decode_image(sample), label


def decode_image(sample: dict[str, Any]) -> np.ndarray:
    """A sample's PNG as (H, W) uint8 grey; one line naming shard and key when it does not decode."""
    try:
        return dataset.decode_grey(sample["png"])
    except DatasetError as e:
        where = f"shard {sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
        raise TrainError(f"{where}: cannot decode ({type(e).__name__}: {e})") from None


def iter_samples(urls: list[str]) -> Iterator[tuple[np.ndarray, int]]:
    """Every sample of ``urls`` in order, decoded: (uint8 grey (H, W) array, label).

    For evaluation; shards are read once, sequentially.
    """
    for url in urls:
        for sample in shard_samples(url):
            yield decode_sample(sample)
