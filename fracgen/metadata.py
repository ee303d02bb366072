"""The dataset's own records, written once every shard is complete: the class parameters, timm's shard index, the
dataset card (which `datasets.load_dataset` reads for the label names), then the build record, whose presence
marks a complete build. Their names are ``fracgen.dataset``'s.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import numpy as np

import fracgen
from fracgen import dataset
from fracgen.folder import read_regular, write_atomic
from fracgen.plan import Plan

UNCHOSEN_LICENSE = "other"  # the Hub's id for "see the card": a build's card until push-to-hub sets one


def versions() -> dict:
    """The versions that decide the bytes, recorded in build.json."""
    import numba

    return {
        "fracgen": fracgen.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
    }


def machine() -> str:
    """The CPU model and logical core count, for build.json's timing (what a card's build time ran on)."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = next((line.split(":", 1)[1] for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    model = " ".join((model or platform.processor() or platform.machine() or "unknown CPU").split())
    return f"{model}, {os.cpu_count() or '?'} logical cores"


def write_metadata(root, plan: Plan, markers: list[dict], timing: dict, recipe: bool = False) -> dict:
    """Write params.json, _info.json, the card and, last, build.json (its presence marks a complete build).

    Args:
        root: dataset folder.
        plan: the build's plan.
        markers: every shard's completion marker, in shard order.
        timing: what build.json records as ``timing``.
        recipe: the shards were not written (``fracgen build --recipe-only``): build.json lists them without
            their bytes and sha256, and records ``recipe`` with the json of shard 0's first samples (the card's).

    Returns:
        build.json's content.
    """
    cfg = plan.config
    classes = cfg.family.class_records(plan, markers)
    params = {
        "preset": cfg.preset,
        "systems": [dict(s.to_json(), fractal=f) for f, s in enumerate(plan.systems)],
        "classes": classes,
        "total_redraws": sum(c.get("redraws", 0) for c in classes),
    }
    params.update(cfg.family.params_extra(plan))
    shard_rows = [{k: m[k] for k in ("filename", "num_samples", "sha256", "bytes") if k in m} for m in markers]
    name = cfg.name()
    build = {
        "name": name,
        "config": cfg.to_json(),
        "command": cfg.command(),
        "versions": versions(),
        "num_samples": sum(r["num_samples"] for r in shard_rows),
        "num_classes": cfg.num_classes,
        "total_redraws": params["total_redraws"],
        "shards": shard_rows,
        "timing": timing,
    }
    if recipe:
        build["recipe"] = {"head": markers[0]["head"]}
    # their checksums, so that verify names an edit of either (timm reads _info.json; the card, params.json)
    build["records"] = {
        dataset.PARAMS_JSON: dataset.write_params(root, params),
        dataset.INFO_JSON: dataset.write_info(root, dataset.DatasetInfo.from_shards(name, cfg.num_classes, shard_rows)),
    }
    _write_card(root, build)  # not among the records: publishing renders it anew, with the licence chosen
    dataset.write_build(root, build)
    return build


def _write_card(root, build: dict) -> None:
    """The dataset card, so that the folder loads labelled as it will from the Hub; its licence is chosen when it
    is published (`push-to-hub --license`), "other" until then, or the published one's (``card_license``)."""
    from fracgen.card import render_card

    card = render_card(root, license=card_license(root), build=build, timing=False).encode()
    write_atomic(Path(root) / dataset.CARD_MD, card)


def card_license(root) -> str:
    """The licence in the card a recipe or a downloaded dataset came with (its resume renders the card again for
    the rendered shards, keeping the publisher's licence); ``UNCHOSEN_LICENSE`` for a folder fracgen built."""
    from fracgen.card import LICENSE_RE

    if not (Path(root) / dataset.PUBLISHED_JSON).is_file():
        return UNCHOSEN_LICENSE
    card = (read_regular(Path(root) / dataset.CARD_MD, 1 << 20) or b"").decode("utf-8", "replace")
    match = re.match(r"---\r?\n(?:(?!---\r?\n).*\n)*?license: *(\S+)\r?\n", card)
    return match[1] if match and LICENSE_RE.match(match[1]) else UNCHOSEN_LICENSE
