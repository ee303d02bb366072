"""build(): whole builds. The same bytes whatever the worker count, pinned; resume after a killed worker, a full
disk or a class that cannot be drawn; shard ranges; the records; round trips through webdataset and timm."""

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import TINY

from fracgen import shard as shard_mod
from fracgen.build import BuildConfig, build
from fracgen.errors import FracgenError, UsageError

CFG = BuildConfig(**TINY)


def files(root: Path) -> dict[str, bytes]:
    """Every published file's bytes, build.json without its timing (the one thing that depends on the run)."""
    out = {}
    for p in sorted(root.iterdir()):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "build.json":
                meta = json.loads(data)
                meta.pop("timing")
                data = json.dumps(meta, sort_keys=True).encode()
            out[p.name] = data
    return out


def test_same_bytes_whatever_the_worker_count(tiny_dataset, tmp_path):
    build(CFG, tmp_path / "w2", workers=2)
    build(CFG, tmp_path / "w3", workers=3)
    reference = files(tiny_dataset)
    assert sorted(reference) == ["README.md", "_info.json", "build.json", "params.json", "train-000000.tar",
                                 "train-000001.tar"]
    assert files(tmp_path / "w2") == reference
    assert files(tmp_path / "w3") == reference


def test_another_seed_gives_other_bytes(tiny_dataset, tmp_path):
    build(BuildConfig(**{**TINY, "seed": 1}), tmp_path / "s1", workers=1)
    assert files(tmp_path / "s1")["train-000000.tar"] != files(tiny_dataset)["train-000000.tar"]


def test_samples_read_back_through_webdataset(tiny_dataset):
    urls = sorted(str(p) for p in tiny_dataset.glob("train-*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("l8"))
    assert len(samples) == 16
    labels = [int(s["cls"]) for s in samples]
    assert sorted(labels) == list(range(16))
    per_shard = [[int(s["cls"]) for s in samples if s["__url__"] == u] for u in urls]
    assert per_shard[0] != list(range(8))  # classes are spread across shards, not in label order
    for s in samples:
        assert "." not in s["__key__"] and s["__key__"] == f"{int(s['cls']):08d}"
        assert s["png"].shape == (64, 64)
        assert set(np.unique(s["png"])) == {0, 127}
        meta = s["json"]
        assert meta["label"] == meta["fractal"] * 16 + meta["perturbation"] == int(s["cls"])
        assert np.asarray(meta["maps"]).shape == (2, 6)


def test_metadata_describes_the_build(tiny_dataset):
    info = json.loads((tiny_dataset / "_info.json").read_text())
    params = json.loads((tiny_dataset / "params.json").read_text())
    meta = json.loads((tiny_dataset / "build.json").read_text())
    split = info["splits"]["train"]
    assert split["num_samples"] == 16 and split["shard_lengths"] == [8, 8] and info["num_classes"] == 16
    assert split["filenames"] == ["train-000000.tar", "train-000001.tar"]
    assert [c["label"] for c in params["classes"]] == list(range(16))
    base = np.asarray(params["systems"][0]["maps"])
    for c in params["classes"]:
        ratio = np.asarray(c["maps"]) / base  # multiplicative: theta * (1 + u), |u| <= Delta
        assert np.all(np.abs(ratio - 1) <= 0.1 + 1e-12)
    assert meta["config"]["L"] == 16 and meta["num_samples"] == 16
    assert meta["command"].startswith("fracgen build --sigma 3.5 --delta 0.1 --L 16")
    for row in meta["shards"]:
        assert row["bytes"] == (tiny_dataset / row["filename"]).stat().st_size
    assert {"numpy", "numba", "fracgen", "python"} <= set(meta["versions"])


@pytest.mark.slow
def test_resume_after_a_killed_worker_gives_the_same_bytes(tiny_dataset, tmp_path, monkeypatch):
    parent = os.getpid()
    family = CFG.family
    real = family.render
    victim = json.loads((tiny_dataset / "params.json").read_text())  # any label of the second shard
    label = sorted(int(n) for n in [c["label"] for c in victim["classes"]])[-1]

    def dying(plan, indices):
        for index, image, record in real(plan, indices):
            if os.getpid() != parent and index == label:
                os.kill(os.getpid(), signal.SIGKILL)  # mid-shard, like an OOM kill
            yield index, image, record

    monkeypatch.setattr(family, "render", dying)
    out = tmp_path / "killed"
    with pytest.raises(FracgenError, match=r"worker process died; \d+ shard\(s\) unfinished \([0-9, -]+\)"):
        build(BuildConfig(**{**TINY, "shard_size": 4}), out, workers=2)
    assert not (out / "build.json").exists()
    monkeypatch.undo()
    result = build(None, out, resume=True, workers=2)
    assert result.complete and result.skipped
    assert not list(out.glob("*.tmp"))
    clean = tmp_path / "clean"
    build(BuildConfig(**{**TINY, "shard_size": 4}), clean, workers=1)
    assert files(out) == files(clean)


def test_disk_full_removes_the_partial_shard_and_resume_finishes(tmp_path, monkeypatch):
    real = shard_mod.encode_png
    calls = {"n": 0}

    def full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(shard_mod, "encode_png", full)
    out = tmp_path / "full"
    with pytest.raises(FracgenError, match="disk full"):
        build(CFG, out, workers=1)
    assert not list(out.glob("*.tmp")) and not (out / "train-000001.tar").exists()
    assert (out / "train-000000.tar").exists() and not (out / "build.json").exists()
    monkeypatch.setattr(shard_mod, "encode_png", real)
    result = build(None, out, resume=True, workers=1)
    assert result.built == [1] and result.skipped == [0]


def test_a_build_whose_classes_cannot_be_drawn_stops_and_overwrite_replaces_it(tmp_path, monkeypatch):
    def overflow(*args, **kwargs):
        raise FracgenError("class 0: no perturbation with a finite chaos game; lower --delta")

    monkeypatch.setattr(CFG.family, "render", overflow)
    with pytest.raises(FracgenError, match="lower --delta"):
        build(CFG, tmp_path / "out", workers=1)
    assert not list((tmp_path / "out").glob("train-*"))
    monkeypatch.undo()
    lower = BuildConfig(**{**TINY, "delta": 0.05})
    with pytest.raises(UsageError, match="options differ: --delta 0.05"):
        build(lower, tmp_path / "out", workers=1, resume=True)
    assert build(lower, tmp_path / "out", workers=1, overwrite=True).complete


def test_shard_ranges_then_resume_equal_one_build(tiny_dataset, tmp_path):
    out = tmp_path / "split"
    first = build(CFG, out, workers=1, shard_range=(1, 2))
    assert not first.complete and not (out / "build.json").exists()
    assert (out / "train-000001.tar").exists() and not (out / "train-000000.tar").exists()
    second = build(CFG, out, workers=1, resume=True, shard_range=(0, 1))
    assert second.complete
    assert files(out) == files(tiny_dataset)


def test_resume_rebuilds_a_corrupted_shard(tiny_copy):
    tar = tiny_copy / "train-000000.tar"
    good = tar.read_bytes()
    tar.write_bytes(good[:-10] + b"x" * 10)
    result = build(None, tiny_copy, resume=True, workers=1)
    assert result.built == [0] and tar.read_bytes() == good


def test_timm_reads_the_dataset(tiny_dataset):
    torch = pytest.importorskip("torch")
    timm_data = pytest.importorskip("timm.data")
    torch.set_num_threads(1)
    ds = timm_data.create_dataset("wds/fracgen", root=str(tiny_dataset), split="train", is_training=False,
                                  batch_size=1)
    assert len(ds) == 16
    seen = []
    for image, target in ds:
        assert image.size == (64, 64) and image.mode == "RGB"
        assert set(np.unique(np.asarray(image))) == {0, 127}
        seen.append(int(target))
    assert sorted(seen) == list(range(16))


# sha256 of the files a build publishes (8-bit greyscale PNGs). A refactor must not change a byte. If a deliberate
# change of the format or the renderer moves them, say so in the commit and update them here.
PINNED = {
    "tiny": {
        "train-000000.tar": "db3b70e438d11593a699cbcf8845785ed7b7bd9c5afba2ac780c11e529eec5a7",
        "train-000001.tar": "8f702d07848e3cb4e37fdfc6f710cedcc6d9193dce870d9b7b4c82f526e0a308",
        "_info.json": "7ff18efbac6a9ff5dfe32dafb581568204bbd0a9cce710dabb3bb6c00e51eecb",
        "params.json": "7f70c66b9baa53a56671b50c648aebbae3458000429f6a63fd917e13917d0995",
    },
    "default options, L=16": {
        "train-000000.tar": "54f75fe466172b866dca08db48d928092f2b4372001e744512359783769fcf2c",
        "_info.json": "c796c419a1ef5d3b4cf2e2e8b23c46b0fd97f0c3878e30bfcc7ddc487c390779",
        "params.json": "58295e8210d9afb9db8f10d215c2c5c3b337b5537779ac930343d4f29fde1a3f",
    },
}
# The same builds with the images encoded as 1-bit palette PNGs (fracgen.encode.encode_palette_png), the format
# of the first datasets: the shards' sums check that the renderer still draws the pixels it drew then.
PINNED_PALETTE = {
    "tiny": {
        "train-000000.tar": "dde2aa4a26a6af1da546cd07517716586203f3bb5ef6bac8e985c67f33ad5627",
        "train-000001.tar": "d3f539bb59e19ce7236ac4b4930c8f0e6f58488e489edcaab0a84d447a4c0496",
    },
    "default options, L=16": {
        "train-000000.tar": "bea3cc1b8d6d077988bc0b4225582f5ca8bf9f56e2c202a31f462667d791dad9",
    },
}


def test_the_default_builds_bytes_are_pinned(tiny_dataset, tmp_path):
    from fracgen.dataset import sha256_file

    build(BuildConfig(L=16), tmp_path / "default", workers=1)  # 512 px, 100,000 points: ~0.2 s
    for case, root in (("tiny", tiny_dataset), ("default options, L=16", tmp_path / "default")):
        assert {name: sha256_file(root / name) for name in PINNED[case]} == PINNED[case], case


def test_the_old_format_s_bytes_are_pinned(tmp_path, monkeypatch):
    from fracgen.dataset import sha256_file
    from fracgen.encode import encode_palette_png

    monkeypatch.setattr(shard_mod, "encode_png", encode_palette_png)
    for case, cfg in (("tiny", CFG), ("default options, L=16", BuildConfig(L=16))):
        build(cfg, tmp_path / case, workers=1)
        got = {name: sha256_file(tmp_path / case / name) for name in PINNED_PALETTE[case]}
        assert got == PINNED_PALETTE[case], case
