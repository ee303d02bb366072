"""One shard's job: render, encode and write its samples, then its completion marker.

Runs in a worker; everything it needs is in the plan, so the shard's bytes depend on nothing else.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from fracgen import dataset
from fracgen.encode import encode_png
from fracgen.errors import FracgenError
from fracgen.plan import Plan
from fracgen.raster import VALUE

_LEVELS = np.array([0, VALUE], np.uint8)  # the fractal looks: known, so no scan per image


def records_digest(records: list) -> str:
    """sha256 of a marker's class records (what params.json collects), so an edited marker is not trusted."""
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def run_shard(plan: Plan, shard: int, root: Path, published: str | None = None) -> dict:
    """Render, encode and write one shard, then its completion marker.

    Args:
        plan: the build's plan.
        shard: shard index.
        root: dataset folder.
        published: the sha256 a recipe or a downloaded dataset records for the shard: a shard of other bytes is
            deleted and refused (this machine renders other bytes than the published ones), with no marker.

    Returns:
        The shard's marker: filename, num_samples, sha256, bytes, seconds, and (one image per class) the class
        records that params.json collects.
    """
    start = time.perf_counter()
    cfg = plan.config
    family = cfg.family
    levels = _LEVELS if family.image_mode(cfg) == "fractal" else None
    # many grey levels (the contour looks, noise) take fracgen's own deflate: zlib level 6 cost 5-20x the drawing
    encode = partial(encode_png, fast=True) if family.fast_png else encode_png
    records: list[dict] = []
    samples = ({"__key__": dataset.sample_key(index), "png": encode(image, levels), "cls": str(meta["label"]).encode(),
                "json": sample_json(meta)} for index, image, meta in _rendered(plan, shard, records))
    sha256, count, size = dataset.write_shard(root, shard, samples)
    if published is not None and sha256 != published:
        (Path(root) / dataset.shard_name(shard)).unlink(missing_ok=True)
        raise FracgenError(f"{dataset.shard_name(shard)} rendered to sha256 {sha256[:12]}..., the published record "
                           f"says {published[:12]}...: this machine renders other bytes than the published ones "
                           f"(compare the versions in {dataset.PUBLISHED_JSON} with `fracgen --version`, numpy's "
                           "and numba's)")
    marker = _marker(plan, shard, count, records, start) | {"sha256": sha256, "bytes": size}
    dataset.write_marker(root, marker)
    return marker


def shard_records(plan: Plan, shard: int) -> dict:
    """What a recipe keeps of a shard: its samples rendered (the class records depend on what was drawn and
    redrawn) but neither encoded nor written; the json of its first samples (``HEAD``, for the card's features)."""
    start = time.perf_counter()
    records: list[dict] = []
    head = [json.loads(sample_json(meta)) for i, (_, _, meta) in enumerate(_rendered(plan, shard, records))
            if shard == 0 and i < dataset.HEAD]  # only shard 0's first samples are the card's
    return _marker(plan, shard, len(plan.shard_samples[shard]), records, start) | ({"head": head} if head else {})


def sample_json(meta: dict) -> bytes:
    """A sample's ``json``: its record without the fill (which params.json keeps)."""
    return json.dumps({k: v for k, v in meta.items() if k != "fill"}, sort_keys=True).encode()


def _rendered(plan: Plan, shard: int, records: list[dict]):
    """The shard's samples as its family renders them; the record of each class's first image is appended to
    ``records`` when a class has one image (params.json collects them)."""
    cfg = plan.config
    for index, image, meta in cfg.family.render(plan, plan.shard_samples[shard]):
        if cfg.instances == 1 and index % cfg.per_class == 0:
            records.append(meta)
        yield index, image, meta


def _marker(plan: Plan, shard: int, count: int, records: list[dict], start: float) -> dict:
    return {"shard": shard, "filename": dataset.shard_name(shard), "num_samples": count,
            "seconds": round(time.perf_counter() - start, 4), "plan": plan.digest, "samples": records,
            "samples_sha256": records_digest(records)}


@dataclass
class ShardJob:
    """A picklable ``shard -> marker`` callable for the distributor (``records_only``: a recipe's)."""

    plan: Plan
    root: Path
    records_only: bool = False
    published: dict[str, str] = field(default_factory=dict)  # shard file name -> the sha256 it must have

    def __call__(self, shard: int) -> dict:
        if self.records_only:
            return shard_records(self.plan, shard)
        return run_shard(self.plan, shard, self.root, self.published.get(dataset.shard_name(shard)))
