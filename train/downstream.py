"""Downstream datasets for fine-tuning and probing: torchvision's CIFAR, ImageFolder roots, tarballs, WebDataset.

``resolve_downstream(spec, data_root)`` turns what a user passes (``--data`` of finetune, ``--cifar`` of
repro-small, ``finetune.data`` / ``--data`` of a sweep) into a local dataset before anything else is written:

- ``cifar10`` / ``cifar100`` (the default everywhere): torchvision's copy in ``data_root`` (``data/``),
  downloaded there once when the machine has internet (into a temporary folder, moved in when complete);
- a tarball (``.tar.gz``/``.tgz``/``.tar``): unpacked once into ``data_root/<name>/`` (atomically, with a
  stamp of the tarball), holding either an ImageFolder layout (``train/``, ``test/``, e.g. a JPEG copy of
  CIFAR-10) or torchvision's own archive (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``);
- a folder: an ImageFolder root (``train/`` and ``test/`` or ``val/``), a folder holding torchvision's
  ``cifar-10-batches-py`` / ``cifar-100-python``, or a WebDataset folder with ``_info.json``.

When none of these can be had (no internet, no local copy), the error is one line saying what to pass, and
nothing is left behind. ``open_downstream(cfg)`` gives the train and test splits with the recipe's
transforms; ``MapSource`` serves a map-style split through the source interface of ``train/data.py``
(seeded per-epoch shuffle across ranks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from fracgen import dataset
from fracgen.dataset import DatasetError, DatasetInfo
from train.augment import make_eval_transform, make_train_transform
from train.config import Config
from train.data import Batch, last_line, micro_batch_size, read_info, shard_samples
from train.distributed import end_workers, quiet_worker
from train.errors import TrainError
from train.shards import checked_samples, is_remote, plan_shards

log = logging.getLogger(__name__)

TORCHVISION_DATASETS = {"cifar10": ("CIFAR10", 10, "CIFAR-10"), "cifar100": ("CIFAR100", 100, "CIFAR-100")}
TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
DOWNLOAD_TIMEOUT_S = 60
"""Socket timeout of a torchvision download: a network that accepts and never answers is an error, not a hang."""
_STAMP = ".unpacked.json"
_WHAT_TO_PASS = ("an ImageFolder root (train/ and test/ inside) or a CIFAR-style tarball (cifar-10-python.tar.gz, "
                 "or a .tar.gz of such a folder, e.g. cifar10-jpeg.tar.gz)")


def _tv_class(name: str) -> Any:
    import torchvision

    return getattr(torchvision.datasets, TORCHVISION_DATASETS[name][0])


def _tv_present(name: str, root: Path) -> bool:
    """True when torchvision's files of ``name`` are in ``root`` with their md5 (what torchvision checks)."""
    from torchvision.datasets.utils import check_integrity

    cls = _tv_class(name)
    folder = root / cls.base_folder
    files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
    return folder.is_dir() and all(check_integrity(str(folder / f), md5) for f, md5 in files)


def _tv_folder(path: Path) -> str | None:
    """The torchvision name whose archive folder ``path`` holds (``cifar-10-batches-py``...), else None."""
    for name in TORCHVISION_DATASETS:
        if (path / _tv_class(name).base_folder).is_dir():
            return name
    return None


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first (what a failure must remove again)."""
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; a folder something else wrote into stays
        with contextlib.suppress(OSError):
            folder.rmdir()


def fetch_torchvision(name: str, data_root: str | Path, option: str = "--data") -> Path:
    """Make sure torchvision's ``name`` (``cifar10``, ``cifar100``) is in ``data_root``, downloading it once.

    The archive is downloaded and unpacked into a temporary folder inside ``data_root`` (one per process, so
    DDP ranks may race) and moved into place when complete, so an interrupted or failed download leaves
    nothing (not even ``data_root``, when this call created it).

    Returns:
        ``data_root`` as a Path.

    Raises:
        TrainError: one line saying that the data could not be had and what to pass instead (``option``).
    """
    from torchvision.datasets.utils import download_and_extract_archive

    root = Path(data_root)
    title = TORCHVISION_DATASETS[name][2]
    if _tv_present(name, root):
        return root
    cls = _tv_class(name)
    target = root / cls.base_folder
    if target.exists():  # not ours to replace: torchvision's folder, incomplete or changed (md5 differs)
        raise TrainError(f"{target} is there but incomplete or damaged (torchvision's md5 check fails): remove it "
                         f"to download {title} again, or pass {option} with {_WHAT_TO_PASS}")
    created = _missing_parents(root)
    tmp = root / f".download-{name}-{os.getpid()}"
    timeout = socket.getdefaulttimeout()
    try:
        log.info("downloading %s into %s (about 170 MB, once) ...", title, root)
        tmp.mkdir(parents=True)
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        download_and_extract_archive(cls.url, str(tmp), filename=cls.filename, md5=cls.tgz_md5, remove_finished=True)
        if not _tv_present(name, tmp):
            raise RuntimeError("the downloaded archive does not hold the expected files")
        if not _tv_present(name, root):  # another rank or process may have finished first: keep theirs
            os.replace(tmp / cls.base_folder, target)
    except Exception as e:  # noqa: BLE001 - urllib, http.client, tarfile and torchvision raise many kinds
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        raise TrainError(f"{title} is not in {root}/ and could not be downloaded ({type(e).__name__}: {reason}); "
                         f"pass {option} with {_WHAT_TO_PASS}") from None
    finally:
        socket.setdefaulttimeout(timeout)
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
    return root


def _tarball_stem(path: Path) -> str:
    name = path.name
    for suffix in TARBALL_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def unpack_tarball(tarball: str | Path, data_root: str | Path) -> Path:
    """Unpack ``tarball`` once into ``data_root/<its name>/`` and return that folder.

    A stamp (``.unpacked.json``: the tarball's path, size and mtime) marks a complete unpacking; a changed
    tarball is unpacked again. The files go to a temporary folder first, renamed when complete.

    Raises:
        TrainError: not a readable tarball, or ``data_root/<name>`` exists and was not unpacked from it
            (a folder this did not write is never touched).
    """
    tarball = Path(tarball)
    root = Path(data_root)
    dest = root / _tarball_stem(tarball)
    st = tarball.stat()
    stamp = {"tarball": str(tarball.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    if dest.exists():
        try:
            old = json.loads((dest / _STAMP).read_text())
        except (OSError, ValueError):
            raise TrainError(f"{dest} exists and was not unpacked from {tarball}: move it, or pass the folder "
                             "itself instead of the tarball") from None
        if old == stamp:
            return dest
    created = _missing_parents(root)
    tmp = root / f".{dest.name}.unpacking-{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
        log.info("unpacking %s into %s ...", tarball, dest)
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")  # no absolute paths, links or devices out of the folder
        (tmp / _STAMP).write_text(json.dumps(stamp))
        if dest.exists():  # an earlier unpacking of another version of the tarball (stamped, ours)
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise TrainError(f"tarball {tarball}: cannot unpack it into {root} ({type(e).__name__}: {e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
    return dest


def _image_folder_root(folder: Path) -> Path | None:
    """``folder`` or its only sub-folder when it has ``train/`` and ``test/``/``val/``, else None."""
    def is_root(p: Path) -> bool:
        return (p / "train").is_dir() and any((p / s).is_dir() for s in ("test", "val", "validation"))

    if is_root(folder):
        return folder
    children = [p for p in folder.iterdir() if p.is_dir()]
    return children[0] if len(children) == 1 and is_root(children[0]) else None


def resolve_downstream(spec: str, data_root: str | Path = "data", option: str = "--data") -> str:
    """Turn what the user passed into a local downstream dataset (see the module docstring).

    Args:
        spec: ``cifar10``/``cifar100``, a tarball, or a folder.
        data_root: where torchvision downloads and unpacked tarballs go (``data.root``, default ``data/``).
        option: the option the user sets it with, named in errors.

    Returns:
        The ``data.path`` to fine-tune on: the torchvision name (its files now in ``data_root``) or a folder.

    Raises:
        TrainError: one line saying what to pass.
    """
    if not spec.strip():
        raise TrainError(f"no fine-tuning data given: pass {option} with {_WHAT_TO_PASS}, or cifar10 / cifar100")
    if spec.lower() in TORCHVISION_DATASETS:
        fetch_torchvision(spec.lower(), data_root, option)
        return spec.lower()
    path = Path(spec)
    if path.is_file():
        if not spec.endswith(TARBALL_SUFFIXES) and not tarfile.is_tarfile(path):
            raise TrainError(f"{option} {spec}: not a tarball; pass {_WHAT_TO_PASS}, or cifar10 / cifar100")
        created = _missing_parents(Path(data_root))
        folder = unpack_tarball(path, data_root)
        found = _image_folder_root(folder)
        if found is None and _tv_folder(folder) is None:  # of no use: what was unpacked (stamped, ours) goes
            shutil.rmtree(folder, ignore_errors=True)
            _remove_empty(created)
            raise TrainError(f"tarball {spec} holds neither train/ and test/ folders nor torchvision's "
                             "cifar-10-batches-py / cifar-100-python")
        return str(found or folder)
    if path.is_dir():
        return spec
    raise TrainError(f"unknown dataset {spec!r} ({option}): no such file or folder; pass {_WHAT_TO_PASS}, or "
                     f"cifar10 / cifar100 (downloaded into {data_root}/ when the machine has internet)")


def _load_rgb(path: str) -> Image.Image:
    """ImageFolder's loader, with a damaged file named in one line."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, ValueError, SyntaxError... for bad bytes
        raise TrainError(f"image {path}: cannot decode ({type(e).__name__}: {e})") from None


_CHECKED: set[tuple[str, int, int, int]] = set()
"""ImageFolders whose files were checked in this process (repro-small and sweeps fine-tune many times)."""


def _stat(path: str) -> os.stat_result:
    """``os.stat``, with a file that cannot be reached (a broken symlink, no permission) named in one line."""
    try:
        return os.stat(path)
    except OSError as e:
        raise TrainError(f"image {path}: cannot be read ({e.strerror or type(e).__name__})") from None


def _image_folder(folder: Path, transform: Callable) -> Dataset:
    """torchvision's ImageFolder of ``folder``, each file's header checked now (empty, not an image).

    Opening the headers costs about 2 s per 10,000 images on a loaded 2-core machine, once per process; a file
    damaged past its header is still named in one line when it is loaded.
    """
    import torchvision

    try:
        images = torchvision.datasets.ImageFolder(str(folder), transform=transform, loader=_load_rgb)
    except (FileNotFoundError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainError(f"dataset {folder}: {reason}") from None
    from torchvision.datasets.folder import IMG_EXTENSIONS

    # ImageFolder takes a class from a sample's folder: an image beside the class folders is silently left out
    stray = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS))
    if stray:
        log.warning("dataset %s: %d image(s) lie directly in it, outside any class folder, and are not used (%s%s); "
                    "an ImageFolder takes each image's class from its folder", folder, len(stray),
                    ", ".join(stray[:3]), ", ..." if len(stray) > 3 else "")
    stats = [_stat(path) for path, _ in images.samples]  # cheap next to opening them
    images.sizes = [st.st_size for st in stats]  # for a resume's record of the data (train.resume), not stat'ed twice
    for (path, _), st in zip(images.samples, stats, strict=True):
        if st.st_size == 0:
            raise TrainError(f"image {path}: empty file (0 bytes)")
    key = (str(folder.resolve()), len(stats), sum(st.st_size for st in stats), max(st.st_mtime_ns for st in stats))
    if key in _CHECKED:
        return images
    if len(images.samples) > 10_000:
        log.info("checking the %d images of %s ...", len(images.samples), folder)
    for path, _ in images.samples:
        try:
            with Image.open(path):
                pass
        except Exception as e:  # noqa: BLE001 - as in _load_rgb
            raise TrainError(f"image {path}: not an image Pillow can read ({type(e).__name__}: {e})") from None
    _CHECKED.add(key)
    return images


class _EncodedImages(Dataset):
    """Encoded image bytes + labels held in memory (a WebDataset split), decoded per item."""

    def __init__(self, items: list[tuple[bytes, int]], transform: Callable | None = None):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        data, label = self.items[i]
        try:
            image = Image.fromarray(dataset.decode_image(data, "RGB"), "RGB")
        except DatasetError as e:
            raise TrainError(f"image {i} of a WebDataset split: {e}") from None
        return (self.transform(image) if self.transform else image), label


_IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def _wds_split(path: str, info: DatasetInfo, split: str, verify: str | bool = "auto") -> _EncodedImages:
    """One split of a WebDataset folder, in memory; local shards are read through the checks pre-training uses
    (``train.shards.checked_samples``: sample counts against ``_info.json``, sizes and sha256 against a
    ``build.json`` when there is one, labels in range), so a shard cut short is refused, not trained on."""
    shards = plan_shards(path, info, verify, split_name=split)
    shards.image_keys = _IMAGE_KEYS
    local = not any(is_remote(u) for u in shards.urls)
    samples = (checked_samples(shards, warn_one_class=False) if local
               else (s for url in shards.urls for s in shard_samples(url)))
    items = []
    for sample in samples:
        where = f"shard {sample.get('__url__')}: sample {sample.get('__key__')}"
        ext = next((e for e in _IMAGE_KEYS if e in sample), None)
        if ext is None or "cls" not in sample:
            raise TrainError(f"{where} has no image or cls")
        try:
            label = int(sample["cls"])
        except ValueError:
            raise TrainError(f"{where}: cls {sample['cls'][:20]!r} is not an integer") from None
        if not 0 <= label < info.num_classes:
            raise TrainError(f"{where}: label {label} is out of range for the {info.num_classes} classes of "
                             f"{dataset.INFO_JSON}")
        items.append((sample[ext], label))
    return _EncodedImages(items)


def open_downstream(cfg: Config, option: str = "--data") -> tuple[Dataset, Dataset, int]:
    """The train and test splits of ``cfg.data.path`` with the recipe's transforms, and the class count.

    ``data.path`` goes through ``resolve_downstream`` first (torchvision names are downloaded into
    ``data.root`` when missing, tarballs unpacked there), so any of its forms works here.

    Raises:
        TrainError: nothing usable (one line saying what to pass), a missing split, mismatched classes, an
            empty class folder or a file that is not an image.
    """
    path = resolve_downstream(cfg.data.path, cfg.data.root, option)
    train_tf = make_train_transform(cfg.aug, cfg.model.img_size)
    test_tf = make_eval_transform(cfg.aug, cfg.model.img_size)
    root = Path(path)
    name, tv_root = (path, Path(cfg.data.root)) if path in TORCHVISION_DATASETS else (_tv_folder(root), root)
    if name is not None:
        cls, num_classes = _tv_class(name), TORCHVISION_DATASETS[name][1]
        try:
            train = cls(str(tv_root), train=True, transform=train_tf, download=False)
            test = cls(str(tv_root), train=False, transform=test_tf, download=False)
        except (OSError, RuntimeError) as e:
            raise TrainError(f"dataset {path}: cannot load {name} from {tv_root} ({e})") from None
        return train, test, num_classes
    if (root / dataset.INFO_JSON).is_file():
        info = read_info(path)
        splits = info.splits
        test_name = next((s for s in ("test", "validation", "val") if s in splits), None)
        if "train" not in splits or test_name is None:
            raise TrainError(f"dataset {path}: {dataset.INFO_JSON} needs a train and a test/validation split, "
                             f"has {list(splits)}")
        train = _wds_split(path, info, "train", cfg.data.verify)
        test = _wds_split(path, info, test_name, cfg.data.verify)
        train.transform, test.transform = train_tf, test_tf
        _warn_one_class(path, info.num_classes)
        return train, test, info.num_classes
    found = _image_folder_root(root)
    if found is None:
        raise TrainError(f"dataset {path}: an ImageFolder root needs train/ and test/ (or val/) folders")
    test_dir = next(found / s for s in ("test", "val", "validation") if (found / s).is_dir())
    train = _image_folder(found / "train", train_tf)
    test = _image_folder(test_dir, test_tf)
    if train.classes != test.classes:
        raise TrainError(f"dataset {path}: train/ and {test_dir.name}/ have different class folders")
    _warn_one_class(path, len(train.classes))
    return train, test, len(train.classes)


def _warn_one_class(path: str, num_classes: int) -> None:
    """A one-class dataset trains (timm's ImageFolder takes it) but its top-1 is 100 % by construction: say so."""
    if num_classes == 1:
        log.warning("dataset %s has a single class: every image has the same label, so fine-tuning on it learns "
                    "nothing and test top-1 is 100%% by construction", path)


class MapSource:
    """A map-style dataset as a source: seeded per-epoch shuffle split across ranks, equal counts per rank.

    Resuming mid-epoch skips by index (no decoding). With DataLoader workers, worker seeds depend on where
    the epoch starts, so a mid-epoch resume is exact only for ``data.workers: 0``.
    """

    def __init__(self, dataset: Dataset, num_classes: int, cfg: Config, device: torch.device, rank: int,
                 world_size: int):
        self.dataset, self.num_classes, self.cfg = dataset, num_classes, cfg
        self.device, self.rank, self.world_size = device, rank, world_size
        self.micro_batch = micro_batch_size(cfg, world_size)
        per_rank = len(dataset) // world_size
        accum = cfg.train.accum_steps
        self._len = (per_rank // self.micro_batch) // accum * accum
        if self._len == 0:
            raise TrainError(f"the train split has {len(dataset)} images, fewer than one batch of "
                             f"{cfg.train.batch_size}: lower train.batch_size")

    def __len__(self) -> int:
        return self._len

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Micro-batches ``start..len-1`` of ``epoch`` on the device."""
        sampler = DistributedSampler(self.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True,
                                     seed=self.cfg.train.seed, drop_last=True)
        sampler.set_epoch(epoch)
        indices = list(sampler)[start * self.micro_batch: self._len * self.micro_batch]
        workers = self.cfg.data.workers
        loader = DataLoader(Subset(self.dataset, indices), batch_size=self.micro_batch, shuffle=False,
                            num_workers=workers, drop_last=True, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed((self.cfg.train.seed * 7919 + epoch) * 131
                                                                    + self.rank * 7 + start),
                            persistent_workers=False, prefetch_factor=4 if workers else None,
                            worker_init_fn=quiet_worker)
        non_blocking = self.device.type == "cuda"
        batches = iter(loader)
        try:
            for images, targets in batches:
                yield (images.to(self.device, non_blocking=non_blocking),
                       targets.to(self.device, dtype=torch.int64, non_blocking=non_blocking))
        except TrainError as e:  # from a worker: torch wraps the message in the worker's traceback
            raise TrainError(last_line(str(e))) from None
        finally:
            end_workers(batches)

    def close(self) -> None:
        """Nothing to release."""
