"""Shared fixtures. Tests default to CPU, one torch thread, and never touch the network."""

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # read when huggingface_hub is imported

TINY = dict(sigma=3.5, delta=0.1, L=16, size=64, points=5000, seed=0, shard_size=8)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A built dataset (L=16, 64 px, 5,000 points, 2 shards of 8). Read-only: copy it before changing it."""
    from fracgen.build import BuildConfig, build

    root = tmp_path_factory.mktemp("tiny") / "ds"
    build(BuildConfig(**TINY), root, workers=1)
    return root


@pytest.fixture
def tiny_copy(tiny_dataset, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may change."""
    dst = tmp_path / "ds"
    shutil.copytree(tiny_dataset, dst)
    return dst


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Torch tests run on one thread: two threads on a loaded 2-core machine can be 70x slower."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
