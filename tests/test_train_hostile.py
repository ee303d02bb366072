"""Hostile input, in tables: every case is refused in one line (exit 2 on the command line) before anything
is written, and a folder it names is left as it was. Grouped by what is hostile: ``--out`` and run folders,
config values and files, datasets, checkpoints, downstream data, and the options of repro-small, sweep and bench."""
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from train_helpers import (
    FT,
    QUICK,
    REPO,
    assert_one_line,
    cfg_of,
    cli,
    run_cli,
    shaded_folder,
    shaded_images,
    snapshot,
    tiny_cfg,
)

from fracgen import dataset
from train.config import load_config
from train.data.fetch import resolve_downstream
from train.data.pretraining import make_source
from train.errors import TrainError
from train.experiments.sweep import load_sweep
from train.experiments.toy import write_toy_dataset
from train.pretrain import pretrain
from train.run.folder import start_run_folder

USER_FILES = {"notes.txt": "my precious notes", "config.yaml": "my: config", "log.csv": "mine",
              "metrics.json": '{"mine": 1}', "curves.png": "mine", "config.json": "mine"}


# ----------------------------------------------------------------------------------------- --out
@pytest.mark.parametrize("names", [USER_FILES, {"config.yaml": "my: config"}, {"run.json": '{"mine": 1}'},
                                   {"run.json": "not json", "config.yaml": "x"}, {"notes.txt": "x"}])
@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_of_the_users_files_is_refused_and_kept(names, resume, tmp_path):
    out = tmp_path / "userdir"
    out.mkdir()
    for name, text in names.items():
        (out / name).write_text(text)
    with pytest.raises(TrainError, match="holds files that are not a run") as e:
        start_run_folder(out, load_config("tiny"), resume=resume)
    assert all(name in str(e.value) for name in names)
    assert {p.name: p.read_text() for p in out.iterdir()} == names  # nothing written, not even a lock


@pytest.mark.parametrize("where, fragment", [("afile", "not a folder"), ("afile/sub", "cannot be written: Not a directory"),
                                             ("/proc/fracgen-nope", "cannot be written")])
def test_an_out_that_cannot_be_a_folder_is_one_line(where, fragment, tmp_path):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / where
    with pytest.raises(TrainError, match=fragment):
        start_run_folder(out, load_config("tiny"), resume=False)
    assert (tmp_path / "afile").read_text() == "x"


def test_a_users_folder_on_the_command_line(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "userdir"
    out.mkdir()
    (out / "config.yaml").write_text("my: config")
    code, err = cli(["pretrain", "--config", "tiny", "--data", tiny_dataset, "--out", out, "--steps", "2",
                     "--set", "data.source=stream"], capsys)
    assert_one_line(code, err, f"--out {out}", "config.yaml")
    assert [p.name for p in out.iterdir()] == ["config.yaml"] and (out / "config.yaml").read_text() == "my: config"


# ----------------------------------------------------------------------------------- config
BAD_VALUES = [
    ("train.seed=-1", "train.seed"), ("train.steps=.inf", "train.steps"), ("optim.lr_min=-1", "optim.lr_min"),
    ("optim.opt=bogus", "optim.opt"), ("aug.std=[0,0,0]", "aug.std"), ("aug.mean=[0.5,0.5]", "aug.mean"),
    ("aug.mean=5", "aug.mean"), ("aug.rrc_scale=[0.5]", "aug.rrc_scale"), ("aug.rrc_scale=0.5", "aug.rrc_scale"),
    ("aug.rrc_scale=[a,b]", "aug.rrc_scale"), ("aug.rrc_ratio=[0,0]", "aug.rrc_ratio"),
    ("aug.rrc_ratio=[2,1]", "aug.rrc_ratio"), ("model.drop_path=2", "model.drop_path"),
    ("model.kwargs={patch_size: 128}", "model.kwargs.patch_size"), ("model.name=5", "model.name"),
    ("model.name=null", "model.name"), ("model.kwargs=5", "model.kwargs"), ("train.device=5", "train.device"),
    ("data.resident=5", "data.resident"), ("optim.lr=.inf", "optim.lr"), ("optim.lr=.nan", "optim.lr"),
    ("optim.lr=null", "optim.lr"), ("optim.warmup_lr=-1", "optim.warmup_lr"),
    ("data.eval_samples=-1", "data.eval_samples"), ("optim.weight_decay=-1", "optim.weight_decay"),
    ("optim.clip_grad=-1", "optim.clip_grad"), ("model.drop_path=-1", "model.drop_path"),
    ("aug.mixup_prob=5", "aug.mixup_prob"), ("aug.mixup_mode=bogus", "aug.mixup_mode"),
    ("data.workers=-1", "data.workers"), ("data.shuffle_buffer=-1", "data.shuffle_buffer"),
    ("train.ckpt_every=-1", "train.ckpt_every"), ("train.eval_every=-1", "train.eval_every"),
    ("train.threads=-1", "train.threads"), ("train.stop_at=-1", "train.stop_at"),
    ("model.kwargs={depth: 0}", "model.kwargs.depth"), ("train.device=cuda:abc", "train.device"),
    ("aug.mean=[0.5,", "not valid YAML"),
]


@pytest.mark.parametrize("override, key", BAD_VALUES)
def test_bad_config_values_are_named_before_anything_is_made(override, key, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = cli(["pretrain", "--config", "tiny", "--data", "nowhere", "--out", "runs/x", "--set", override],
                    capsys)
    assert_one_line(code, err, f"error: {key}: must be " if "YAML" not in key else key)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content, fragment", [(b"- a\n- b\n", "top level must be a mapping"),
                                               (b"\xff\xfe\x00garbage", "not UTF-8"), (b"42\n", "got int")])
def test_a_config_file_that_is_not_a_mapping_of_text(content, fragment, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_bytes(content)
    code, err = cli(["pretrain", "--config", tmp_path / "bad.yaml", "--data", "nowhere", "--out", tmp_path / "run"],
                    capsys)
    assert_one_line(code, err, "bad.yaml", fragment)
    assert not (tmp_path / "run").exists()


def pretrain_argv(data, out, *overrides):
    argv = ["pretrain", "--config", "tiny", "--data", data, "--out", out]
    for item in [*QUICK, *overrides]:
        argv += ["--set", item]
    return argv


# ------------------------------------------------------------------------ timm's transforms and architecture
@pytest.mark.parametrize("override, fragment", [
    ("aug.interpolation=foo", "aug.interpolation: must be bicubic"),
    ("aug.interpolation=random", "aug.interpolation: must be bicubic"),  # the eval transform has no 'random'
    ("aug.auto_augment=garbage", "aug.auto_augment: must be a timm policy"),
    ("aug.auto_augment=rand-m9-w99", "aug.auto_augment: must be a timm policy"),
    ("model.kwargs.num_heads=5", "dim should be divisible by num_heads"),
    ("model.kwargs.embed_dim=7", "dim should be divisible by num_heads"),
    ("model.kwargs.num_heads=0", "model.kwargs.num_heads: must be"),
    ("model.kwargs.embed_dim=-3", "model.kwargs.embed_dim: must be"),
])
def test_values_timm_refuses_are_one_line_before_the_run_folder(override, fragment, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(pretrain_argv(tiny_dataset, out, override), capsys)
    assert_one_line(code, err, fragment)
    assert not out.exists()


# ------------------------------------------------------------------------------------- resident options
@pytest.mark.parametrize("override, key", [
    ("data.resident.memory_budget_gb=abc", "data.resident.memory_budget_gb"),
    ("data.resident.memory_budget_gb=0", "data.resident.memory_budget_gb"),
    ("data.resident.memory_budget_gb=.nan", "data.resident.memory_budget_gb"),
    ("data.resident.load_workers=-3", "data.resident.load_workers"),
    ("data.resident.load_workers=abc", "data.resident.load_workers"),
    ("data.resident.load_workers=1.5", "data.resident.load_workers"),
    ("data.resident.split_ranks=yes please", "data.resident.split_ranks"),
    ("data.resident.antialias=0", "data.resident.antialias"),
    ("data.resident.prefetch=off please", "data.resident.prefetch"),
])
def test_bad_resident_options_are_refused_by_the_config(override, key, tiny_dataset, tmp_path, capsys):
    with pytest.raises(TrainError, match=f"^{key}: must be"):
        cfg_of(tiny_dataset, override)
    out = tmp_path / "run"
    code, _, err = run_cli(pretrain_argv(tiny_dataset, out, override), capsys)
    assert_one_line(code, err, key)
    assert not out.exists()


# ------------------------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("opt, fragment", [
    ("adahessian", "second-order"),
    ("lookahead_adahessian", "second-order"),
])
def test_second_order_optimizers_are_refused(opt, fragment, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(pretrain_argv(tiny_dataset, out, f"optim.opt={opt}"), capsys)
    assert_one_line(code, err, f"optim.opt: {opt}", fragment)
    assert not out.exists()


# ----------------------------------------------------------------------------------------- YAML keys
@pytest.mark.parametrize("content, fragment", [
    ("1: 2\n", "config root: key 1 is not a name"),
    ("train: {1: 2}\n", "config train: key 1 is not a name"),
    ("aug: {true: 2}\n", "config aug: key True is not a name"),
])
def test_a_config_key_that_is_not_a_name_is_one_line(content, fragment, tiny_dataset, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    out = tmp_path / "run"
    code, _, err = run_cli(["pretrain", "--config", path, "--data", tiny_dataset, "--out", out], capsys)
    assert_one_line(code, err, fragment)
    assert not out.exists()


SOURCES = ["stream", "resident"]


def _cfg(root: Path, source: str, *extra: str):
    return load_config("tiny", [f"data.source={source}", "data.workers=0", "train.steps=2", "train.batch_size=8",
                                *extra], {"data.path": str(root)})


def _refused(root: Path, source: str, tmp_path: Path, match: str, *extra: str) -> str:
    """pretrain refuses before it makes a run folder; returns the one-line message."""
    with pytest.raises(TrainError, match=match) as info:
        pretrain(_cfg(root, source, *extra), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    message = str(info.value)
    assert "\n" not in message
    return message


def _member_offsets(shard: Path) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of every member of a tar."""
    with tarfile.open(shard) as tar:
        return [(m.name, m.offset, m.offset_data) for m in tar]


@pytest.mark.parametrize("source", SOURCES)
def test_shard_cut_at_a_header_boundary_is_refused(tiny_copy, tmp_path, source):
    shard = tiny_copy / dataset.shard_name(0)
    size = shard.stat().st_size
    # the cut (truncate -s 18432) fell on a member header: cut at the header in the middle of the shard
    headers = sorted(off for _, off, _ in _member_offsets(shard))
    cut = headers[len(headers) // 2]
    os.truncate(shard, cut)
    msg = _refused(tiny_copy, source, tmp_path, rf"train-000000.tar: size {cut} bytes, build.json records {size}")
    assert "fracgen verify" in msg


@pytest.mark.parametrize("source", SOURCES)
def test_cut_shard_without_build_json_is_refused_by_its_sample_count(tiny_copy, tmp_path, source):
    """Without build.json (a toy set, a copied folder) the count in _info.json still catches the cut."""
    (tiny_copy / dataset.BUILD_JSON).unlink()
    shard = tiny_copy / dataset.shard_name(1)
    members = _member_offsets(shard)
    keys = sorted({name.split(".")[0] for name, _, _ in members})
    cut = next(off for name, off, _ in members if name.startswith(keys[6] + "."))  # samples 0-5 stay whole
    os.truncate(shard, cut)
    _refused(tiny_copy, source, tmp_path, r"train-000001.tar: 6 samples, _info.json lists 8")


def _flip_idat_crc(shard: Path) -> bytes:
    """Flip a byte of the first PNG's IDAT CRC inside the shard (Pillow does not check it); returns the PNG."""
    name, _, data_off = next(m for m in _member_offsets(shard) if m[0].endswith(".png"))
    raw = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        png = tar.extractfile(name).read()
    idat = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[idat:idat + 4])
    pos = data_off + idat + 8 + length  # the first CRC byte after the IDAT data
    raw[pos] ^= 0xFF
    shard.write_bytes(bytes(raw))
    return bytes(raw[data_off:data_off + len(png)])


@pytest.mark.parametrize("source", SOURCES)
def test_flipped_byte_in_a_png_that_still_decodes_is_refused(tiny_copy, tmp_path, source):
    shard = tiny_copy / dataset.shard_name(0)
    with tarfile.open(shard) as tar:
        original = next(tar.extractfile(m).read() for m in tar if m.name.endswith(".png"))
    damaged = _flip_idat_crc(shard)
    assert damaged != original and shard.stat().st_size == 30720
    # the premise: the damaged image decodes to the same pixels, so only a checksum can tell
    assert np.array_equal(dataset.decode_grey(damaged), dataset.decode_grey(original))
    # the PNG's own CRC, as fracgen verify checks it: whether or not the shard's sha256 is checked
    for verify in ("true", "false"):
        _refused(tiny_copy, source, tmp_path, r"train-000000.tar: sample \d{8} png has a bad CRC in its 'IDAT' chunk",
                 f"data.verify={verify}")


def _flip_padding(shard: Path) -> None:
    """Flip a byte of the zeros that pad a member's data to a whole tar block: every sample reads the same."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar if m.size % 512)
    raw = bytearray(shard.read_bytes())
    raw[member.offset_data + member.size] ^= 0xFF
    shard.write_bytes(bytes(raw))


@pytest.mark.parametrize("source", SOURCES)
def test_a_flipped_byte_only_the_sha256_sees_is_refused_unless_told(tiny_copy, tmp_path, source):
    _flip_padding(tiny_copy / dataset.shard_name(0))
    _refused(tiny_copy, source, tmp_path, r"train-000000.tar: sha256 [0-9a-f]{12}\.\.\. does not match build.json")
    # --no-verify-data: the user's call, the source reads it
    src = make_source(_cfg(tiny_copy, source, "data.verify=false"), torch.device("cpu"), 0, 1)
    assert src.num_classes == 16
    src.close()


def _relabel(root: Path, shard: int, label: bytes) -> None:
    """Rewrite one shard with the first sample's label replaced (the count stays the same)."""
    samples = list(dataset.iter_shard(root / dataset.shard_name(shard)))
    samples[0]["cls"] = label
    dataset.write_shard(root, shard, [{k: v for k, v in s.items() if k != "__url__"} for s in samples])


@pytest.mark.parametrize("source", SOURCES)
def test_label_out_of_range_is_one_line_naming_shard_and_key(tmp_path, source):
    root = write_toy_dataset(tmp_path / "toy", num_classes=4, per_class=4, size=32, shard_size=8)
    _relabel(root, 1, b"4")
    key = next(dataset.iter_shard(root / dataset.shard_name(1)))["__key__"]
    _refused(root, source, tmp_path, rf"train-000001.tar: sample {key}: label 4 is out of range for the 4 classes",
             "model.img_size=32")


@pytest.mark.slow
def test_label_out_of_range_on_the_command_line(tmp_path):
    root = write_toy_dataset(tmp_path / "toy", num_classes=4, per_class=4, size=32, shard_size=8)
    _relabel(root, 0, b"-1")
    proc = subprocess.run([sys.executable, "-m", "train", "pretrain", "--config", "tiny", "--data", str(root),
                           "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "8", "--img-size", "32"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "label -1 is out of range" in errors[0] and "train-000000.tar" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["../outside.tar", "/etc/passwd"])
def test_shard_names_outside_the_folder_are_refused(tiny_copy, tmp_path, name):
    info = json.loads((tiny_copy / dataset.INFO_JSON).read_text())
    info["splits"]["train"]["filenames"][1] = name
    (tiny_copy / dataset.INFO_JSON).write_text(json.dumps(info))
    _refused(tiny_copy, "stream", tmp_path, "names shard .* outside the folder")


# ------------------------------------------------------------------------ datasets
def _rewrite_sample(root, shard, index, **entries):
    """Rewrite shard ``shard`` of ``root`` with sample ``index``'s entries replaced; its key."""
    from fracgen import dataset

    samples = list(dataset.iter_shard(root / dataset.shard_name(shard)))
    samples[index].update(entries)
    dataset.write_shard(root, shard, [{k: v for k, v in s.items() if k != "__url__"} for s in samples])
    return samples[index]["__key__"]


def _png(size):

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (size, size), 128).save(buf, "PNG")
    return buf.getvalue()


def _pretrain_refused(root, tmp_path, match, *extra):
    from train.pretrain import pretrain

    cfg = load_config("tiny", ["data.workers=0", "train.steps=2", "train.batch_size=8", "data.verify=false",
                               *extra], {"data.path": str(root)})
    with pytest.raises(TrainError, match=match) as e:
        pretrain(cfg, tmp_path / "run")
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("source", ["stream", "resident"])
@pytest.mark.parametrize("damage", ["relabel", "onepx", "small"])
def test_a_sample_unlike_its_json_or_the_build_size_is_refused(tiny_copy, tmp_path, source, damage):
    """Without sha256 (--no-verify-data, or a dataset over 4 GiB) a relabelled or resized sample is still named."""
    entries = {"relabel": {"cls": b"5"}, "onepx": {"png": _png(1)}, "small": {"png": _png(8)}}[damage]
    if damage == "relabel":
        from fracgen import dataset

        first = next(dataset.iter_shard(tiny_copy / dataset.shard_name(1)))
        entries = {"cls": str((int(first["cls"]) + 1) % 16).encode()}
    key = _rewrite_sample(tiny_copy, 1, 0, **entries)
    match = r"json label \d+ != cls" if damage == "relabel" else r"is \d+x\d+, expected 64x64"
    _pretrain_refused(tiny_copy, tmp_path, rf"train-000001.tar: sample {key} {match}", f"data.source={source}")


@pytest.mark.parametrize("key, value", [("num_classes", 100), ("num_classes", 17), ("num_samples", 17)])
def test_info_json_unlike_build_json_is_refused(tiny_copy, tmp_path, key, value):
    """A raised num_classes trains a head with classes never seen; a raised count (its shard's too) is refused."""
    path = tiny_copy / "_info.json"
    info = json.loads(path.read_text())
    if key == "num_classes":
        info["num_classes"] = value
    else:  # consistent inside _info.json, so only build.json can tell
        info["splits"]["train"]["num_samples"] = value
        info["splits"]["train"]["shard_lengths"][-1] += value - 16
    path.write_text(json.dumps(info))
    build = json.loads((tiny_copy / "build.json").read_text())[key]
    _pretrain_refused(tiny_copy, tmp_path, rf"_info.json says {key} {value}, build.json says {build}",
                      "data.source=stream")


def test_bad_input_is_one_line_and_leaves_no_run(tiny_dataset, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainError, match="no _info.json"):
        pretrain(tiny_cfg(empty), tmp_path / "r1")
    with pytest.raises(TrainError, match="unknown timm model 'vit_tiniest'"):
        pretrain(tiny_cfg(tiny_dataset, "model.name=vit_tiniest"), tmp_path / "r2")
    with pytest.raises(TrainError, match="does not divide across 1 ranks x 3"):
        pretrain(tiny_cfg(tiny_dataset, "train.accum_steps=3"), tmp_path / "r3")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in tiny_dataset.iterdir():
        if f.is_file():
            (corrupt / f.name).write_bytes(f.read_bytes())
    (corrupt / "train-000001.tar").write_bytes(b"\0garbage" * 100)
    with pytest.raises(TrainError, match="shard .*train-000001.tar: size 800 bytes, build.json records 30720"):
        pretrain(tiny_cfg(corrupt), tmp_path / "r4")
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 5))


@pytest.mark.parametrize("source", ["stream", "resident"])
def test_corrupt_png_inside_a_shard_is_named(tmp_path, source):
    from fracgen.dataset import write_shard
    from train.experiments.toy import write_toy_dataset

    root = write_toy_dataset(tmp_path / "toy", num_classes=4, per_class=4, size=32, shard_size=8)
    # replace shard 1 (train-000001.tar): a valid tar, bad pngs
    write_shard(root, 1, [{"__key__": f"{100 + i:08d}", "png": b"not a png", "cls": b"1"} for i in range(8)])
    cfg = load_config("tiny", [f"data.source={source}", "train.steps=4", "train.batch_size=8",
                               "data.eval_path=''", "model.img_size=32"], {"data.path": str(root)})
    with pytest.raises(TrainError, match=r"shard .*train-000001.tar: sample 00000100: cannot decode"):
        pretrain(cfg, tmp_path / "run")
    if source == "stream":  # the stream meets it mid-run; the resident source reads everything before the run
        assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
    else:
        assert not (tmp_path / "run").exists()


# ------------------------------------------------------------- a build the trainer refuses as fracgen verify does
def _png_of(image: np.ndarray, mode: str, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    picture = Image.fromarray(image.astype(np.uint16) * 257) if mode == "I;16" else \
        Image.fromarray(image).convert(mode)
    picture.save(buf, fmt)
    return buf.getvalue()


def _bad_crc(png: bytes) -> bytes:
    at = png.index(b"IDAT") + 4 + int.from_bytes(png[png.index(b"IDAT") - 4:png.index(b"IDAT")], "big")
    return png[:at] + bytes([png[at] ^ 0xFF]) + png[at + 1:]


def _first_png(change):
    """Shard 1's first PNG replaced by ``change(its grey pixels, its bytes)``; the shard re-signed in build.json."""
    def prepare(root: Path) -> None:
        members = _tar_members(root / "train-000001.tar")
        at = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".png"))
        data = change(dataset.decode_grey(members[at][1]), members[at][1])
        members[at][0].size = len(data)
        members[at] = (members[at][0], data)
        _write_tar(root / "train-000001.tar", members)
        _resign(root)
    return prepare


def _renamed(prefix: str):
    """Shard 1's first sample's members renamed ``prefix + name`` (regular files still); re-signed."""
    def prepare(root: Path) -> None:
        members = _tar_members(root / "train-000001.tar")
        for info, _ in members[:3]:
            info.name = prefix + info.name
        _write_tar(root / "train-000001.tar", members)
        _resign(root)
    return prepare


def _link_out(root: Path) -> None:
    """train-000001.tar a link to the same bytes outside the folder (push-to-hub would publish what it points at)."""
    outside = root.parent / "elsewhere.tar"
    shutil.move(root / "train-000001.tar", outside)
    (root / "train-000001.tar").symlink_to(outside)


VERIFY_REFUSES = {
    "member-in-a-folder": _renamed("sub/"),
    "member-dotdot": _renamed("../"),
    "member-a-device-path": _renamed("/dev/"),
    "member-a-device": lambda root: _member("device")(root.parent),
    "member-a-folder": lambda root: _member("folder")(root.parent),
    "png-rgb": _first_png(lambda grey, _: _png_of(grey, "RGB")),
    "png-rgba": _first_png(lambda grey, _: _png_of(grey, "RGBA")),
    "png-grey-alpha": _first_png(lambda grey, _: _png_of(grey, "LA")),
    "png-16-bit": _first_png(lambda grey, _: _png_of(grey, "I;16")),
    "png-palette": _first_png(lambda grey, _: _png_of(grey, "P")),
    "png-a-jpeg": _first_png(lambda grey, _: _png_of(grey, "L", "JPEG")),
    "png-bad-crc": _first_png(lambda _, png: _bad_crc(png)),
    "png-trailing-bytes": _first_png(lambda _, png: png + b"\0\0\0\0"),
    "shard-stray": lambda root: shutil.copy(root / "train-000001.tar", root / "train-000002.tar"),
    "shard-unlisted": lambda root: _unlisted_shard(root.parent),
    "shard-link-out": _link_out,
}


def _verify_says(root: Path) -> str:
    """The problem ``fracgen verify`` finds first, without the counts and framing of its report."""
    from fracgen.verify import verify

    report = verify(root)
    assert not report.ok
    problems = [p for shard in sorted(report.shard_problems) for p in report.shard_problems[shard]]
    problem = problems[0] if problems else report.dataset_problems[0]
    problem = problem.split("first: ", 1)[-1]
    return re.sub(r"^not a readable tar after \d+ samples \(shard [^:]*: (.*)\)$", r"\1", problem)


@pytest.mark.parametrize("damage", VERIFY_REFUSES)
def test_the_trainer_refuses_a_build_as_fracgen_verify_does(damage, tiny_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    VERIFY_REFUSES[damage](root)
    said = _verify_says(root)
    if damage == "png-palette":  # verify counts them for the whole dataset, with the command that rebuilds it
        assert "palette PNGs, the format of earlier fracgen builds" in said
        said = "png is a palette PNG (an earlier fracgen's format)"
    before = scene_snapshot(tmp_path)
    for source in ("stream", "resident") if damage in ("png-rgb", "shard-link-out") else ("stream",):
        message = _refused(root, source, tmp_path, r"^shard ")
        assert said in message and message.startswith("shard "), (said, message)
    assert scene_snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["_info.json", "params.json"])
def test_records_changed_since_the_build_are_refused_as_verify_refuses_them(name, tiny_dataset, tmp_path):
    """A record build.json holds the sha256 of, edited (here only its spacing): the trainer says what verify says."""
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    (root / name).write_text(json.dumps(json.loads((root / name).read_text()), indent=2))
    said = _verify_says(root)
    assert said == f"{name} was changed after the build: its sha256 is not the one build.json records"
    before = scene_snapshot(tmp_path)
    assert said in _refused(root, "stream", tmp_path, r"^dataset ")
    assert scene_snapshot(tmp_path) == before


def resume_argv(data, out):
    argv = ["pretrain", "--config", "tiny", "--data", data, "--out", out, "--resume"]
    for item in QUICK:
        argv += ["--set", item]
    return argv


def assert_refused(code, err, *fragments):
    assert_one_line(code, err, *fragments, start="error: --resume: ")


@pytest.mark.parametrize("args,fragment", [
    (["--set", "model.kwargs.depth=2"], "model.kwargs.depth=4, this command gives 2"),
    (["--img-size", "32"], "model.img_size=64, this command gives 32"),
    (["--model", "vit_small_patch16_224"], "model.name=vit_tiny_patch16_224, this command gives vit_small"),
    (["--batch-size", "16"], "train.batch_size=8, this command gives 16"),
    (["--seed", "5"], "train.seed=0, this command gives 5"),
    (["--lr", "1e-2"], "this command gives 0.01"),
    (["--accum-steps", "2"], "train.accum_steps=1, this command gives 2"),
    (["--source", "resident"], "data.source=stream, this command gives resident"),
    (["--set", "aug.hflip=0.5"], "this command gives 0.5"),
    (["--steps", "8"], "train.steps=6, this command gives 8"),  # the cosine spans train.steps
    (["--workers", "2"], "data.workers=0, this command gives 2"),  # the stream's sample order depends on it
])
def test_resume_with_another_setting_is_refused_before_the_folder_is_touched(stopped, tiny_dataset, args,
                                                                              fragment, capsys):
    before = snapshot(stopped)
    sets = [a for q in QUICK for a in ("--set", q)]
    code, err = cli(["pretrain", "--config", "tiny", "--data", tiny_dataset, "--out", stopped, "--resume", *sets,
                     *args], capsys)
    assert_refused(code, err, f"{stopped} was run with", fragment, f"--config {stopped / 'config.yaml'}")
    assert snapshot(stopped) == before  # config.yaml and run.json untouched, no lock left behind


def _stopped_run(tmp_path: Path, capsys) -> tuple[Path, Path]:
    data, out = shaded_folder(tmp_path / "mr"), tmp_path / "fr"
    code, _, err = run_cli(["finetune", *FT, "--data", data, "--out", out, "--set", "train.stop_at=2",
                            "--set", "train.ckpt_every=1"], capsys)
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["status"] == "stopped"
    return data, out


@pytest.mark.parametrize("change", [
    lambda d: shaded_images(d / "train" / "cat", 8, shade=7),           # more images: another schedule
    lambda d: [shaded_images(d / s / "zzz", 8) for s in ("train", "test")],  # another class: another head
    lambda d: (d / "train" / "dog" / "0-0.png").write_bytes(        # same count, another file
        (d / "train" / "dog" / "0-0.png").read_bytes() + b"\0"),
])
def test_finetune_resume_refuses_changed_data_before_touching_the_run(change, tmp_path, capsys):
    data, out = _stopped_run(tmp_path, capsys)
    before = snapshot(out)
    change(data)
    code, _, err = run_cli(["finetune", *FT, "--data", data, "--out", out, "--resume"], capsys)
    assert_one_line(code, err, "--resume", "dataset.", "The data changed since the run stopped")
    assert snapshot(out) == before  # run.json still says stopped


# ------------------------------------------------------------------------------- checkpoint metadata
def _checkpoint(folder, **meta):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "pt", **meta})
    return path


@pytest.mark.parametrize("kwargs", ["{not json", "[1,2]", "3", "null"])
def test_checkpoint_kwargs_that_are_not_a_json_object_are_named(kwargs, tmp_path):
    from train.finetune import adopt_architecture, read_architecture
    from train.run.checkpoint import read_checkpoint_meta

    path = _checkpoint(tmp_path / "run", model="vit_tiny_patch16_224", kwargs=kwargs)
    for read in (read_architecture, read_checkpoint_meta):
        with pytest.raises(TrainError, match=f"checkpoint {path}: its metadata kwargs is not a JSON object"):
            read(path)
    cfg = load_config("finetune", ["model.kwargs={}"])
    with pytest.raises(TrainError, match="its metadata kwargs"):
        adopt_architecture(cfg, path)


def test_checkpoint_step_that_is_not_a_number_is_named(tmp_path):
    from train.run.checkpoint import read_checkpoint_meta

    path = _checkpoint(tmp_path / "run", model="vit_tiny_patch16_224", kwargs="{}", step="two")
    with pytest.raises(TrainError, match=f"checkpoint {path}: its metadata step is not an integer"):
        read_checkpoint_meta(path)


@pytest.mark.parametrize("config", [
    [1], "text", {"architecture": 3},
    {"architecture": "vit_tiny_patch16_224", "pretrained_cfg": {}, "model_args": [1]},
])
def test_a_timm_config_of_the_wrong_shape_is_named(config, tmp_path):
    from train.finetune import read_architecture

    path = _checkpoint(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(TrainError, match="config.json: not a timm config"):
        read_architecture(path)


@pytest.mark.parametrize("spec,fragment", [
    ("nowhere/cifar", r"unknown dataset 'nowhere/cifar' \(--data\): no such file or folder; pass an ImageFolder"),
    ("imagenet", r"unknown dataset 'imagenet' \(--data\): no such file or folder.* or cifar10 / cifar100"),
    ("", "no fine-tuning data given: pass --data with an ImageFolder root"),
])
def test_unknown_data_says_what_to_pass(spec, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainError, match=fragment):
        resolve_downstream(spec)


# -------------------------------------------------------------------------------------- repro-small
@pytest.mark.parametrize("args,fragment", [
    (["--budgets", "-5"], "--budgets '-5': every budget must be a finite number of seconds > 0"),
    (["--budgets", "0"], "> 0 (got 0)"),
    (["--budgets", "inf"], "> 0 (got inf)"),
    (["--budgets", "1.2,1.7"], "two budgets of the same whole seconds"),
    (["--variant", "x:bogus.key=1"], "--variant x: "),
    (["--variant", "x:model.img_size=abc"], "model.img_size"),
    (["--variant", "x:model.kwargs.patch_size=128"], "model.kwargs.patch_size"),
    (["--variant", "x:model.name=bogus_net"], "bogus_net"),
    (["--variant", "x:build.delta=-5"], "--delta"),
    (["--variant", "x:build.bogus=1"], "unknown build option(s) build.bogus"),
    (["--variant", "x:optim.lr=1e-3,nokey"], "expected NAME:KEY=VAL"),
    (["--variant", "a:optim.lr=1e-3", "--variant", "a:optim.lr=1e-4"], "must be unique"),
    (["--variant", "budget1s:optim.lr=1e-3"], "must be unique"),
    (["--variant", "../x:optim.lr=1e-3"], "must be unique"),
    (["--pretrain-set", "train.bogus=1"], "train.bogus"),
    (["--finetune-set", "optim.lr=-1"], "optim.lr"),
    (["--pretrain-img-size", "17", "--pretrain-set", "model.kwargs.patch_size=32"], "model.kwargs.patch_size"),
])
def test_repro_small_refuses_bad_options_before_any_work(tiny_dataset, cifar_mini_tarball, tmp_path, args, fragment,
                                                         capsys):
    out, root = tmp_path / "repro", tmp_path / "data"
    code, _, err = run_cli(["repro-small", "--cpu-check", "--out", out, "--dataset", tiny_dataset, "--cifar",
                        cifar_mini_tarball, "--data-root", root, "--budgets", "1", *args], capsys)
    assert_one_line(code, err, fragment)
    assert not out.exists() and not root.exists()  # nothing unpacked, built or trained


# ---------------------------------------------------------------------------------------- train.bench
@pytest.mark.parametrize("argv, fragment", [
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--workers", "-2"], "--workers must be >= 0"),
    (["--device", "gpu"], "--device: must be auto, cpu"),
    (["--json", "/nonexistent-fracgen/x.json"], "--json: no folder /nonexistent-fracgen"),
    (["--out", "/nonexistent-fracgen/x.md"], "--out: no folder /nonexistent-fracgen"),
])
def test_bench_refuses_bad_options_before_measuring(argv, fragment, capsys):
    from train.experiments import bench

    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(argv)
    err = capsys.readouterr().err
    assert_one_line(exit_.value.code, err, fragment)


@pytest.mark.parametrize("override, fragment", [("model.kwargs.num_heads=5", "dim should be divisible by num_heads"),
                                                ("optim.opt=adahessian", "second-order")])
def test_bench_refuses_what_timm_refuses_in_one_line(override, fragment, tiny_dataset, capsys, monkeypatch):
    from train.experiments import bench

    def measured(*_):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(bench, "time_steps", measured)
    code = bench.main(["--data", str(tiny_dataset), "--img-size", "32", "--batch", "2", "--steps", "1",
                       "--warmup", "0", "--paths", "model", "--no-progress", "--set", override])
    assert_one_line(code, capsys.readouterr().err, fragment)




@pytest.mark.parametrize("changes,fragment", [
    ({"grid": {}}, "grid"),
    ({"grid": {"delta": []}}, "grid"),
    ({"grid": {"dleta": [0.1]}}, "unknown build option(s) dleta"),
    ({"pretrain": {"config": "tiny"}}, "pretrain.steps"),
    # F-SWEEP: a point fracgen would refuse, a typo in a stage's set, sections of the wrong shape
    ({"grid": {"delta": [0.1, -5]}}, "point delta-5: --delta must be"),
    ({"grid": {"L": [4, 0]}}, "point L0: "),
    ({"build": {"L": 16, "size": 64, "points": -1}}, "point delta0.001: --points"),
    ({"grid": {"delta": [0.1, 0.10]}}, "share the folder name delta0.1"),
    ({"pretrain": {"config": "tiny", "steps": 8, "set": ["train.bogus=1"]}}, "pretrain: config: unknown key 'train.bogus'"),
    ({"finetune": {"config": "tiny-finetune", "steps": 4, "set": ["optim.lr=-1"]}}, "finetune: optim.lr"),
    ({"finetune": {"config": "nosuch", "steps": 4}}, "finetune: config 'nosuch' not found"),
    ({"pretrain": {"config": "tiny", "steps": 8, "set": "train.seed=1"}}, "pretrain.set must be a list"),
    ({"pretrain": {"config": "tiny", "steps": 8, "set": ["model.name=bogus_net"]}}, "pretrain: "),
    ({"pretrain": [1]}, "pretrain must be a mapping"),
    ({"build": [1]}, "build must be a mapping"),
    ({"paper": {"values": [1, 2]}}, "paper.values must map a grid value"),
])
def test_bad_sweeps_are_refused(spec_file, tmp_path, changes, fragment):
    with pytest.raises(TrainError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_sweep(spec_file(tmp_path, **changes))


@pytest.mark.parametrize("text", ["- 1\n", "just text\n", "3\n"])
def test_a_sweep_yaml_that_is_not_a_mapping_is_refused(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(TrainError, match="top level must be a mapping"):
        load_sweep(path)


@pytest.mark.slow
def test_a_bad_grid_point_is_refused_before_anything_is_built(spec_file, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", "sweep", str(spec_file(tmp_path, grid={"delta": [0.1, -5]})),
                           "--out", str(tmp_path / "o"), "--data-root", str(tmp_path / "data")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "point delta-5" in proc.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "data").exists()


@pytest.mark.slow
def test_empty_grid_is_one_line_on_the_command_line(spec_file, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", "sweep", str(spec_file(tmp_path, grid={"delta": []})),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "grid" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


# ============================================================================ a hostile run over options and files
# Every case runs ``python -m train ...`` in this process inside a scene of its own (``tmp``: a copy of the tiny
# dataset as ``ds``, a run stopped at step 2 as ``run``, a file ``outside.txt`` standing for everything beyond the
# folders a command names). Each must end with exit status 2, one ``error:`` line holding the fragment, no
# traceback, and the scene byte for byte as it was (names, kinds, bytes, link targets, modification times).

PRECIOUS = b"a file elsewhere that no command may touch\n"
PT = ["pretrain", "--config", "tiny", "--data", "{ds}", "--out", "{tmp}/new"]
RESUME = ["pretrain", "--config", "tiny", "--data", "{ds}", "--out", "{run}", "--resume",
          *[a for q in QUICK for a in ("--set", q)]]
FT_ARGS = ["finetune", "--config", "tiny-finetune", "--data", "{tmp}/if", "--out", "{tmp}/ft", "--epochs", "1",
           "--batch-size", "10"]
FT_INTO = [*FT_ARGS[:6], "{tmp}/ftrun", *FT_ARGS[7:]]


def scene_snapshot(root: Path) -> dict:
    """Every entry under ``root``, links not followed: kind, bytes (regular files), link target, mtime."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            found[str(path)] = ("link", os.readlink(path), info.st_mtime_ns)
        elif path.is_file():
            found[str(path)] = ("file", path.read_bytes(), info.st_mtime_ns)
        else:  # folders, FIFOs, devices: never read (a FIFO would block)
            found[str(path)] = (oct(info.st_mode), info.st_mtime_ns)
    return found


def _link(target: str, name: str):
    """Replace ``run/<name>`` by a link to ``target`` (relative to the scene)."""
    def prepare(tmp: Path) -> None:
        path = tmp / "run" / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        path.symlink_to(tmp / target)
    return prepare


def _moved(name: str):
    """Move ``run/<name>`` to ``elsewhere/<name>`` (a link then points there)."""
    def prepare(tmp: Path) -> None:
        shutil.move(tmp / "run" / name, tmp / "elsewhere" / name)
    return prepare


def _replace(name: str, make):
    """Replace ``run/<name>`` by what ``make(path)`` creates there."""
    def prepare(tmp: Path) -> None:
        path = tmp / "run" / name
        path.unlink(missing_ok=True)
        make(path)
    return prepare


def _state(tree_edit):
    """Rewrite ``run/state.safetensors`` with its tree (or raw bytes) changed by ``tree_edit``."""
    def prepare(tmp: Path) -> None:
        from train.run import safe_state

        path = tmp / "run" / "state.safetensors"
        edited = tree_edit(safe_state.load(path))
        path.write_bytes(edited if isinstance(edited, bytes) else safe_state.dumps(edited))
    return prepare


class _Reduce:
    """A pickle that runs a command when loaded: what a hostile ``state.pt`` holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_pickle(tmp: Path) -> None:
    import pickle

    (tmp / "run" / "state.safetensors").unlink()
    (tmp / "run" / "state.pt").write_bytes(pickle.dumps({"step": 2, "x": _Reduce(tmp / "pwned")}))


def _legacy_state(tmp: Path) -> None:
    """An earlier trainer's genuine state.pt (torch.save of plain data)."""
    (tmp / "run" / "state.safetensors").unlink()
    torch.save({"optimizer": {}, "scheduler": {}, "scaler": {}, "step": 2, "rng": []}, tmp / "run" / "state.pt")


def _model_meta(**meta):
    def prepare(tmp: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = tmp / "run" / "model.safetensors"
        with safe_open(str(path), framework="pt") as f:
            old = dict(f.metadata())
        save_file(load_file(str(path)), str(path), metadata={**old, **meta})
    return prepare


def _model_tensors(edit):
    def prepare(tmp: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = tmp / "run" / "model.safetensors"
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata())
        save_file(edit(load_file(str(path))), str(path), metadata=meta)
    return prepare


def _write(rel: str, text: str):
    def prepare(tmp: Path) -> None:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    return prepare


def _both(*prepares):
    def prepare(tmp: Path) -> None:
        for step in prepares:
            step(tmp)
    return prepare


def _tar_members(shard: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(shard) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]


def _write_tar(shard: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _resign(root: Path) -> None:
    """Record every shard's size and sha256 in build.json again: the dataset is consistent, only its content lies."""
    build = json.loads((root / "build.json").read_text())
    for record in build["shards"]:
        shard = root / record["filename"]
        record["bytes"], record["sha256"] = shard.stat().st_size, dataset.sha256_file(shard)
    (root / "build.json").write_text(json.dumps(build))


def _member(kind: str):
    """Shard 1 re-signed with one more member of ``kind`` after its first sample (or the first renamed)."""
    def prepare(tmp: Path) -> None:
        shard = tmp / "ds" / "train-000001.tar"
        members = _tar_members(shard)
        first = members[0][0]
        if kind == "dotdot":
            for info, _ in members[:3]:  # the first sample's png, cls and json
                info.name = "../../" + info.name
        else:
            extra = tarfile.TarInfo(first.name.split(".")[0] + ".x")
            extra.type = {"link": tarfile.SYMTYPE, "folder": tarfile.DIRTYPE, "device": tarfile.CHRTYPE,
                          "fifo": tarfile.FIFOTYPE, "hardlink": tarfile.LNKTYPE}[kind]
            extra.linkname = "/etc/passwd" if kind in ("link", "hardlink") else ""
            members.insert(3, (extra, None))
        _write_tar(shard, members)
        _resign(tmp / "ds")
    return prepare


def _unlisted_shard(tmp: Path) -> None:
    """A third shard that _info.json lists and build.json does not (so nothing records its sha256): damaged."""
    root = tmp / "ds"
    raw = bytearray((root / "train-000001.tar").read_bytes())
    raw[2000] ^= 0xFF  # inside the first PNG: a damaged shard that still reads as a tar
    (root / "train-000002.tar").write_bytes(bytes(raw))
    info = json.loads((root / "_info.json").read_text())
    train = info["splits"]["train"]
    train["filenames"].append("train-000002.tar")
    train["shard_lengths"].append(8)
    train["num_samples"] = 24
    (root / "_info.json").write_text(json.dumps(info))
    build = json.loads((root / "build.json").read_text())
    build["num_samples"] = 24
    (root / "build.json").write_text(json.dumps(build))


def _first_state(tree: dict, name: str, change) -> dict:
    """``tree`` with the optimizer's first ``name`` tensor replaced by ``change(tensor)``."""
    states = tree["optimizer"]["state"]
    index = next(i for i, entry in states.items() if entry[name].dim() >= 2)
    return {**tree, "optimizer": {**tree["optimizer"], "state": {
        **states, index: {**states[index], name: change(states[index][name])}}}}


def _classes(count: int):
    """_info.json and build.json agreeing on ``count`` classes (the head a run would build)."""
    def prepare(tmp: Path) -> None:
        for name in ("_info.json", "build.json"):
            path = tmp / "ds" / name
            path.write_text(json.dumps({**json.loads(path.read_text()), "num_classes": count}))
    return prepare


def _billion_laughs(tmp: Path) -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for name, prev in zip("bcdefghi", "abcdefgh", strict=True):
        lines.append(f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]")
    lines.append("model: {kwargs: {lol: *i}}")
    (tmp / "laughs.yaml").write_text("\n".join(lines) + "\n")


def _image_folder_scene(tmp: Path) -> None:
    from train_helpers import image_folder

    image_folder(tmp / "if")


def _stopped_finetune(tmp: Path) -> None:
    """A fine-tuning stopped after its first step with a checkpoint, in ``ftrun``."""
    from train_helpers import ft_cfg, image_folder

    from train.finetune import finetune

    finetune(ft_cfg(image_folder(tmp / "if"), "train.stop_at=1", "train.ckpt_every=1"), tmp / "ftrun")


def _link_in(path: Path, target: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to(target)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


LONG = "x" * 300
HOSTILE = [
    # -- numeric options past any machine, or past this one's CPUs
    ("img-size", [*PT, "--img-size", "100000"], "model.img_size: must be an integer in [8, 65536]", None),
    ("batch-size", [*PT, "--batch-size", "100000000"], "train.batch_size: must be an integer in [1,", None),
    ("threads", [*PT, "--set", "train.threads=100000"], "train.threads: must be at most", None),
    ("workers-set", [*PT, "--set", "data.workers=300"], "data.workers: must be at most", None),
    ("workers-flag", [*PT, "--workers", "300"], "data.workers: must be at most", None),
    ("load-workers", [*PT, "--set", "data.resident.load_workers=300"], "data.resident.load_workers: must be at most",
     None),
    ("depth", [*PT, "--set", "model.kwargs.depth=100000"], "model.kwargs.depth: must be an integer in [1, 1000]", None),
    ("shuffle-buffer", [*PT, "--set", "data.shuffle_buffer=1000000000000"], "data.shuffle_buffer: must be", None),
    ("embed-dim", [*PT, "--set", "model.kwargs.embed_dim=10000000"], "model.kwargs.embed_dim: must be", None),
    ("num-heads", [*PT, "--set", "model.kwargs.num_heads=-4"], "model.kwargs.num_heads: must be", None),
    ("mlp-ratio", [*PT, "--set", "model.kwargs.mlp_ratio=1e9"], "model.kwargs.mlp_ratio: must be", None),
    ("steps", [*PT, "--steps", "10000000000000"], "train.steps: must be an integer in [0, 1e+12]", None),
    ("epochs", [*PT, "--set", "train.epochs=10000000"], "train.epochs: must be", None),
    ("accum", [*PT, "--accum-steps", "100000000"], "train.accum_steps: must be", None),
    ("log-every", [*PT, "--set", "train.log_every=10000000000000"], "train.log_every: must be", None),
    ("ckpt-every", [*PT, "--set", "train.ckpt_every=10000000000000"], "train.ckpt_every: must be", None),
    ("eval-every", [*PT, "--set", "train.eval_every=-5"], "train.eval_every: must be", None),
    ("stop-at", [*PT, "--set", "train.stop_at=1e30"], "train.stop_at: must be", None),
    ("warmup", [*PT, "--set", "optim.warmup_steps=1e30"], "optim.warmup_steps: must be", None),
    ("eval-batch", [*PT, "--set", "finetune.eval_batch_size=1000000000"], "finetune.eval_batch_size: must be", None),
    ("eval-samples", [*PT, "--set", "data.eval_samples=1000000000"], "data.eval_samples: must be", None),
    ("budget-gb", [*PT, "--set", "data.resident.memory_budget_gb=1e12"], "data.resident.memory_budget_gb: must be",
     None),
    ("probe-blocks", [*PT, "--set", "finetune.probe_blocks=100000"], "finetune.probe_blocks: must be", None),
    ("patch-size", [*PT, "--set", "model.kwargs.patch_size=1000000"], "model.kwargs.patch_size: must be", None),
    ("device-index", [*PT, "--set", "train.device=cuda:123456"], "train.device: must be", None),
    ("seed-float", [*PT, "--set", "train.seed=1.5"], "train.seed: must be int", None),
    ("lr-string", [*PT, "--set", "optim.lr=fast"], "optim.lr: must be float", None),
    ("compile-string", [*PT, "--set", "train.compile=maybe"], "train.compile: must be bool", None),
    ("fresh-masks-string", [*PT, "--set", "data.fresh_masks=maybe"], "data.fresh_masks: must be bool", None),
    ("fresh-masks-on-a-build", [*PT, "--set", "data.fresh_masks=true"], "is not a recipe; fresh masks are drawn", None),
    ("tensorboard-int", [*PT, "--set", "log.tensorboard=2"], "log.tensorboard: must be bool", None),
    ("steps-zero", [*PT, "--steps", "0"], "Invalid value for '--steps'", None),
    ("seed-negative", [*PT, "--seed", "-1"], "Invalid value for '--seed'", None),
    ("unknown-option", [*PT, "--bogus"], "No such option '--bogus'", None),
    ("unknown-command", ["bogus"], "No such command 'bogus'", None),
    ("no-out", ["pretrain", "--config", "tiny", "--data", "{ds}"], "Missing option '--out'", None),
    # -- --out values
    ("out-empty", ["pretrain", "--config", "tiny", "--data", "{ds}", "--out", ""], "--out must be a path", None),
    ("out-blank", ["pretrain", "--config", "tiny", "--data", "{ds}", "--out", "  "], "--out must be a path", None),
    ("out-too-long", ["pretrain", "--config", "tiny", "--data", "{ds}", "--out", f"{{tmp}}/{LONG}"],
     "name too long", None),
    ("out-under-a-file", ["pretrain", "--config", "tiny", "--data", "{ds}", "--out", "{tmp}/outside.txt/run"],
     "Not a directory", None),
    ("out-a-file", ["pretrain", "--config", "tiny", "--data", "{ds}", "--out", "{tmp}/outside.txt"],
     "not a folder", None),
    ("out-proc", ["pretrain", "--config", "tiny", "--data", "{ds}", "--out", "/proc/self/fracgen-run"],
     "cannot be written", None),
    ("finetune-out-empty", [*FT_ARGS[:5], "--out", ""], "--out must be a path", _image_folder_scene),
    ("repro-out-empty", ["repro-small", "--cpu-check", "--out", ""], "--out must be a path", None),
    ("sweep-out-empty", ["sweep", "sweep-cpu", "--out", ""], "--out must be a path", None),
    # -- data paths that would run a program, or hang
    ("data-pipe", ["pretrain", "--config", "tiny", "--data", "pipe:touch {tmp}/pwned", "--out", "{tmp}/new"],
     "only http:// and https:// URLs are read", None),
    ("data-pipe-pattern", ["pretrain", "--config", "tiny", "--data", "pipe:touch {tmp}/pwned/{{0..1}}.tar", "--out",
                           "{tmp}/new"], "only http:// and https://", None),
    ("eval-path-pipe", [*PT, "--set", "data.eval_path=pipe:touch {tmp}/pwned"], "only http:// and https://", None),
    ("data-s3", ["pretrain", "--config", "tiny", "--data", "s3://bucket/ds", "--out", "{tmp}/new"],
     "only http:// and https://", None),
    ("data-file-url", ["pretrain", "--config", "tiny", "--data", "file:///etc", "--out", "{tmp}/new"],
     "only http:// and https://", None),
    ("data-empty", ["pretrain", "--config", "tiny", "--data", "", "--out", "{tmp}/new"], "no dataset given", None),
    ("data-a-fifo", ["pretrain", "--config", "tiny", "--data", "{tmp}/fifo", "--out", "{tmp}/new"],
     "no _info.json", lambda tmp: _fifo(tmp / "fifo")),
    ("info-a-fifo", [*PT], "_info.json", lambda tmp: ((tmp / "ds" / "_info.json").unlink(),
                                                      _fifo(tmp / "ds" / "_info.json"))),
    # -- config files
    ("config-aliases", ["pretrain", "--config", "{tmp}/laughs.yaml", "--data", "{ds}", "--out", "{tmp}/new"],
     "YAML aliases (*name) are not accepted", _billion_laughs),
    ("set-aliases", [*PT, "--set", "model.kwargs={a: &x [1, 2], b: *x}"], "YAML aliases", None),
    ("config-missing", ["pretrain", "--config", "{tmp}/nope.yaml", "--data", "{ds}", "--out", "{tmp}/new"],
     "not found", None),
    ("config-a-fifo", ["pretrain", "--config", "{tmp}/fifo.yaml", "--data", "{ds}", "--out", "{tmp}/new"],
     "not found", lambda tmp: _fifo(tmp / "fifo.yaml")),
    ("config-python-tag", ["pretrain", "--config", "{tmp}/tag.yaml", "--data", "{ds}", "--out", "{tmp}/new"],
     "not valid YAML", _write("tag.yaml", "model: !!python/object/apply:os.system ['touch pwned']\n")),
    ("set-python-tag", [*PT, "--set", "model.name=!!python/object/apply:os.system ['touch pwned']"],
     "not valid YAML", None),
    ("config-deep", ["pretrain", "--config", "{tmp}/deep.yaml", "--data", "{ds}", "--out", "{tmp}/new"],
     "nested too deeply", _write("deep.yaml", "model: {kwargs: " + "[" * 5000 + "]" * 5000 + "}\n")),
    # -- a run folder whose files are links to files elsewhere (--resume would have written through them)
    *[(f"link-{name}", RESUME, f"{name} is a link", _link("outside.txt", name))
      for name in ("log.csv", "config.yaml", "metrics.json", "curves.png", "model.safetensors", "config.json",
                   ".lock")],
    # a link to a file elsewhere that reads as the run's own: refused all the same, before anything is written
    *[(f"link-{name}-copy", RESUME, f"{name} is a link", _both(_moved(name), _link(f"elsewhere/{name}", name)))
      for name in ("run.json", "state.safetensors", "model.safetensors", "log.csv")],
    ("link-tensorboard", RESUME, "tensorboard is a link", _link("elsewhere", "tensorboard")),
    ("lock-a-folder", RESUME, ".lock is not a regular file", _replace(".lock", lambda p: p.mkdir())),
    ("log-a-folder", RESUME, "log.csv is not a regular file", _replace("log.csv", lambda p: p.mkdir())),
    ("log-a-fifo", RESUME, "log.csv is not a regular file", _replace("log.csv", _fifo)),
    ("run-json-a-fifo", RESUME, "holds files that are not a run", _replace("run.json", _fifo)),
    ("new-run-log-link", [*PT[:-1], "{tmp}/fresh"], "log.csv is a link",
     _both(_write("fresh/run.json", '{"status": "failed", "time": "2026-01-01T00:00:00"}'),
           lambda tmp: (tmp / "fresh" / "log.csv").symlink_to(tmp / "outside.txt"))),
    # -- checkpoints that are old, hostile or damaged: refused before the folder changes
    ("state-hostile-pickle", RESUME, "state.pt is the training state of an earlier version", _hostile_pickle),
    ("state-legacy", RESUME, "a Python pickle, which can run code when loaded", _legacy_state),
    ("state-empty", RESUME, "state.safetensors is damaged", _replace("state.safetensors", lambda p: p.write_bytes(b""))),
    ("state-garbage", RESUME, "state.safetensors is damaged",
     _replace("state.safetensors", lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}"))),
    ("state-truncated", RESUME, "state.safetensors is damaged",
     _state(lambda tree: __import__("train.run.safe_state", fromlist=["dumps"]).dumps(tree)[:-4000])),
    ("state-other-format", RESUME, "not a training state of this trainer",
     _replace("state.safetensors", lambda p: save_file({"x": torch.zeros(1)}, str(p), metadata={"format": "pt"}))),
    ("state-no-optimizer", RESUME, "not a training state this trainer wrote",
     _state(lambda t: {k: v for k, v in t.items() if k != "optimizer"})),
    ("state-step-text", RESUME, "not a training state this trainer wrote", _state(lambda t: {**t, "step": "2"})),
    ("state-step-negative", RESUME, "not a training state this trainer wrote", _state(lambda t: {**t, "step": -1})),
    ("state-other-step", RESUME, "is from step 2 but state.safetensors from step 5", _state(lambda t: {**t, "step": 5})),
    ("state-no-rng", RESUME, "not a training state this trainer wrote", _state(lambda t: {**t, "rng": []})),
    ("state-bad-rng", RESUME, "state.safetensors is damaged",
     _state(lambda t: {**t, "rng": [{**t["rng"][0], "python": (3, (1, 2), None)}]})),
    ("state-wrong-shape", RESUME, "state.safetensors is damaged (optimizer exp_avg of parameter",
     _state(lambda t: _first_state(t, "exp_avg", lambda v: torch.zeros([3] * v.dim())))),
    ("state-int-moment", RESUME, "state.safetensors is damaged (optimizer exp_avg_sq of parameter",
     _state(lambda t: _first_state(t, "exp_avg_sq", lambda v: v.to(torch.int64)))),
    ("state-param-index", RESUME, "state.safetensors is damaged",
     _state(lambda t: {**t, "optimizer": {**t["optimizer"], "state": {10**6: {"step": torch.zeros(())}}}})),
    ("state-a-folder", RESUME, "state.safetensors is not a regular file",
     _replace("state.safetensors", lambda p: p.mkdir())),
    ("model-other-tensors", RESUME, "model.safetensors does not fit the run's model",
     _model_tensors(lambda t: {**t, "head.weight": torch.zeros(3, 3)})),
    ("model-meta-kwargs", RESUME, "its metadata kwargs is not a JSON object", _model_meta(kwargs="[1, 2")),
    ("model-meta-step", RESUME, "its metadata step is not an integer", _model_meta(step="two")),
    ("model-missing", RESUME, "has state.safetensors but no model.safetensors",
     lambda tmp: (tmp / "run" / "model.safetensors").unlink()),
    ("model-garbage", RESUME, "model.safetensors: not a safetensors file",
     _replace("model.safetensors", lambda p: p.write_bytes(b"not safetensors at all"))),
    ("metrics-garbage-complete", RESUME, "metrics.json is missing or unreadable",
     _write("run/run.json", '{"status": "complete", "time": "2026-01-01T00:00:00", "steps": 6}')),
    # -- datasets re-signed after a change verify refuses
    ("member-link", [*PT], "is not a regular file (a symbolic link", _member("link")),
    ("member-hardlink", [*PT], "is not a regular file (a hard link", _member("hardlink")),
    ("member-folder", [*PT], "is not a regular file (a folder", _member("folder")),
    ("member-device", [*PT], "is not a regular file (a special file", _member("device")),
    ("member-fifo", [*PT], "is not a regular file (a special file", _member("fifo")),
    ("member-dotdot", [*PT], "sample '../../0000000", _member("dotdot")),
    ("shard-unlisted", [*PT], "train-000002.tar: not listed in build.json", _unlisted_shard),
    ("shard-stray", [*PT], "train-000002.tar: not listed in build.json (a train-*.tar glob would load it)",
     lambda tmp: shutil.copy(tmp / "ds" / "train-000001.tar", tmp / "ds" / "train-000002.tar")),
    ("shard-link-out", [*PT], "train-000001.tar: is a link to a file outside the dataset folder",
     lambda tmp: _link_out(tmp / "ds")),
    ("png-rgb", [*PT], "png is 8-bit of colour type 2, not the build's 8-bit grey",
     lambda tmp: VERIFY_REFUSES["png-rgb"](tmp / "ds")),
    ("png-trailing-bytes", [*PT], "png holds 4 bytes after its end",
     lambda tmp: VERIFY_REFUSES["png-trailing-bytes"](tmp / "ds")),
    ("shard-outside", [*PT], "names shard '../outside.txt' outside the folder",
     lambda tmp: (tmp / "ds" / "_info.json").write_text((tmp / "ds" / "_info.json").read_text().replace(
         "train-000001.tar", "../outside.txt"))),
    ("shard-a-folder", [*PT], "train-000001.tar: not a regular file",
     lambda tmp: ((tmp / "ds" / "train-000001.tar").unlink(), (tmp / "ds" / "train-000001.tar").mkdir())),
    ("build-json-garbage", [*PT], "build.json", _write("ds/build.json", "{not json")),
    ("info-json-deep", [*PT], "nested too deeply", _write("ds/_info.json", "[" * 100000 + "]" * 100000)),
    ("info-num-classes-huge", [*PT], "1,000,000,000,000 classes has", _classes(10**12)),
    # -- fine-tuning
    ("ft-tarball-garbage", [*FT_ARGS[:4], "{tmp}/bad.tar.gz", *FT_ARGS[5:]], "cannot unpack it",
     lambda tmp: (tmp / "bad.tar.gz").write_bytes(os.urandom(5000))),
    ("ft-tarball-dotdot-name", [*FT_ARGS[:4], "{tmp}/..tar.gz", *FT_ARGS[5:]], "unpacks into must be one plain name",
     lambda tmp: (tmp / "..tar.gz").write_bytes(b"")),
    ("ft-checkpoint-pickle", [*FT_ARGS, "--checkpoint", "{tmp}/model.pt"], "from a .safetensors file only",
     _both(_image_folder_scene, lambda tmp: torch.save({"w": _Reduce(tmp / "pwned")}, tmp / "model.pt"))),
    ("ft-checkpoint-renamed", [*FT_ARGS, "--checkpoint", "{tmp}/weights.bin"], "from a .safetensors file only",
     _both(_image_folder_scene, lambda tmp: save_file({"w": torch.zeros(1)}, str(tmp / "weights.bin"), metadata={
         "model": "vit_tiny_patch16_224", "kwargs": "{}"}))),
    ("ft-threads", [*FT_ARGS, "--set", "train.threads=100000"], "train.threads: must be at most", _image_folder_scene),
    ("ft-workers", [*FT_ARGS, "--workers", "300"], "data.workers: must be at most", _image_folder_scene),
    ("ft-eval-batch", [*FT_ARGS, "--set", "finetune.eval_batch_size=1000000000"],
     "finetune.eval_batch_size: must be", _image_folder_scene),
    *[(f"ft-resume-link-{name}", [*FT_INTO, "--resume"], f"{name} is a link",
       _both(_stopped_finetune, lambda tmp, name=name: _link_in(tmp / "ftrun" / name, tmp / "outside.txt")))
      for name in ("log.csv", "config.yaml", "curves.png", "state.safetensors")],
    ("ft-out-link-log", FT_INTO, "log.csv is a link",
     _both(_image_folder_scene, _write("ftrun/run.json", '{"status": "running", "time": "2026-01-01T00:00:00"}'),
           lambda tmp: (tmp / "ftrun" / "log.csv").symlink_to(tmp / "outside.txt"))),
    # -- sweeps and repro-small: names that are paths, an --out that is not theirs (checked before any unpacking)
    ("sweep-name-dotdot", ["sweep", "{tmp}/evil.yaml"], "name must be one plain name", None),
    ("sweep-name-slash", ["sweep", "{tmp}/slash.yaml"], "name must be one plain name", None),
    ("sweep-out-a-file", ["sweep", "sweep-cpu", "--out", "{tmp}/outside.txt", "--data", "{tmp}/mini.tar.gz",
                          "--data-root", "{tmp}/data"], "not a folder", None),
    ("repro-out-a-file", ["repro-small", "--cpu-check", "--out", "{tmp}/outside.txt", "--dataset", "{ds}", "--cifar",
                          "{tmp}/mini.tar.gz", "--data-root", "{tmp}/data"], "not a folder", None),
    ("repro-out-users", ["repro-small", "--cpu-check", "--out", "{tmp}/mine", "--dataset", "{ds}", "--cifar",
                         "{tmp}/mini.tar.gz", "--data-root", "{tmp}/data"], "not a repro-small folder",
     _write("mine/notes.txt", "mine")),
    ("repro-variant-dotdot", ["repro-small", "--cpu-check", "--out", "{tmp}/r", "--dataset", "{ds}", "--variant",
                              "..:optim.lr=1e-3"], "must be unique", None),
    # -- the benchmark's options
    ("bench-threads", ["BENCH", "--threads", "100000", "--paths", "model"], "train.threads: must be at most", None),
    ("bench-workers", ["BENCH", "--workers", "300", "--paths", "model"], "data.workers: must be at most", None),
    ("bench-img", ["BENCH", "--img-size", "100000", "--paths", "model"], "model.img_size: must be", None),
    ("bench-recipes-unknown", ["BENCH", "--recipes", "1p-frac,nope", "--paths", "model"], "--recipes: unknown ['nope']",
     None),
    ("bench-batch", ["BENCH", "--batch", "100000000", "--paths", "model"], "train.batch_size: must be", None),
    ("bench-json-link", ["BENCH", "--json", "{tmp}/link.json", "--paths", "model", "--data", "{ds}"],
     "link.json is a link", lambda tmp: (tmp / "link.json").symlink_to(tmp / "outside.txt")),
]


def make_scene(tmp_path: Path, tiny_dataset: Path, stopped: Path | None, tarball: Path) -> Path:
    """The folders a hostile case may name: ``ds`` (the tiny dataset), ``run`` (a run stopped at step 2, copied only
    for the cases that name it: 23 MB each), files elsewhere, two sweep YAMLs whose names are paths, the mini CIFAR
    tarball."""
    shutil.copytree(tiny_dataset, tmp_path / "ds")
    if stopped is not None:
        shutil.copytree(stopped, tmp_path / "run")
    (tmp_path / "outside.txt").write_bytes(PRECIOUS)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(tarball, tmp_path / "mini.tar.gz")
    spec = yaml.safe_load((REPO / "train" / "configs" / "sweep-cpu.yaml").read_text())
    for file, name in (("evil.yaml", "../../escaped"), ("slash.yaml", "a/b")):
        (tmp_path / file).write_text(yaml.safe_dump({**spec, "name": name, "finetune": {
            **spec["finetune"], "data": str(tmp_path / "mini.tar.gz")}}))
    return tmp_path


@pytest.mark.parametrize("argv, fragment, prepare", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_hostile_run_is_one_line_and_changes_nothing(argv, fragment, prepare, tmp_path, tiny_dataset, stopped,
                                                        cifar_mini_tarball, capsys, monkeypatch):
    from train.experiments import bench

    run = stopped if "{run}" in " ".join(argv) else None
    scene = make_scene(tmp_path, tiny_dataset, run, cifar_mini_tarball)
    if prepare is not None:
        prepare(scene)
    before = scene_snapshot(scene)
    monkeypatch.chdir(scene)
    argv = [a.replace("{ds}", str(scene / "ds")).replace("{run}", str(scene / "run")).replace("{tmp}", str(scene))
            for a in argv]
    if argv[0] == "BENCH":
        monkeypatch.setattr(bench, "time_steps", lambda *a, **k: pytest.fail("the benchmark ran"))
        try:
            code = bench.main(["--no-progress", "--steps", "1", "--warmup", "0", *argv[1:]])
        except SystemExit as e:  # argparse's refusals exit
            code = e.code
        err = capsys.readouterr().err
    else:
        code, _, err = run_cli(argv, capsys)
    assert_one_line(code, err, fragment)
    assert scene_snapshot(scene) == before
    assert not (scene / "pwned").exists()


def test_the_hostile_table_is_large_and_its_cases_distinct():
    assert len(HOSTILE) >= 100 and len({c[0] for c in HOSTILE}) == len(HOSTILE)
