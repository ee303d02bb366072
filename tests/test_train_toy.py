"""train.experiments.toy: the toy dataset keeps fracgen's format; the toy ImageFolder is what fine-tuning reads."""

import tarfile


def test_toy_dataset_matches_contract(tmp_path):
    from train.data.samples import iter_samples
    from train.data.shards import read_info, shard_urls
    from train.experiments.toy import write_toy_dataset

    root = write_toy_dataset(tmp_path / "toy", num_classes=4, per_class=2, size=32, shard_size=3)
    info = read_info(str(root))
    urls = shard_urls(str(root), info)
    assert len(urls) == 3 and all(tarfile.is_tarfile(u) for u in urls)
    samples = list(iter_samples(urls))
    assert sorted(label for _, label in samples) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(img.shape == (32, 32) and set(img.ravel().tolist()) <= {0, 127} for img, _ in samples)


def test_toy_imagefolder_is_what_fine_tuning_reads(tmp_path):
    from train.config import load_config
    from train.data.downstream import open_downstream
    from train.experiments.toy import write_toy_imagefolder

    root = write_toy_imagefolder(tmp_path / "toy", num_classes=3, train_per_class=4, test_per_class=2, size=16)
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]  # renamed into place: no temporary left beside it
    assert sorted(p.name for p in (root / "train").iterdir()) == ["class-00", "class-01", "class-02"]
    train_set, test_set, num_classes = open_downstream(load_config("tiny-finetune", [], {"data.path": str(root)}))
    assert (len(train_set), len(test_set), num_classes) == (12, 6, 3)


def test_toy_data_refuses_a_folder_holding_files_and_leaves_it(tmp_path, capsys):
    from train_helpers import assert_one_line, run_cli

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert_one_line(*run_cli(["toy-data", tmp_path / "mine"], capsys)[::2], "not an empty folder")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_the_offline_quick_start_fine_tunes_on_toy_data(tmp_path, capsys):
    """`fracgen-train toy-data`, then a tiny fine-tuning on it from scratch: no download, a few seconds."""
    import json

    from train_helpers import run_cli

    code, out, err = run_cli(["toy-data", tmp_path / "toy", "--classes", "4", "--train-per-class", "25"], capsys)
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'toy'}: 4 classes, 100 train + 40 test"), err
    code, out, err = run_cli(["finetune", "--config", "tiny-finetune", "--data", tmp_path / "toy", "--steps", "3",
                              "--out", tmp_path / "ft"], capsys)
    assert code == 0 and "test top-1" in out, err
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert (metrics["num_classes"], metrics["num_train"], metrics["steps"]) == (4, 100, 3)
