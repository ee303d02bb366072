"""train.bounds: every config key has a bound; threads and workers stop at the CPUs; the model and batches must fit
the memory a run can have, and each refusal names the key and what fits. Memory is given explicitly (or patched
where the command line asks the machine), so the cases hold on any machine."""

import typing

import pytest
from train_helpers import QUICK, assert_one_line, cfg_of, run_cli

from train import bounds
from train.bounds import BOUNDS, check_buffer, check_cpus, check_memory
from train.config import Config, load_config
from train.errors import TrainError

GIB = 1 << 30


def _numeric_keys() -> list[str]:
    """Every field of the config typed int or float (tuples of them included)."""
    keys = []
    for section, kind in typing.get_type_hints(Config).items():
        for name, hint in typing.get_type_hints(kind).items():
            if any(t in str(hint) for t in ("int", "float")):
                keys.append(f"{section}.{name}")
    return keys


def test_every_numeric_config_key_has_a_bound():
    missing = [k for k in _numeric_keys() if k not in BOUNDS]
    assert _numeric_keys() and missing == []


@pytest.mark.parametrize("key, value", [("train.threads", 3), ("data.workers", 3), ("data.resident.load_workers", 3)])
def test_threads_and_workers_stop_at_the_cpus(key, value, monkeypatch):
    monkeypatch.setattr(bounds, "cpus", lambda: 2)
    with pytest.raises(TrainError, match=rf"^{key}: must be at most 2, the CPUs this process may use \(got 3\)$"):
        check_cpus(load_config("tiny", [f"{key}={value}"]))
    check_cpus(load_config("tiny", [f"{key}=2"]))


def test_a_micro_batch_past_the_memory_names_the_batch_that_fits():
    cfg = load_config("pretrain", ["train.batch_size=4096"])  # 224 px: about 3.6 MB a float image and activation
    with pytest.raises(TrainError, match=r"^train.batch_size 4096: a micro-batch of 4096 images of 224 px needs "
                                         r"about 4\.6 GiB; 1\.0 GiB are available on cpu: at most train.batch_size "
                                         r"(\d+) fits") as refused:
        check_memory(cfg, 5_700_000, 4096, 1, GIB, "cpu")
    fits = int(refused.value.args[0].split("at most train.batch_size ")[1].split()[0])
    check_memory(load_config("pretrain", [f"train.batch_size={fits}", "finetune.eval_batch_size=1"]), 5_700_000,
                 fits, 1, GIB, "cpu")


def test_a_model_past_the_memory_is_named_with_its_parameters():
    with pytest.raises(TrainError, match=r"has 10,000,000,000 parameters: training it needs about 74\.5 GiB"):
        check_memory(load_config("tiny"), 10**10, 32, 1, 16 * GIB, "cuda:0", 16)


def test_an_image_past_the_memory_names_the_size_that_fits():
    cfg = load_config("tiny", ["model.img_size=40000", "finetune.eval_batch_size=1"])
    with pytest.raises(TrainError, match=r"model.img_size 40000: one image of that size needs about 35\.8 GiB") as e:
        check_memory(cfg, 10**6, 1, 1, 8 * GIB, "cpu")
    fits = int(str(e.value).rsplit("at most model.img_size ", 1)[1].split()[0])
    assert 0 < fits < 40000
    check_memory(load_config("tiny", [f"model.img_size={fits}", "finetune.eval_batch_size=1"]), 10**6, 1, 1,
                 8 * GIB, "cpu")


def test_an_evaluation_batch_past_the_memory_is_named():
    cfg = load_config("tiny", ["finetune.eval_batch_size=1000000"])
    with pytest.raises(TrainError, match=r"^finetune.eval_batch_size 1000000: .* at most finetune.eval_batch_size"):
        check_memory(cfg, 10**6, 32, 1, 4 * GIB, "cpu")


def test_unknown_memory_refuses_nothing():
    check_memory(load_config("tiny", ["train.batch_size=1000000"]), 10**12, 10**6, 1, None, "cpu")


def test_a_shuffle_buffer_past_the_memory_names_the_buffer_that_fits():
    cfg = load_config("tiny", ["data.shuffle_buffer=1000000"])
    with pytest.raises(TrainError, match=r"data.shuffle_buffer 1000000: 8 reader\(s\) would hold .* at most "
                                         r"data.shuffle_buffer 819 fits"):
        check_buffer(cfg, 512, 8, 2 * GIB)
    check_buffer(cfg, None, 8, 2 * GIB)  # the image size is not recorded: not checked


def test_the_command_line_refuses_a_batch_past_the_memory_before_reading_data(tiny_dataset, tmp_path, capsys,
                                                                              monkeypatch):
    import train.step

    monkeypatch.setattr(train.step, "free_memory", lambda device: GIB // 4)  # a machine of 256 MiB free
    code, _, err = run_cli(["pretrain", "--config", "tiny", "--data", tiny_dataset, "--out", tmp_path / "run",
                            *[a for q in QUICK for a in ("--set", q)], "--batch-size", "8192"], capsys)
    assert_one_line(code, err, "train.batch_size 8192: a micro-batch of 8192 images of 64 px", "at most")
    assert not (tmp_path / "run").exists()
    assert cfg_of(tiny_dataset, "train.batch_size=8192").train.batch_size == 8192  # the static bound allows it
