"""Fine-tuning data made local before anything else is written: torchvision's CIFAR, tarballs, folders.

``resolve_downstream(spec, data_root)`` turns what a user passes (``--data`` of finetune, ``--cifar`` of
repro-small, ``finetune.data`` / ``--data`` of a sweep) into a local dataset:

- ``cifar10`` / ``cifar100`` (the default everywhere): torchvision's copy in ``data_root`` (``data/``),
  downloaded there once when the machine has internet (into a temporary folder, moved in when complete);
- a tarball (``.tar.gz``/``.tgz``/``.tar``): unpacked once into ``data_root/<name>/`` (atomically, with a
  stamp of the tarball), holding either an ImageFolder layout (``train/``, ``test/``, e.g. a JPEG copy of
  CIFAR-10) or torchvision's own archive (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``);
- a folder: an ImageFolder root (``train/`` and ``test/`` or ``val/``), a folder holding torchvision's
  ``cifar-10-batches-py`` / ``cifar-100-python``, or a WebDataset folder with ``_info.json``.

When none of these can be had (no internet, no local copy), the error is one line saying what to pass, and
nothing is left behind. Cost: a download of about 170 MB or an unpacking, once per ``data_root``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tarfile
import zlib
from pathlib import Path
from typing import Any

from fracgen import folder as fs
from fracgen.errors import FracgenError
from train.errors import TrainError

log = logging.getLogger(__name__)

TORCHVISION_DATASETS = {"cifar10": ("CIFAR10", 10, "CIFAR-10"), "cifar100": ("CIFAR100", 100, "CIFAR-100")}
TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
DOWNLOAD_TIMEOUT_S = 60
"""Socket timeout of a torchvision download: a network that accepts and never answers is an error, not a hang."""
_STAMP = ".unpacked.json"
_WHAT_TO_PASS = ("an ImageFolder root (train/ and test/ inside) or a CIFAR-style tarball (cifar-10-python.tar.gz, "
                 "or a .tar.gz of such a folder, e.g. cifar10-jpeg.tar.gz)")


def tv_class(name: str) -> Any:
    import torchvision

    return getattr(torchvision.datasets, TORCHVISION_DATASETS[name][0])


def tv_present(name: str, root: Path) -> bool:
    """True when torchvision's files of ``name`` are in ``root`` with their md5 (what torchvision checks)."""
    from torchvision.datasets.utils import check_integrity

    cls = tv_class(name)
    folder = root / cls.base_folder
    files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
    return folder.is_dir() and all(check_integrity(str(folder / f), md5) for f, md5 in files)


def tv_folder(path: Path) -> str | None:
    """The torchvision name whose archive folder ``path`` holds (``cifar-10-batches-py``...), else None."""
    for name in TORCHVISION_DATASETS:
        if (path / tv_class(name).base_folder).is_dir():
            return name
    return None


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
    if tv_present(name, root):
        return root
    cls = tv_class(name)
    target = root / cls.base_folder
    if target.exists():  # not ours to replace: torchvision's folder, incomplete or changed (md5 differs)
        raise TrainError(f"{target} is there but incomplete or damaged (torchvision's md5 check fails): remove it "
                         f"to download {title} again, or pass {option} with {_WHAT_TO_PASS}")
    created = fs.missing_folders(root)
    tmp = root / f".download-{name}-{os.getpid()}"
    timeout = socket.getdefaulttimeout()
    try:
        log.info("downloading %s into %s (about 170 MB, once) ...", title, root)
        tmp.mkdir(parents=True)
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        download_and_extract_archive(cls.url, str(tmp), filename=cls.filename, md5=cls.tgz_md5, remove_finished=True)
        if not tv_present(name, tmp):
            raise RuntimeError("the downloaded archive does not hold the expected files")
        if not tv_present(name, root):  # another rank or process may have finished first: keep theirs
            os.replace(tmp / cls.base_folder, target)
    except Exception as e:  # noqa: BLE001 - urllib, http.client, tarfile and torchvision raise many kinds
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        raise TrainError(f"{title} is not in {root}/ and could not be downloaded ({type(e).__name__}: {reason}); "
                         f"pass {option} with {_WHAT_TO_PASS}") from None
    finally:
        socket.setdefaulttimeout(timeout)
        shutil.rmtree(tmp, ignore_errors=True)
        fs.remove_made(created)
    return root


def _tarball_stem(path: Path) -> str:
    """The folder a tarball unpacks into: its name less the suffix, one plain name (not ``.`` or ``..``).

    Raises:
        TrainError: a name that is no folder name (``..tar.gz``).
    """
    name = path.name
    stem = next((name[: -len(s)] for s in TARBALL_SUFFIXES if name.endswith(s)), path.stem)
    try:
        return fs.single_name(stem, f"tarball {path}: the folder it unpacks into")
    except FracgenError as e:
        raise TrainError(str(e)) from None


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
    if dest.exists() or dest.is_symlink():
        raw = fs.read_regular(dest / _STAMP, 1 << 16)
        try:
            old = json.loads(raw) if raw is not None else None
        except (ValueError, RecursionError):
            old = None
        if old is None or dest.is_symlink():
            raise TrainError(f"{dest} exists and was not unpacked from {tarball}: move it, or pass the folder "
                             "itself instead of the tarball")
        if old == stamp:
            return dest
    created = fs.missing_folders(root)
    tmp = root / f".{dest.name}.unpacking-{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
        log.info("unpacking %s into %s ...", tarball, dest)
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")  # no absolute paths, links or devices out of the folder
        fs.write_json(tmp / _STAMP, stamp)
        if dest.exists():  # an earlier unpacking of another version of the tarball (stamped, ours)
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except (tarfile.TarError, OSError, EOFError, zlib.error, FracgenError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""  # tarfile lists each method it tried
        raise TrainError(f"tarball {tarball}: cannot unpack it into {root} ({type(e).__name__}: "
                         f"{why.rstrip(':')})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        fs.remove_made(created)
    return dest


def image_folder_root(folder: Path) -> Path | None:
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
        created = fs.missing_folders(Path(data_root))
        folder = unpack_tarball(path, data_root)
        found = image_folder_root(folder)
        if found is None and tv_folder(folder) is None:  # of no use: what was unpacked (stamped, ours) goes
            shutil.rmtree(folder, ignore_errors=True)
            fs.remove_made(created)
            raise TrainError(f"tarball {spec} holds neither train/ and test/ folders nor torchvision's "
                             "cifar-10-batches-py / cifar-100-python")
        return str(found or folder)
    if path.is_dir():
        return spec
    raise TrainError(f"unknown dataset {spec!r} ({option}): no such file or folder; pass {_WHAT_TO_PASS}, or "
                     f"cifar10 / cifar100 (downloaded into {data_root}/ when the machine has internet)")
