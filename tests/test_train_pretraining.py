"""train.data.pretraining: the source a pre-training gets and its evaluation set."""

import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from train_helpers import (
    assert_one_line,
    run_cli,
)


@pytest.mark.parametrize("source", ["stream", "resident"])
def test_an_eval_set_of_other_classes_is_refused(source, tmp_path, capsys):
    from train.experiments.toy import write_toy_dataset

    data = write_toy_dataset(tmp_path / "ds", num_classes=4, per_class=2, size=32)
    other = write_toy_dataset(tmp_path / "ds8", num_classes=8, per_class=1, size=32)
    code, _, err = run_cli(["pretrain", "--config", "tiny", "--data", data, "--out", tmp_path / "o", "--set",
                            "train.steps=2", "--set", f"data.source={source}", "--set", f"data.eval_path={other}",
                            "--set", "model.img_size=32", "--batch-size", "8"], capsys)
    assert_one_line(code, err, "data.eval_path", "has 8 classes", "has 4")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("source", ["resident", "stream"])
def test_each_shard_is_read_once_before_the_first_step(tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch,
                                                       source: str) -> None:
    """``_info.json`` is parsed once and every shard opened once before the first step, whichever source reads
    them: ``make_source`` and the evaluation set (the training set's first samples, kept by the source)."""

    import fracgen.dataset

    config = pytest.importorskip("train.config")
    data = pytest.importorskip("train.data.pretraining")
    opened: Counter[str] = Counter()
    parsed: list[str] = []
    tar_open, parse_info = tarfile.open, fracgen.dataset.parse_info

    def counting_open(name=None, *args, **kwargs):
        opened[Path(name if name is not None else kwargs["fileobj"].name).name] += 1
        return tar_open(name, *args, **kwargs)

    def counting_parse(raw, where=fracgen.dataset.INFO_JSON):
        parsed.append(where)
        return parse_info(raw, where)

    monkeypatch.setattr(tarfile, "open", counting_open)
    monkeypatch.setattr(fracgen.dataset, "parse_info", counting_parse)
    cfg = config.load_config("tiny", [f"data.source={source}", "data.workers=0"], {"data.path": str(tiny_dataset)})
    src = data.make_source(cfg, torch.device("cpu"), 0, 1)
    loader = data.make_pretrain_eval_loader(cfg, src.head)
    shards = sorted(p.name for p in tiny_dataset.glob("*.tar"))
    assert len(shards) == 2 and dict(opened) == {name: 1 for name in shards}, opened
    assert len(parsed) == 1, parsed
    assert type(src).__name__ == ("ResidentSource" if source == "resident" else "StreamSource")
    assert len(loader.dataset) == 16  # the whole tiny set (eval_samples 256)
