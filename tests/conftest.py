"""Shared fixtures. Tests default to CPU, one torch thread, and never touch the network."""

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # read when huggingface_hub is imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # else its user agent looks up huggingface.co

TINY = dict(sigma=3.5, delta=0.1, L=16, size=64, points=5000, seed=0, shard_size=8)
# The real mini CIFAR-10 copy when ../shared sits beside the checkout (CI, developers); users lack it.
SHARED_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-mini.tar.gz"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"


def make_cifar_like(dest: Path, train_per_class: int = 100, test_per_class: int = 20, size: int = 32) -> Path:
    """Write a CIFAR-10-shaped JPEG tarball of generated images (same layout and counts as the mini copy).

    Each class is ``fracgen-train toy-data``'s image of that label (its stripes in a colour of its own, under
    noise): learnable in a few hundred steps, so tests that assert a fine-tuning learns hold without the real
    images.
    """
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from train.experiments.toy import toy_colour_image

    rng = np.random.default_rng(0)
    tarball = dest / "cifar-like-mini.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for c, name in enumerate(CIFAR_CLASSES):
                for i in range(count):
                    buf = io.BytesIO()
                    Image.fromarray(toy_colour_image(c, size, rng)).save(buf, "JPEG", quality=75)
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    return tarball


def one_line(result, *fragments):
    """A click result that is a clean refusal: exit 2, one ``Error:`` line holding every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def rewrite_record(root: Path, name: str, data: dict) -> None:
    """Write ``name`` (params.json, _info.json) as ``data`` and record its sha256 in build.json, as a build would:
    a record edited consistently, which only the checks of its content can refuse."""
    import hashlib
    import json

    raw = json.dumps(data).encode()
    (root / name).write_bytes(raw)
    build = json.loads((root / "build.json").read_text())
    build["records"][name] = hashlib.sha256(raw).hexdigest()
    (root / "build.json").write_text(json.dumps(build))


def free_port() -> str:
    """A TCP port nobody listens on now, for a torchrun rendezvous (a fixed port collides with a suite running
    beside this one, and gloo then aborts a rank)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.fixture(scope="session")
def cifar_mini_tarball(tmp_path_factory) -> Path:
    """The mini CIFAR-10 tarball (100 train + 20 test JPEGs per class, ImageFolder layout inside).

    The real copy from ../shared/data when present; otherwise a generated stand-in of the same shape, so no
    test needs ../shared.
    """
    if SHARED_MINI.is_file():
        return SHARED_MINI
    return make_cifar_like(tmp_path_factory.mktemp("cifar-like"))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A built dataset (L=16, 64 px, 5,000 points, 2 shards of 8). Read-only: copy it before changing it."""
    from fracgen.build import BuildConfig, build

    root = tmp_path_factory.mktemp("tiny") / "ds"
    build(BuildConfig(**TINY), root, workers=1)
    return root


@pytest.fixture(scope="session")
def learnable_dataset(tmp_path_factory) -> Path:
    """4 classes at Delta 0.3 (64 px, one shard of 4 images): the task the "a model learns"
    tests train on. Measured over seeds 0-4 (tiny config, 200 steps, resident source): eval top-1 100% every
    time, training loss from 1.4 to at most 0.41; the 16-class tiny dataset left seeds stuck at chance.
    """
    from fracgen.build import BuildConfig, build

    root = tmp_path_factory.mktemp("learnable") / "ds"
    build(BuildConfig(**{**TINY, "L": 4, "delta": 0.3, "shard_size": 4}), root, workers=1)
    return root


@pytest.fixture
def tiny_copy(tiny_dataset, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may change."""
    dst = tmp_path / "ds"
    shutil.copytree(tiny_dataset, dst)
    return dst


@pytest.fixture(scope="session")
def stopped(tiny_dataset, tmp_path_factory) -> Path:
    """A tiny pre-training run of 6 steps stopped at step 2 with a checkpoint (train.stop_at). Read-only: copy it
    before changing it."""
    from train_helpers import cfg_of

    from train.pretrain import pretrain

    out = tmp_path_factory.mktemp("stopped") / "st"
    assert pretrain(cfg_of(tiny_dataset, "train.stop_at=2"), out)["steps"] == 2
    return out


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


@pytest.fixture(scope="session")
def cifar_mini(cifar_mini_tarball, tmp_path_factory) -> Path:
    """The mini CIFAR-10 tarball unpacked as an ImageFolder root (train/, test/)."""
    import tarfile

    root = tmp_path_factory.mktemp("cifar")
    with tarfile.open(cifar_mini_tarball) as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.fixture
def restore_timm_ops():
    """The bench may patch timm's posterize (Pillow >= 11); keep that from leaking into other tests."""
    from timm.data import auto_augment

    ops, posterize = dict(auto_augment.NAME_TO_OP), auto_augment.posterize
    yield
    auto_augment.NAME_TO_OP.clear()
    auto_augment.NAME_TO_OP.update(ops)
    auto_augment.posterize = posterize


@pytest.fixture
def spec_file(cifar_mini_tarball):
    """Write the toy sweep (sweep-cpu.yaml, fine-tuning on the mini CIFAR-10 tarball) with changes."""
    import yaml

    def write(tmp_path, **changes):
        spec = yaml.safe_load((CONFIGS / "sweep-cpu.yaml").read_text())
        spec["finetune"]["data"] = str(cifar_mini_tarball)
        spec["pretrain"]["steps"], spec["finetune"]["steps"] = 8, 4
        spec.update(changes)
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path
    return write
