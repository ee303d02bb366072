"""train.experiments.toy: the toy dataset keeps fracgen's format."""

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
