"""Inputs a hostile user gives the trainer: a ``--out`` holding the user's own files or that cannot be a folder,
bad config values, a damaged fine-tuning folder, datasets whose records disagree. Each is one line, exit 2."""

import json

import pytest
from train_helpers import assert_one_line, cfg_of, cli, poison_loss

from train.config import load_config
from train.errors import TrainError
from train.run.folder import start_run_folder, write_status

USER_FILES = {"notes.txt": "my precious notes", "config.yaml": "my: config", "log.csv": "mine",
              "metrics.json": '{"mine": 1}', "curves.png": "mine", "config.json": "mine"}


# ----------------------------------------------------------------------------------------- --out (F-OUT1/2)
@pytest.mark.parametrize("names", [USER_FILES, {"config.yaml": "my: config"}, {"run.json": '{"mine": 1}'},
                                   {"run.json": "not json", "config.yaml": "x"}, {"notes.txt": "x"}])
@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_of_the_users_files_is_refused_and_kept(names, resume, tmp_path):
    out = tmp_path / "userdir"
    out.mkdir()
    for name, text in names.items():
        (out / name).write_text(text)
    with pytest.raises(TrainError, match="holds files that are not a run") as e:
        start_run_folder(out, load_config("tiny"), resume=resume, is_main=True)
    assert all(name in str(e.value) for name in names)
    assert {p.name: p.read_text() for p in out.iterdir()} == names  # nothing written, not even a lock


def test_a_run_folder_the_trainer_wrote_is_still_taken(tmp_path):
    """Empty, absent and trainer-written folders (with a user's extra file) keep their behaviour."""
    cfg = load_config("tiny")
    assert start_run_folder(tmp_path / "new", cfg, resume=False, is_main=True) is False
    (tmp_path / "empty").mkdir()
    assert start_run_folder(tmp_path / "empty", cfg, resume=False, is_main=True) is False
    ours = tmp_path / "ours"
    ours.mkdir()
    write_status(ours, "failed", error="x")
    (ours / "notes.txt").write_text("kept")
    assert start_run_folder(ours, cfg, resume=True, is_main=True) is False  # no checkpoint: from step 0
    assert json.loads((ours / "run.json").read_text())["status"] == "running"
    assert (ours / "notes.txt").read_text() == "kept"
    (ours / "model.safetensors").write_bytes(b"x")
    (ours / "state.pt").write_bytes(b"x")
    with pytest.raises(TrainError, match="already holds a run"):
        start_run_folder(ours, cfg, resume=False, is_main=True)


@pytest.mark.parametrize("where, fragment", [("afile", "not a folder"), ("afile/sub", "cannot create"),
                                             ("/proc/fracgen-nope", "cannot create")])
def test_an_out_that_cannot_be_a_folder_is_one_line(where, fragment, tmp_path):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / where
    with pytest.raises(TrainError, match=fragment):
        start_run_folder(out, load_config("tiny"), resume=False, is_main=True)
    assert (tmp_path / "afile").read_text() == "x"


def test_a_users_folder_on_the_command_line(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "userdir"
    out.mkdir()
    (out / "config.yaml").write_text("my: config")
    code, err = cli(["pretrain", "--config", "tiny", "--data", tiny_dataset, "--out", out, "--steps", "2",
                     "--set", "data.source=stream"], capsys)
    assert_one_line(code, err, f"--out {out}", "config.yaml")
    assert [p.name for p in out.iterdir()] == ["config.yaml"] and (out / "config.yaml").read_text() == "my: config"


# ------------------------------------------------------------------------ datasets (F-DATA1, F-DATA2)
def _rewrite_sample(root, shard, index, **entries):
    """Rewrite shard ``shard`` of ``root`` with sample ``index``'s entries replaced; its key."""
    from fracgen import dataset

    samples = list(dataset.iter_shard(root / dataset.shard_name(shard)))
    samples[index].update(entries)
    dataset.write_shard(root, shard, [{k: v for k, v in s.items() if k != "__url__"} for s in samples])
    return samples[index]["__key__"]


def _png(size):
    import io

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
    match = "but its json says label" if damage == "relabel" else "records size 64"
    _pretrain_refused(tiny_copy, tmp_path, rf"train-000001.tar: sample {key}: .*{match}", f"data.source={source}")


def test_the_stream_reads_only_labels_from_shards_checked_before_step_1(tiny_dataset):
    import torch

    from train.data.shards import shard_samples
    from train.data.stream import StreamSource

    source = StreamSource(cfg_of(tiny_dataset), torch.device("cpu"), 0, 1)
    assert source.checked == frozenset(source.urls)  # every local shard: check_shards read each sample
    assert all(next(shard_samples(url))["__url__"] in source.checked for url in source.urls)


def test_the_stream_checks_each_sample_as_it_decodes(tiny_copy):
    """Shards read while training (remote ones are not read first) get the same checks, from the PNG header."""
    from fracgen import dataset
    from train.data.shards import decode_sample as _decode

    sample = next(dataset.iter_shard(tiny_copy / dataset.shard_name(0)))
    assert _decode(sample, 16, 64)[0].shape == (64, 64)
    with pytest.raises(TrainError, match="image is 8x8 px, build.json records size 64"):
        _decode({**sample, "png": _png(8)}, 16, 64)
    with pytest.raises(TrainError, match="but its json says label"):
        _decode({**sample, "cls": str((int(sample["cls"]) + 3) % 16).encode()}, 16, 64)


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


# ----------------------------------------------------------------------------------- config (F-CFG, F-CFG2)
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


@pytest.mark.parametrize("override", ["optim.opt=sgd", "optim.opt=lookahead_adamw", "optim.clip_grad=0",
                                      "optim.clip_grad=null", "train.device=cuda:1", "data.shuffle_buffer=0",
                                      "model.kwargs={patch_size: 8, depth: 2}", "aug.mean=[0, 0.1, 1]"])
def test_good_config_values_still_load(override):
    from train.model import check_timm_names

    check_timm_names(load_config("tiny", [override]))


@pytest.mark.parametrize("content, fragment", [(b"- a\n- b\n", "top level must be a mapping"),
                                               (b"\xff\xfe\x00garbage", "not UTF-8"), (b"42\n", "got int")])
def test_a_config_file_that_is_not_a_mapping_of_text(content, fragment, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_bytes(content)
    code, err = cli(["pretrain", "--config", tmp_path / "bad.yaml", "--data", "nowhere", "--out", tmp_path / "run"],
                    capsys)
    assert_one_line(code, err, "bad.yaml", fragment)
    assert not (tmp_path / "run").exists()


def test_a_loss_that_turns_nan_fails_the_run_naming_the_step(tiny_dataset, tmp_path, monkeypatch):
    from train.pretrain import pretrain

    poison_loss(monkeypatch, float("nan"), from_step=2)  # from the third step on
    cfg = load_config("tiny", ["data.source=stream", "train.batch_size=8", "train.log_every=1", "data.eval_path=''",
                               "train.steps=6"], {"data.path": str(tiny_dataset)})
    with pytest.raises(TrainError, match=r"the loss became nan by step 3"):
        pretrain(cfg, tmp_path / "run")
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "failed" and "step 3" in status["error"]
